package rollout_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/firmware"
	"github.com/umbra-iot/umbra/internal/waitfor"
	"github.com/umbra-iot/umbra/rollout"
)

func TestOpenValidation(t *testing.T) {
	fs, fw, st := newFakeShadows(nil), newFakeFirmware(), openStore(t, "")
	tests := []struct {
		name string
		cfg  rollout.Config
	}{
		{"no store", rollout.Config{Shadows: fs, Firmware: fw}},
		{"no shadows", rollout.Config{Store: st, Firmware: fw}},
		{"no firmware", rollout.Config{Store: st, Shadows: fs}},
		{"negative tick", rollout.Config{Store: st, Shadows: fs, Firmware: fw, Tick: -1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := rollout.Open(t.Context(), tc.cfg)
			if err == nil {
				p.Close(t.Context())
			}
			if !errors.Is(err, rollout.ErrInvalid) {
				t.Errorf("Open error = %v, want ErrInvalid", err)
			}
		})
	}
}

func TestCreateValidation(t *testing.T) {
	p := mustOpen(t, "", newFakeShadows(nil), newFakeFirmware("2.0.0"), nil)
	devs := ids("d", 2)
	tests := []struct {
		name string
		spec rollout.Spec
	}{
		{"no devices", rollout.Spec{Firmware: "2.0.0"}},
		{"bad version", rollout.Spec{Firmware: "2.0", Devices: devs}},
		{"unknown version", rollout.Spec{Firmware: "3.0.0", Devices: devs}},
		{"bad device", rollout.Spec{Firmware: "2.0.0", Devices: []device.ID{"a/b"}}},
		{"size and percent", rollout.Spec{Firmware: "2.0.0", Devices: devs, Policy: rollout.Policy{BatchSize: 1, BatchPercent: 10}}},
		{"threshold over 100", rollout.Spec{Firmware: "2.0.0", Devices: devs, Policy: rollout.Policy{SuccessThreshold: 101}}},
		{"too many retries", rollout.Spec{Firmware: "2.0.0", Devices: devs, Policy: rollout.Policy{Retries: 11}}},
		{"bad on failure", rollout.Spec{Firmware: "2.0.0", Devices: devs, Policy: rollout.Policy{OnFailure: "explode"}}},
		{"too many batches", rollout.Spec{Firmware: "2.0.0", Devices: ids("d", 1001), Policy: rollout.Policy{BatchSize: 1}}},
		{"tiny timeout", rollout.Spec{Firmware: "2.0.0", Devices: devs, Policy: rollout.Policy{DeviceTimeout: time.Millisecond}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := p.Create(t.Context(), tc.spec)
			if !errors.Is(err, rollout.ErrInvalid) {
				t.Errorf("Create error = %v, want ErrInvalid", err)
			}
		})
	}
	if list, err := p.List(t.Context()); err != nil || len(list) != 0 {
		t.Errorf("List = %v, %v; want nothing stored", list, err)
	}
}

func TestRolloutCompletes(t *testing.T) {
	fs := newFakeShadows(installs)
	var mu sync.Mutex
	var emitted []rollout.Event
	p := mustOpen(t, "", fs, newFakeFirmware("2.0.0"), func(c *rollout.Config) {
		c.OnEvent = func(id string, ev rollout.Event) {
			mu.Lock()
			emitted = append(emitted, ev)
			mu.Unlock()
		}
	})
	targets := ids("d", 20)
	r, err := p.Create(t.Context(), rollout.Spec{Firmware: "v2.0.0", Devices: append(targets, targets[0]),
		Policy: rollout.Policy{FirstBatch: 2, BatchSize: 6}})
	if err != nil {
		t.Fatal(err)
	}
	if r.ID != "r1" || r.Targets != 20 || len(r.Batches) != 4 || r.Firmware != "2.0.0" {
		t.Errorf("Create = %s of %s with %d targets in %d batches, want r1 of 2.0.0 with 20 in 4",
			r.ID, r.Firmware, r.Targets, len(r.Batches))
	}
	st := waitState(t, p, r.ID, rollout.StateSucceeded)
	if got := st.Counts[rollout.DeviceSucceeded]; got != 20 {
		t.Errorf("succeeded = %d, want 20", got)
	}
	raw, err := json.Marshal(st)
	if err != nil || !strings.Contains(string(raw), `"counts":{"succeeded":20}`) {
		t.Errorf("status JSON = %s, %v; want counts by state name", raw, err)
	}
	for _, b := range st.Batches {
		if b.State != "done" || b.Counts[rollout.DeviceSucceeded] != b.Size {
			t.Errorf("batch %d: %s %v, want done with %d succeeded", b.Index, b.State, b.Counts, b.Size)
		}
	}
	for k, n := range fs.writeCounts() {
		if n != 1 || !strings.HasSuffix(k, " r1/1") {
			t.Errorf("shadow writes %q = %d, want 1 of job r1/1", k, n)
		}
	}
	evs, err := p.Events(t.Context(), r.ID)
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, ev := range evs {
		kinds = append(kinds, ev.Kind+":"+string(ev.State))
	}
	want := "created:created state:running batch_started: batch_finished: batch_started: batch_finished: " +
		"batch_started: batch_finished: batch_started: batch_finished: state:succeeded"
	if got := strings.Join(kinds, " "); got != want {
		t.Errorf("events = %s, want %s", got, want)
	}
	mu.Lock()
	if !slices.EqualFunc(emitted, evs, func(a, b rollout.Event) bool { return a.Seq == b.Seq && a.Kind == b.Kind }) {
		t.Errorf("OnEvent got %d events, want the %d stored ones in order", len(emitted), len(evs))
	}
	mu.Unlock()
	if _, used, _ := p.InUse(t.Context(), "2.0.0"); used {
		t.Errorf("InUse(2.0.0) after success = true, want false")
	}
}

