package rollout

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/firmware"
)

// Defaults and limits of a Policy.
const (
	DefaultSuccessThreshold = 100.0
	DefaultDeviceTimeout    = 30 * time.Minute
	DefaultRetryBackoff     = 30 * time.Second
	DefaultURLTTL           = time.Hour
	MaxRetries              = 10
	MaxRetryBackoff         = time.Hour
	MaxTargets              = 1_000_000
	MaxBatches              = 1000
	MinDeviceTimeout        = time.Second
	MaxDeviceTimeout        = 7 * 24 * time.Hour
	// MaxSelectorLabels and MaxSelectorText bound Spec.Selector.
	MaxSelectorLabels = 32
	MaxSelectorText   = 256
)

// State is a rollout's state:
//
//	created → running ⇄ paused → succeeded | failed | aborted
type State string

// The rollout states.
const (
	StateCreated   State = "created"
	StateRunning   State = "running"
	StatePaused    State = "paused"
	StateSucceeded State = "succeeded"
	StateFailed    State = "failed"
	StateAborted   State = "aborted"
)

// Active reports whether s holds its devices (created, running or paused):
// a device is in at most one active rollout.
func (s State) Active() bool {
	return s == StateCreated || s == StateRunning || s == StatePaused
}

// FailureAction is what a rollout does when its failure threshold trips or
// a finished batch misses the success threshold.
type FailureAction string

// The failure actions.
const (
	OnFailurePause    FailureAction = "pause"
	OnFailureAbort    FailureAction = "abort"
	OnFailureRollback FailureAction = "rollback"
)

// DeviceState is one target device's state in a rollout:
//
//	pending → notified → downloading → installing →
//	    succeeded | failed | timed_out | canceled | already-installed
//
// plus rolled_back for a succeeded device whose previous version was
// written back by a rollback. A pending device with Attempt > 0 is waiting
// for its retry backoff to pass.
type DeviceState uint8

// The device states. The numeric values are persisted: never reorder.
const (
	DevicePending DeviceState = iota
	DeviceNotified
	DeviceDownloading
	DeviceInstalling
	DeviceSucceeded
	DeviceFailed
	DeviceTimedOut
	DeviceCanceled
	DeviceAlreadyInstalled
	DeviceRolledBack
	numDeviceStates
)

var deviceStateNames = [numDeviceStates]string{
	"pending", "notified", "downloading", "installing", "succeeded",
	"failed", "timed_out", "canceled", "already-installed", "rolled_back",
}

// String returns the state's name, e.g. "timed_out".
func (s DeviceState) String() string {
	if s < numDeviceStates {
		return deviceStateNames[s]
	}
	return "state(" + strconv.Itoa(int(s)) + ")"
}

// MarshalText encodes s as its name.
func (s DeviceState) MarshalText() ([]byte, error) {
	if s >= numDeviceStates {
		return nil, fmt.Errorf("%w: device state %d", ErrInvalid, s)
	}
	return []byte(s.String()), nil
}

