package rollout_test

import (
	"errors"
	"path/filepath"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/firmware"
	"github.com/umbra-iot/umbra/rollout"
)

// execEvents collects Config.OnExecution calls.
type execEvents struct {
	mu  sync.Mutex // guards ids
	ids []device.ID
}

func (e *execEvents) on(id device.ID) {
	e.mu.Lock()
	e.ids = append(e.ids, id)
	e.mu.Unlock()
}

func (e *execEvents) count(id device.ID) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := 0
	for _, x := range e.ids {
		if x == id {
			n++
		}
	}
	return n
}

// jobsRig is a planner whose devices are marked as Jobs devices.
type jobsRig struct {
	p   *rollout.Planner
	fs  *fakeShadows
	clk *clock
	ev  *execEvents
}

func newJobsRig(t *testing.T, path string, behave behaviour, jobsDevices ...device.ID) *jobsRig {
	t.Helper()
	r := &jobsRig{fs: newFakeShadows(behave), clk: &clock{now: t0}, ev: &execEvents{}}
	r.p = mustOpen(t, path, r.fs, newFakeFirmware("2.0.0"), func(c *rollout.Config) {
		c.Now = r.clk.Now
		c.OnExecution = r.ev.on
	})
	for _, id := range jobsDevices {
		if err := r.p.MarkJobs(t.Context(), id); err != nil {
			t.Fatalf("MarkJobs(%s) = %v", id, err)
		}
	}
	return r
}

// next waits until id has a pending execution with status st.
func (r *jobsRig) next(t *testing.T, id device.ID, st rollout.ExecStatus) rollout.Execution {
	t.Helper()
	var x rollout.Execution
	waitFor(t, func() bool {
		var ok bool
		var err error
		x, ok, err = r.p.NextExecution(t.Context(), id)
		if err != nil {
			t.Fatalf("NextExecution(%s) = %v", id, err)
		}
		return ok && x.Status == st
	})
	return x
}

func (r *jobsRig) update(t *testing.T, id device.ID, job string, u rollout.ExecutionUpdate) rollout.Execution {
	t.Helper()
	x, err := r.p.UpdateExecution(t.Context(), id, job, u)
	if err != nil {
		t.Fatalf("UpdateExecution(%s, %s, %+v) = %v", id, job, u, err)
	}
	return x
}

// TestJobsExecutionSucceeds: a Jobs device is notified through an
// execution only (nothing is written into its shadow), moves it with its
// own requests, and SUCCEEDED counts as updated.
func TestJobsExecutionSucceeds(t *testing.T) {
	r := newJobsRig(t, "", silent, "j1")
	ro, err := r.p.Create(t.Context(), rollout.Spec{Firmware: "2.0.0", Devices: []device.ID{"j1"}})
	if err != nil {
		t.Fatal(err)
	}
	x := r.next(t, "j1", rollout.ExecQueued)
	want := rollout.Execution{JobID: ro.ID, Device: "j1", Number: 1, Status: rollout.ExecQueued, Version: 1,
		QueuedAt: t0, UpdatedAt: t0, Firmware: "2.0.0", Job: ro.ID + "/1", URLTTL: rollout.DefaultURLTTL}
	if !reflect.DeepEqual(x, want) {
		t.Fatalf("queued execution = %+v, want %+v", x, want)
	}
	if n := r.ev.count("j1"); n != 1 {
		t.Errorf("OnExecution called %d times for the queued execution, want 1", n)
	}
	if w := r.fs.writeCounts(); len(w) != 0 {
		t.Errorf("shadow writes %v, want none for a Jobs device", w)
	}

	r.clk.Add(time.Second)
	x, ok, err := r.p.StartNextExecution(t.Context(), "j1", map[string]string{"step": "download"})
	if err != nil || !ok || x.Status != rollout.ExecInProgress || x.Version != 2 || !x.StartedAt.Equal(t0.Add(time.Second)) {
		t.Fatalf("StartNextExecution = %+v, %t, %v; want IN_PROGRESS version 2 started now", x, ok, err)
	}
	// Starting again returns it unchanged.
	if again, ok, err := r.p.StartNextExecution(t.Context(), "j1", map[string]string{"ignored": "x"}); err != nil || !ok || !reflect.DeepEqual(again, x) {
		t.Errorf("StartNextExecution of an IN_PROGRESS execution = %+v, %t, %v; want it unchanged %+v", again, ok, err, x)
	}
	x = r.update(t, "j1", ro.ID, rollout.ExecutionUpdate{Status: rollout.ExecSucceeded, ExpectedVersion: 2, CheckVersion: true})
	if x.Status != rollout.ExecSucceeded || x.Version != 3 || x.Details["step"] != "download" {
		t.Errorf("after SUCCEEDED: %+v, want version 3 with the details kept", x)
	}
	st := waitState(t, r.p, ro.ID, rollout.StateSucceeded)
	if st.Counts[rollout.DeviceSucceeded] != 1 {
		t.Errorf("counts %v, want 1 succeeded", st.Counts)
	}
	if _, ok, _ := r.p.NextExecution(t.Context(), "j1"); ok {
		t.Error("NextExecution after success found one, want none")
	}
	if n := r.ev.count("j1"); n != 2 {
		t.Errorf("OnExecution called %d times, want 2 (queued, ended)", n)
	}
	if got, err := r.p.DescribeExecution(t.Context(), "j1", ro.ID, 0); err != nil || !reflect.DeepEqual(got, x) {
		t.Errorf("DescribeExecution = %+v, %v; want %+v", got, err, x)
	}
	if w := r.fs.writeCounts(); len(w) != 0 {
		t.Errorf("shadow writes %v, want none", w)
	}
}