func TestFailureThresholdPauses(t *testing.T) {
	bad := map[device.ID]bool{"d-0003": true, "d-0005": true}
	fs := newFakeShadows(func(id device.ID, cmd map[string]any) (firmware.Report, bool) {
		if bad[id] {
			return firmware.Report{Version: "1.0.0", State: firmware.StateFailed, Error: "hw_mismatch", Job: cmd["job"].(string)}, true
		}
		return installs(id, cmd)
	})
	p := mustOpen(t, "", fs, newFakeFirmware("2.0.0"), nil)
	r, err := p.Create(t.Context(), rollout.Spec{Firmware: "2.0.0", Devices: ids("d", 20),
		Policy: rollout.Policy{BatchSize: 10, SuccessThreshold: 50, FailurePercent: 10, MinSample: 5}})
	if err != nil {
		t.Fatal(err)
	}
	st := waitState(t, p, r.ID, rollout.StatePaused)
	if !strings.Contains(st.Reason, "failed, threshold 10.0%") || st.Started != 1 {
		t.Errorf("paused with %q after %d batches, want the failure threshold in batch 0", st.Reason, st.Started)
	}
	var failing []string
	for _, d := range st.Failing {
		failing = append(failing, string(d.Device)+":"+d.Error)
	}
	if got, want := strings.Join(failing, " "), "d-0003:hw_mismatch d-0005:hw_mismatch"; got != want {
		t.Errorf("failing = %s, want %s", got, want)
	}
	failed, err := p.Devices(t.Context(), r.ID, rollout.DeviceFailed)
	if err != nil || len(failed) != 2 {
		t.Errorf("Devices(failed) = %v, %v; want 2", failed, err)
	}

	// Pause and resume are idempotent; resume overrides the threshold once.
	for range 2 {
		if got, err := p.Pause(t.Context(), r.ID); err != nil || got.State != rollout.StatePaused {
			t.Fatalf("Pause = %s, %v; want paused", got.State, err)
		}
	}
	if got, err := p.Resume(t.Context(), r.ID); err != nil || got.State != rollout.StateRunning {
		t.Fatalf("Resume = %s, %v; want running", got.State, err)
	}
	st = waitState(t, p, r.ID, rollout.StateSucceeded)
	if st.Counts[rollout.DeviceFailed] != 2 || st.Counts[rollout.DeviceSucceeded] != 18 {
		t.Errorf("counts %v, want 2 failed, 18 succeeded", st.Counts)
	}
	if _, err := p.Pause(t.Context(), r.ID); !errors.Is(err, rollout.ErrState) {
		t.Errorf("Pause of a succeeded rollout: %v, want ErrState", err)
	}

	// Retry makes a new rollout over the failed devices only.
	delete(bad, "d-0003")
	re, err := p.Retry(t.Context(), r.ID)
	if err != nil {
		t.Fatal(err)
	}
	if re.RetryOf != r.ID || re.Targets != 2 {
		t.Errorf("Retry = %+v, want 2 targets retrying %s", re, r.ID)
	}
	st = waitState(t, p, re.ID, rollout.StateSucceeded) // 50% meets the threshold
	if st.Counts[rollout.DeviceSucceeded] != 1 || st.Counts[rollout.DeviceFailed] != 1 {
		t.Errorf("retry counts %v, want 1 succeeded 1 failed", st.Counts)
	}
}

