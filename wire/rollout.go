package wire

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"time"

	"github.com/umbra-iot/umbra/device"
)

// MaxRolloutIDLen bounds a rollout ID.
const MaxRolloutIDLen = 64

// ErrInvalidRolloutID is wrapped by ParseRolloutID.
var ErrInvalidRolloutID = errors.New("wire: invalid rollout ID")

// ParseRolloutID checks s as a rollout ID: 1 to MaxRolloutIDLen bytes of
// [A-Za-z0-9_-]. The planner's IDs ("r12") are such; the rule leaves room
// for others and keeps every ID a single URL path segment and a single
// MQTT topic level. The server checks every {id} with it, the client every
// ID before it sends a request, the CLI every <id> argument and the MQTT
// feed every topic it builds. The error wraps ErrInvalidRolloutID.
func ParseRolloutID(s string) (string, error) {
	if s == "" || len(s) > MaxRolloutIDLen {
		return "", fmt.Errorf("%w %.80q: want 1 to %d characters of A-Z, a-z, 0-9, _ and -", ErrInvalidRolloutID, s, MaxRolloutIDLen)
	}
	for i := range len(s) {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-') {
			return "", fmt.Errorf("%w %.80q: character %q is not one of A-Z, a-z, 0-9, _ and -", ErrInvalidRolloutID, s, c)
		}
	}
	return s, nil
}

// RolloutState is a rollout's state:
//
//	created → running ⇄ paused → succeeded | failed | aborted
type RolloutState string

// The rollout states.
const (
	RolloutCreated   RolloutState = "created"
	RolloutRunning   RolloutState = "running"
	RolloutPaused    RolloutState = "paused"
	RolloutSucceeded RolloutState = "succeeded"
	RolloutFailed    RolloutState = "failed"
	RolloutAborted   RolloutState = "aborted"
)

// Active reports whether s holds its devices (created, running or paused):
// a device is in at most one active rollout.
func (s RolloutState) Active() bool {
	return s == RolloutCreated || s == RolloutRunning || s == RolloutPaused
}

// DeviceState is one target device's state in a rollout:
//
//	pending → notified → downloading → installing →
//	    succeeded | failed | timed_out | canceled | already-installed
//
// plus rolled_back for a succeeded device whose previous version was
// written back by a rollback.
type DeviceState string

// The device states, in the order of DeviceStates.
const (
	DevicePending          DeviceState = "pending"
	DeviceNotified         DeviceState = "notified"
	DeviceDownloading      DeviceState = "downloading"
	DeviceInstalling       DeviceState = "installing"
	DeviceSucceeded        DeviceState = "succeeded"
	DeviceFailed           DeviceState = "failed"
	DeviceTimedOut         DeviceState = "timed_out"
	DeviceCanceled         DeviceState = "canceled"
	DeviceAlreadyInstalled DeviceState = "already-installed"
	DeviceRolledBack       DeviceState = "rolled_back"
)

// DeviceStates lists every device state, from pending to rolled_back.
var DeviceStates = []DeviceState{
	DevicePending, DeviceNotified, DeviceDownloading, DeviceInstalling, DeviceSucceeded,
	DeviceFailed, DeviceTimedOut, DeviceCanceled, DeviceAlreadyInstalled, DeviceRolledBack,
}

// Valid reports whether s is one of DeviceStates.
func (s DeviceState) Valid() bool {
	for _, v := range DeviceStates {
		if s == v {
			return true
		}
	}
	return false
}

// Terminal reports whether the device is done with the rollout: any state
// from succeeded on.
func (s DeviceState) Terminal() bool {
	switch s {
	case DeviceSucceeded, DeviceFailed, DeviceTimedOut, DeviceCanceled, DeviceAlreadyInstalled, DeviceRolledBack:
		return true
	}
	return false
}

// Failure reports whether s counts against a rollout's failure threshold
// (failed or timed_out).
func (s DeviceState) Failure() bool { return s == DeviceFailed || s == DeviceTimedOut }

