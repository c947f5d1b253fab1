package rollout_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/firmware"
	"github.com/umbra-iot/umbra/internal/waitfor"
	"github.com/umbra-iot/umbra/rollout"
	"github.com/umbra-iot/umbra/rollout/boltstore"
)

func TestMain(m *testing.M) {
	if dir := os.Getenv(crashChildEnv); dir != "" {
		os.Exit(runCrashChild(dir))
	}
	// A planner goroutine must not outlive the tests.
	waitfor.Main(m, "umbra/rollout.(*Planner)")
}

// behaviour is how a fake device reacts to a firmware command: the report
// it posts, or false to stay silent.
type behaviour func(id device.ID, cmd map[string]any) (firmware.Report, bool)

// fakeShadows is an in-memory Shadows whose devices react to commands
// through behave and tell the planner about it like shadow.OnChange does.
type fakeShadows struct {
	mu      sync.Mutex // guards everything below
	reports map[device.ID]firmware.Report
	desired map[device.ID]map[string]any
	writes  map[string]int    // "device token" → writes
	urls    map[string]string // "device token" → first URL written
	failing map[device.ID]bool
	behave  behaviour
	notify  func(device.ID)
}

func newFakeShadows(behave behaviour) *fakeShadows {
	return &fakeShadows{reports: map[device.ID]firmware.Report{}, desired: map[device.ID]map[string]any{},
		writes: map[string]int{}, urls: map[string]string{}, failing: map[device.ID]bool{}, behave: behave}
}

var errShadowDown = errors.New("fake shadow down")

func (f *fakeShadows) SetDesiredFirmware(ctx context.Context, id device.ID, cmd map[string]any, token string) error {
	f.mu.Lock()
	if f.failing[id] {
		f.mu.Unlock()
		return errShadowDown
	}
	k := string(id) + " " + token
	f.writes[k]++
	if u, ok := cmd["url"].(string); ok {
		if prev, seen := f.urls[k]; seen && prev != u {
			f.urls[k] = "CHANGED " + prev + " → " + u
		} else if !seen {
			f.urls[k] = u
		}
	}
	f.desired[id] = cmd
	var rep firmware.Report
	ok := false
	if cmd != nil && f.behave != nil {
		rep, ok = f.behave(id, cmd)
	}
	if ok {
		f.reports[id] = rep
	}
	n := f.notify
	f.mu.Unlock()
	if ok && n != nil {
		n(id)
	}
	return nil
}

func (f *fakeShadows) ReportedFirmware(ctx context.Context, id device.ID) (firmware.Report, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	rep, ok := f.reports[id]
	return rep, ok, nil
}

// report posts rep as device id would.
func (f *fakeShadows) report(id device.ID, rep firmware.Report) {
	f.mu.Lock()
	f.reports[id] = rep
	n := f.notify
	f.mu.Unlock()
	if n != nil {
		n(id)
	}
}

func (f *fakeShadows) desiredOf(id device.ID) map[string]any {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.desired[id]
}

func (f *fakeShadows) writeCounts() map[string]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]int{}
	for k, v := range f.writes {
		out[k] = v
	}
	return out
}

// installs makes devices install whatever they are told at once.
func installs(id device.ID, cmd map[string]any) (firmware.Report, bool) {
	job, _ := cmd["job"].(string)
	return firmware.Report{Version: cmd["version"].(string), State: firmware.StateUpdated, Job: job}, true
}

func silent(device.ID, map[string]any) (firmware.Report, bool) { return firmware.Report{}, false }

// fakeFirmware is a Firmware with a fixed set of versions whose URLs carry
// a counter, so that every minted URL differs.
type fakeFirmware struct {
	mu       sync.Mutex // guards n
	n        int
	versions map[firmware.Version]bool
}

func newFakeFirmware(versions ...firmware.Version) *fakeFirmware {
	f := &fakeFirmware{versions: map[firmware.Version]bool{}}
	for _, v := range versions {
		f.versions[v] = true
	}
	return f
}