func TestRetriesThenSucceeds(t *testing.T) {
	// Every device fails its first attempt with a retryable error.
	fs2 := newFakeShadows(func(id device.ID, cmd map[string]any) (firmware.Report, bool) {
		if job := cmd["job"].(string); strings.HasSuffix(job, "/1") {
			return firmware.Report{Version: "1.0.0", State: firmware.StateFailed, Error: "url_rejected", Retryable: true, Job: job}, true
		}
		return installs(id, cmd)
	})
	clk := &clock{now: t0}
	p2 := mustOpen(t, "", fs2, newFakeFirmware("2.0.0"), func(c *rollout.Config) { c.Now = clk.Now })
	r2, err := p2.Create(t.Context(), rollout.Spec{Firmware: "2.0.0", Devices: ids("d", 5),
		Policy: rollout.Policy{Retries: 2, RetryBackoff: time.Minute}})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		ds, _ := p2.Devices(t.Context(), r2.ID, rollout.DevicePending)
		return len(ds) == 5 && ds[4].Attempt == 1
	})
	clk.Add(time.Minute)
	st := waitState(t, p2, r2.ID, rollout.StateSucceeded)
	if st.Counts[rollout.DeviceSucceeded] != 5 {
		t.Errorf("counts %v, want 5 succeeded", st.Counts)
	}
	ds, _ := p2.Devices(t.Context(), r2.ID)
	for _, d := range ds {
		if d.Attempt != 2 || d.Error != "url_rejected" {
			t.Errorf("device %s attempt %d error %q, want attempt 2 after url_rejected", d.Device, d.Attempt, d.Error)
		}
	}
}

// waitFor polls cond (there is no event for it) for up to 15 s.
func waitFor(tb testing.TB, cond func() bool) {
	tb.Helper()
	waitfor.Poll(tb, 15*time.Second, "condition", cond)
}

func TestTimeoutFailsRollout(t *testing.T) {
	clk := &clock{now: t0}
	fs := newFakeShadows(silent)
	p := mustOpen(t, "", fs, newFakeFirmware("2.0.0"), func(c *rollout.Config) { c.Now = clk.Now })
	r, err := p.Create(t.Context(), rollout.Spec{Firmware: "2.0.0", Devices: ids("d", 3),
		Policy: rollout.Policy{DeviceTimeout: 10 * time.Minute}})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		ds, _ := p.Devices(t.Context(), r.ID, rollout.DeviceNotified)
		return len(ds) == 3
	})
	// Progress from d-0000 restarts its timeout.
	clk.Add(9 * time.Minute)
	fs.report("d-0000", firmware.Report{Version: "1.0.0", State: firmware.StateDownloading, Job: "r1/1"})
	waitFor(t, func() bool {
		ds, _ := p.Devices(t.Context(), r.ID, rollout.DeviceDownloading)
		return len(ds) == 1
	})
	clk.Add(time.Minute)
	waitFor(t, func() bool {
		ds, _ := p.Devices(t.Context(), r.ID, rollout.DeviceTimedOut)
		return len(ds) == 2
	})
	if st, _ := p.Get(t.Context(), r.ID); st.State != rollout.StateRunning || st.Counts[rollout.DeviceDownloading] != 1 {
		t.Errorf("rollout %s with %v, want running with 1 downloading", st.State, st.Counts)
	}
	clk.Add(10 * time.Minute)
	st := waitState(t, p, r.ID, rollout.StateFailed)
	if st.Counts[rollout.DeviceTimedOut] != 3 || len(st.Failing) != 3 {
		t.Errorf("counts %v, failing %v; want 3 timed out", st.Counts, st.Failing)
	}
}