// FailureAction is what a rollout does when its failure threshold trips or
// a finished batch misses the success threshold.
type FailureAction string

// The failure actions.
const (
	OnFailurePause    FailureAction = "pause"
	OnFailureAbort    FailureAction = "abort"
	OnFailureRollback FailureAction = "rollback"
)

// Event kinds (RolloutEvent.Kind).
const (
	EventCreated       = "created"
	EventState         = "state"          // State is the new state
	EventBatchStarted  = "batch_started"  // Batch is its number, from 1
	EventBatchFinished = "batch_finished" // Reason sums it up, e.g. "48/50 succeeded, 2 failed"
	EventDeviceFailed  = "device_failed"  // Device failed or timed out for good
	EventRetry         = "device_retry"   // Device will be notified again
	EventRollback      = "device_rollback"
	EventDevicesAdded  = "devices_added" // to a dynamic rollout
	EventWaiting       = "waiting"       // started or stopped waiting for the start time or window
)

// Duration is a time.Duration that travels as a Go duration string
// ("30m0s"; "30m" and "1h30m" are read too). Decoding anything but such a
// string, null included, fails with a *json.UnmarshalTypeError, which names
// the field.
type Duration time.Duration

// MarshalText encodes d as time.Duration.String does.
func (d Duration) MarshalText() ([]byte, error) {
	return []byte(time.Duration(d).String()), nil
}

// UnmarshalJSON decodes a duration string; "" is zero.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if len(b) == 0 || b[0] != '"' || json.Unmarshal(b, &s) != nil {
		return &json.UnmarshalTypeError{Value: clipJSON(b), Type: reflect.TypeFor[Duration]()}
	}
	if s == "" {
		*d = 0
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return &json.UnmarshalTypeError{Value: clipJSON(b), Type: reflect.TypeFor[Duration]()}
	}
	*d = Duration(v)
	return nil
}

// clipJSON returns b, a JSON value, shortened for an error message.
func clipJSON(b []byte) string {
	if len(b) > 40 {
		return string(b[:40]) + "…"
	}
	return string(b)
}

// Policy is how a rollout proceeds. Zero values mean the server's
// defaults (docs/rollouts.md). The durations are last, as the server has
// always written them.
type Policy struct {
	// BatchSize or BatchPercent (of the targets, rounded up) sizes the
	// batches; neither means one batch of every target.
	BatchSize    int     `json:"batch_size,omitempty"`
	BatchPercent float64 `json:"batch_percent,omitempty"`
	// FirstBatch, when set, is the size of a canary batch before the others.
	FirstBatch int `json:"first_batch,omitempty"`
	// Ramp, when > 1, multiplies the batch size after each batch, up to
	// MaxBatchSize when set.
	Ramp         float64 `json:"ramp,omitempty"`
	MaxBatchSize int     `json:"max_batch_size,omitempty"`
	// MaxInFlight caps the devices notified and not yet finished at once;
	// 0 means the whole batch.
	MaxInFlight int `json:"max_in_flight,omitempty"`
	// SuccessThreshold is the percentage of a batch that must succeed
	// before the next batch starts. Default 100.
	SuccessThreshold float64 `json:"success_threshold,omitempty"`
	// FailurePercent and FailureCount trip OnFailure; MinSample devices
	// must have finished first.
	FailurePercent float64       `json:"failure_percent,omitempty"`
	FailureCount   int           `json:"failure_count,omitempty"`
	MinSample      int           `json:"min_sample,omitempty"`
	OnFailure      FailureAction `json:"on_failure,omitempty"` // default pause
	// Retries is how many times a failed or timed-out device is notified
	// again, after RetryBackoff doubled per attempt.
	Retries int `json:"retries,omitempty"`
	// Dynamic lets devices enrolled later that match the selector (or
	// every device, with all) join while the rollout is active.
	Dynamic bool `json:"dynamic,omitempty"`
	// PauseBetweenBatches pauses the rollout after each finished, healthy
	// batch; resuming starts the next.
	PauseBetweenBatches bool `json:"pause_between_batches,omitempty"`
	// StartAt holds back every notification until then.
	StartAt time.Time `json:"start_at,omitzero"`
	// Window is a daily maintenance window "HH:MM-HH:MM" in WindowTZ (an
	// IANA zone; default UTC): devices are notified only inside it.
	Window   string `json:"window,omitempty"`
	WindowTZ string `json:"window_tz,omitempty"`
	// DeviceTimeout is how long a notified device may stay silent.
	// Default 30m.
	DeviceTimeout Duration `json:"device_timeout,omitempty"`
	// RetryBackoff is the wait before the first retry. Default 30s.
	RetryBackoff Duration `json:"retry_backoff,omitempty"`
	// URLTTL is the lifetime of the download URLs in the commands.
	// Default 1h.
	URLTTL Duration `json:"url_ttl,omitempty"`
}