// UnmarshalText decodes a name produced by MarshalText.
func (s *DeviceState) UnmarshalText(b []byte) error {
	v, err := ParseDeviceState(string(b))
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// ParseDeviceState returns the state named name. The error wraps
// ErrInvalid.
func ParseDeviceState(name string) (DeviceState, error) {
	for i, n := range deviceStateNames {
		if n == name {
			return DeviceState(i), nil
		}
	}
	return 0, fmt.Errorf("%w: unknown device state %q", ErrInvalid, name)
}

// InFlight reports whether the device has been notified and not finished.
func (s DeviceState) InFlight() bool {
	return s == DeviceNotified || s == DeviceDownloading || s == DeviceInstalling
}

// Terminal reports whether the device is done with this rollout.
func (s DeviceState) Terminal() bool { return s >= DeviceSucceeded && s < numDeviceStates }

// Valid reports whether s is one of the device states.
func (s DeviceState) Valid() bool { return s < numDeviceStates }

// Failure reports whether s counts against the failure threshold.
func (s DeviceState) Failure() bool { return s == DeviceFailed || s == DeviceTimedOut }

// skipped reports whether s is left out of success ratios.
func (s DeviceState) skipped() bool { return s == DeviceAlreadyInstalled || s == DeviceCanceled }

// Device is the compact per-device record of a rollout (12 bytes in
// rollout/boltstore).
type Device struct {
	State   DeviceState
	Attempt uint8  // attempts notified so far; the job of attempt k is Job(id, k)
	From    uint16 // 1 + index into Rollout.Versions of the version it ran before; 0 unknown
	// At is a unix-nanosecond time: for an in-flight device its last
	// progress (the timeout counts from it), for a pending device with
	// Attempt > 0 the earliest time of its retry, otherwise when it reached
	// its state.
	At int64
}

// Batch is one batch of a rollout: targets [Start, Start+Size).
type Batch struct {
	Start int `json:"start"`
	Size  int `json:"size"`
	// Done is set when every device of the started batch reached a
	// terminal state (the batch_finished event was recorded).
	Done bool `json:"done,omitempty"`
}

// Policy is how a rollout proceeds. Zero values mean the documented
// defaults.
//
// In JSON the durations (device_timeout, retry_backoff, url_ttl) are Go
// duration strings ("30m0s"); decoding also accepts an integer number of
// nanoseconds (the form of older records). Unknown fields are ignored here;
// the HTTP API refuses them.
type Policy struct {
	// BatchSize or BatchPercent (of the targets, rounded up) sizes the
	// batches; neither means one batch of every target.
	BatchSize    int     `json:"batch_size,omitempty"`
	BatchPercent float64 `json:"batch_percent,omitempty"`
	// FirstBatch, when set, is the size of a canary batch before the others.
	FirstBatch int `json:"first_batch,omitempty"`
	// Ramp, when > 1, multiplies the batch size after each batch (2 doubles
	// it), up to MaxBatchSize when set.
	Ramp         float64 `json:"ramp,omitempty"`
	MaxBatchSize int     `json:"max_batch_size,omitempty"`
	// MaxInFlight caps the devices notified and not yet finished at once; 0
	// means the whole batch.
	MaxInFlight int `json:"max_in_flight,omitempty"`
	// SuccessThreshold is the percentage of a batch's devices (leaving out
	// already-installed and canceled ones) that must succeed before the
	// next batch starts (≥). Default 100.
	SuccessThreshold float64 `json:"success_threshold,omitempty"`
	// FailurePercent trips the failure action when failed and timed-out
	// devices exceed this percentage of the finished ones (>); FailureCount
	// when at least this many failed. Zero disables either. Neither is
	// evaluated before MinSample devices finished.
	FailurePercent float64 `json:"failure_percent,omitempty"`
	FailureCount   int     `json:"failure_count,omitempty"`
	MinSample      int     `json:"min_sample,omitempty"`
	// OnFailure is pause (default), abort or rollback.
	OnFailure FailureAction `json:"on_failure,omitempty"`
	// DeviceTimeout is how long a notified device may stay silent (no
	// progress) before it times out. Default 30m.
	DeviceTimeout time.Duration `json:"device_timeout,omitempty"`
	// Retries is how many times a failed (retryable) or timed-out device is
	// notified again, after RetryBackoff doubled per attempt (capped at
	// MaxRetryBackoff). Default 0 retries, 30s backoff.
	Retries      int           `json:"retries,omitempty"`
	RetryBackoff time.Duration `json:"retry_backoff,omitempty"`
	// URLTTL is the lifetime of the download URLs in the commands. Default 1h.
	URLTTL time.Duration `json:"url_ttl,omitempty"`
	// Dynamic records that devices enrolled later may be added.
	Dynamic bool `json:"dynamic,omitempty"`
	// PauseBetweenBatches is a manual approval step: each time a batch
	// has finished (every device in a final state) and passed the success
	// threshold, the rollout pauses instead of starting the next batch;
	// Resume starts it.
	PauseBetweenBatches bool `json:"pause_between_batches,omitempty"`
	// StartAt, when set, holds back every notification and batch start
	// until then (a scheduled rollout).
	StartAt time.Time `json:"start_at,omitzero"`
	// Window, when set, is a daily maintenance window "HH:MM-HH:MM" in
	// WindowTZ (an IANA zone such as "Europe/Berlin"; default UTC). Devices
	// are notified and batches started only inside it; it may cross
	// midnight ("22:00-04:00"). Devices notified before it closed carry
	// on, and their timeouts keep running.
	Window   string `json:"window,omitempty"`
	WindowTZ string `json:"window_tz,omitempty"`
}

// policyAlias has Policy's fields without its JSON methods.
type policyAlias Policy

// MarshalJSON encodes p with its durations as Go duration strings.
func (p Policy) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		policyAlias
		DeviceTimeout jsonDuration `json:"device_timeout,omitempty"`
		RetryBackoff  jsonDuration `json:"retry_backoff,omitempty"`
		URLTTL        jsonDuration `json:"url_ttl,omitempty"`
	}{policyAlias(p), jsonDuration(p.DeviceTimeout), jsonDuration(p.RetryBackoff), jsonDuration(p.URLTTL)})
}