// TestJobsFailedIsRetriedRejectedIsNot: FAILED feeds the retries with a
// new execution number; REJECTED is final; earlier executions keep their
// final state.
func TestJobsFailedIsRetriedRejectedIsNot(t *testing.T) {
	r := newJobsRig(t, "", silent, "f1", "x1")
	ro, err := r.p.Create(t.Context(), rollout.Spec{Firmware: "2.0.0", Devices: []device.ID{"f1", "x1"},
		Policy: rollout.Policy{Retries: 1, RetryBackoff: time.Minute}})
	if err != nil {
		t.Fatal(err)
	}
	r.next(t, "f1", rollout.ExecQueued)
	r.next(t, "x1", rollout.ExecQueued)
	r.update(t, "f1", ro.ID, rollout.ExecutionUpdate{Status: rollout.ExecFailed, Details: map[string]string{"reason": "download dropped"}})
	r.update(t, "x1", ro.ID, rollout.ExecutionUpdate{Status: rollout.ExecRejected, Details: map[string]string{"reason": "wrong board"}})
	r.clk.Add(time.Minute)
	x2 := r.next(t, "f1", rollout.ExecQueued)
	if x2.Number != 2 || x2.Version != 1 || x2.Details != nil || x2.Job != ro.ID+"/2" {
		t.Errorf("retry execution = %+v, want number 2, version 1, no details, job %s/2", x2, ro.ID)
	}
	first, err := r.p.DescribeExecution(t.Context(), "f1", ro.ID, 1)
	if err != nil || first.Status != rollout.ExecFailed || first.Version != 2 {
		t.Errorf("execution 1 = %+v, %v; want FAILED at version 2", first, err)
	}
	_, err = r.p.UpdateExecution(t.Context(), "f1", ro.ID, rollout.ExecutionUpdate{Status: rollout.ExecInProgress, Number: 1})
	var ee *rollout.ExecutionError
	if !errors.As(err, &ee) || !errors.Is(err, rollout.ErrTerminal) || ee.State.Status != rollout.ExecFailed {
		t.Errorf("update of execution 1 = %v, want ErrTerminal with state FAILED", err)
	}
	if _, err := r.p.DescribeExecution(t.Context(), "f1", ro.ID, 3); !errors.Is(err, rollout.ErrNotFound) {
		t.Errorf("execution 3 = %v, want ErrNotFound", err)
	}
	r.update(t, "f1", ro.ID, rollout.ExecutionUpdate{Status: rollout.ExecSucceeded})
	st := waitState(t, r.p, ro.ID, rollout.StateFailed)
	if st.Counts[rollout.DeviceSucceeded] != 1 || st.Counts[rollout.DeviceFailed] != 1 {
		t.Errorf("counts %v, want 1 succeeded and 1 failed", st.Counts)
	}
	x, err := r.p.DescribeExecution(t.Context(), "x1", ro.ID, 0)
	if err != nil || x.Status != rollout.ExecRejected || x.Number != 1 {
		t.Errorf("x1's execution = %+v, %v; want REJECTED, never retried", x, err)
	}
	ds, _ := r.p.Devices(t.Context(), ro.ID)
	errs := map[device.ID]string{}
	for _, d := range ds {
		errs[d.Device] = d.Error
	}
	if errs["x1"] != "rejected: reason=wrong board" || errs["f1"] != "failed: reason=download dropped" {
		t.Errorf("device errors %v, want the devices' status details", errs)
	}
	evs, _ := r.p.Events(t.Context(), ro.ID)
	found := false
	for _, e := range evs {
		found = found || e.Kind == rollout.EventDeviceFailed && e.Device == "x1" && e.Reason == "failed: rejected: reason=wrong board"
	}
	if !found {
		t.Errorf("events %+v, want x1's device_failed with its details", evs)
	}
}

