package rollout

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/firmware"
)

// ExecStatus is the status of an execution: one attempt of a rollout on
// one device, as the AWS IoT Jobs device API names it (package
// rollout/jobs serves that API).
type ExecStatus string

// The execution statuses. QUEUED and IN_PROGRESS are pending; the others
// are terminal.
const (
	ExecQueued     ExecStatus = "QUEUED"      // notified (DeviceNotified)
	ExecInProgress ExecStatus = "IN_PROGRESS" // DeviceDownloading or DeviceInstalling
	ExecSucceeded  ExecStatus = "SUCCEEDED"   // DeviceSucceeded (and later DeviceRolledBack)
	ExecFailed     ExecStatus = "FAILED"      // DeviceFailed, or a retry to come
	ExecRejected   ExecStatus = "REJECTED"    // DeviceFailed, not retryable
	ExecTimedOut   ExecStatus = "TIMED_OUT"   // DeviceTimedOut, or a retry to come
	ExecCanceled   ExecStatus = "CANCELED"    // DeviceCanceled (the rollout was aborted)
)

// Terminal reports whether s is final: no update may change it.
func (s ExecStatus) Terminal() bool { return s != ExecQueued && s != ExecInProgress }

// Limits of an execution's status details: AWS IoT Jobs' limits.
const (
	MaxStatusDetails     = 10   // name/value pairs
	MaxStatusDetailName  = 128  // bytes, [a-zA-Z0-9:_-]
	MaxStatusDetailValue = 1024 // characters, no control characters
)

// ValidateStatusDetails checks details as AWS IoT Jobs does: at most
// MaxStatusDetails pairs; names of 1 to MaxStatusDetailName characters of
// [a-zA-Z0-9:_-]; values of 1 to MaxStatusDetailValue characters of valid
// UTF-8 without control, format or private-use characters. The error wraps
// ErrInvalid.
func ValidateStatusDetails(details map[string]string) error {
	if len(details) > MaxStatusDetails {
		return fmt.Errorf("%w: statusDetails has %d entries, at most %d", ErrInvalid, len(details), MaxStatusDetails)
	}
	for _, k := range slices.Sorted(maps.Keys(details)) { // the same error whatever the map order
		v := details[k]
		if k == "" || len(k) > MaxStatusDetailName || strings.IndexFunc(k, badNameRune) >= 0 {
			return fmt.Errorf("%w: statusDetails name %.40q: want 1 to %d characters of [a-zA-Z0-9:_-]", ErrInvalid, k, MaxStatusDetailName)
		}
		if v == "" || utf8.RuneCountInString(v) > MaxStatusDetailValue || !utf8.ValidString(v) || strings.IndexFunc(v, badValueRune) >= 0 {
			return fmt.Errorf("%w: statusDetails value of %q: want 1 to %d characters without control characters", ErrInvalid, k, MaxStatusDetailValue)
		}
	}
	return nil
}

func badNameRune(r rune) bool {
	return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == ':' || r == '_' || r == '-')
}

// badValueRune reports the characters of Unicode category C (AWS's
// pattern [^\p{C}]+): control, format, surrogate, private use.
func badValueRune(r rune) bool {
	return unicode.In(r, unicode.Cc, unicode.Cf, unicode.Co, unicode.Cs) || r == utf8.RuneError
}

// Execution is one attempt of a rollout on one device, seen through the
// AWS IoT Jobs device API: job ID = rollout ID, execution number =
// attempt. The planner's device record stays the source of truth; an
// execution adds what the Jobs API shows on top of it.
type Execution struct {
	JobID   string    // the rollout ID
	Device  device.ID // the thing
	Number  int       // executionNumber: the attempt, from 1
	Status  ExecStatus
	Details map[string]string // statusDetails as last set by the device
	// Version is versionNumber: 1 when queued, +1 per accepted update.
	Version   int64
	QueuedAt  time.Time
	StartedAt time.Time // zero until it went IN_PROGRESS
	UpdatedAt time.Time
	// What the job document is minted from (at each delivery, so that a
	// queued job never carries an expired URL): the target version, the
	// job echoed in the firmware command, and the URL lifetime.
	Firmware firmware.Version
	Job      string
	URLTTL   time.Duration
}

// ExecutionState is the part of an execution an error reply carries.
type ExecutionState struct {
	Status  ExecStatus
	Details map[string]string
	Version int64
}

// State returns x's status, details and version.
func (x Execution) State() ExecutionState {
	return ExecutionState{Status: x.Status, Details: x.Details, Version: x.Version}
}

// Errors of the execution methods, besides ErrInvalid, ErrNotFound and
// ErrClosed. They come wrapped in an *ExecutionError.
var (
	// ErrTerminal: the execution is final (SUCCEEDED, FAILED, REJECTED,
	// TIMED_OUT or CANCELED); AWS's InvalidStateTransition.
	ErrTerminal = errors.New("rollout: execution is in a terminal state")
	// ErrVersionMismatch: the update's expected version is not the
	// execution's; AWS's VersionMismatch.
	ErrVersionMismatch = errors.New("rollout: execution version mismatch")
)

// ExecutionError is an update refused because of the execution's state.
// It unwraps to ErrTerminal or ErrVersionMismatch; State is the
// execution's current state, which AWS IoT Jobs returns with the error.
type ExecutionError struct {
	Err   error
	State ExecutionState
	Msg   string
}