// UnmarshalJSON decodes a Policy encoded by MarshalJSON, or with integer
// nanosecond durations. A malformed duration is an error wrapping
// ErrInvalid.
func (p *Policy) UnmarshalJSON(b []byte) error {
	w := struct {
		*policyAlias
		DeviceTimeout jsonDuration `json:"device_timeout"`
		RetryBackoff  jsonDuration `json:"retry_backoff"`
		URLTTL        jsonDuration `json:"url_ttl"`
	}{(*policyAlias)(p), jsonDuration(p.DeviceTimeout), jsonDuration(p.RetryBackoff), jsonDuration(p.URLTTL)}
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	p.DeviceTimeout, p.RetryBackoff, p.URLTTL = time.Duration(w.DeviceTimeout), time.Duration(w.RetryBackoff), time.Duration(w.URLTTL)
	return nil
}

// jsonDuration is a time.Duration that encodes as a Go duration string
// ("" for zero, so omitempty drops it) and decodes from a string or an
// integer of nanoseconds.
type jsonDuration time.Duration

func (d jsonDuration) MarshalText() ([]byte, error) {
	if d == 0 {
		return []byte{}, nil
	}
	return []byte(time.Duration(d).String()), nil
}

func (d *jsonDuration) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	switch {
	case bytes.Equal(b, []byte("null")):
		return nil
	case len(b) > 0 && b[0] == '"':
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return fmt.Errorf("%w: duration %s: %w", ErrInvalid, b, err)
		}
		if s == "" {
			*d = 0
			return nil
		}
		v, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("%w: duration %q: want e.g. \"90s\" or \"30m\"", ErrInvalid, s)
		}
		*d = jsonDuration(v)
		return nil
	}
	v, err := strconv.ParseInt(string(b), 10, 64)
	if err != nil {
		return fmt.Errorf("%w: duration %s: want a string such as \"30m\" or integer nanoseconds", ErrInvalid, b)
	}
	*d = jsonDuration(v)
	return nil
}

func (p *Policy) setDefaults() {
	if p.SuccessThreshold == 0 {
		p.SuccessThreshold = DefaultSuccessThreshold
	}
	if p.OnFailure == "" {
		p.OnFailure = OnFailurePause
	}
	if p.DeviceTimeout == 0 {
		p.DeviceTimeout = DefaultDeviceTimeout
	}
	if p.RetryBackoff == 0 {
		p.RetryBackoff = DefaultRetryBackoff
	}
	if p.URLTTL == 0 {
		p.URLTTL = DefaultURLTTL
	}
}

// Validate checks p after defaults; the error wraps ErrInvalid.
func (p Policy) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, a...)...)
	}
	pct := func(v float64) bool { return v >= 0 && v <= 100 && !math.IsNaN(v) }
	switch {
	case p.BatchSize < 0 || p.FirstBatch < 0 || p.MaxBatchSize < 0 || p.MaxInFlight < 0 || p.MinSample < 0 || p.FailureCount < 0:
		return bad("batch size, first batch, max batch size, max in flight, min sample and failure count must not be negative")
	case p.BatchSize > 0 && p.BatchPercent > 0:
		return bad("give batch size or batch percent, not both")
	case !pct(p.BatchPercent):
		return bad("batch percent %v not in [0, 100]", p.BatchPercent)
	case p.Ramp != 0 && (p.Ramp < 1 || p.Ramp > 10 || math.IsNaN(p.Ramp)):
		return bad("ramp %v not in [1, 10]", p.Ramp)
	case !pct(p.SuccessThreshold) || p.SuccessThreshold == 0:
		return bad("success threshold %v not in (0, 100]", p.SuccessThreshold)
	case !pct(p.FailurePercent):
		return bad("failure percent %v not in [0, 100]", p.FailurePercent)
	case p.OnFailure != OnFailurePause && p.OnFailure != OnFailureAbort && p.OnFailure != OnFailureRollback:
		return bad("on failure %q: want pause, abort or rollback", p.OnFailure)
	case p.DeviceTimeout < MinDeviceTimeout || p.DeviceTimeout > MaxDeviceTimeout:
		return bad("device timeout %s not in [%s, %s]", p.DeviceTimeout, MinDeviceTimeout, MaxDeviceTimeout)
	case p.Retries < 0 || p.Retries > MaxRetries:
		return bad("retries %d not in [0, %d]", p.Retries, MaxRetries)
	case p.RetryBackoff < 0 || p.RetryBackoff > MaxRetryBackoff:
		return bad("retry backoff %s not in [0, %s]", p.RetryBackoff, MaxRetryBackoff)
	case p.URLTTL < time.Second:
		return bad("url ttl %s below 1s", p.URLTTL)
	case p.WindowTZ != "" && p.Window == "":
		return bad("window tz %q without a window", p.WindowTZ)
	}
	if p.Window != "" {
		if _, err := p.window(); err != nil {
			return err
		}
	}
	return nil
}