func (f *fakeFirmware) Get(ctx context.Context, v firmware.Version) (firmware.Image, error) {
	if !f.versions[v] {
		return firmware.Image{}, fmt.Errorf("get %s: %w", v, firmware.ErrNotFound)
	}
	return firmware.Image{Version: v, HW: "m1", Size: 10, SHA256: strings.Repeat("ab", 32)}, nil
}

func (f *fakeFirmware) Command(img firmware.Image, id device.ID, ttl time.Duration, job string) firmware.Command {
	f.mu.Lock()
	f.n++
	n := f.n
	f.mu.Unlock()
	return firmware.Command{Version: string(img.Version), HW: img.HW, SHA256: img.SHA256, Size: img.Size,
		URL: fmt.Sprintf("http://127.0.0.1/fw/%s?d=%s&n=%d", img.SHA256, id, n), Signature: "c2ln", Job: job}
}

// openStore opens the bbolt store at path (in a temp dir when empty),
// closed by tb.Cleanup after the planners opened on it later.
func openStore(tb testing.TB, path string) *boltstore.Store {
	tb.Helper()
	if path == "" {
		path = filepath.Join(tb.TempDir(), "rollout.db")
	}
	st, err := boltstore.Open(tb.Context(), boltstore.Config{Path: path})
	if err != nil {
		tb.Fatalf("open store: %v", err)
	}
	tb.Cleanup(func() {
		if err := st.Close(context.Background()); err != nil {
			tb.Errorf("close store: %v", err)
		}
	})
	return st
}

// stores remembers the store mustOpen opened for each planner.
var stores sync.Map // *rollout.Planner → *boltstore.Store

// mustOpen opens a planner on a store at path (in a temp dir when empty)
// wired to fs; t.Cleanup closes both.
func mustOpen(tb testing.TB, path string, fs *fakeShadows, fw *fakeFirmware, mod func(*rollout.Config)) *rollout.Planner {
	tb.Helper()
	cfg := rollout.Config{Store: openStore(tb, path), Shadows: fs, Firmware: fw, Tick: 5 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(tb.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))}
	if mod != nil {
		mod(&cfg)
	}
	p, err := rollout.Open(tb.Context(), cfg)
	if err != nil {
		tb.Fatalf("Open: %v", err)
	}
	stores.Store(p, cfg.Store)
	fs.mu.Lock()
	fs.notify = p.Notify
	fs.mu.Unlock()
	tb.Cleanup(func() {
		if err := p.Close(context.Background()); err != nil {
			tb.Errorf("Close: %v", err)
		}
	})
	return p
}

// stop closes planner p, then the store mustOpen opened for it (as umbra
// serve does), so that its file may be opened again.
func stop(p *rollout.Planner) error {
	err := p.Close(context.Background())
	if st, ok := stores.LoadAndDelete(p); ok {
		err = errors.Join(err, st.(*boltstore.Store).Close(context.Background()))
	}
	return err
}

func ids(prefix string, n int) []device.ID {
	out := make([]device.ID, n)
	for i := range out {
		out[i] = device.ID(fmt.Sprintf("%s-%04d", prefix, i))
	}
	return out
}

// waitState polls (there is no event to wait for) until rollout id is in
// one of states.
func waitState(tb testing.TB, p *rollout.Planner, id string, states ...rollout.State) rollout.Status {
	tb.Helper()
	var st rollout.Status
	waitfor.PollExplained(tb, 15*time.Second, fmt.Sprintf("rollout %s to be %v", id, states), func() string {
		var err error
		if st, err = p.Get(tb.Context(), id); err != nil {
			tb.Fatalf("Get %s: %v", id, err)
		}
		if slices.Contains(states, st.State) {
			return ""
		}
		return fmt.Sprintf("%s (%s) with %v", st.State, st.Reason, st.Counts)
	})
	return st
}

// clock is a settable test clock.
type clock struct {
	mu  sync.Mutex // guards now
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// The firmware store is the production Firmware.
var _ rollout.Firmware = (*firmware.Store)(nil)
