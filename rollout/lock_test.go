package rollout_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/firmware"
	"github.com/umbra-iot/umbra/internal/waitfor"
	"github.com/umbra-iot/umbra/rollout"
	"github.com/umbra-iot/umbra/rollout/boltstore"
)

// blockingShadows is a fakeShadows whose first call that block selects
// waits until release is closed, whatever its ctx says (the shadow
// engine's writes do not stop for it either); blocked is closed when that
// call began. Every other call goes straight through.
type blockingShadows struct {
	*fakeShadows
	// block selects the call to hold: op is "read" (ReportedFirmware) or
	// "write" (SetDesiredFirmware, cmd nil for a cancel); n counts the
	// calls of that op so far, from 1.
	block   func(op string, n int, id device.ID, cmd map[string]any) bool
	blocked chan struct{}
	release chan struct{}
	freed   sync.Once
	mu      sync.Mutex // guards calls and done
	calls   map[string]int
	done    bool // the call was held already
}

func newBlockingShadows(fs *fakeShadows, block func(op string, n int, id device.ID, cmd map[string]any) bool) *blockingShadows {
	return &blockingShadows{fakeShadows: fs, block: block, blocked: make(chan struct{}), release: make(chan struct{}),
		calls: map[string]int{}}
}

// free lets the held call go on (once).
func (b *blockingShadows) free() { b.freed.Do(func() { close(b.release) }) }

func (b *blockingShadows) hold(op string, id device.ID, cmd map[string]any) {
	b.mu.Lock()
	b.calls[op]++
	hold := !b.done && b.block(op, b.calls[op], id, cmd)
	b.done = b.done || hold
	b.mu.Unlock()
	if hold {
		close(b.blocked)
		<-b.release
	}
}

func (b *blockingShadows) SetDesiredFirmware(ctx context.Context, id device.ID, cmd map[string]any, token string) error {
	b.hold("write", id, cmd)
	return b.fakeShadows.SetDesiredFirmware(ctx, id, cmd, token)
}

func (b *blockingShadows) ReportedFirmware(ctx context.Context, id device.ID) (firmware.Report, bool, error) {
	b.hold("read", id, nil)
	return b.fakeShadows.ReportedFirmware(ctx, id)
}

// await fails tb unless ch is closed within 10 s (a deadline for an
// event, not a timing assertion: what is awaited must not depend on the
// held shadow call).
func await(tb testing.TB, ch <-chan struct{}, what string) {
	tb.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		tb.Fatalf("%s: not within 10 s", what)
	}
}

// returns runs f in a goroutine and fails tb unless it returns within 10 s
// while the pass is held in a shadow call.
func returns(tb testing.TB, what string, f func() error) {
	tb.Helper()
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		if err != nil {
			tb.Errorf("%s while the pass is held in shadow I/O: %v", what, err)
		}
	case <-time.After(10 * time.Second):
		tb.Fatalf("%s waited for the pass held in shadow I/O (10 s)", what)
	}
}

