package rollout_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/firmware"
	"github.com/umbra-iot/umbra/rollout"
)

var t0 = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)

func at(d time.Duration) int64 { return t0.Add(d).UnixNano() }

func TestPlanBatches(t *testing.T) {
	tests := []struct {
		name string
		n    int
		p    rollout.Policy
		want []int
	}{
		{"one batch by default", 5, rollout.Policy{}, []int{5}},
		{"fixed size", 10, rollout.Policy{BatchSize: 4}, []int{4, 4, 2}},
		{"percent rounds up", 10, rollout.Policy{BatchPercent: 25}, []int{3, 3, 3, 1}},
		{"canary first", 10, rollout.Policy{FirstBatch: 1, BatchSize: 3}, []int{1, 3, 3, 3}},
		{"ramp doubles", 20, rollout.Policy{BatchSize: 2, Ramp: 2}, []int{2, 4, 8, 6}},
		{"ramp capped", 20, rollout.Policy{BatchSize: 2, Ramp: 2, MaxBatchSize: 5}, []int{2, 4, 5, 5, 4}},
		{"canary larger than fleet", 2, rollout.Policy{FirstBatch: 5}, []int{2}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got []int
			start := 0
			for _, b := range rollout.PlanBatches(tc.n, tc.p) {
				if b.Start != start {
					t.Fatalf("batch start %d, want %d", b.Start, start)
				}
				start += b.Size
				got = append(got, b.Size)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("PlanBatches(%d) sizes = %v, want %v", tc.n, got, tc.want)
			}
		})
	}
}

// testRollout returns a running rollout "r1" of n devices in batches of
// size with p's policy (defaults applied as Create does).
func testRollout(n int, p rollout.Policy, batches ...int) *rollout.Rollout {
	if p.SuccessThreshold == 0 {
		p.SuccessThreshold = 100
	}
	if p.OnFailure == "" {
		p.OnFailure = rollout.OnFailurePause
	}
	if p.DeviceTimeout == 0 {
		p.DeviceTimeout = 30 * time.Minute
	}
	if p.RetryBackoff == 0 {
		p.RetryBackoff = 30 * time.Second
	}
	r := &rollout.Rollout{ID: "r1", Firmware: "2.0.0", State: rollout.StateRunning, Policy: p, Targets: n,
		Versions: []string{"1.0.0"}}
	start := 0
	for _, b := range batches {
		r.Batches = append(r.Batches, rollout.Batch{Start: start, Size: b})
		start += b
	}
	return r
}

// waitingRollout is a running rollout of 2 devices whose 13:00-15:00
// window was recorded closed.
func waitingRollout() *rollout.Rollout {
	r := started(testRollout(2, rollout.Policy{Window: "13:00-15:00"}, 2))
	r.Waiting = "outside the maintenance window 13:00-15:00 UTC"
	return r
}

// started marks r's first batch started.
func started(r *rollout.Rollout) *rollout.Rollout {
	r.Started = 1
	return r
}

func devs(states ...rollout.DeviceState) []rollout.Device {
	out := make([]rollout.Device, len(states))
	for i, s := range states {
		out[i] = rollout.Device{State: s, From: 1}
		if s != rollout.DevicePending {
			out[i].Attempt = 1
			out[i].At = at(0)
		}
	}
	return out
}

const (
	P  = rollout.DevicePending
	N  = rollout.DeviceNotified
	D  = rollout.DeviceDownloading
	S  = rollout.DeviceSucceeded
	F  = rollout.DeviceFailed
	TO = rollout.DeviceTimedOut
	AI = rollout.DeviceAlreadyInstalled
)

func names(acts []rollout.Action) string {
	var s []string
	for _, a := range acts {
		s = append(s, a.String())
	}
	return strings.Join(s, " ")
}

