package plannerrpc

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/firmware"
	"github.com/umbra-iot/umbra/rollout"
	"github.com/umbra-iot/umbra/wire"
)

// Version is the version of the RPC's payloads. A node refuses a request
// or a reply of another version with an error naming both.
const Version = 1

// Defaults.
const (
	// DefaultSubject is the NATS subject of the requests.
	DefaultSubject = "umbra.planner.rpc"
	// DefaultMaxBody bounds a request and a reply: below nats-server's
	// default max_payload (1 MB), with room for the headers.
	DefaultMaxBody = 1000 << 10
	// DefaultMaxInflight bounds a Client's outstanding calls and a
	// Server's running requests.
	DefaultMaxInflight = 256
	// DefaultTimeout bounds a call whose context has no deadline.
	DefaultTimeout = 10 * time.Second
	// DefaultMaxStaged bounds the explicit device IDs a Server holds in
	// staged creates (parts of creates not yet complete), across callers.
	DefaultMaxStaged = 1_000_000
	// maxStageLen bounds a staged create's token.
	maxStageLen = 64
	// maxServerTimeout caps the deadline a request asks the leader for.
	maxServerTimeout = time.Minute
	// maxIDLen bounds a rollout or job ID in a request.
	maxIDLen = 256
	// maxIncompatible bounds the devices an incompatible-hardware error
	// carries (the HTTP API lists at most 100).
	maxIncompatible = 100
)

// Planner is every planner call a node makes: the rollout API, the Jobs
// API, firmware's in-use check and the enrolment hook. *rollout.Planner
// and *Client satisfy it; Server answers from one.
type Planner interface {
	Create(ctx context.Context, spec rollout.Spec) (rollout.Rollout, error)
	Preview(ctx context.Context, spec rollout.Spec) (rollout.Rollout, error)
	Get(ctx context.Context, id string) (rollout.Status, error)
	List(ctx context.Context) ([]rollout.Rollout, error)
	DevicesPage(ctx context.Context, id string, states []rollout.DeviceState, start, limit int) ([]rollout.DeviceStatus, int, error)
	EventsAfter(ctx context.Context, id string, after uint64) ([]rollout.Event, error)
	Pause(ctx context.Context, id string) (rollout.Rollout, error)
	Resume(ctx context.Context, id string) (rollout.Rollout, error)
	Abort(ctx context.Context, id string, rollback bool) (rollout.Rollout, error)
	Rollback(ctx context.Context, id string) (rollout.Rollout, error)
	Retry(ctx context.Context, id string) (rollout.Rollout, error)
	AddDevices(ctx context.Context, id string, devices []device.ID) (rollout.Rollout, error)

	MarkJobs(ctx context.Context, id device.ID) error
	NextExecution(ctx context.Context, id device.ID) (rollout.Execution, bool, error)
	DescribeExecution(ctx context.Context, id device.ID, jobID string, number int) (rollout.Execution, error)
	StartNextExecution(ctx context.Context, id device.ID, details map[string]string) (rollout.Execution, bool, error)
	UpdateExecution(ctx context.Context, id device.ID, jobID string, u rollout.ExecutionUpdate) (rollout.Execution, error)

	InUse(ctx context.Context, v firmware.Version) (string, bool, error)
	DevicesEnrolled(ctx context.Context, devs []rollout.EnrolledDevice)
}

var _ Planner = (*rollout.Planner)(nil)

// The operations, one per Planner method.
const (
	opCreate          = "create"
	opPreview         = "preview"
	opGet             = "get"
	opList            = "list"
	opDevices         = "devices"
	opEvents          = "events"
	opPause           = "pause"
	opResume          = "resume"
	opAbort           = "abort"
	opRollback        = "rollback"
	opRetry           = "retry"
	opAddDevices      = "add_devices"
	opMarkJobs        = "mark_jobs"
	opNextExecution   = "next_execution"
	opDescribe        = "describe_execution"
	opStartNext       = "start_next_execution"
	opUpdateExecution = "update_execution"
	opInUse           = "in_use"
	opEnrolled        = "devices_enrolled"
	// opStage sends one part of the explicit device list of a create or
	// preview too large for one message (Client.Create splits it); the
	// create or preview naming the same stage commits them all at once.
	opStage = "stage_devices"
)