// TestReadsDoNotWaitForShadowIO: while a pass is held in a shadow read or
// write (a slow shadow store: a NATS round trip, a stuck fsync), every
// read of the rollout API, and a Create of another rollout, returns, and
// shows what the pass recorded so far: a device whose command is being
// written is listed as notified (its intent was committed first).
func TestReadsDoNotWaitForShadowIO(t *testing.T) {
	targets := ids("d", 10)
	cases := []struct {
		name string
		// block selects the shadow call the pass is held in.
		block func(op string, n int, id device.ID, cmd map[string]any) bool
		// setup runs before the block is armed; it returns the rollout.
		setup func(t *testing.T, p *rollout.Planner, fs *fakeShadows) string
		// arm makes the pass reach the held call after setup.
		arm func(t *testing.T, p *rollout.Planner, fs *fakeShadows, id string)
		// notified is how many devices Get must show in flight while held.
		notified int
	}{
		{
			name:     "a command write",
			block:    func(op string, n int, _ device.ID, _ map[string]any) bool { return op == "write" && n == 1 },
			notified: 10,
		},
		{
			name: "the reported-firmware read before a notification",
			block: func(op string, n int, _ device.ID, _ map[string]any) bool {
				return op == "read" && n == 1
			},
			notified: 0,
		},
		{
			name: "the report read of a device in flight",
			block: func(op string, n int, id device.ID, _ map[string]any) bool {
				return op == "read" && id == "d-0003" && n > 10 // after the 10 reads before their notification
			},
			setup: func(t *testing.T, p *rollout.Planner, fs *fakeShadows) string {
				r := create(t, p, targets)
				waitFor(t, func() bool { return len(fs.writeCounts()) == 10 })
				return r
			},
			arm: func(t *testing.T, p *rollout.Planner, fs *fakeShadows, id string) {
				fs.report("d-0003", firmware.Report{Version: "2.0.0", State: firmware.StateDownloading, Job: id + "/1"})
			},
			notified: 10,
		},
		{
			name: "the cancel write of an aborted rollout",
			block: func(op string, _ int, _ device.ID, cmd map[string]any) bool {
				return op == "write" && cmd == nil
			},
			setup: func(t *testing.T, p *rollout.Planner, fs *fakeShadows) string {
				r := create(t, p, targets)
				waitFor(t, func() bool { return len(fs.writeCounts()) == 10 })
				return r
			},
			arm: func(t *testing.T, p *rollout.Planner, fs *fakeShadows, id string) {
				if _, err := p.Abort(t.Context(), id, false); err != nil {
					t.Fatal(err)
				}
			},
			notified: 10,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fs := newFakeShadows(silent)
			bs := newBlockingShadows(fs, tc.block)
			p := mustOpen(t, "", fs, newFakeFirmware("2.0.0"), func(c *rollout.Config) { c.Shadows = bs })
			t.Cleanup(bs.free) // before the planner's Close
			var id string
			if tc.setup != nil {
				id = tc.setup(t, p, fs)
				tc.arm(t, p, fs, id)
			} else {
				id = create(t, p, targets)
			}
			await(t, bs.blocked, "the pass reaching the held shadow call")

			returns(t, "Get", func() error {
				st, err := p.Get(t.Context(), id)
				if err == nil && st.Counts[rollout.DeviceNotified]+st.Counts[rollout.DeviceDownloading] != tc.notified {
					err = fmt.Errorf("counts %v, want %d in flight", st.Counts, tc.notified)
				}
				return err
			})
			returns(t, "List", func() error {
				rs, err := p.List(t.Context())
				if err == nil && (len(rs) != 1 || rs[0].ID != id) {
					err = fmt.Errorf("listed %v, want %s", rs, id)
				}
				return err
			})
			returns(t, "Devices", func() error {
				ds, err := p.Devices(t.Context(), id)
				if err == nil && len(ds) != len(targets) {
					err = fmt.Errorf("%d devices, want %d", len(ds), len(targets))
				}
				return err
			})
			returns(t, "DevicesPage", func() error {
				ds, next, err := p.DevicesPage(t.Context(), id, nil, 2, 3)
				if err == nil && (len(ds) != 3 || next != 5 || ds[0].Device != "d-0002") {
					err = fmt.Errorf("page %v next %d, want d-0002…d-0004 and 5", ds, next)
				}
				return err
			})
			returns(t, "Events", func() error {
				evs, err := p.Events(t.Context(), id)
				if err == nil && (len(evs) == 0 || evs[0].Kind != rollout.EventCreated) {
					err = fmt.Errorf("events %v, want the created event first", evs)
				}
				return err
			})
			returns(t, "InUse", func() error {
				_, _, err := p.InUse(t.Context(), "2.0.0")
				return err
			})
			returns(t, "Create of another rollout", func() error {
				_, err := p.Create(t.Context(), rollout.Spec{Firmware: "2.0.0", Devices: ids("e", 2)})
				return err
			})
		})
	}
}

func create(t *testing.T, p *rollout.Planner, targets []device.ID) string {
	t.Helper()
	r, err := p.Create(t.Context(), rollout.Spec{Firmware: "2.0.0", Devices: targets})
	if err != nil {
		t.Fatal(err)
	}
	return r.ID
}