func TestStep(t *testing.T) {
	tests := []struct {
		name  string
		r     func() *rollout.Rollout
		devs  []rollout.Device
		now   time.Duration // after t0
		want  string
		check func(t *testing.T, acts []rollout.Action)
	}{
		{
			name: "created starts and opens the first batch",
			r: func() *rollout.Rollout {
				r := testRollout(4, rollout.Policy{}, 2, 2)
				r.State = rollout.StateCreated
				return r
			},
			devs: devs(P, P, P, P),
			want: `transition(running, rollback=false, "started") start_batch(0)`,
		},
		{
			name: "pending devices of started batches are notified",
			r:    func() *rollout.Rollout { r := testRollout(4, rollout.Policy{}, 2, 2); r.Started = 1; return r },
			devs: devs(P, P, P, P),
			want: "notify(0, r1/1) notify(1, r1/1)",
		},
		{
			name: "max in flight bounds notifications",
			r: func() *rollout.Rollout {
				r := testRollout(4, rollout.Policy{MaxInFlight: 2}, 4)
				r.Started = 1
				return r
			},
			devs: devs(N, P, P, P),
			want: "notify(1, r1/1)",
		},
		{
			name: "healthy batch starts the next",
			r:    func() *rollout.Rollout { r := testRollout(4, rollout.Policy{}, 2, 2); r.Started = 1; return r },
			devs: devs(S, AI, P, P),
			want: `batch_finished(0, "1/2 succeeded, 0 failed, 1 already installed") start_batch(1)`,
		},
		{
			name: "success threshold lets stragglers run on",
			r: func() *rollout.Rollout {
				r := testRollout(6, rollout.Policy{SuccessThreshold: 75}, 4, 2)
				r.Started = 1
				return r
			},
			devs: devs(S, S, S, D, P, P),
			want: `start_batch(1)`,
		},
		{
			name: "batch in progress waits",
			r:    func() *rollout.Rollout { r := testRollout(4, rollout.Policy{}, 2, 2); r.Started = 1; return r },
			devs: devs(S, D, P, P),
			want: ``,
		},
		{
			name: "finished batch below threshold pauses",
			r:    func() *rollout.Rollout { r := testRollout(4, rollout.Policy{}, 2, 2); r.Started = 1; return r },
			devs: devs(S, F, P, P),
			want: `batch_finished(0, "1/2 succeeded, 1 failed") transition(paused, rollback=false, "batch 1 finished at 50.0% success, below 100.0%")`,
		},
		{
			name: "resume forces past the gate",
			r: func() *rollout.Rollout {
				r := testRollout(4, rollout.Policy{}, 2, 2)
				r.Started, r.Forced, r.FailBase = 1, 1, 1
				return r
			},
			devs: devs(S, F, P, P),
			want: `batch_finished(0, "1/2 succeeded, 1 failed") start_batch(1)`,
		},
		{
			name: "resume of an earlier batch does not force this one",
			r: func() *rollout.Rollout {
				r := testRollout(6, rollout.Policy{}, 2, 2, 2)
				r.Started, r.Forced = 2, 1
				return r
			},
			devs: devs(S, S, S, F, P, P),
			want: `batch_finished(0, "2/2 succeeded, 0 failed") batch_finished(1, "1/2 succeeded, 1 failed") transition(paused, rollback=false, "batch 2 finished at 50.0% success, below 100.0%")`,
		},
		{
			name: "failure percent not evaluated below min sample",
			r: func() *rollout.Rollout {
				r := testRollout(6, rollout.Policy{FailurePercent: 10, MinSample: 3}, 6)
				r.Started = 1
				return r
			},
			devs: devs(F, S, D, D, D, D),
			want: ``,
		},
		{
			name: "failure percent trips after min sample",
			r: func() *rollout.Rollout {
				r := testRollout(6, rollout.Policy{FailurePercent: 10, MinSample: 3}, 6)
				r.Started = 1
				return r
			},
			devs: devs(F, S, S, D, P, P),
			want: `transition(paused, rollback=false, "33.3% of 3 finished devices failed, threshold 10.0%")`,
		},
		{
			name: "failure percent is strictly greater",
			r: func() *rollout.Rollout {
				r := testRollout(4, rollout.Policy{FailurePercent: 50, SuccessThreshold: 50}, 4)
				r.Started = 1
				return r
			},
			devs: devs(F, S, D, D),
			want: ``,
		},
		{
			name: "failure count aborts",
			r: func() *rollout.Rollout {
				r := testRollout(4, rollout.Policy{FailureCount: 2, OnFailure: rollout.OnFailureAbort}, 4)
				r.Started = 1
				return r
			},
			devs: devs(F, TO, D, D),
			want: `transition(aborted, rollback=false, "2 devices failed, threshold 2")`,
		},
		{
			name: "failure count with rollback",
			r: func() *rollout.Rollout {
				r := testRollout(4, rollout.Policy{FailureCount: 1, OnFailure: rollout.OnFailureRollback}, 4)
				r.Started = 1
				return r
			},
			devs: devs(F, S, D, D),
			want: `transition(aborted, rollback=true, "1 devices failed, threshold 1")`,
		},
		{
			name: "resumed rollout trips only on a new failure",
			r: func() *rollout.Rollout {
				r := testRollout(4, rollout.Policy{FailureCount: 1}, 4)
				r.Started, r.FailBase = 1, 1
				return r
			},
			devs: devs(F, S, D, D),
			want: ``,
		},
		{
			name: "silent device is retried after backoff",
			r: func() *rollout.Rollout {
				r := testRollout(2, rollout.Policy{Retries: 1, DeviceTimeout: time.Minute}, 2)
				r.Started = 1
				return r
			},
			devs: devs(N, S),
			now:  time.Minute,
			want: `set_device(0, pending/1)`,
			check: func(t *testing.T, acts []rollout.Action) {
				if got, want := acts[0].Device.At, at(time.Minute+30*time.Second); got != want {
					t.Errorf("retry at %d, want %d", got, want)
				}
			},
		},
		{
			name: "progress restarts the timeout",
			r: func() *rollout.Rollout {
				r := testRollout(2, rollout.Policy{DeviceTimeout: time.Minute}, 2)
				r.Started = 1
				return r
			},
			devs: []rollout.Device{{State: D, Attempt: 1, At: at(30 * time.Second)}, {State: S, Attempt: 1}},
			now:  time.Minute,
			want: ``,
		},
		{
			name: "silent device without retries times out and fails the rollout",
			r: func() *rollout.Rollout {
				r := testRollout(2, rollout.Policy{DeviceTimeout: time.Minute}, 2)
				r.Started = 1
				return r
			},
			devs: devs(N, S),
			now:  time.Hour,
			want: `set_device(0, timed_out/1) batch_finished(0, "1/2 succeeded, 1 failed") transition(failed, rollback=false, "50.0% succeeded, below 100.0%")`,
		},
		{
			name: "retry waits for its backoff",
			r:    func() *rollout.Rollout { r := testRollout(1, rollout.Policy{Retries: 2}, 1); r.Started = 1; return r },
			devs: []rollout.Device{{State: P, Attempt: 1, At: at(time.Minute)}},
			now:  59 * time.Second,
			want: ``,
		},
		{
			name: "retry after backoff is the next attempt",
			r:    func() *rollout.Rollout { r := testRollout(1, rollout.Policy{Retries: 2}, 1); r.Started = 1; return r },
			devs: []rollout.Device{{State: P, Attempt: 1, At: at(time.Minute)}},
			now:  time.Minute,
			want: `notify(0, r1/2)`,
		},
		{
			name: "paused notifies nothing but times out",
			r: func() *rollout.Rollout {
				r := testRollout(3, rollout.Policy{DeviceTimeout: time.Minute}, 3)
				r.Started, r.State = 1, rollout.StatePaused
				return r
			},
			devs: devs(N, P, S),
			now:  time.Hour,
			want: `set_device(0, timed_out/1)`,
		},
		{
			name: "abort cancels pending and clears in-flight",
			r: func() *rollout.Rollout {
				r := testRollout(3, rollout.Policy{}, 3)
				r.State = rollout.StateAborted
				return r
			},
			devs: devs(S, D, P),
			want: `cancel(1, canceled/1) set_device(2, canceled/0)`,
		},
		{
			name: "abort with rollback restores moved devices",
			r: func() *rollout.Rollout {
				r := testRollout(3, rollout.Policy{}, 3)
				r.State, r.Rollback = rollout.StateAborted, true
				return r
			},
			devs: devs(S, D, AI),
			want: `rollback(0, rolled_back/1) cancel(1, canceled/1)`,
		},
		{
			name: "rollback of a succeeded rollout",
			r: func() *rollout.Rollout {
				r := testRollout(2, rollout.Policy{}, 2)
				r.State, r.Rollback, r.Started = rollout.StateSucceeded, true, 1
				return r
			},
			devs: []rollout.Device{{State: S, Attempt: 1, From: 1}, {State: S, Attempt: 1}},
			want: `rollback(0, rolled_back/1)`,
		},
		{
			name: "finished rollout does nothing",
			r: func() *rollout.Rollout {
				r := testRollout(2, rollout.Policy{}, 2)
				r.State, r.Started = rollout.StateSucceeded, 1
				return r
			},
			devs: devs(S, S),
			want: ``,
		},
		{
			name: "last batch done succeeds",
			r:    func() *rollout.Rollout { r := testRollout(4, rollout.Policy{}, 2, 2); r.Started = 2; return r },
			devs: devs(S, S, AI, S),
			want: `batch_finished(0, "2/2 succeeded, 0 failed") batch_finished(1, "1/2 succeeded, 0 failed, 1 already installed") transition(succeeded, rollback=false, "3 succeeded, 1 already installed, 0 failed")`,
		},
		{
			name: "last batch below threshold fails",
			r: func() *rollout.Rollout {
				r := testRollout(4, rollout.Policy{SuccessThreshold: 90}, 2, 2)
				r.Started = 2
				return r
			},
			devs: devs(S, S, F, S),
			want: `batch_finished(0, "2/2 succeeded, 0 failed") batch_finished(1, "1/2 succeeded, 1 failed") transition(failed, rollback=false, "75.0% succeeded, below 90.0%")`,
		},
		// Scheduling: t0 is 12:00 UTC (13:00 in Berlin).
		{
			name: "closed window notifies nobody",
			r:    func() *rollout.Rollout { return started(testRollout(2, rollout.Policy{Window: "13:00-15:00"}, 2)) },
			devs: devs(P, P),
			want: `waiting("outside the maintenance window 13:00-15:00 UTC")`,
		},
		{
			name: "a recorded wait is not recorded again",
			r:    waitingRollout,
			devs: devs(P, P),
			want: ``,
		},
		{
			name: "an opening window ends the wait",
			r:    waitingRollout,
			devs: devs(P, P),
			now:  time.Hour,
			want: `notify(0, r1/1) notify(1, r1/1) waiting("")`,
		},
		{
			name: "open window notifies",
			r:    func() *rollout.Rollout { return started(testRollout(2, rollout.Policy{Window: "13:00-15:00"}, 2)) },
			devs: devs(P, P),
			now:  90 * time.Minute,
			want: `notify(0, r1/1) notify(1, r1/1)`,
		},
		{
			name: "window closes at its end",
			r:    func() *rollout.Rollout { return started(testRollout(2, rollout.Policy{Window: "13:00-15:00"}, 2)) },
			devs: devs(P, P),
			now:  3 * time.Hour,
			want: `waiting("outside the maintenance window 13:00-15:00 UTC")`,
		},
		{
			name: "window across midnight is closed at noon",
			r:    func() *rollout.Rollout { return started(testRollout(1, rollout.Policy{Window: "22:00-04:00"}, 1)) },
			devs: devs(P),
			want: `waiting("outside the maintenance window 22:00-04:00 UTC")`,
		},
		{
			name: "window across midnight is open after midnight",
			r:    func() *rollout.Rollout { return started(testRollout(1, rollout.Policy{Window: "22:00-04:00"}, 1)) },
			devs: devs(P),
			now:  13 * time.Hour, // 01:00 the next day
			want: `notify(0, r1/1)`,
		},
		{
			name: "window in a time zone",
			r: func() *rollout.Rollout {
				return started(testRollout(1, rollout.Policy{Window: "13:00-14:00", WindowTZ: "Europe/Berlin"}, 1))
			},
			devs: devs(P),
			want: `notify(0, r1/1)`,
		},
		{
			name: "closed window starts no batch",
			r: func() *rollout.Rollout {
				r := testRollout(2, rollout.Policy{Window: "13:00-15:00"}, 1, 1)
				r.State = rollout.StateCreated
				return r
			},
			devs: devs(P, P),
			want: `transition(running, rollback=false, "started") waiting("outside the maintenance window 13:00-15:00 UTC")`,
		},
		{
			name: "closed window lets timeouts run and the rollout finish",
			r: func() *rollout.Rollout {
				r := testRollout(2, rollout.Policy{Window: "13:00-15:00", DeviceTimeout: 10 * time.Minute, SuccessThreshold: 50}, 2)
				r.Started = 1
				return r
			},
			devs: devs(S, N),
			now:  20 * time.Minute,
			want: `set_device(1, timed_out/1) batch_finished(0, "1/2 succeeded, 1 failed") transition(succeeded, rollback=false, "1 succeeded, 0 already installed, 1 failed")`,
		},
		{
			name: "scheduled start holds the first batch",
			r: func() *rollout.Rollout {
				r := testRollout(1, rollout.Policy{StartAt: t0.Add(time.Hour)}, 1)
				r.State = rollout.StateCreated
				return r
			},
			devs: devs(P),
			now:  59 * time.Minute,
			want: `transition(running, rollback=false, "started") waiting("scheduled to start at 2026-11-23T13:00:00Z")`,
		},
		{
			name: "scheduled start reached",
			r:    func() *rollout.Rollout { return testRollout(1, rollout.Policy{StartAt: t0.Add(time.Hour)}, 1) },
			devs: devs(P),
			now:  time.Hour,
			want: `start_batch(0)`,
		},
		{
			name: "pause between batches after a healthy batch",
			r: func() *rollout.Rollout {
				return started(testRollout(4, rollout.Policy{PauseBetweenBatches: true}, 2, 2))
			},
			devs: devs(S, AI, P, P),
			want: `batch_finished(0, "1/2 succeeded, 0 failed, 1 already installed") transition(paused, rollback=false, "batch 1 finished at 100.0% success; resume to start batch 2")`,
		},
		{
			name: "pause between batches waits for stragglers",
			r: func() *rollout.Rollout {
				return started(testRollout(4, rollout.Policy{PauseBetweenBatches: true, SuccessThreshold: 50}, 2, 2))
			},
			devs: devs(S, D, P, P),
			want: ``,
		},
		{
			name: "resume after a pause between batches starts the next",
			r: func() *rollout.Rollout {
				r := started(testRollout(4, rollout.Policy{PauseBetweenBatches: true}, 2, 2))
				r.Forced, r.Approval, r.Approved = 1, 1, 1
				r.Batches[0].Done = true
				return r
			},
			devs: devs(S, S, P, P),
			want: `start_batch(1)`,
		},
		{
			name: "an operator's resume mid-batch is no approval",
			r: func() *rollout.Rollout {
				r := started(testRollout(4, rollout.Policy{PauseBetweenBatches: true, SuccessThreshold: 50}, 2, 2))
				r.Forced = 1 // paused and resumed while batch 1 ran
				return r
			},
			devs: devs(S, N, P, P),
			want: ``,
		},
		{
			name: "pause between batches does not hold the end",
			r: func() *rollout.Rollout {
				r := testRollout(2, rollout.Policy{PauseBetweenBatches: true}, 1, 1)
				r.Started = 2
				return r
			},
			devs: devs(S, S),
			want: `batch_finished(0, "1/1 succeeded, 0 failed") batch_finished(1, "1/1 succeeded, 0 failed") transition(succeeded, rollback=false, "2 succeeded, 0 already installed, 0 failed")`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := tc.r()
			before := *r
			acts := rollout.Step(t0.Add(tc.now), r, tc.devs)
			if got := names(acts); got != tc.want {
				t.Errorf("Step = %s\nwant   %s", got, tc.want)
			}
			if r.State != before.State || r.Started != before.Started {
				t.Errorf("Step changed the rollout: got %s/%d, want %s/%d", r.State, r.Started, before.State, before.Started)
			}
			if tc.check != nil && len(acts) > 0 {
				tc.check(t, acts)
			}
		})
	}
}