func TestConflictAndInUse(t *testing.T) {
	p := mustOpen(t, "", newFakeShadows(silent), newFakeFirmware("2.0.0", "3.0.0"), nil)
	r1, err := p.Create(t.Context(), rollout.Spec{Firmware: "2.0.0", Devices: []device.ID{"a", "b"}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = p.Create(t.Context(), rollout.Spec{Firmware: "3.0.0", Devices: []device.ID{"c", "b"}})
	var ce *rollout.ConflictError
	if !errors.As(err, &ce) || ce.Rollout != r1.ID || ce.Device != "b" || !errors.Is(err, rollout.ErrConflict) {
		t.Fatalf("conflicting Create: %v, want ConflictError naming %s and b", err, r1.ID)
	}
	waitFor(t, func() bool {
		ds, _ := p.Devices(t.Context(), r1.ID, rollout.DeviceNotified)
		return len(ds) == 2
	})
	for _, op := range []struct {
		name string
		f    func(context.Context, string) (rollout.Rollout, error)
		want rollout.State
	}{{"Pause", p.Pause, rollout.StatePaused}, {"Pause", p.Pause, rollout.StatePaused},
		{"Resume", p.Resume, rollout.StateRunning}, {"Resume", p.Resume, rollout.StateRunning}} {
		if got, err := op.f(t.Context(), r1.ID); err != nil || got.State != op.want {
			t.Errorf("%s = %s, %v; want %s", op.name, got.State, err, op.want)
		}
	}
	if evs, _ := p.Events(t.Context(), r1.ID); len(evs) != 5 {
		t.Errorf("%d events, want 5 (created, running, batch, paused, resumed): %+v", len(evs), evs)
	}
	if id, used, err := p.InUse(t.Context(), "2.0.0"); err != nil || !used || id != r1.ID {
		t.Errorf("InUse(2.0.0) = %q, %t, %v; want %s", id, used, err, r1.ID)
	}
	if _, used, _ := p.InUse(t.Context(), "3.0.0"); used {
		t.Errorf("InUse(3.0.0) = true, want false")
	}
	if _, err := p.Abort(t.Context(), r1.ID, false); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { _, used, _ := p.InUse(t.Context(), "2.0.0"); return !used })
	if _, err := p.Create(t.Context(), rollout.Spec{Firmware: "3.0.0", Devices: []device.ID{"c", "b"}}); err != nil {
		t.Errorf("Create after abort: %v", err)
	}
	if _, err := p.Get(t.Context(), "r99"); !errors.Is(err, rollout.ErrNotFound) {
		t.Errorf("Get(r99) = %v, want ErrNotFound", err)
	}
}

func TestAbortAndRollback(t *testing.T) {
	fs := newFakeShadows(nil)
	for _, id := range ids("d", 6) {
		fs.reports[id] = firmware.Report{Version: "1.0.0", State: firmware.StateUpdated}
	}
	fs.reports["d-0005"] = firmware.Report{Version: "2.0.0", State: firmware.StateUpdated}
	// d-0000 and d-0001 install; the others hang.
	fs.behave = func(id device.ID, cmd map[string]any) (firmware.Report, bool) {
		if id == "d-0000" || id == "d-0001" {
			return installs(id, cmd)
		}
		return firmware.Report{Version: "1.0.0", State: firmware.StateDownloading, Job: cmd["job"].(string)}, true
	}
	p := mustOpen(t, "", fs, newFakeFirmware("1.0.0", "2.0.0"), nil)
	r, err := p.Create(t.Context(), rollout.Spec{Firmware: "2.0.0", Devices: ids("d", 6),
		Policy: rollout.Policy{BatchSize: 4, SuccessThreshold: 50}})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		st, _ := p.Get(t.Context(), r.ID)
		return st.Counts[rollout.DeviceSucceeded] == 2 && st.Counts[rollout.DeviceDownloading] == 3 && st.Counts[rollout.DeviceAlreadyInstalled] == 1
	})
	for range 2 {
		if got, err := p.Abort(t.Context(), r.ID, true); err != nil || got.State != rollout.StateAborted {
			t.Fatalf("Abort = %s, %v; want aborted", got.State, err)
		}
	}
	waitFor(t, func() bool {
		st, _ := p.Get(t.Context(), r.ID)
		return st.Counts[rollout.DeviceRolledBack] == 2 && st.Counts[rollout.DeviceCanceled] == 3
	})
	for _, tc := range []struct {
		id      device.ID
		version any // nil = desired firmware cleared
	}{{"d-0000", "1.0.0"}, {"d-0001", "1.0.0"}, {"d-0002", nil}, {"d-0003", nil}, {"d-0004", nil}} {
		cmd := fs.desiredOf(tc.id)
		var got any
		if cmd != nil {
			got = cmd["version"]
		}
		if got != tc.version {
			t.Errorf("desired version of %s = %v, want %v", tc.id, got, tc.version)
		}
	}
	if got := fs.desiredOf("d-0000")["job"]; got != "r1/rollback" {
		t.Errorf("rollback job = %v, want r1/rollback", got)
	}
	if _, err := p.Resume(t.Context(), r.ID); !errors.Is(err, rollout.ErrState) {
		t.Errorf("Resume after abort: %v, want ErrState", err)
	}
	// Both started batches end up finished (after the cancels), once each.
	var evs []rollout.Event
	waitFor(t, func() bool {
		evs, _ = p.Events(t.Context(), r.ID)
		return len(eventsOf(evs, rollout.EventBatchFinished)) == 2
	})
	if got := len(eventsOf(evs, rollout.EventRollback)); got != 2 {
		t.Errorf("%d rollback events, want 2", got)
	}
	fin := eventsOf(evs, rollout.EventBatchFinished)
	if fin[0].Batch != 0 || fin[1].Batch != 1 || fin[1].Reason != "0/2 succeeded, 0 failed, 1 already installed, 1 canceled" {
		t.Errorf("batch_finished events %+v, want batch 0 then batch 1 with 1 already installed, 1 canceled", fin)
	}
}

func eventsOf(evs []rollout.Event, kind string) []rollout.Event {
	var out []rollout.Event
	for _, ev := range evs {
		if ev.Kind == kind {
			out = append(out, ev)
		}
	}
	return out
}

