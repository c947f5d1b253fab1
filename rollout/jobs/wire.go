package jobs

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/rollout"
	"github.com/umbra-iot/umbra/wire"
)

// Filters are the topic filters the service must be subscribed to (with
// HandleRequest): every operation under $aws/things/<thing>/jobs/, so that
// one Umbra does not serve is answered InvalidTopic rather than dropped.
// They also match the service's own notifications and the replies of get
// and start-next, which HandleRequest ignores (they come from the broker
// itself, with no client ID).
var Filters = []string{"$aws/things/+/jobs/+", "$aws/things/+/jobs/+/+"}

// Code is an AWS IoT Jobs error code, the "code" of a /rejected reply: a
// string, unlike the shadow service's numbers.
type Code string

// The error codes of AWS IoT Jobs.
const (
	CodeInvalidTopic           Code = "InvalidTopic"
	CodeInvalidJSON            Code = "InvalidJson"
	CodeInvalidRequest         Code = "InvalidRequest"
	CodeInvalidStateTransition Code = "InvalidStateTransition"
	CodeResourceNotFound       Code = "ResourceNotFound"
	CodeVersionMismatch        Code = "VersionMismatch"
	CodeInternalError          Code = "InternalError"
	CodeRequestThrottled       Code = "RequestThrottled"
	CodeTerminalStateReached   Code = "TerminalStateReached"
)

// Op is a Jobs request operation, as topics name it.
type Op string

// The operations. OpUnknown labels a request for an operation Umbra does
// not serve (in metrics too, so their labels stay bounded).
const (
	OpGetPending Op = "get"
	OpStartNext  Op = "start-next"
	OpDescribe   Op = "describe" // <jobId>/get, $next/get
	OpUpdate     Op = "update"   // <jobId>/update
	OpUnknown    Op = "unknown"
)

// Limits of a request (AWS IoT Jobs' own).
const (
	MaxClientToken  = 64                   // bytes
	MaxStepTimeout  = 10080                // minutes (7 days)
	MaxJobIDLength  = wire.MaxRolloutIDLen // a job ID is a rollout ID
	maxExecutionNum = 1 << 31
)

// Topic returns $aws/things/<thing>/jobs/<suffix>.
func Topic(thing device.ID, suffix string) string {
	return "$aws/things/" + string(thing) + "/jobs/" + suffix
}

// request is a parsed request topic.
type request struct {
	topic string
	thing device.ID
	op    Op
	job   string // OpDescribe, OpUpdate
}

// parseTopic reads a topic matched by Filters. ok is false for a topic
// that is not a request (a notification or a reply, or not under
// $aws/things/<thing>/jobs/); err is set for a request that names no
// operation Umbra serves (answered InvalidTopic on topic + "/rejected").
func parseTopic(topic string) (req request, ok bool, err error) {
	rest, found := strings.CutPrefix(topic, "$aws/things/")
	if !found {
		return request{}, false, nil
	}
	thing, rest, found := strings.Cut(rest, "/jobs/")
	if !found || thing == "" || strings.Contains(thing, "/") {
		return request{}, false, nil
	}
	req = request{topic: topic, thing: device.ID(thing), op: OpUnknown}
	levels := strings.Split(rest, "/")
	last := levels[len(levels)-1]
	switch {
	case len(levels) > 2:
		return request{}, false, nil
	case len(levels) == 1 && (last == "notify" || last == "notify-next"):
		return request{}, false, nil // a notification
	case len(levels) == 2 && (last == "accepted" || last == "rejected"):
		return request{}, false, nil // a reply
	}
	if _, perr := device.ParseID(thing); perr != nil {
		return req, true, fmt.Errorf("invalid thing name %.64q", thing)
	}
	switch {
	case len(levels) == 1 && last == "get":
		req.op = OpGetPending
	case len(levels) == 1 && last == "start-next":
		req.op = OpStartNext
	case len(levels) == 2 && (last == "get" || last == "update"):
		req.op, req.job = OpDescribe, levels[0]
		if last == "update" {
			req.op = OpUpdate
		}
		if _, err := wire.ParseRolloutID(req.job); err != nil && !(req.op == OpDescribe && req.job == rollout.NextJob) {
			return req, true, fmt.Errorf("invalid jobId %.64q in topic", req.job)
		}
	default:
		return req, true, fmt.Errorf("unsupported jobs operation %.64q", rest)
	}
	return req, true, nil
}

// reqError is a request refused with an AWS IoT Jobs code.
type reqError struct {
	code  Code
	msg   string
	state *rollout.ExecutionState // for InvalidStateTransition, VersionMismatch, TerminalStateReached
}

func (e *reqError) Error() string { return string(e.code) + ": " + e.msg }

func fail(code Code, format string, a ...any) *reqError {
	return &reqError{code: code, msg: fmt.Sprintf(format, a...)}
}

// fields is a request payload: a JSON object, its members undecoded.
type fields map[string]json.RawMessage