func TestObserve(t *testing.T) {
	r := testRollout(1, rollout.Policy{Retries: 1}, 1)
	notified := rollout.Device{State: N, Attempt: 1, From: 1, At: at(0)}
	second := rollout.Device{State: D, Attempt: 2, From: 1, At: at(0)}
	now := t0.Add(time.Minute)
	tests := []struct {
		name    string
		d       rollout.Device
		rep     firmware.Report
		want    rollout.Device
		wantErr string
	}{
		{"downloading", notified, firmware.Report{Version: "1.0.0", State: firmware.StateDownloading, Job: "r1/1"},
			rollout.Device{State: D, Attempt: 1, From: 1, At: now.UnixNano()}, ""},
		{"rebooting is installing", notified, firmware.Report{Version: "1.0.0", State: firmware.StateRebooting, Job: "r1/1"},
			rollout.Device{State: rollout.DeviceInstalling, Attempt: 1, From: 1, At: now.UnixNano()}, ""},
		{"same state is no progress", second, firmware.Report{Version: "1.0.0", State: firmware.StateVerifying, Job: "r1/2"},
			second, ""},
		{"updated to the target succeeds", notified, firmware.Report{Version: "2.0.0", State: firmware.StateUpdated, Job: "r1/1"},
			rollout.Device{State: S, Attempt: 1, From: 1, At: now.UnixNano()}, ""},
		{"target running without job echo succeeds", notified, firmware.Report{Version: "2.0.0", State: firmware.StateUpdated},
			rollout.Device{State: S, Attempt: 1, From: 1, At: now.UnixNano()}, ""},
		{"report of another job is ignored", second, firmware.Report{Version: "1.0.0", State: firmware.StateFailed, Job: "r1/1", Retryable: true},
			second, ""},
		{"stale updated report of the old version is ignored", notified, firmware.Report{Version: "1.0.0", State: firmware.StateUpdated},
			notified, ""},
		{"updated but old version running is a failure", notified, firmware.Report{Version: "1.0.0", State: firmware.StateUpdated, Job: "r1/1"},
			rollout.Device{State: P, Attempt: 1, From: 1, At: now.Add(30 * time.Second).UnixNano()}, `reported updated but runs "1.0.0"`},
		{"retryable failure is retried", notified, firmware.Report{Version: "1.0.0", State: firmware.StateFailed, Error: "url_rejected", Retryable: true, Job: "r1/1"},
			rollout.Device{State: P, Attempt: 1, From: 1, At: now.Add(30 * time.Second).UnixNano()}, "url_rejected"},
		{"non-retryable failure is final", notified, firmware.Report{Version: "1.0.0", State: firmware.StateFailed, Error: "hw_mismatch", Job: "r1/1"},
			rollout.Device{State: F, Attempt: 1, From: 1, At: now.UnixNano()}, "hw_mismatch"},
		{"retries exhausted", second, firmware.Report{Version: "1.0.0", State: firmware.StateFailed, Error: "download_failed", Retryable: true, Job: "r1/2"},
			rollout.Device{State: F, Attempt: 2, From: 1, At: now.UnixNano()}, "download_failed"},
		{"finished device ignores reports", rollout.Device{State: S, Attempt: 1}, firmware.Report{Version: "1.0.0", State: firmware.StateFailed, Job: "r1/1"},
			rollout.Device{State: S, Attempt: 1}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, msg := rollout.Observe(now, r, tc.d, tc.rep)
			if got != tc.want || msg != tc.wantErr {
				t.Errorf("Observe = %+v %q, want %+v %q", got, msg, tc.want, tc.wantErr)
			}
		})
	}
}

