package rollout_test

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/firmware"
	"github.com/umbra-iot/umbra/rollout"
)

// stuckShadows is a fakeShadows whose write number stuckAt (from 1) blocks
// until release is closed, whatever its ctx says (the shadow engine's
// writes do not stop for it either). started is closed when that write
// began, cancelled when its ctx was cancelled while it waited.
type stuckShadows struct {
	*fakeShadows
	stuckAt   int
	started   chan struct{}
	cancelled chan struct{}
	release   chan struct{}
	unblock   sync.Once
	mu        sync.Mutex // guards n
	n         int
}

// free closes release once (and lets a failed test's cleanup close the
// planner).
func (s *stuckShadows) free() { s.unblock.Do(func() { close(s.release) }) }

func newStuckShadows(fs *fakeShadows, at int) *stuckShadows {
	return &stuckShadows{fakeShadows: fs, stuckAt: at, started: make(chan struct{}), cancelled: make(chan struct{}),
		release: make(chan struct{})}
}

func (s *stuckShadows) SetDesiredFirmware(ctx context.Context, id device.ID, cmd map[string]any, token string) error {
	s.mu.Lock()
	s.n++
	n := s.n
	s.mu.Unlock()
	if n == s.stuckAt {
		close(s.started)
		select {
		case <-s.release:
		case <-ctx.Done():
			close(s.cancelled)
			<-s.release
		}
	}
	return s.fakeShadows.SetDesiredFirmware(ctx, id, cmd, token)
}

func (s *stuckShadows) writes() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n
}

// TestCloseStopsPassBetweenWrites: Close cancels a long pass, which starts
// no shadow write after the one in progress; the notifications it did not
// deliver stay recorded and the next planner delivers them, each device
// once.
func TestCloseStopsPassBetweenWrites(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rollout.db")
	fs := newFakeShadows(silent)
	stuck := newStuckShadows(fs, 3)
	fw := newFakeFirmware("2.0.0")
	p := mustOpen(t, path, fs, fw, func(c *rollout.Config) { c.Shadows, c.WriteConcurrency = stuck, 1 })
	t.Cleanup(stuck.free) // before the planner's Close
	r, err := p.Create(t.Context(), rollout.Spec{Firmware: "2.0.0", Devices: ids("d", 20)})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-stuck.started:
	case <-time.After(10 * time.Second):
		t.Fatal("the third shadow write never started")
	}
	closed := make(chan error, 1)
	go func() { closed <- stop(p) }()
	// Close cancels the pass; the write in progress sees it, and returns
	// when released.
	select {
	case <-stuck.cancelled:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not cancel the pass")
	}
	stuck.free()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatalf("Close: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return after the write in progress")
	}
	if n := stuck.writes(); n != 3 {
		t.Errorf("%d shadow writes before Close returned, want 3 (none after the cancel)", n)
	}

	fs.mu.Lock()
	fs.behave = installs
	fs.mu.Unlock()
	p2 := mustOpen(t, path, fs, fw, nil)
	waitFor(t, func() bool {
		ds, _ := p2.Devices(t.Context(), r.ID, rollout.DeviceNotified)
		return len(ds) == 3 // the three delivered before Close, silent so far
	})
	for _, id := range ids("d", 3) {
		fs.report(id, firmware.Report{Version: "2.0.0", State: firmware.StateUpdated, Job: r.ID + "/1"})
	}
	st := waitState(t, p2, r.ID, rollout.StateSucceeded)
	if st.Counts[rollout.DeviceSucceeded] != 20 {
		t.Errorf("counts %v, want 20 succeeded", st.Counts)
	}
	for _, id := range ids("d", 20) {
		if n := fs.writeCounts()[string(id)+" "+r.ID+"/1"]; n != 1 {
			t.Errorf("%s written %d times for %s/1, want once", id, n, r.ID)
		}
	}
}

// TestCloseReturnsWithinContext: Close waits for the pass in progress only
// until its ctx is done, and a later Close waits for it again.
func TestCloseReturnsWithinContext(t *testing.T) {
	fs := newFakeShadows(silent)
	stuck := newStuckShadows(fs, 1)
	p := mustOpen(t, "", fs, newFakeFirmware("2.0.0"), func(c *rollout.Config) { c.Shadows = stuck })
	t.Cleanup(stuck.free) // before the planner's Close
	if _, err := p.Create(t.Context(), rollout.Spec{Firmware: "2.0.0", Devices: ids("d", 2)}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-stuck.started:
	case <-time.After(10 * time.Second):
		t.Fatal("the shadow write never started")
	}
	ctx, cancel := context.WithCancel(t.Context())
	closed := make(chan error, 1)
	go func() { closed <- p.Close(ctx) }()
	cancel()
	select {
	case err := <-closed:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Close with its ctx cancelled during a stuck write = %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return when its ctx was cancelled")
	}
	stuck.free()
	if err := p.Close(t.Context()); err != nil {
		t.Errorf("second Close once the write returned = %v, want nil", err)
	}
}