// TestControlStopsBatchStart: a pause or an abort requested while a pass
// writes the commands of a 200-device batch returns while the pass is
// held in a shadow write, and no write starts after it: the held write
// finishes, the devices written are recorded notified (each written
// once), and the others, recorded notified before their write, go back
// to pending; the store holds exactly that after a restart.
func TestControlStopsBatchStart(t *testing.T) {
	// One write at a time, so that none proceeds while the third is held.
	const n, held = 200, 3
	cases := []struct {
		name string
		act  func(ctx context.Context, p *rollout.Planner, id string) (rollout.Rollout, error)
		want rollout.State
		// settled reports, from the device counts, that the pass after the
		// held one is done with the control action.
		settled func(c map[rollout.DeviceState]int) bool
		final   rollout.DeviceState // the state of the devices left
	}{
		{
			name: "pause",
			act: func(ctx context.Context, p *rollout.Planner, id string) (rollout.Rollout, error) {
				return p.Pause(ctx, id)
			},
			want:    rollout.StatePaused,
			settled: func(map[rollout.DeviceState]int) bool { return true },
			final:   rollout.DevicePending,
		},
		{
			name: "abort",
			act: func(ctx context.Context, p *rollout.Planner, id string) (rollout.Rollout, error) {
				return p.Abort(ctx, id, false)
			},
			want:    rollout.StateAborted,
			settled: func(c map[rollout.DeviceState]int) bool { return c[rollout.DeviceCanceled] == n },
			final:   rollout.DeviceCanceled,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := t.TempDir() + "/rollout.db"
			fs := newFakeShadows(silent)
			bs := newBlockingShadows(fs, func(op string, k int, _ device.ID, cmd map[string]any) bool {
				return op == "write" && cmd != nil && k == held
			})
			fw := newFakeFirmware("2.0.0")
			p := mustOpen(t, path, fs, fw, func(c *rollout.Config) { c.Shadows, c.WriteConcurrency = bs, 1 })
			t.Cleanup(bs.free) // before the planner's Close
			id := create(t, p, ids("d", n))
			await(t, bs.blocked, "the third command write")

			var r rollout.Rollout
			returns(t, tc.name, func() error {
				var err error
				r, err = tc.act(t.Context(), p, id)
				return err
			})
			if r.State != tc.want {
				t.Fatalf("%s returned state %s, want %s", tc.name, r.State, tc.want)
			}
			bs.free()

			// The held pass ends with the held write; the store then has
			// no intent left (each is deleted once delivered or taken
			// back).
			st := storeOf(t, p)
			waitfor.PollExplained(t, 15*time.Second, "the held write delivered and the rest taken back", func() string {
				s, err := st.Load(t.Context(), id)
				if err != nil {
					t.Fatal(err)
				}
				if len(s.Intents) > 0 {
					return fmt.Sprintf("%d intents left", len(s.Intents))
				}
				g, err := p.Get(t.Context(), id)
				if err != nil {
					t.Fatal(err)
				}
				if !tc.settled(g.Counts) {
					return fmt.Sprintf("counts %v", g.Counts)
				}
				return ""
			})
			commands := commandWrites(fs, id+"/1")
			if len(commands) != held {
				t.Errorf("%d devices got a command, want %d (the held write and those before it)", len(commands), held)
			}
			if err := stop(p); err != nil {
				t.Fatal(err)
			}

			// The store holds what happened, after a restart.
			st2 := openStore(t, path)
			s, err := st2.Load(t.Context(), id)
			if err != nil {
				t.Fatal(err)
			}
			if s.Rollout.State != tc.want || len(s.Intents) != 0 {
				t.Errorf("stored state %s with %d intents, want %s and none", s.Rollout.State, len(s.Intents), tc.want)
			}
			for i, d := range s.Devices {
				dev := s.Targets[i]
				_, sent := commands[dev]
				want := tc.final
				if sent && tc.name == "pause" {
					want = rollout.DeviceNotified
				}
				if d.State != want {
					t.Errorf("%s stored %s (command sent: %t), want %s", dev, d.State, sent, want)
				}
			}
			for dev, k := range commands {
				if k != 1 {
					t.Errorf("%s got its command %d times, want once", dev, k)
				}
				if tc.name == "abort" && fs.writeCounts()[string(dev)+" "+id+"/cancel"] != 1 {
					t.Errorf("%s got a command and no cancel", dev)
				}
			}
		})
	}
}

// commandWrites returns the devices written job's command, with their
// write counts.
func commandWrites(fs *fakeShadows, job string) map[device.ID]int {
	out := map[device.ID]int{}
	for k, v := range fs.writeCounts() {
		var dev, token string
		if _, err := fmt.Sscan(k, &dev, &token); err == nil && token == job {
			out[device.ID(dev)] = v
		}
	}
	return out
}