// TestStepScenario drives Step and Apply over a whole rollout with
// simulated devices: a canary, a ramp, one flaky device that succeeds on
// its retry and one silent device that times out.
func TestStepScenario(t *testing.T) {
	r := testRollout(0, rollout.Policy{Retries: 1, RetryBackoff: time.Minute, DeviceTimeout: 10 * time.Minute,
		SuccessThreshold: 90, FirstBatch: 1, BatchSize: 2, Ramp: 2}, 0)
	r.Targets = 15
	r.Batches = rollout.PlanBatches(15, r.Policy)
	r.State = rollout.StateCreated
	ds := make([]rollout.Device, r.Targets)
	now := t0
	var log []string
	for step := 0; step < 200 && r.State.Active(); step++ {
		acts := rollout.Step(now, r, ds)
		for _, a := range acts {
			rollout.Apply(now, r, ds, a)
			switch a.Kind {
			case rollout.ActStartBatch:
				log = append(log, fmt.Sprintf("batch%d@%s", a.Batch, now.Sub(t0)))
			case rollout.ActNotify:
				// Device 3 fails its first attempt; device 9 never answers.
				rep := firmware.Report{Version: "2.0.0", State: firmware.StateUpdated, Job: a.Job}
				if a.Index == 3 && a.Device.Attempt == 1 {
					rep = firmware.Report{Version: "1.0.0", State: firmware.StateFailed, Retryable: true, Error: "net", Job: a.Job}
				}
				if a.Index != 9 {
					ds[a.Index], _ = rollout.Observe(now, r, ds[a.Index], rep)
				}
			}
		}
		if len(acts) == 0 {
			now = now.Add(time.Minute)
		}
	}
	if got, want := strings.Join(log, " "), "batch0@0s batch1@0s batch2@0s batch3@1m0s"; got != want {
		t.Errorf("batches started %s, want %s", got, want)
	}
	if r.State != rollout.StateSucceeded {
		t.Errorf("state %s (%s), want succeeded", r.State, r.Reason)
	}
	if ds[9].State != TO || ds[9].Attempt != 2 || ds[3].State != S || ds[3].Attempt != 2 {
		t.Errorf("device 3 %v/%d, 9 %v/%d, want succeeded/2, timed_out/2", ds[3].State, ds[3].Attempt, ds[9].State, ds[9].Attempt)
	}
}