// Error implements error.
func (e *ExecutionError) Error() string { return e.Err.Error() + ": " + e.Msg }

// Unwrap returns Err.
func (e *ExecutionError) Unwrap() error { return e.Err }

// ExecutionUpdate is a device's change to its execution
// (UpdateJobExecution; StartNextPendingJobExecution is an update to
// IN_PROGRESS).
type ExecutionUpdate struct {
	// Status is IN_PROGRESS, SUCCEEDED, FAILED (retryable) or REJECTED
	// (not retryable).
	Status ExecStatus
	// Details replace the execution's status details; nil leaves them
	// unchanged.
	Details map[string]string
	// ExpectedVersion, when CheckVersion is set, must be the execution's
	// version.
	ExpectedVersion int64
	CheckVersion    bool
	// Number is the execution number the update is for; 0 means the
	// latest.
	Number int
}

// ObserveExecution applies a device's Jobs update u to its record d and
// its execution x (attempt x.Number of rollout r, in flight) at now. It
// is the Jobs counterpart of Observe, and pure. It returns the new record,
// the new execution and the text to keep as the device's last word (its
// error for a failure, its progress otherwise; "" for none).
//
// Every accepted update adds 1 to the version and restarts the device's
// timeout. IN_PROGRESS moves the device to downloading (or installing when
// the details' "state" or "step" says installing or rebooting);
// SUCCEEDED counts as updated: the device is succeeded, whatever its
// shadow reports; FAILED is a retryable failure (a retry after the
// backoff if attempts are left, like a timeout); REJECTED is final.
//
// Errors: ErrInvalid for a status other than those four or bad details;
// an *ExecutionError wrapping ErrTerminal when x is final (or the device
// is no longer in flight with this attempt), or ErrVersionMismatch when u
// expects another version. Nothing changes on error.
func ObserveExecution(now time.Time, r *Rollout, d Device, x Execution, u ExecutionUpdate) (Device, Execution, string, error) {
	switch u.Status {
	case ExecInProgress, ExecSucceeded, ExecFailed, ExecRejected:
	default:
		return d, x, "", fmt.Errorf("%w: status %.40q: want IN_PROGRESS, SUCCEEDED, FAILED or REJECTED", ErrInvalid, u.Status)
	}
	if err := ValidateStatusDetails(u.Details); err != nil {
		return d, x, "", err
	}
	if x.Status.Terminal() || !d.State.InFlight() || int(d.Attempt) != x.Number {
		return d, x, "", &ExecutionError{Err: ErrTerminal, State: x.State(),
			Msg: fmt.Sprintf("execution %d of job %s is %s", x.Number, x.JobID, x.Status)}
	}
	if u.CheckVersion && u.ExpectedVersion != x.Version {
		return d, x, "", &ExecutionError{Err: ErrVersionMismatch, State: x.State(),
			Msg: fmt.Sprintf("expected version %d, the execution is at %d", u.ExpectedVersion, x.Version)}
	}
	nx := x
	nx.Status = u.Status
	nx.Version++
	nx.UpdatedAt = now
	if u.Details != nil {
		nx.Details = maps.Clone(u.Details)
	}
	if u.Status == ExecInProgress && nx.StartedAt.IsZero() {
		nx.StartedAt = now
	}
	nowNS := now.UnixNano()
	var nd Device
	msg := detailsText(nx.Details)
	switch u.Status {
	case ExecInProgress:
		nd = Device{State: progressState(d.State, nx.Details), Attempt: d.Attempt, From: d.From, At: nowNS}
		if msg != "" {
			msg = "in progress: " + msg
		}
	case ExecSucceeded:
		nd = Device{State: DeviceSucceeded, Attempt: d.Attempt, From: d.From, At: nowNS}
		if msg != "" {
			msg = "succeeded: " + msg
		}
	case ExecFailed:
		nd = retryOrFinal(r.Policy, d, now, DeviceFailed)
		msg = joinText("failed", msg)
	case ExecRejected:
		nd = Device{State: DeviceFailed, Attempt: d.Attempt, From: d.From, At: nowNS}
		msg = joinText("rejected", msg)
	}
	return nd, nx, msg, nil
}

// progressState is the in-flight state of a device in state s that says
// IN_PROGRESS with details: the stage "state" or "step" names, when it is
// one of reported.firmware's states, else downloading for a device only
// notified, else s.
func progressState(s DeviceState, details map[string]string) DeviceState {
	for _, k := range []string{"state", "step"} {
		switch firmware.State(strings.ToLower(details[k])) {
		case firmware.StateDownloading, firmware.StateVerifying:
			return DeviceDownloading
		case firmware.StateInstalling, firmware.StateRebooting:
			return DeviceInstalling
		}
	}
	if s == DeviceNotified {
		return DeviceDownloading
	}
	return s
}

// detailsText renders details as "k=v, k=v" sorted by name.
func detailsText(details map[string]string) string {
	var b strings.Builder
	for i, k := range slices.Sorted(maps.Keys(details)) {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(k + "=" + details[k])
	}
	return b.String()
}

func joinText(head, tail string) string {
	if tail == "" {
		return head
	}
	return head + ": " + tail
}