// parsePayload reads a request payload: a JSON object (an empty payload
// counts as {}), valid UTF-8. It returns the client token when one could
// be read, even with an error, so that the rejection can carry it.
func parsePayload(payload []byte) (fields, string, *reqError) {
	if len(bytes.TrimSpace(payload)) == 0 {
		return fields{}, "", nil
	}
	if !utf8.Valid(payload) || !json.Valid(payload) {
		return nil, "", fail(CodeInvalidJSON, "Payload is not valid UTF-8 JSON")
	}
	var f fields
	if err := json.Unmarshal(payload, &f); err != nil || f == nil {
		return nil, "", fail(CodeInvalidRequest, "Payload must be a JSON object")
	}
	raw, ok := f["clientToken"]
	if !ok || string(raw) == "null" {
		return f, "", nil
	}
	var token string
	if err := json.Unmarshal(raw, &token); err != nil {
		return nil, "", fail(CodeInvalidRequest, "clientToken must be a string")
	}
	if len(token) > MaxClientToken {
		return nil, "", fail(CodeInvalidRequest, "clientToken is %d bytes, at most %d", len(token), MaxClientToken)
	}
	return f, token, nil
}

// has reports whether name is present and not null.
func (f fields) has(name string) bool {
	raw, ok := f[name]
	return ok && string(raw) != "null"
}

func (f fields) bool(name string, def bool) (bool, *reqError) {
	if !f.has(name) {
		return def, nil
	}
	var v bool
	if err := json.Unmarshal(f[name], &v); err != nil {
		return false, fail(CodeInvalidRequest, "%s must be a boolean", name)
	}
	return v, nil
}

// int reads an integer member in [lo, hi]; present reports whether it
// was given.
func (f fields) int(name string, lo, hi int64) (v int64, present bool, rerr *reqError) {
	if !f.has(name) {
		return 0, false, nil
	}
	v, err := strconv.ParseInt(string(f[name]), 10, 64)
	if err != nil || v < lo || v > hi {
		return 0, true, fail(CodeInvalidRequest, "%s must be an integer from %d to %d", name, lo, hi)
	}
	return v, true, nil
}

// details reads statusDetails: nil when absent or null.
func (f fields) details() (map[string]string, *reqError) {
	if !f.has("statusDetails") {
		return nil, nil
	}
	var d map[string]string
	if err := json.Unmarshal(f["statusDetails"], &d); err != nil {
		return nil, fail(CodeInvalidRequest, "statusDetails must be an object of strings")
	}
	if d == nil {
		d = map[string]string{}
	}
	if err := rollout.ValidateStatusDetails(d); err != nil {
		return nil, fail(CodeInvalidRequest, "%s", strings.TrimPrefix(err.Error(), rollout.ErrInvalid.Error()+": "))
	}
	return d, nil
}

// stepTimeout checks stepTimeoutInMinutes: 1 to MaxStepTimeout, or -1
// (AWS: cancel the step timer). It is validated, not applied: the
// rollout's device timeout applies.
func (f fields) stepTimeout() *reqError {
	if v, _, err := f.int("stepTimeoutInMinutes", -1, MaxStepTimeout); err != nil || v == 0 && f.has("stepTimeoutInMinutes") {
		return fail(CodeInvalidRequest, "stepTimeoutInMinutes must be -1 or an integer from 1 to %d", MaxStepTimeout)
	}
	return nil
}

// MsgPlannerUnavailable is the message of the InternalError rejection of
// a request that found no rollout planner (rollout.ErrUnavailable: in
// cluster mode, no node holds the planner lease during a failover).
const MsgPlannerUnavailable = "Service unavailable: no node runs the rollout planner now (a failover is in progress); retry in a few seconds"

// errorCode maps an error of the planner to its AWS IoT Jobs code.
func errorCode(err error) *reqError {
	var ee *rollout.ExecutionError
	var re *reqError
	switch {
	case errors.As(err, &re):
		return re
	case errors.As(err, &ee):
		st := ee.State
		code := CodeInvalidStateTransition
		if errors.Is(err, rollout.ErrVersionMismatch) {
			code = CodeVersionMismatch
		}
		return &reqError{code: code, msg: capitalize(ee.Msg), state: &st}
	case errors.Is(err, rollout.ErrNotFound):
		return fail(CodeResourceNotFound, "%s", capitalize(notFoundText(err)))
	case errors.Is(err, rollout.ErrInvalid):
		return fail(CodeInvalidRequest, "%s", capitalize(strings.TrimPrefix(err.Error(), rollout.ErrInvalid.Error()+": ")))
	case errors.Is(err, rollout.ErrUnavailable):
		// Cluster mode mid-failover: InternalError is the code every AWS
		// SDK knows for a server-side fault; the message says to retry.
		return fail(CodeInternalError, "%s", MsgPlannerUnavailable)
	}
	return fail(CodeInternalError, "Internal error")
}

// notFoundText is the planner's reason without its call chain.
func notFoundText(err error) string {
	s := err.Error()
	if i := strings.LastIndex(s, rollout.ErrNotFound.Error()+": "); i >= 0 {
		return s[i+len(rollout.ErrNotFound.Error())+2:]
	}
	return "Not found"
}

// The reply payloads, field by field as AWS IoT Jobs. Timestamps are
// epoch seconds.

