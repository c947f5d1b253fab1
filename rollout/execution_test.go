package rollout_test

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/rollout"
)

func TestValidateStatusDetails(t *testing.T) {
	entries := func(n int) map[string]string {
		m := map[string]string{}
		for i := range n {
			m[string(rune('a'+i))] = "v"
		}
		return m
	}
	tests := []struct {
		name    string
		details map[string]string
		ok      bool
	}{
		{"nil", nil, true},
		{"empty", map[string]string{}, true},
		{"typical", map[string]string{"step": "download", "progress": "42%", "ns:key_1-x": "ok"}, true},
		{"ten entries", entries(10), true},
		{"eleven entries", entries(11), false},
		{"empty name", map[string]string{"": "v"}, false},
		{"name with space", map[string]string{"a b": "v"}, false},
		{"name with dot", map[string]string{"a.b": "v"}, false},
		{"name 128", map[string]string{strings.Repeat("n", 128): "v"}, true},
		{"name 129", map[string]string{strings.Repeat("n", 129): "v"}, false},
		{"empty value", map[string]string{"k": ""}, false},
		{"value 1024 characters", map[string]string{"k": strings.Repeat("é", 1024)}, true},
		{"value 1025 characters", map[string]string{"k": strings.Repeat("v", 1025)}, false},
		{"value with newline", map[string]string{"k": "a\nb"}, false},
		{"value with NUL", map[string]string{"k": "a\x00b"}, false},
		{"value with zero-width joiner (format)", map[string]string{"k": "a\u200db"}, false},
		{"value not UTF-8", map[string]string{"k": "a\xffb"}, false},
		{"value with unicode", map[string]string{"k": "Größe ✓"}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := rollout.ValidateStatusDetails(tc.details)
			if (err == nil) != tc.ok || err != nil && !errors.Is(err, rollout.ErrInvalid) {
				t.Errorf("ValidateStatusDetails = %v, want ok %t (errors wrapping ErrInvalid)", err, tc.ok)
			}
		})
	}
}