// TestStepBatchFinished covers the batch_finished decision: once per
// started batch, when every device of it is terminal.
func TestStepBatchFinished(t *testing.T) {
	tests := []struct {
		name string
		r    func() *rollout.Rollout
		devs []rollout.Device
		now  time.Duration
		want string // the batch_finished actions only
	}{
		{
			name: "in-flight device keeps the batch open",
			r:    func() *rollout.Rollout { r := testRollout(3, rollout.Policy{}, 3); r.Started = 1; return r },
			devs: devs(S, S, D),
			want: ``,
		},
		{
			name: "pending retry keeps the batch open",
			r: func() *rollout.Rollout {
				r := testRollout(2, rollout.Policy{Retries: 1}, 2)
				r.Started = 1
				return r
			},
			devs: []rollout.Device{{State: S, Attempt: 1}, {State: P, Attempt: 1, At: at(time.Hour)}},
			want: ``,
		},
		{
			name: "all terminal finishes with a summary",
			r:    func() *rollout.Rollout { r := testRollout(5, rollout.Policy{}, 5); r.Started = 1; return r },
			devs: devs(S, S, F, TO, AI),
			want: `batch_finished(0, "2/5 succeeded, 2 failed, 1 already installed")`,
		},
		{
			name: "a batch recorded done is not finished again",
			r: func() *rollout.Rollout {
				r := testRollout(4, rollout.Policy{}, 2, 2)
				r.Started, r.Batches[0].Done = 2, true
				return r
			},
			devs: devs(S, S, S, D),
			want: ``,
		},
		{
			name: "later batch may finish before an earlier one",
			r: func() *rollout.Rollout {
				r := testRollout(4, rollout.Policy{SuccessThreshold: 50}, 2, 2)
				r.Started = 2
				return r
			},
			devs: devs(S, D, S, S),
			want: `batch_finished(1, "2/2 succeeded, 0 failed")`,
		},
		{
			name: "timeout in this step finishes the batch",
			r: func() *rollout.Rollout {
				r := testRollout(2, rollout.Policy{DeviceTimeout: time.Minute}, 2, 2)
				r.Started = 1
				return r
			},
			devs: devs(S, N, P, P),
			now:  time.Hour,
			want: `batch_finished(0, "1/2 succeeded, 1 failed")`,
		},
		{
			name: "paused rollout still records a finished batch",
			r: func() *rollout.Rollout {
				r := testRollout(4, rollout.Policy{}, 2, 2)
				r.Started, r.State = 1, rollout.StatePaused
				return r
			},
			devs: devs(S, F, P, P),
			want: `batch_finished(0, "1/2 succeeded, 1 failed")`,
		},
		{
			name: "aborted rollout finishes started batches once canceled",
			r: func() *rollout.Rollout {
				r := testRollout(4, rollout.Policy{}, 2, 2)
				r.Started, r.State = 1, rollout.StateAborted
				return r
			},
			devs: []rollout.Device{{State: S, Attempt: 1}, {State: rollout.DeviceCanceled, Attempt: 1},
				{State: rollout.DeviceCanceled}, {State: rollout.DeviceCanceled}},
			want: `batch_finished(0, "1/2 succeeded, 0 failed, 1 canceled")`,
		},
		{
			name: "not-started batches never finish",
			r: func() *rollout.Rollout {
				r := testRollout(2, rollout.Policy{}, 1, 1)
				r.State = rollout.StateAborted
				return r
			},
			devs: []rollout.Device{{State: rollout.DeviceCanceled}, {State: rollout.DeviceCanceled}},
			want: ``,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := tc.r()
			var got []string
			for _, a := range rollout.Step(t0.Add(tc.now), r, tc.devs) {
				if a.Kind == rollout.ActBatchFinished {
					got = append(got, a.String())
				}
			}
			if g := strings.Join(got, " "); g != tc.want {
				t.Errorf("batch_finished actions = %s, want %s", g, tc.want)
			}
		})
	}
	t.Run("Apply records the batch done, so the next Step is silent", func(t *testing.T) {
		r := testRollout(2, rollout.Policy{}, 2)
		r.Started = 1
		ds := devs(S, S)
		now := t0
		for _, a := range rollout.Step(now, r, ds) {
			rollout.Apply(now, r, ds, a)
		}
		if !r.Batches[0].Done {
			t.Fatalf("batch 0 done = false after Apply, want true")
		}
		r.State = rollout.StateRunning // Apply moved it to succeeded; ask again as if running
		for _, a := range rollout.Step(now, r, ds) {
			if a.Kind == rollout.ActBatchFinished {
				t.Errorf("second Step returned %s, want no batch_finished", a)
			}
		}
	})
}