// TestJobsTimeoutAndAbort: a silent Jobs device times out (TIMED_OUT), a
// queued one is canceled by an abort (CANCELED) without a shadow write.
func TestJobsTimeoutAndAbort(t *testing.T) {
	r := newJobsRig(t, "", silent, "t1", "t2")
	ro, err := r.p.Create(t.Context(), rollout.Spec{Firmware: "2.0.0", Devices: []device.ID{"t1", "t2"},
		Policy: rollout.Policy{DeviceTimeout: 10 * time.Minute}})
	if err != nil {
		t.Fatal(err)
	}
	r.next(t, "t1", rollout.ExecQueued)
	r.next(t, "t2", rollout.ExecQueued)
	r.clk.Add(9 * time.Minute)
	r.update(t, "t2", ro.ID, rollout.ExecutionUpdate{Status: rollout.ExecInProgress}) // restarts its timeout
	r.clk.Add(time.Minute)
	waitFor(t, func() bool {
		x, err := r.p.DescribeExecution(t.Context(), "t1", ro.ID, 0)
		return err == nil && x.Status == rollout.ExecTimedOut
	})
	if x, ok, _ := r.p.NextExecution(t.Context(), "t2"); !ok || x.Status != rollout.ExecInProgress {
		t.Fatalf("t2 = %+v, %t; want still IN_PROGRESS (its update restarted the timeout)", x, ok)
	}
	if _, err := r.p.Abort(t.Context(), ro.ID, false); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		x, err := r.p.DescribeExecution(t.Context(), "t2", ro.ID, 0)
		return err == nil && x.Status == rollout.ExecCanceled
	})
	_, err = r.p.UpdateExecution(t.Context(), "t2", ro.ID, rollout.ExecutionUpdate{Status: rollout.ExecSucceeded})
	if !errors.Is(err, rollout.ErrTerminal) {
		t.Errorf("update of a canceled execution = %v, want ErrTerminal", err)
	}
	if w := r.fs.writeCounts(); len(w) != 0 {
		t.Errorf("shadow writes %v, want none (nothing to clear for a Jobs device)", w)
	}
	if n := r.ev.count("t1") + r.ev.count("t2"); n != 4 {
		t.Errorf("OnExecution called %d times, want 4 (two queued, two ended)", n)
	}
}