func TestObserveExecution(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	now := t0.Add(time.Minute)
	r := &rollout.Rollout{ID: "r1", Firmware: "2.0.0", Policy: rollout.Policy{Retries: 1, RetryBackoff: time.Second}}
	notified := rollout.Device{State: rollout.DeviceNotified, Attempt: 1, From: 3, At: t0.UnixNano()}
	queued := rollout.Execution{JobID: "r1", Device: "d1", Number: 1, Status: rollout.ExecQueued, Version: 1, QueuedAt: t0, UpdatedAt: t0}
	inProgress := queued
	inProgress.Status, inProgress.Version, inProgress.StartedAt = rollout.ExecInProgress, 2, t0
	inProgress.Details = map[string]string{"step": "download"}
	downloading := notified
	downloading.State = rollout.DeviceDownloading
	lastAttempt := notified
	lastAttempt.Attempt = 2
	queued2 := queued
	queued2.Number = 2
	succeeded := queued
	succeeded.Status = rollout.ExecSucceeded
	at := func(s rollout.DeviceState, attempt uint8, when time.Time) rollout.Device {
		return rollout.Device{State: s, Attempt: attempt, From: 3, At: when.UnixNano()}
	}
	tests := []struct {
		name    string
		d       rollout.Device
		x       rollout.Execution
		u       rollout.ExecutionUpdate
		wantD   rollout.Device
		wantX   func(x rollout.Execution) rollout.Execution
		wantMsg string
		wantErr error
	}{
		{name: "queued to in progress", d: notified, x: queued,
			u:     rollout.ExecutionUpdate{Status: rollout.ExecInProgress},
			wantD: at(rollout.DeviceDownloading, 1, now),
			wantX: func(x rollout.Execution) rollout.Execution {
				x.Status, x.Version, x.StartedAt, x.UpdatedAt = rollout.ExecInProgress, 2, now, now
				return x
			}},
		{name: "in progress, installing step, new details", d: downloading, x: inProgress,
			u:       rollout.ExecutionUpdate{Status: rollout.ExecInProgress, Details: map[string]string{"step": "Installing", "pct": "90"}},
			wantD:   at(rollout.DeviceInstalling, 1, now),
			wantMsg: "in progress: pct=90, step=Installing",
			wantX: func(x rollout.Execution) rollout.Execution {
				x.Version, x.UpdatedAt, x.Details = 3, now, map[string]string{"step": "Installing", "pct": "90"}
				return x
			}},
		{name: "in progress again without details keeps them and restarts the timeout", d: downloading, x: inProgress,
			u:       rollout.ExecutionUpdate{Status: rollout.ExecInProgress},
			wantD:   at(rollout.DeviceDownloading, 1, now),
			wantMsg: "in progress: step=download",
			wantX: func(x rollout.Execution) rollout.Execution {
				x.Version, x.UpdatedAt = 3, now
				return x
			}},
		{name: "succeeded counts as updated", d: downloading, x: inProgress,
			u:     rollout.ExecutionUpdate{Status: rollout.ExecSucceeded, Details: map[string]string{}},
			wantD: at(rollout.DeviceSucceeded, 1, now),
			wantX: func(x rollout.Execution) rollout.Execution {
				x.Status, x.Version, x.UpdatedAt, x.Details = rollout.ExecSucceeded, 3, now, map[string]string{}
				return x
			}},
		{name: "succeeded straight from queued", d: notified, x: queued,
			u:     rollout.ExecutionUpdate{Status: rollout.ExecSucceeded, ExpectedVersion: 1, CheckVersion: true},
			wantD: at(rollout.DeviceSucceeded, 1, now),
			wantX: func(x rollout.Execution) rollout.Execution {
				x.Status, x.Version, x.UpdatedAt = rollout.ExecSucceeded, 2, now
				return x
			}},
		{name: "failed with attempts left is retried after the backoff", d: downloading, x: inProgress,
			u:       rollout.ExecutionUpdate{Status: rollout.ExecFailed, Details: map[string]string{"reason": "sha256 mismatch"}},
			wantD:   at(rollout.DevicePending, 1, now.Add(time.Second)),
			wantMsg: "failed: reason=sha256 mismatch",
			wantX: func(x rollout.Execution) rollout.Execution {
				x.Status, x.Version, x.UpdatedAt, x.Details = rollout.ExecFailed, 3, now, map[string]string{"reason": "sha256 mismatch"}
				return x
			}},
		{name: "failed on the last attempt is final", d: lastAttempt, x: queued2,
			u:       rollout.ExecutionUpdate{Status: rollout.ExecFailed},
			wantD:   at(rollout.DeviceFailed, 2, now),
			wantMsg: "failed",
			wantX: func(x rollout.Execution) rollout.Execution {
				x.Status, x.Version, x.UpdatedAt = rollout.ExecFailed, 2, now
				return x
			}},
		{name: "rejected is final whatever the retries", d: notified, x: queued,
			u:       rollout.ExecutionUpdate{Status: rollout.ExecRejected, Details: map[string]string{"reason": "hw"}},
			wantD:   at(rollout.DeviceFailed, 1, now),
			wantMsg: "rejected: reason=hw",
			wantX: func(x rollout.Execution) rollout.Execution {
				x.Status, x.Version, x.UpdatedAt, x.Details = rollout.ExecRejected, 2, now, map[string]string{"reason": "hw"}
				return x
			}},
		{name: "version mismatch", d: downloading, x: inProgress,
			u:       rollout.ExecutionUpdate{Status: rollout.ExecSucceeded, ExpectedVersion: 1, CheckVersion: true},
			wantErr: rollout.ErrVersionMismatch},
		{name: "expected version 0 is checked", d: notified, x: queued,
			u:       rollout.ExecutionUpdate{Status: rollout.ExecInProgress, CheckVersion: true},
			wantErr: rollout.ErrVersionMismatch},
		{name: "terminal execution", d: at(rollout.DeviceSucceeded, 1, t0), x: succeeded,
			u:       rollout.ExecutionUpdate{Status: rollout.ExecInProgress},
			wantErr: rollout.ErrTerminal},
		{name: "terminal wins over a version mismatch", d: at(rollout.DeviceSucceeded, 1, t0), x: succeeded,
			u:       rollout.ExecutionUpdate{Status: rollout.ExecSucceeded, ExpectedVersion: 9, CheckVersion: true},
			wantErr: rollout.ErrTerminal},
		{name: "device moved on to another attempt", d: lastAttempt, x: queued,
			u:       rollout.ExecutionUpdate{Status: rollout.ExecInProgress},
			wantErr: rollout.ErrTerminal},
		{name: "device no longer in flight", d: at(rollout.DeviceCanceled, 1, t0), x: queued,
			u:       rollout.ExecutionUpdate{Status: rollout.ExecInProgress},
			wantErr: rollout.ErrTerminal},
		{name: "status QUEUED", d: notified, x: queued,
			u: rollout.ExecutionUpdate{Status: rollout.ExecQueued}, wantErr: rollout.ErrInvalid},
		{name: "status TIMED_OUT", d: notified, x: queued,
			u: rollout.ExecutionUpdate{Status: rollout.ExecTimedOut}, wantErr: rollout.ErrInvalid},
		{name: "status unknown", d: notified, x: queued,
			u: rollout.ExecutionUpdate{Status: "DONE"}, wantErr: rollout.ErrInvalid},
		{name: "bad details", d: notified, x: queued,
			u: rollout.ExecutionUpdate{Status: rollout.ExecInProgress, Details: map[string]string{"a b": "c"}}, wantErr: rollout.ErrInvalid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d, x, msg, err := rollout.ObserveExecution(now, r, tc.d, tc.x, tc.u)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("error = %v, want %v", err, tc.wantErr)
				}
				if d != tc.d || !reflect.DeepEqual(x, tc.x) || msg != "" {
					t.Errorf("on error got %+v %+v %q, want the inputs unchanged and no message", d, x, msg)
				}
				var ee *rollout.ExecutionError
				if errors.As(err, &ee) && !reflect.DeepEqual(ee.State, tc.x.State()) {
					t.Errorf("error state = %+v, want the execution's %+v", ee.State, tc.x.State())
				}
				return
			}
			if err != nil {
				t.Fatalf("error = %v", err)
			}
			if d != tc.wantD {
				t.Errorf("device = %+v, want %+v", d, tc.wantD)
			}
			if want := tc.wantX(tc.x); !reflect.DeepEqual(x, want) {
				t.Errorf("execution = %+v, want %+v", x, want)
			}
			if msg != tc.wantMsg {
				t.Errorf("message = %q, want %q", msg, tc.wantMsg)
			}
		})
	}
}