type wireExecution struct {
	JobID           string            `json:"jobId"`
	ThingName       string            `json:"thingName"`
	JobDocument     json.RawMessage   `json:"jobDocument,omitempty"`
	Status          string            `json:"status"`
	StatusDetails   map[string]string `json:"statusDetails,omitempty"`
	QueuedAt        int64             `json:"queuedAt"`
	StartedAt       int64             `json:"startedAt,omitempty"`
	LastUpdatedAt   int64             `json:"lastUpdatedAt"`
	VersionNumber   int64             `json:"versionNumber"`
	ExecutionNumber int               `json:"executionNumber"`
}

type wireSummary struct {
	JobID           string `json:"jobId"`
	QueuedAt        int64  `json:"queuedAt"`
	StartedAt       int64  `json:"startedAt,omitempty"`
	LastUpdatedAt   int64  `json:"lastUpdatedAt"`
	VersionNumber   int64  `json:"versionNumber"`
	ExecutionNumber int    `json:"executionNumber"`
}

type wireState struct {
	Status        string            `json:"status"`
	StatusDetails map[string]string `json:"statusDetails,omitempty"`
	VersionNumber int64             `json:"versionNumber"`
}

type wireError struct {
	Code           Code       `json:"code"`
	Message        string     `json:"message"`
	ClientToken    string     `json:"clientToken,omitempty"`
	Timestamp      int64      `json:"timestamp"`
	ExecutionState *wireState `json:"executionState,omitempty"`
}

type wirePending struct {
	InProgressJobs []wireSummary `json:"inProgressJobs"`
	QueuedJobs     []wireSummary `json:"queuedJobs"`
	Timestamp      int64         `json:"timestamp"`
	ClientToken    string        `json:"clientToken,omitempty"`
}

type wireDescribe struct {
	Execution   *wireExecution `json:"execution,omitempty"`
	Timestamp   int64          `json:"timestamp"`
	ClientToken string         `json:"clientToken,omitempty"`
}

type wireUpdate struct {
	ExecutionState *wireState      `json:"executionState,omitempty"`
	JobDocument    json.RawMessage `json:"jobDocument,omitempty"`
	Timestamp      int64           `json:"timestamp"`
	ClientToken    string          `json:"clientToken,omitempty"`
}

type wireNotifyNext struct {
	Timestamp int64          `json:"timestamp"`
	Execution *wireExecution `json:"execution,omitempty"`
}

type wireNotify struct {
	Timestamp int64                    `json:"timestamp"`
	Jobs      map[string][]wireSummary `json:"jobs"`
}

// marshal encodes v as JSON without escaping <, > and & (the "&" of a
// download URL stays readable, as AWS sends it).
func marshal(v any) ([]byte, error) { return wire.Marshal(v) }

// capitalize upper-cases the first letter of a planner's error message.
func capitalize(s string) string {
	if s == "" || s[0] < 'a' || s[0] > 'z' {
		return s
	}
	return string(s[0]-'a'+'A') + s[1:]
}

func epoch(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.Unix()
}

func execution(x rollout.Execution, doc json.RawMessage) *wireExecution {
	return &wireExecution{JobID: x.JobID, ThingName: string(x.Device), JobDocument: doc, Status: string(x.Status),
		StatusDetails: nonEmpty(x.Details), QueuedAt: epoch(x.QueuedAt), StartedAt: epoch(x.StartedAt),
		LastUpdatedAt: epoch(x.UpdatedAt), VersionNumber: x.Version, ExecutionNumber: x.Number}
}

func summary(x rollout.Execution) wireSummary {
	return wireSummary{JobID: x.JobID, QueuedAt: epoch(x.QueuedAt), StartedAt: epoch(x.StartedAt),
		LastUpdatedAt: epoch(x.UpdatedAt), VersionNumber: x.Version, ExecutionNumber: x.Number}
}

func state(st rollout.ExecutionState) *wireState {
	return &wireState{Status: string(st.Status), StatusDetails: nonEmpty(st.Details), VersionNumber: st.Version}
}

func nonEmpty(m map[string]string) map[string]string {
	if len(m) == 0 {
		return nil
	}
	return maps.Clone(m)
}

// pendingLists splits pending executions into in-progress and queued
// summaries (never nil: AWS sends empty arrays).
func pendingLists(xs []rollout.Execution) (inProgress, queued []wireSummary) {
	inProgress, queued = []wireSummary{}, []wireSummary{}
	for _, x := range xs {
		if x.Status == rollout.ExecInProgress {
			inProgress = append(inProgress, summary(x))
		} else {
			queued = append(queued, summary(x))
		}
	}
	return inProgress, queued
}

// notifyJobs is the "jobs" of a notify message: summaries by status, only
// the statuses that have some.
func notifyJobs(xs []rollout.Execution) map[string][]wireSummary {
	out := map[string][]wireSummary{}
	inProgress, queued := pendingLists(xs)
	for k, v := range map[string][]wireSummary{"IN_PROGRESS": inProgress, "QUEUED": queued} {
		if len(v) > 0 {
			out[k] = v
		}
	}
	return out
}