// storeOf returns the store mustOpen opened for p.
func storeOf(t *testing.T, p *rollout.Planner) *boltstore.Store {
	t.Helper()
	st, ok := stores.Load(p)
	if !ok {
		t.Fatal("no store for the planner")
	}
	return st.(*boltstore.Store)
}

// TestJobsMarkDuringPrepare: a device marked as a Jobs device while the
// pass reads its reported firmware (without the planner's lock) to notify
// it is notified through a Jobs execution, not its shadow.
func TestJobsMarkDuringPrepare(t *testing.T) {
	fs := newFakeShadows(silent)
	bs := newBlockingShadows(fs, func(op string, _ int, id device.ID, _ map[string]any) bool {
		return op == "read" && id == "j-0000"
	})
	p := mustOpen(t, "", fs, newFakeFirmware("2.0.0"), func(c *rollout.Config) { c.Shadows = bs })
	t.Cleanup(bs.free)
	create(t, p, ids("j", 1))
	await(t, bs.blocked, "the read before the notification")
	returns(t, "MarkJobs", func() error { return p.MarkJobs(t.Context(), "j-0000") })
	bs.free()
	var x rollout.Execution
	waitFor(t, func() bool {
		var ok bool
		var err error
		x, ok, err = p.NextExecution(t.Context(), "j-0000")
		if err != nil {
			t.Fatal(err)
		}
		return ok
	})
	if x.Status != rollout.ExecQueued || x.Number != 1 {
		t.Errorf("execution %d %s, want 1 QUEUED", x.Number, x.Status)
	}
	if w := fs.writeCounts(); len(w) != 0 {
		t.Errorf("shadow writes %v, want none for a Jobs device", w)
	}
}

// failingStore is a store whose commits fail once fail is set, as if the
// process died before them.
type failingStore struct {
	rollout.Store
	fail atomic.Bool
}

var errCrashed = errors.New("crashed before this commit")

func (f *failingStore) Commit(ctx context.Context, c *rollout.Changes) ([]rollout.Event, error) {
	if f.fail.Load() {
		return nil, errCrashed
	}
	return f.Store.Commit(ctx, c)
}

// TestPauseThenCrashReissuesRecorded: when the process dies after a pause
// stopped a batch's writes and before the pass's last commit (which takes
// back the commands not written), the next planner re-issues every
// recorded command as recorded (same job, same URL), although the rollout
// is paused: the store said notified, and no attempt is skipped or given
// two commands.
func TestPauseThenCrashReissuesRecorded(t *testing.T) {
	const n, held = 20, 3
	path := filepath.Join(t.TempDir(), "rollout.db")
	fs := newFakeShadows(silent)
	bs := newBlockingShadows(fs, func(op string, k int, _ device.ID, cmd map[string]any) bool {
		return op == "write" && k == held
	})
	fw := newFakeFirmware("2.0.0")
	st := &failingStore{Store: openStore(t, path)}
	p, err := rollout.Open(t.Context(), rollout.Config{Store: st, Shadows: bs, Firmware: fw, WriteConcurrency: 1,
		Tick: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(bs.free)
	id := create(t, p, ids("d", n))
	await(t, bs.blocked, "the third command write")
	returns(t, "Pause", func() error {
		_, err := p.Pause(t.Context(), id)
		return err
	})
	st.fail.Store(true) // the process dies now
	bs.free()
	if err := p.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := st.Store.(*boltstore.Store).Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := len(commandWrites(fs, id+"/1")); got != held {
		t.Fatalf("%d devices got a command before the crash, want %d", got, held)
	}

	p2 := mustOpen(t, path, fs, fw, nil)
	waitFor(t, func() bool { return len(commandWrites(fs, id+"/1")) == n })
	g, err := p2.Get(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	if g.State != rollout.StatePaused || g.Counts[rollout.DeviceNotified] != n {
		t.Errorf("after the restart: %s with %v, want paused with %d notified", g.State, g.Counts, n)
	}
	fs.mu.Lock()
	defer fs.mu.Unlock()
	for k, u := range fs.urls {
		if strings.HasPrefix(u, "CHANGED") {
			t.Errorf("%s re-issued with another command: %s", k, u)
		}
	}
	for k := range fs.writes {
		if !strings.HasSuffix(k, " "+id+"/1") {
			t.Errorf("write %q, want only job %s/1", k, id)
		}
	}
}