// What each operation needs in its request.
type need uint8

const (
	needID     need = 1 << iota // a rollout ID
	needDevice                  // a device ID
	needSpec
	needDevices
	needUpdate
	needVersion
	needEnrolled
	needStage
)

var ops = map[string]need{
	opCreate: needSpec, opPreview: needSpec, opGet: needID, opList: 0, opDevices: needID, opEvents: needID,
	opPause: needID, opResume: needID, opAbort: needID, opRollback: needID, opRetry: needID,
	opAddDevices: needID | needDevices, opMarkJobs: needDevice, opNextExecution: needDevice,
	opDescribe: needDevice, opStartNext: needDevice, opUpdateExecution: needDevice | needID | needUpdate,
	opInUse: needVersion, opEnrolled: needEnrolled, opStage: needStage | needDevices,
}

// request is one call. ID is the rollout (or, for the Jobs calls, the
// job) ID.
type request struct {
	V       int    `json:"v"`
	Op      string `json:"op"`
	From    string `json:"from,omitempty"`       // the calling node, for the logs
	Timeout int64  `json:"timeout_ms,omitempty"` // the caller's remaining deadline

	ID       string                `json:"id,omitempty"`
	Device   device.ID             `json:"device,omitempty"`
	Spec     *spec                 `json:"spec,omitempty"`
	States   []rollout.DeviceState `json:"states,omitempty"`
	Start    int                   `json:"start,omitempty"`
	Limit    int                   `json:"limit,omitempty"`
	After    uint64                `json:"after,omitempty"`
	Rollback bool                  `json:"rollback,omitempty"`
	Devices  []device.ID           `json:"devices,omitempty"`
	Enrolled []enrolled            `json:"enrolled,omitempty"`
	Number   int                   `json:"number,omitempty"`
	Details  map[string]string     `json:"details,omitempty"`
	Update   *update               `json:"update,omitempty"`
	Version  firmware.Version      `json:"version,omitempty"`
	// Stage names a staged create (opStage, and the create or preview
	// that completes it); Part is a stage part's index, from 0, and on
	// the completing create the number of parts staged before it.
	Stage string `json:"stage,omitempty"`
	Part  int    `json:"part,omitempty"`
}

// spec is rollout.Spec's JSON form (Spec embeds Policy, whose MarshalJSON
// would otherwise encode the Policy alone).
type spec struct {
	Firmware         firmware.Version  `json:"firmware"`
	Devices          []device.ID       `json:"devices,omitempty"`
	Selector         map[string]string `json:"selector,omitempty"`
	All              bool              `json:"all,omitempty"`
	SkipIncompatible bool              `json:"skip_incompatible,omitempty"`
	Policy           rollout.Policy    `json:"policy"`
}

func specOf(s rollout.Spec) *spec {
	return &spec{Firmware: s.Firmware, Devices: s.Devices, Selector: s.Selector, All: s.All,
		SkipIncompatible: s.SkipIncompatible, Policy: s.Policy}
}

func (s *spec) rollout() rollout.Spec {
	return rollout.Spec{Firmware: s.Firmware, Devices: s.Devices, Selector: s.Selector, All: s.All,
		SkipIncompatible: s.SkipIncompatible, Policy: s.Policy}
}

type enrolled struct {
	ID     device.ID         `json:"id"`
	Labels map[string]string `json:"labels,omitempty"`
}