// Spec is a request to create a rollout. It has no JSON form: the HTTP
// API's body is wire.CreateRollout.
type Spec struct {
	Firmware firmware.Version
	// Devices are the targets in rollout order. Duplicates are dropped;
	// the list is frozen at creation.
	Devices []device.ID
	// Selector (every label must match) or All (every enrolled device and
	// every device that has a shadow) choose the targets when Devices is
	// nil: Create resolves them from Config.Inventory, sorted by ID. They
	// are recorded either way: a Dynamic rollout takes the devices enrolled
	// later that match them (DevicesEnrolled).
	Selector map[string]string
	All      bool
	// SkipIncompatible leaves out the targets enrolled with another
	// hardware model (HardwareLabel) than the image's, counted in
	// Rollout.Excluded, instead of refusing the rollout.
	SkipIncompatible bool
	Policy
}

// Validate checks s (after defaults are applied to its Policy); the error
// wraps ErrInvalid.
func (s Spec) Validate() error {
	if _, err := firmware.ParseVersion(string(s.Firmware)); err != nil {
		return fmt.Errorf("%w: firmware: %w", ErrInvalid, err)
	}
	if len(s.Devices) == 0 {
		return fmt.Errorf("%w: no target devices", ErrInvalid)
	}
	if len(s.Devices) > MaxTargets {
		return fmt.Errorf("%w: %d targets, at most %d", ErrInvalid, len(s.Devices), MaxTargets)
	}
	for _, id := range s.Devices {
		if _, err := device.ParseID(string(id)); err != nil {
			return fmt.Errorf("%w: target: %w", ErrInvalid, err)
		}
	}
	if s.All && len(s.Selector) > 0 {
		return fmt.Errorf("%w: give a selector or all, not both", ErrInvalid)
	}
	if len(s.Selector) > MaxSelectorLabels {
		return fmt.Errorf("%w: selector of %d labels, at most %d", ErrInvalid, len(s.Selector), MaxSelectorLabels)
	}
	for k, v := range s.Selector {
		if k == "" || len(k) > MaxSelectorText || len(v) > MaxSelectorText {
			return fmt.Errorf("%w: selector label %.40q=%.40q: key must be 1 to %d bytes, value at most %d", ErrInvalid, k, v, MaxSelectorText, MaxSelectorText)
		}
	}
	p := s.Policy
	p.setDefaults()
	if err := p.Validate(); err != nil {
		return err
	}
	if n := len(planBatches(len(s.Devices), p)); n > MaxBatches {
		return fmt.Errorf("%w: %d batches, at most %d: use larger batches", ErrInvalid, n, MaxBatches)
	}
	return nil
}