// TestBatchFinishedOnceAcrossRestart finishes batch 0, restarts the
// planner and finishes batch 1: each batch_finished event is recorded once.
func TestBatchFinishedOnceAcrossRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rollout.db")
	fw := newFakeFirmware("2.0.0")
	fs := newFakeShadows(silent)
	p1 := mustOpen(t, path, fs, fw, nil)
	targets := ids("d", 4)
	r, err := p1.Create(t.Context(), rollout.Spec{Firmware: "2.0.0", Devices: targets, Policy: rollout.Policy{BatchSize: 2}})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		ds, _ := p1.Devices(t.Context(), r.ID, rollout.DeviceNotified)
		return len(ds) == 2
	})
	for _, id := range targets[:2] {
		fs.report(id, firmware.Report{Version: "2.0.0", State: firmware.StateUpdated, Job: "r1/1"})
	}
	waitFor(t, func() bool {
		evs, _ := p1.Events(t.Context(), r.ID)
		ds, _ := p1.Devices(t.Context(), r.ID, rollout.DeviceNotified)
		return len(eventsOf(evs, rollout.EventBatchFinished)) == 1 && len(ds) == 2 // batch 1 notified
	})
	if err := stop(p1); err != nil {
		t.Fatal(err)
	}
	// While down, batch 1 installs.
	fs.mu.Lock()
	fs.notify = nil
	for _, id := range targets[2:] {
		fs.reports[id] = firmware.Report{Version: "2.0.0", State: firmware.StateUpdated, Job: "r1/1"}
	}
	fs.mu.Unlock()
	p2 := mustOpen(t, path, fs, fw, nil)
	st := waitState(t, p2, r.ID, rollout.StateSucceeded)
	for _, b := range st.Rollout.Batches {
		if !b.Done {
			t.Errorf("batch %+v not done, want done", b)
		}
	}
	evs, err := p2.Events(t.Context(), r.ID)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, ev := range eventsOf(evs, rollout.EventBatchFinished) {
		got = append(got, fmt.Sprintf("%d:%s", ev.Batch, ev.Reason))
	}
	if want := "0:2/2 succeeded, 0 failed 1:2/2 succeeded, 0 failed"; strings.Join(got, " ") != want {
		t.Errorf("batch_finished events %q, want %q", strings.Join(got, " "), want)
	}
}

// TestRestartMidBatch closes the planner while a batch is in flight and
// reopens it on the same file: the rollout completes and every device is
// notified exactly once per attempt.
func TestRestartMidBatch(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rollout.db")
	fw := newFakeFirmware("2.0.0")
	fs := newFakeShadows(silent) // devices report only when told below
	p1 := mustOpen(t, path, fs, fw, nil)
	targets := ids("d", 30)
	r, err := p1.Create(t.Context(), rollout.Spec{Firmware: "2.0.0", Devices: targets, Policy: rollout.Policy{BatchSize: 10}})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		ds, _ := p1.Devices(t.Context(), r.ID, rollout.DeviceNotified)
		return len(ds) == 10
	})
	for _, id := range targets[:5] {
		fs.report(id, firmware.Report{Version: "2.0.0", State: firmware.StateUpdated, Job: "r1/1"})
	}
	waitFor(t, func() bool {
		ds, _ := p1.Devices(t.Context(), r.ID, rollout.DeviceSucceeded)
		return len(ds) == 5
	})
	if err := stop(p1); err != nil {
		t.Fatal(err)
	}
	if _, err := p1.Get(t.Context(), r.ID); !errors.Is(err, rollout.ErrClosed) {
		t.Errorf("Get after Close: %v, want ErrClosed", err)
	}
	// While down, the rest of batch 0 finishes.
	fs.mu.Lock()
	fs.notify = nil
	for _, id := range targets[5:10] {
		fs.reports[id] = firmware.Report{Version: "2.0.0", State: firmware.StateUpdated, Job: "r1/1"}
	}
	fs.behave = installs
	fs.mu.Unlock()

	p2 := mustOpen(t, path, fs, fw, nil)
	st := waitState(t, p2, r.ID, rollout.StateSucceeded)
	if st.Counts[rollout.DeviceSucceeded] != 30 {
		t.Errorf("counts %v, want 30 succeeded", st.Counts)
	}
	writes := fs.writeCounts()
	for _, id := range targets {
		if n := writes[string(id)+" r1/1"]; n != 1 {
			t.Errorf("%s notified %d times for r1/1, want 1", id, n)
		}
	}
	if len(writes) != 30 {
		t.Errorf("%d distinct shadow writes, want 30", len(writes))
	}
}

// TestUndeliveredIntentReissued stands for a crash between recording a
// notification and writing the shadow: the shadow write fails, the planner
// stops, and the next planner delivers the very same command (same URL and
// job), not a new attempt.
func TestUndeliveredIntentReissued(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rollout.db")
	fw := newFakeFirmware("2.0.0")
	fs := newFakeShadows(silent)
	fs.failing["d-0001"] = true
	p1 := mustOpen(t, path, fs, fw, nil)
	r, err := p1.Create(t.Context(), rollout.Spec{Firmware: "2.0.0", Devices: ids("d", 2)})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		ds, _ := p1.Devices(t.Context(), r.ID, rollout.DeviceNotified)
		return len(ds) == 2 && fs.writeCounts()["d-0000 r1/1"] == 1
	})
	if err := stop(p1); err != nil {
		t.Fatal(err)
	}
	fs.mu.Lock()
	delete(fs.failing, "d-0001")
	fs.behave = installs
	fs.mu.Unlock()
	p2 := mustOpen(t, path, fs, fw, nil)
	waitFor(t, func() bool { return fs.writeCounts()["d-0001 r1/1"] == 1 })
	fs.report("d-0000", firmware.Report{Version: "2.0.0", State: firmware.StateUpdated, Job: "r1/1"})
	waitState(t, p2, r.ID, rollout.StateSucceeded)
	fs.mu.Lock()
	defer fs.mu.Unlock()
	for k, u := range fs.urls {
		if strings.HasPrefix(u, "CHANGED") {
			t.Errorf("%s: %s", k, u)
		}
	}
	if got := slices.Sorted(mapsKeys(fs.writes)); !slices.Equal(got, []string{"d-0000 r1/1", "d-0001 r1/1"}) {
		t.Errorf("writes %v, want one per device for r1/1", got)
	}
}