// TestJobsRefusedUpdatesChangeNothing: a refused update leaves the
// execution, the device record and the rollout's error and event log as
// they were.
func TestJobsRefusedUpdatesChangeNothing(t *testing.T) {
	r := newJobsRig(t, "", silent, "n1")
	ro, err := r.p.Create(t.Context(), rollout.Spec{Firmware: "2.0.0", Devices: []device.ID{"n1"}})
	if err != nil {
		t.Fatal(err)
	}
	r.next(t, "n1", rollout.ExecQueued)
	r.update(t, "n1", ro.ID, rollout.ExecutionUpdate{Status: rollout.ExecInProgress, Details: map[string]string{"pct": "10"}})
	snapshot := func() (rollout.Execution, []rollout.DeviceStatus, int) {
		x, err := r.p.DescribeExecution(t.Context(), "n1", ro.ID, 0)
		if err != nil {
			t.Fatal(err)
		}
		ds, _ := r.p.Devices(t.Context(), ro.ID)
		evs, _ := r.p.Events(t.Context(), ro.ID)
		return x, ds, len(evs)
	}
	x0, d0, e0 := snapshot()
	tests := []struct {
		name string
		job  string
		u    rollout.ExecutionUpdate
		want error
	}{
		{"version mismatch", ro.ID, rollout.ExecutionUpdate{Status: rollout.ExecSucceeded, ExpectedVersion: 1, CheckVersion: true}, rollout.ErrVersionMismatch},
		{"bad status", ro.ID, rollout.ExecutionUpdate{Status: rollout.ExecCanceled}, rollout.ErrInvalid},
		{"bad details", ro.ID, rollout.ExecutionUpdate{Status: rollout.ExecInProgress, Details: map[string]string{"k": "a\nb"}}, rollout.ErrInvalid},
		{"unknown job", "r99", rollout.ExecutionUpdate{Status: rollout.ExecSucceeded}, rollout.ErrNotFound},
		{"unknown execution number", ro.ID, rollout.ExecutionUpdate{Status: rollout.ExecSucceeded, Number: 7}, rollout.ErrNotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := r.p.UpdateExecution(t.Context(), "n1", tc.job, tc.u); !errors.Is(err, tc.want) {
				t.Fatalf("UpdateExecution = %v, want %v", err, tc.want)
			}
			x, ds, e := snapshot()
			if !reflect.DeepEqual(x, x0) || !reflect.DeepEqual(ds, d0) || e != e0 {
				t.Errorf("after a refused update: %+v %+v %d events, want %+v %+v %d", x, ds, e, x0, d0, e0)
			}
		})
	}
	if _, err := r.p.UpdateExecution(t.Context(), "other", ro.ID, rollout.ExecutionUpdate{Status: rollout.ExecSucceeded}); !errors.Is(err, rollout.ErrNotFound) {
		t.Errorf("update by a device not in the job = %v, want ErrNotFound", err)
	}
}

// TestJobsDeviceIgnoresEchoedDelta: an AWS app that echoes every delta into
// reported cannot fool the planner. A device notified through its shadow
// is converted when it starts using Jobs: its echo (the target version
// without a state, or even "updated") no longer counts, only its Jobs
// update does; and a marked device is never "already installed" because
// of an old echo.
func TestJobsDeviceIgnoresEchoedDelta(t *testing.T) {
	echo := func(id device.ID, cmd map[string]any) (firmware.Report, bool) {
		job, _ := cmd["job"].(string)
		return firmware.Report{Version: cmd["version"].(string), Job: job}, true // no state: an echo
	}
	r := newJobsRig(t, "", echo)
	ro, err := r.p.Create(t.Context(), rollout.Spec{Firmware: "2.0.0", Devices: []device.ID{"e1"},
		Policy: rollout.Policy{Retries: 1, RetryBackoff: time.Minute}})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return r.fs.desiredOf("e1") != nil }) // notified through its shadow
	if err := r.p.MarkJobs(t.Context(), "e1"); err != nil {
		t.Fatal(err)
	}
	x, err := r.p.DescribeExecution(t.Context(), "e1", rollout.NextJob, 0)
	if err != nil || x.Status != rollout.ExecQueued || x.Number != 1 {
		t.Fatalf("converted execution = %+v, %v; want QUEUED execution 1", x, err)
	}
	// Even a report of the target version "updated" is ignored now.
	r.fs.report("e1", firmware.Report{Version: "2.0.0", State: firmware.StateUpdated, Job: ro.ID + "/1"})
	// A barrier: the pass that notifies a rollout created after the report
	// has read the report.
	if _, err := r.p.Create(t.Context(), rollout.Spec{Firmware: "2.0.0", Devices: []device.ID{"barrier"}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return r.fs.desiredOf("barrier") != nil })
	if ds, _ := r.p.Devices(t.Context(), ro.ID); ds[0].State != rollout.DeviceNotified {
		t.Fatalf("device %s after an echoed report, want notified", ds[0].State)
	}
	// It fails; the retry goes through Jobs only, although its reported
	// firmware shows the target version.
	r.update(t, "e1", ro.ID, rollout.ExecutionUpdate{Status: rollout.ExecFailed})
	writes := r.fs.writeCounts()
	r.clk.Add(time.Minute)
	x2 := r.next(t, "e1", rollout.ExecQueued)
	if x2.Number != 2 {
		t.Errorf("retry = %+v, want execution 2 (not already installed)", x2)
	}
	if w := r.fs.writeCounts(); !reflect.DeepEqual(w, writes) {
		t.Errorf("shadow writes %v after the retry, want %v (no command for a Jobs device)", w, writes)
	}
	// An abort clears the command of the first attempt from its shadow.
	if _, err := r.p.Abort(t.Context(), ro.ID, false); err != nil {
		t.Fatal(err)
	}
	waitState(t, r.p, ro.ID, rollout.StateAborted)
	waitFor(t, func() bool {
		x, err := r.p.DescribeExecution(t.Context(), "e1", ro.ID, 0)
		return err == nil && x.Status == rollout.ExecCanceled
	})
}