// update is rollout.ExecutionUpdate's JSON form.
type update struct {
	Status          rollout.ExecStatus `json:"status"`
	Details         map[string]string  `json:"details,omitempty"`
	ExpectedVersion int64              `json:"expected_version,omitempty"`
	CheckVersion    bool               `json:"check_version,omitempty"`
	Number          int                `json:"number,omitempty"`
}

// execution is rollout.Execution's JSON form.
type execution struct {
	JobID     string             `json:"job_id"`
	Device    device.ID          `json:"device"`
	Number    int                `json:"number"`
	Status    rollout.ExecStatus `json:"status"`
	Details   map[string]string  `json:"details,omitempty"`
	Version   int64              `json:"version"`
	QueuedAt  time.Time          `json:"queued_at,omitzero"`
	StartedAt time.Time          `json:"started_at,omitzero"`
	UpdatedAt time.Time          `json:"updated_at,omitzero"`
	Firmware  firmware.Version   `json:"firmware"`
	Job       string             `json:"job"`
	URLTTL    time.Duration      `json:"url_ttl_ns"`
}

func executionOf(x rollout.Execution) *execution {
	return &execution{JobID: x.JobID, Device: x.Device, Number: x.Number, Status: x.Status, Details: x.Details,
		Version: x.Version, QueuedAt: x.QueuedAt, StartedAt: x.StartedAt, UpdatedAt: x.UpdatedAt,
		Firmware: x.Firmware, Job: x.Job, URLTTL: x.URLTTL}
}

func (x *execution) rollout() rollout.Execution {
	if x == nil {
		return rollout.Execution{}
	}
	return rollout.Execution{JobID: x.JobID, Device: x.Device, Number: x.Number, Status: x.Status, Details: x.Details,
		Version: x.Version, QueuedAt: x.QueuedAt, StartedAt: x.StartedAt, UpdatedAt: x.UpdatedAt,
		Firmware: x.Firmware, Job: x.Job, URLTTL: x.URLTTL}
}

// reply is one call's answer: Err, or the results of the operation.
type reply struct {
	V   int       `json:"v"`
	Err *rpcError `json:"err,omitempty"`

	Rollout   *rollout.Rollout       `json:"rollout,omitempty"`
	Status    *rollout.Status        `json:"status,omitempty"`
	Rollouts  []rollout.Rollout      `json:"rollouts,omitempty"`
	Devices   []rollout.DeviceStatus `json:"devices,omitempty"`
	Total     int                    `json:"total,omitempty"`
	Events    []rollout.Event        `json:"events,omitempty"`
	Execution *execution             `json:"execution,omitempty"`
	Found     bool                   `json:"found,omitempty"`
	InUse     string                 `json:"in_use,omitempty"`
}

// rpcError is an error in a reply: its message, the sentinels it wraps,
// and the data of the typed errors the edges read.
type rpcError struct {
	Msg          string          `json:"msg"`
	Kinds        []string        `json:"kinds,omitempty"`
	Conflict     *conflict       `json:"conflict,omitempty"`
	Incompatible *incompatible   `json:"incompatible,omitempty"`
	Execution    *executionState `json:"execution,omitempty"`
}

type conflict struct {
	Device  device.ID `json:"device"`
	Rollout string    `json:"rollout"`
}

type incompatible struct {
	Firmware firmware.Version     `json:"firmware"`
	HW       string               `json:"hw"`
	Devices  []incompatibleDevice `json:"devices"`
}

type incompatibleDevice struct {
	ID device.ID `json:"id"`
	HW string    `json:"hw"`
}

type executionState struct {
	Status  rollout.ExecStatus `json:"status"`
	Details map[string]string  `json:"details,omitempty"`
	Version int64              `json:"version"`
}