// Rollout is a rollout's persisted description and progress (without its
// target list; see Planner.Devices). Its JSON is its storage record; the
// API sends wire.Rollout, without the planner's bookkeeping.
type Rollout struct {
	ID       string           `json:"id"`
	Firmware firmware.Version `json:"firmware"`
	State    State            `json:"state"`
	Reason   string           `json:"reason,omitempty"` // why it reached State
	Policy   Policy           `json:"policy"`
	Targets  int              `json:"targets"`
	Batches  []Batch          `json:"batches"`
	Started  int              `json:"batches_started"` // batches started so far
	Created  time.Time        `json:"created"`
	Updated  time.Time        `json:"updated"`
	RetryOf  string           `json:"retry_of,omitempty"` // the rollout this one retries
	// Selector and All are Spec's: how the targets were chosen.
	Selector map[string]string `json:"selector,omitempty"`
	All      bool              `json:"all,omitempty"`
	// Excluded counts the devices left out for a hardware mismatch
	// (Spec.SkipIncompatible).
	Excluded int `json:"excluded,omitempty"`
	// Versions interns the versions devices ran before this rollout
	// (Device.From indexes it from 1).
	Versions []string `json:"versions,omitempty"`
	// Forced is set by Resume to the number of batches started then: that
	// batch may advance although it missed the success threshold.
	Forced int `json:"forced,omitempty"`
	// FailBase is the failure count at the last Resume: the failure
	// threshold trips again only on a new failure.
	FailBase int `json:"fail_base,omitempty"`
	// Rollback asks for the previous version to be written back to the
	// devices that moved.
	Rollback bool `json:"rollback,omitempty"`
	// Settled is set once a finished rollout has no work left.
	Settled bool `json:"settled,omitempty"`
	// Waiting says why a running rollout notifies nobody now (its start
	// time is ahead or its maintenance window is closed; Policy.Waiting),
	// as of the planner's last pass; "" otherwise.
	Waiting string `json:"waiting,omitempty"`
	// Approval is the number of batches started when the rollout paused
	// for approval between batches (Policy.PauseBetweenBatches); Approved
	// is set to it by Resume. The next batch starts only once Approved
	// equals Started.
	Approval int `json:"approval,omitempty"`
	Approved int `json:"approved,omitempty"`
}

// Event is one entry of a rollout's event log.
type Event struct {
	Seq    uint64    `json:"seq"`
	Time   time.Time `json:"time"`
	Kind   string    `json:"kind"` // EventCreated, EventState, …
	State  State     `json:"state,omitempty"`
	Batch  int       `json:"batch,omitempty"`
	Device device.ID `json:"device,omitempty"`
	Reason string    `json:"reason,omitempty"`
}

// Event kinds.
const (
	EventCreated      = "created"
	EventState        = "state"         // State is the new state
	EventBatchStarted = "batch_started" // Batch is its index
	// EventBatchFinished is recorded once when every device of batch Batch
	// is terminal; Reason sums it up, e.g. "48/50 succeeded, 2 failed".
	EventBatchFinished = "batch_finished"
	EventDeviceFailed  = "device_failed" // Device failed or timed out for good
	EventRetry         = "device_retry"  // Device will be notified again
	EventRollback      = "device_rollback"
	EventDevicesAdded  = "devices_added" // to a dynamic rollout
	// EventWaiting is recorded when a running rollout starts or stops
	// waiting for its start time or maintenance window; Reason says why
	// it waits, or "notifying again".
	EventWaiting = "waiting"
)

// Job returns the job string of attempt k of rollout id, echoed back by
// devices in reported.firmware.job.
func Job(id string, attempt int) string { return id + "/" + strconv.Itoa(attempt) }

// planBatches splits n targets into batches as p says.
func planBatches(n int, p Policy) []Batch {
	base := n
	switch {
	case p.BatchSize > 0:
		base = p.BatchSize
	case p.BatchPercent > 0:
		base = int(math.Ceil(float64(n) * p.BatchPercent / 100))
	}
	base = max(base, 1)
	var out []Batch
	start := 0
	take := func(size int) {
		size = min(size, n-start)
		out = append(out, Batch{Start: start, Size: size})
		start += size
	}
	if p.FirstBatch > 0 {
		take(p.FirstBatch)
	}
	size := base
	for start < n {
		take(size)
		if p.Ramp > 1 {
			next := int(math.Ceil(float64(size) * p.Ramp))
			if p.MaxBatchSize > 0 {
				next = min(next, p.MaxBatchSize)
			}
			size = max(next, size)
			size = min(size, n) // no overflow on long ramps
		}
	}
	return out
}

// backoff returns the wait before attempt+1 after attempt failed.
func backoff(p Policy, attempt int) time.Duration {
	d := p.RetryBackoff
	for i := 1; i < attempt && d < MaxRetryBackoff; i++ {
		d *= 2
	}
	return min(d, MaxRetryBackoff)
}