func mapsKeys(m map[string]int) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

func TestClosedPlanner(t *testing.T) {
	p := mustOpen(t, "", newFakeShadows(nil), newFakeFirmware("2.0.0"), nil)
	for range 2 {
		if err := p.Close(t.Context()); err != nil {
			t.Fatalf("Close: %v", err)
		}
	}
	p.Notify("d-0000") // must not block or panic
	if _, err := p.Create(t.Context(), rollout.Spec{Firmware: "2.0.0", Devices: ids("d", 1)}); !errors.Is(err, rollout.ErrClosed) {
		t.Errorf("Create after Close: %v, want ErrClosed", err)
	}
	if _, _, err := p.InUse(t.Context(), "2.0.0"); !errors.Is(err, rollout.ErrClosed) {
		t.Errorf("InUse after Close: %v, want ErrClosed", err)
	}
}

func TestRollbackRefusedWhileDevicesMovedOn(t *testing.T) {
	fs := newFakeShadows(installs)
	for _, id := range []device.ID{"a", "b"} {
		fs.reports[id] = firmware.Report{Version: "1.0.0", State: firmware.StateUpdated}
	}
	p := mustOpen(t, "", fs, newFakeFirmware("1.0.0", "2.0.0", "3.0.0"), nil)
	r1, err := p.Create(t.Context(), rollout.Spec{Firmware: "2.0.0", Devices: []device.ID{"a", "b"}})
	if err != nil {
		t.Fatal(err)
	}
	waitState(t, p, r1.ID, rollout.StateSucceeded)
	fs.mu.Lock()
	fs.behave = silent
	fs.mu.Unlock()
	r2, err := p.Create(t.Context(), rollout.Spec{Firmware: "3.0.0", Devices: []device.ID{"b"}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = p.Rollback(t.Context(), r1.ID)
	var ce *rollout.ConflictError
	if !errors.As(err, &ce) || ce.Rollout != r2.ID || ce.Device != "b" {
		t.Fatalf("Rollback = %v, want a conflict with %s on b", err, r2.ID)
	}
	if _, err := p.Abort(t.Context(), r2.ID, false); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Rollback(t.Context(), r1.ID); err != nil {
		t.Fatalf("Rollback after abort: %v", err)
	}
	waitFor(t, func() bool {
		ds, _ := p.Devices(t.Context(), r1.ID, rollout.DeviceRolledBack)
		return len(ds) == 2
	})
	if got := fs.desiredOf("a")["version"]; got != "1.0.0" {
		t.Errorf("desired version of a = %v, want 1.0.0", got)
	}
	if id, used, _ := p.InUse(t.Context(), "2.0.0"); used {
		t.Errorf("InUse(2.0.0) = %s, want unused after rollback", id)
	}
}

func TestAddDevicesToDynamicRollout(t *testing.T) {
	fs := newFakeShadows(silent)
	path := filepath.Join(t.TempDir(), "rollout.db")
	p := mustOpen(t, path, fs, newFakeFirmware("2.0.0"), nil)
	static, err := p.Create(t.Context(), rollout.Spec{Firmware: "2.0.0", Devices: []device.ID{"s"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.AddDevices(t.Context(), static.ID, []device.ID{"x"}); !errors.Is(err, rollout.ErrState) {
		t.Errorf("AddDevices to a static rollout: %v, want ErrState", err)
	}
	r, err := p.Create(t.Context(), rollout.Spec{Firmware: "2.0.0", Devices: []device.ID{"a", "b"},
		Policy: rollout.Policy{Dynamic: true, BatchSize: 2}})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		add     []device.ID
		wantErr error
		targets int
	}{
		{"new devices form a batch", []device.ID{"c", "a", "d", "c"}, nil, 4},
		{"known devices only", []device.ID{"a", "d"}, nil, 4},
		{"odd count", []device.ID{"e", "f", "g"}, nil, 7},
		{"invalid id", []device.ID{"no/slash"}, rollout.ErrInvalid, 7},
		{"device of another rollout", []device.ID{"h", "s"}, rollout.ErrConflict, 7},
	}
	for _, tc := range tests {
		got, err := p.AddDevices(t.Context(), r.ID, tc.add)
		if !errors.Is(err, tc.wantErr) {
			t.Errorf("%s: AddDevices error %v, want %v", tc.name, err, tc.wantErr)
		}
		if st, _ := p.Get(t.Context(), r.ID); st.Targets != tc.targets {
			t.Errorf("%s: %d targets, want %d", tc.name, st.Targets, tc.targets)
		} else if err == nil && got.Targets != tc.targets {
			t.Errorf("%s: AddDevices returned %d targets, want %d", tc.name, got.Targets, tc.targets)
		}
	}
	st, _ := p.Get(t.Context(), r.ID)
	var sizes []int
	for _, b := range st.Batches {
		sizes = append(sizes, b.Size)
	}
	if !slices.Equal(sizes, []int{2, 2, 2, 1}) {
		t.Errorf("batch sizes %v, want [2 2 2 1]", sizes)
	}
	// The devices are persisted: all 7 are listed in order after a restart.
	if err := stop(p); err != nil {
		t.Fatal(err)
	}
	p = mustOpen(t, path, fs, newFakeFirmware("2.0.0"), nil)
	ds, err := p.Devices(t.Context(), r.ID)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, d := range ds {
		got = append(got, string(d.Device))
	}
	if strings.Join(got, ",") != "a,b,c,d,e,f,g" {
		t.Errorf("devices %v, want a..g", got)
	}
}

// barrierShadows holds every SetDesiredFirmware until want of them run at
// once (or its deadline passes), and records the most it saw at once.
type barrierShadows struct {
	*fakeShadows
	want     int
	mu       sync.Mutex // guards running, most
	running  int
	most     int
	met      bool          // together is closed
	together chan struct{} // closed the first time want calls run at once
	deadline <-chan time.Time
}

func (b *barrierShadows) SetDesiredFirmware(ctx context.Context, id device.ID, cmd map[string]any, token string) error {
	b.mu.Lock()
	b.running++
	b.most = max(b.most, b.running)
	if b.running == b.want && !b.met {
		// Later groups can reach want again; the channel closes only once.
		b.met = true
		close(b.together)
	}
	b.mu.Unlock()
	select {
	case <-b.together:
	case <-b.deadline:
	}
	b.mu.Lock()
	b.running--
	b.mu.Unlock()
	return b.fakeShadows.SetDesiredFirmware(ctx, id, cmd, token)
}

// TestPlannerWritesConcurrently: a pass writes its batch's commands
// WriteConcurrency at a time, so that the shadow engine can group their
// commits instead of paying one fsync per device.
func TestPlannerWritesConcurrently(t *testing.T) {
	fs := newFakeShadows(installs)
	bs := &barrierShadows{fakeShadows: fs, want: 4, together: make(chan struct{}), deadline: time.After(10 * time.Second)}
	fw := newFakeFirmware("2.0.0")
	cfg := rollout.Config{Store: openStore(t, ""), Shadows: bs, Firmware: fw, Tick: 5 * time.Millisecond, WriteConcurrency: 4}
	p, err := rollout.Open(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	fs.mu.Lock()
	fs.notify = p.Notify
	fs.mu.Unlock()
	t.Cleanup(func() {
		if err := p.Close(context.Background()); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	r, err := p.Create(t.Context(), rollout.Spec{Firmware: "2.0.0", Devices: ids("c", 8)})
	if err != nil {
		t.Fatal(err)
	}
	st := waitState(t, p, r.ID, rollout.StateSucceeded)
	bs.mu.Lock()
	most := bs.most
	bs.mu.Unlock()
	if most != 4 {
		t.Errorf("got at most %d concurrent shadow writes, want 4 (WriteConcurrency)", most)
	}
	if st.Counts[rollout.DeviceSucceeded] != 8 {
		t.Errorf("got counts %v, want 8 succeeded", st.Counts)
	}
}

// TestPauseBetweenBatchesAndWindow drives the real planner through the
// schedule: nothing is notified while the maintenance window is closed
// (Status.Waiting says why), the first batch goes when it opens, and with
// PauseBetweenBatches each finished batch pauses the rollout until Resume.
func TestPauseBetweenBatchesAndWindow(t *testing.T) {
	fs := newFakeShadows(installs)
	clk := &clock{now: time.Date(2026, 11, 23, 1, 0, 0, 0, time.UTC)}
	p := mustOpen(t, "", fs, newFakeFirmware("2.0.0"), func(c *rollout.Config) { c.Now = clk.Now })
	r, err := p.Create(t.Context(), rollout.Spec{Firmware: "2.0.0", Devices: ids("w", 4),
		Policy: rollout.Policy{BatchSize: 2, PauseBetweenBatches: true, Window: "02:00-04:00"}})
	if err != nil {
		t.Fatal(err)
	}
	st := waitState(t, p, r.ID, rollout.StateRunning)
	if st.Waiting != "outside the maintenance window 02:00-04:00 UTC" {
		t.Errorf("Waiting = %q, want the closed window", st.Waiting)
	}
	// The pass that moved it to running would have started the first batch
	// in the same step had the window been open.
	if st.Started != 0 || len(fs.writeCounts()) != 0 {
		t.Fatalf("closed window: %d batches started, %d devices written; want none", st.Started, len(fs.writeCounts()))
	}

	clk.Add(time.Hour) // 02:00: the window opens
	st = waitState(t, p, r.ID, rollout.StatePaused)
	if st.Waiting != "" || st.Started != 1 || st.Counts[rollout.DeviceSucceeded] != 2 ||
		st.Reason != "batch 1 finished at 100.0% success; resume to start batch 2" {
		t.Fatalf("after batch 1: waiting %q, %d started, counts %v, reason %q; want paused after batch 1",
			st.Waiting, st.Started, st.Counts, st.Reason)
	}
	if _, err := p.Resume(t.Context(), r.ID); err != nil {
		t.Fatal(err)
	}
	st = waitState(t, p, r.ID, rollout.StateSucceeded)
	if st.Started != 2 || st.Counts[rollout.DeviceSucceeded] != 4 {
		t.Errorf("end: %d started, counts %v; want 2 batches and 4 succeeded", st.Started, st.Counts)
	}
}

// TestDevicesPage: pages of any start, limit and state filter are exactly
// the matching slice of Devices, error texts included, and their next
// positions chain them: for an active rollout (in memory) and for a
// finished one read back from the file.
func TestDevicesPage(t *testing.T) {
	fs := newFakeShadows(func(id device.ID, cmd map[string]any) (firmware.Report, bool) {
		if id[len(id)-1]%3 == 0 { // p-0000, p-0003, …: fail with their own error
			return firmware.Report{Version: "1.0.0", State: firmware.StateFailed, Error: "boom " + string(id), Job: cmd["job"].(string)}, true
		}
		return installs(id, cmd)
	})
	path := filepath.Join(t.TempDir(), "rollout.db")
	p := mustOpen(t, path, fs, newFakeFirmware("2.0.0"), nil)
	r, err := p.Create(t.Context(), rollout.Spec{Firmware: "2.0.0", Devices: ids("p", 10),
		Policy: rollout.Policy{BatchSize: 4, SuccessThreshold: 10, PauseBetweenBatches: true}})
	if err != nil {
		t.Fatal(err)
	}
	waitState(t, p, r.ID, rollout.StatePaused) // after batch 1: failed, succeeded and pending devices
	if !p.Live(r.ID) {
		t.Fatal("a paused rollout is not in memory")
	}
	checkPages(t, p, r.ID)

	if _, err := p.Abort(t.Context(), r.ID, false); err != nil {
		t.Fatal(err)
	}
	waitState(t, p, r.ID, rollout.StateAborted)
	if err := stop(p); err != nil {
		t.Fatal(err)
	}
	p = mustOpen(t, path, fs, newFakeFirmware("2.0.0"), nil)
	waitfor.Poll(t, 10*time.Second, "the aborted rollout to settle", func() bool { return !p.Live(r.ID) })
	checkPages(t, p, r.ID)

	if _, _, err := p.DevicesPage(t.Context(), r.ID, nil, -1, 10); !errors.Is(err, rollout.ErrInvalid) {
		t.Errorf("negative start: %v, want ErrInvalid", err)
	}
	if _, _, err := p.DevicesPage(t.Context(), "r99", nil, 0, 10); !errors.Is(err, rollout.ErrNotFound) {
		t.Errorf("unknown rollout: %v, want ErrNotFound", err)
	}
}

func checkPages(t *testing.T, p *rollout.Planner, id string) {
	t.Helper()
	all, err := p.Devices(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(all, func(d rollout.DeviceStatus) bool { return d.Error != "" }) {
		t.Fatalf("no device with an error to page: %v", all)
	}
	for _, start := range []int{len(all), len(all) + 5} { // past the end: an empty last page
		if page, next, err := p.DevicesPage(t.Context(), id, nil, start, 10); err != nil || len(page) != 0 || next != -1 {
			t.Errorf("page at %d of %d: %d devices, next %d, %v; want an empty last page", start, len(all), len(page), next, err)
		}
	}
	for _, states := range [][]rollout.DeviceState{nil, {rollout.DeviceFailed}, {rollout.DeviceSucceeded, rollout.DevicePending, rollout.DeviceCanceled}} {
		var want []rollout.DeviceStatus
		for _, d := range all {
			if len(states) == 0 || slices.Contains(states, d.State) {
				want = append(want, d)
			}
		}
		for _, limit := range []int{1, 3, 100} {
			var got []rollout.DeviceStatus
			pages := 0
			for start := 0; start >= 0; pages++ {
				page, next, err := p.DevicesPage(t.Context(), id, states, start, limit)
				if err != nil {
					t.Fatal(err)
				}
				if len(page) > limit || next >= 0 && next <= start || pages > 20 {
					t.Fatalf("states %v limit %d: page of %d at %d, next %d", states, limit, len(page), start, next)
				}
				got = append(got, page...)
				start = next
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("states %v limit %d: pages give\n%v\nwant\n%v", states, limit, got, want)
			}
		}
	}
}