// sentinels are the errors a reply names, in the order they are checked.
var sentinels = []struct {
	kind string
	err  error
}{
	{"invalid", rollout.ErrInvalid},
	{"not_found", rollout.ErrNotFound},
	{"conflict", rollout.ErrConflict},
	{"state", rollout.ErrState},
	{"incompatible", rollout.ErrIncompatible},
	{"terminal", rollout.ErrTerminal},
	{"version_mismatch", rollout.ErrVersionMismatch},
	{"unavailable", rollout.ErrUnavailable},
	{"unavailable", rollout.ErrClosed}, // the leader's planner closed: the lease is moving
	{"firmware_not_found", firmware.ErrNotFound},
	{"firmware_invalid_version", firmware.ErrInvalidVersion},
	{"invalid_id", device.ErrInvalidID},
}

// encodeError is err as a reply carries it.
func encodeError(err error) *rpcError {
	e := &rpcError{Msg: err.Error()}
	for _, s := range sentinels {
		if errors.Is(err, s.err) && !contains(e.Kinds, s.kind) {
			e.Kinds = append(e.Kinds, s.kind)
		}
	}
	if ce, ok := errors.AsType[*rollout.ConflictError](err); ok {
		e.Conflict = &conflict{Device: ce.Device, Rollout: ce.Rollout}
	}
	if ie, ok := errors.AsType[*rollout.IncompatibleError](err); ok && len(ie.Devices) > 0 {
		e.Incompatible = &incompatible{Firmware: ie.Firmware, HW: ie.HW}
		for _, d := range ie.Devices[:min(len(ie.Devices), maxIncompatible)] {
			e.Incompatible.Devices = append(e.Incompatible.Devices, incompatibleDevice{ID: d.ID, HW: d.HW})
		}
	}
	if xe, ok := errors.AsType[*rollout.ExecutionError](err); ok {
		e.Execution = &executionState{Status: xe.State.Status, Details: xe.State.Details, Version: xe.State.Version}
	}
	return e
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// remoteError is an error the leader returned, rebuilt: its message, and
// the sentinels and typed errors it wrapped there.
type remoteError struct {
	msg  string
	errs []error
}

func (e *remoteError) Error() string   { return e.msg }
func (e *remoteError) Unwrap() []error { return e.errs }

// decodeError rebuilds the error e describes. Kinds this release does not
// know (a newer leader's) are left out.
func decodeError(e *rpcError) error {
	re := &remoteError{msg: e.Msg}
	kinds := map[string]bool{}
	for _, k := range e.Kinds {
		kinds[k] = true
	}
	for _, s := range sentinels {
		if kinds[s.kind] && !containsErr(re.errs, s.err) && s.err != rollout.ErrClosed {
			re.errs = append(re.errs, s.err)
		}
	}
	if c := e.Conflict; c != nil {
		re.errs = append(re.errs, &rollout.ConflictError{Device: c.Device, Rollout: c.Rollout})
	}
	if ie := e.Incompatible; ie != nil && len(ie.Devices) > 0 {
		out := &rollout.IncompatibleError{Firmware: ie.Firmware, HW: ie.HW}
		for _, d := range ie.Devices {
			out.Devices = append(out.Devices, rollout.IncompatibleDevice{ID: d.ID, HW: d.HW})
		}
		re.errs = append(re.errs, out)
	}
	if x := e.Execution; x != nil {
		sentinel := rollout.ErrTerminal
		if kinds["version_mismatch"] {
			sentinel = rollout.ErrVersionMismatch
		}
		re.errs = append(re.errs, &rollout.ExecutionError{Err: sentinel, Msg: executionMsg(e.Msg, sentinel),
			State: rollout.ExecutionState{Status: x.Status, Details: x.Details, Version: x.Version}})
	}
	return re
}

// executionMsg is the Msg of an *rollout.ExecutionError whose Error() was
// msg: the text after its sentinel's.
func executionMsg(msg string, sentinel error) string {
	prefix := sentinel.Error() + ": "
	for i := 0; i+len(prefix) <= len(msg); i++ {
		if msg[i:i+len(prefix)] == prefix {
			return msg[i+len(prefix):]
		}
	}
	return msg
}

func containsErr(errs []error, err error) bool {
	for _, e := range errs {
		if e == err {
			return true
		}
	}
	return false
}

// validate checks r as the receiving side must before the planner sees
// it. The error says what is wrong, for the caller.
func (r *request) validate() error {
	if r.V != Version {
		return fmt.Errorf("%w: planner RPC version %d from node %q, this node speaks version %d: run nodes of one Umbra release",
			rollout.ErrUnavailable, r.V, r.From, Version)
	}
	n, ok := ops[r.Op]
	if !ok {
		return fmt.Errorf("%w: planner RPC: unknown operation %.40q", rollout.ErrInvalid, r.Op)
	}
	if r.Timeout < 0 || r.Start < 0 || r.Limit < 0 || r.Number < 0 || r.Part < 0 {
		return fmt.Errorf("%w: planner RPC %s: negative timeout, start, limit or number", rollout.ErrInvalid, r.Op)
	}
	if r.Limit > wire.MaxListLimit {
		return fmt.Errorf("%w: planner RPC %s: limit %d, at most %d", rollout.ErrInvalid, r.Op, r.Limit, wire.MaxListLimit)
	}
	if n&needID != 0 && (r.ID == "" || len(r.ID) > maxIDLen) {
		return fmt.Errorf("%w: planner RPC %s: a rollout ID of 1 to %d bytes is required", rollout.ErrInvalid, r.Op, maxIDLen)
	}
	if n&(needDevice) != 0 {
		if _, err := device.ParseID(string(r.Device)); err != nil {
			return fmt.Errorf("%w: planner RPC %s: device: %w", rollout.ErrInvalid, r.Op, err)
		}
	}
	if r.Stage != "" && n&(needStage|needSpec) == 0 {
		return fmt.Errorf("%w: planner RPC %s: stage is only for %s, %s and %s", rollout.ErrInvalid, r.Op, opStage, opCreate, opPreview)
	}
	if len(r.Stage) > maxStageLen || (n&needStage != 0 && r.Stage == "") {
		return fmt.Errorf("%w: planner RPC %s: a stage of 1 to %d bytes is required", rollout.ErrInvalid, r.Op, maxStageLen)
	}
	if n&needSpec != 0 && r.Spec == nil {
		return fmt.Errorf("%w: planner RPC %s: spec is required", rollout.ErrInvalid, r.Op)
	}
	if n&needDevices != 0 && len(r.Devices) == 0 {
		return fmt.Errorf("%w: planner RPC %s: devices are required", rollout.ErrInvalid, r.Op)
	}
	for _, id := range r.Devices {
		if _, err := device.ParseID(string(id)); err != nil {
			return fmt.Errorf("%w: planner RPC %s: device: %w", rollout.ErrInvalid, r.Op, err)
		}
	}
	if n&needEnrolled != 0 && len(r.Enrolled) == 0 {
		return fmt.Errorf("%w: planner RPC %s: enrolled devices are required", rollout.ErrInvalid, r.Op)
	}
	for _, e := range r.Enrolled {
		if _, err := device.ParseID(string(e.ID)); err != nil {
			return fmt.Errorf("%w: planner RPC %s: enrolled device: %w", rollout.ErrInvalid, r.Op, err)
		}
	}
	if n&needUpdate != 0 && r.Update == nil {
		return fmt.Errorf("%w: planner RPC %s: update is required", rollout.ErrInvalid, r.Op)
	}
	if n&needVersion != 0 {
		if _, err := firmware.ParseVersion(string(r.Version)); err != nil {
			return fmt.Errorf("%w: planner RPC %s: version: %w", rollout.ErrInvalid, r.Op, err)
		}
	}
	for _, s := range r.States {
		if !s.Valid() {
			return fmt.Errorf("%w: planner RPC %s: unknown device state %d", rollout.ErrInvalid, r.Op, s)
		}
	}
	return nil
}