// CreateRollout is the body of POST /v1/rollouts: the firmware, exactly one
// of Devices, Select and All, and the policy fields inline. The server
// refuses unknown fields.
type CreateRollout struct {
	Firmware string `json:"firmware"`
	// Devices are explicit targets, in rollout order.
	Devices []device.ID `json:"devices,omitempty"`
	// Select chooses the enrolled devices carrying every label given.
	Select map[string]string `json:"select,omitempty"`
	// All chooses every enrolled device and every device with a shadow.
	All bool `json:"all,omitempty"`
	// SkipIncompatible leaves out targets whose hardware model (their "hw"
	// label) differs from the image's, instead of refusing the rollout.
	SkipIncompatible bool `json:"skip_incompatible,omitempty"`
	Policy
}

// TargetKinds counts how many of Devices, Select and All c gives: a
// valid request gives exactly one.
func (c CreateRollout) TargetKinds() int {
	n := 0
	for _, given := range []bool{c.Devices != nil, c.Select != nil, c.All} {
		if given {
			n++
		}
	}
	return n
}

// Batch is one batch of a rollout: targets [Start, Start+Size) in rollout
// order.
type Batch struct {
	Start int  `json:"start"`
	Size  int  `json:"size"`
	Done  bool `json:"done,omitempty"` // every device of the started batch is done
}

// Rollout is a rollout: the answer of POST /v1/rollouts and of the control
// routes, and an entry of RolloutList.
type Rollout struct {
	ID       string       `json:"id"`
	Firmware string       `json:"firmware"`
	State    RolloutState `json:"state"`
	Reason   string       `json:"reason,omitempty"` // why it reached State
	Policy   Policy       `json:"policy"`
	Targets  int          `json:"targets"`
	Batches  []Batch      `json:"batches"`
	Started  int          `json:"batches_started"` // batches started so far
	Created  time.Time    `json:"created"`
	Updated  time.Time    `json:"updated"`
	RetryOf  string       `json:"retry_of,omitempty"` // the rollout this one retries
	// Selector and All say how the targets were chosen.
	Selector map[string]string `json:"selector,omitempty"`
	All      bool              `json:"all,omitempty"`
	// Excluded counts devices left out for a hardware mismatch.
	Excluded int `json:"excluded,omitempty"`
	// Rollback is set once the previous version is (to be) written back to
	// the devices that moved.
	Rollback bool `json:"rollback,omitempty"`
	// Waiting says why a running rollout notifies nobody now (its start
	// time is ahead or its maintenance window is closed); "" otherwise.
	Waiting string `json:"waiting,omitempty"`
	// Scheduled is set while an active rollout waits for its start_at and
	// has started no batch: people see its state as "scheduled".
	Scheduled bool `json:"scheduled,omitempty"`
	// AwaitingApproval is set while a rollout is paused as planned after a
	// batch (pause_between_batches): resuming starts the next batch.
	AwaitingApproval bool `json:"awaiting_approval,omitempty"`
}

