package shadow

import (
	"strings"

	"github.com/umbra-iot/umbra/internal/device"
)

// Topic filters the engine subscribes to, one per request kind.
const (
	UpdateFilter = "state/+/update"
	GetFilter    = "state/+/get"
	DeleteFilter = "state/+/delete"
)

// RequestFilters lists every filter the engine must be subscribed to.
var RequestFilters = []string{UpdateFilter, GetFilter, DeleteFilter}

// Op is a shadow operation named by a request topic.
type Op string

// The three request operations.
const (
	OpUpdate Op = "update"
	OpGet    Op = "get"
	OpDelete Op = "delete"
)

// Topic returns "state/<id>/<suffix>", e.g. Topic(id, "update/delta").
func Topic(id device.ID, suffix string) string {
	return "state/" + string(id) + "/" + suffix
}

// Topic helpers for the fixed response topics.
func UpdateTopic(id device.ID) string    { return Topic(id, "update") }
func AcceptedTopic(id device.ID) string  { return Topic(id, "update/accepted") }
func RejectedTopic(id device.ID) string  { return Topic(id, "update/rejected") }
func DeltaTopic(id device.ID) string     { return Topic(id, "update/delta") }
func DocumentsTopic(id device.ID) string { return Topic(id, "update/documents") }

// ParseRequestTopic splits a request topic "state/<id>/<op>" into a validated
// device ID and operation. ok is false for any other topic; err is non-nil
// (wrapping device.ErrInvalidID) when the shape is right but the ID is not.
func ParseRequestTopic(topic string) (id device.ID, op Op, ok bool, err error) {
	rest, found := strings.CutPrefix(topic, "state/")
	if !found {
		return "", "", false, nil
	}
	i := strings.LastIndexByte(rest, '/')
	if i < 0 {
		return "", "", false, nil
	}
	switch Op(rest[i+1:]) {
	case OpUpdate, OpGet, OpDelete:
		op = Op(rest[i+1:])
	default:
		return "", "", false, nil
	}
	id, err = device.ParseID(rest[:i])
	return id, op, true, err
}

// deviceOfDeltaFilter reports which device a subscription filter addresses
// such that the subscriber would receive that device's delta: the exact delta
// topic, "state/<id>/update/#", "state/<id>/update/+" or "state/<id>/#".
// Filters with a wildcard in the device position are operators' feeds and
// return ok=false.
func deviceOfDeltaFilter(filter string) (device.ID, bool) {
	rest, found := strings.CutPrefix(filter, "state/")
	if !found {
		return "", false
	}
	i := strings.IndexByte(rest, '/')
	if i < 0 {
		return "", false
	}
	switch rest[i+1:] {
	case "update/delta", "update/#", "update/+", "#":
	default:
		return "", false
	}
	id, err := device.ParseID(rest[:i])
	if err != nil {
		return "", false
	}
	return id, true
}