// TestJobsMixedRollout: one rollout holds a Jobs device and a delta
// device; each is driven through its own channel.
func TestJobsMixedRollout(t *testing.T) {
	r := newJobsRig(t, "", installs, "jobs-1")
	ro, err := r.p.Create(t.Context(), rollout.Spec{Firmware: "2.0.0", Devices: []device.ID{"delta-1", "jobs-1"}})
	if err != nil {
		t.Fatal(err)
	}
	r.next(t, "jobs-1", rollout.ExecQueued)
	waitFor(t, func() bool {
		ds, _ := r.p.Devices(t.Context(), ro.ID, rollout.DeviceSucceeded)
		return len(ds) == 1
	})
	r.update(t, "jobs-1", ro.ID, rollout.ExecutionUpdate{Status: rollout.ExecSucceeded})
	waitState(t, r.p, ro.ID, rollout.StateSucceeded)
	w := r.fs.writeCounts()
	if w["delta-1 "+ro.ID+"/1"] != 1 || len(w) != 1 {
		t.Errorf("shadow writes %v, want one command, for delta-1 only", w)
	}
	if _, err := r.p.DescribeExecution(t.Context(), "delta-1", ro.ID, 0); !errors.Is(err, rollout.ErrNotFound) {
		t.Errorf("execution of the delta device after it finished = %v, want ErrNotFound", err)
	}
}

// TestJobsSurviveRestart: executions, the Jobs mark and the version live
// in rollout.db; after a restart the same execution is shown and updated,
// and a settled rollout's executions are still described (final).
func TestJobsSurviveRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rollout.db")
	fs, fw, clk := newFakeShadows(silent), newFakeFirmware("2.0.0"), &clock{now: t0}
	open := func() *rollout.Planner {
		return mustOpen(t, path, fs, fw, func(c *rollout.Config) { c.Now = clk.Now })
	}
	p := open()
	if err := p.MarkJobs(t.Context(), "s1"); err != nil {
		t.Fatal(err)
	}
	ro, err := p.Create(t.Context(), rollout.Spec{Firmware: "2.0.0", Devices: []device.ID{"s1", "s2"}})
	if err != nil {
		t.Fatal(err)
	}
	var x rollout.Execution
	waitFor(t, func() bool {
		var ok bool
		x, ok, _ = p.NextExecution(t.Context(), "s1")
		return ok
	})
	x, _, err = p.StartNextExecution(t.Context(), "s1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := stop(p); err != nil {
		t.Fatal(err)
	}

	p = open()
	got, ok, err := p.NextExecution(t.Context(), "s1")
	if err != nil || !ok || !reflect.DeepEqual(got, x) {
		t.Fatalf("after a restart: %+v, %t, %v; want %+v", got, ok, err, x)
	}
	if _, err := p.UpdateExecution(t.Context(), "s1", ro.ID, rollout.ExecutionUpdate{Status: rollout.ExecSucceeded, ExpectedVersion: 2, CheckVersion: true}); err != nil {
		t.Fatal(err)
	}
	fs.report("s2", firmware.Report{Version: "2.0.0", State: firmware.StateUpdated, Job: ro.ID + "/1"})
	waitState(t, p, ro.ID, rollout.StateSucceeded)
	waitFor(t, func() bool {
		rs, _ := p.List(t.Context())
		return len(rs) == 1 && rs[0].Settled
	})
	got, err = p.DescribeExecution(t.Context(), "s1", ro.ID, 0)
	if err != nil || got.Status != rollout.ExecSucceeded || got.Version != 3 {
		t.Errorf("execution of a settled rollout = %+v, %v; want SUCCEEDED at version 3", got, err)
	}
	if _, err := p.UpdateExecution(t.Context(), "s1", ro.ID, rollout.ExecutionUpdate{Status: rollout.ExecInProgress}); !errors.Is(err, rollout.ErrTerminal) {
		t.Errorf("update of a settled rollout's execution = %v, want ErrTerminal", err)
	}
}