// DisplayState is the state shown to people: "scheduled" for a scheduled
// rollout, else State.
func (r Rollout) DisplayState() string {
	if r.Scheduled {
		return "scheduled"
	}
	return string(r.State)
}

// RolloutStatus is the body of GET /v1/rollouts/{id}: the rollout with
// its device counts per state, per batch, and the failing devices. Batches
// (batch_status) shadows Rollout.Batches (batches), the plan.
type RolloutStatus struct {
	Rollout
	Counts  map[DeviceState]int `json:"counts"`
	Batches []BatchStatus       `json:"batch_status"`
	// Failing lists up to 100 failed or timed-out devices.
	Failing []RolloutDevice `json:"failing,omitempty"`
}

// BatchStatus is one batch's progress.
type BatchStatus struct {
	Index  int                 `json:"index"` // the batch's number, from 1
	Start  int                 `json:"start"`
	Size   int                 `json:"size"`
	State  string              `json:"state"` // "waiting", "running" or "done"
	Counts map[DeviceState]int `json:"counts"`
}

// RolloutDevice is one target's state in a rollout.
type RolloutDevice struct {
	Device  device.ID   `json:"device"`
	Batch   int         `json:"batch"` // the number of its batch, from 1
	State   DeviceState `json:"state"`
	Attempt int         `json:"attempt"`
	Since   time.Time   `json:"since,omitzero"` // last change (retry time for a pending retry)
	From    string      `json:"from,omitempty"` // version before the rollout, when known
	Error   string      `json:"error,omitempty"`
}

// RolloutEvent is one entry of a rollout's event log.
type RolloutEvent struct {
	Seq    uint64       `json:"seq"`
	Time   time.Time    `json:"time"`
	Kind   string       `json:"kind"` // EventCreated, EventState, …
	State  RolloutState `json:"state,omitempty"`
	Batch  int          `json:"batch,omitempty"` // batch events: the batch's number, from 1
	Device device.ID    `json:"device,omitempty"`
	Reason string       `json:"reason,omitempty"`
}

// RolloutList is the body of GET /v1/rollouts, newest first.
type RolloutList struct {
	Rollouts []Rollout `json:"rollouts"`
}

// RolloutDevices is the body of GET /v1/rollouts/{id}/devices: a page of
// targets in rollout order and the cursor of the next page ("" at the end).
type RolloutDevices struct {
	Devices []RolloutDevice `json:"devices"`
	Next    string          `json:"next"`
}

// RolloutEvents is the body of GET /v1/rollouts/{id}/events, oldest first.
type RolloutEvents struct {
	Events []RolloutEvent `json:"events"`
}

// AbortRequest is the optional body of POST /v1/rollouts/{id}/abort.
type AbortRequest struct {
	Rollback bool `json:"rollback,omitempty"`
}

// IncompatibleDevice is a target whose hardware model is not the image's,
// listed in the ErrorBody of a refused POST /v1/rollouts.
type IncompatibleDevice struct {
	ID device.ID `json:"id"`
	HW string    `json:"hw"`
}

// RolloutSummary is the payload of the retained MQTT topic
// rollouts/<id>/status.
type RolloutSummary struct {
	ID             string              `json:"id"`
	Firmware       string              `json:"firmware"`
	State          RolloutState        `json:"state"`
	Reason         string              `json:"reason,omitempty"`
	Targets        int                 `json:"targets"`
	Batches        int                 `json:"batches"`
	BatchesStarted int                 `json:"batches_started"`
	Counts         map[DeviceState]int `json:"counts"`            // states with devices only
	Waiting        string              `json:"waiting,omitempty"` // why nobody is notified now (schedule)
	Updated        time.Time           `json:"updated"`
}

// RolloutEventMessage is the payload of the MQTT topic
// rollouts/<id>/events: one RolloutEvent and the rollout's ID.
type RolloutEventMessage struct {
	Rollout string `json:"rollout"`
	RolloutEvent
}
