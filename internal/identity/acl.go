package identity

import (
	"fmt"
	"strings"

	"github.com/umbra-iot/umbra/internal/device"
)

// Role is what a principal may do.
type Role string

// The three roles.
const (
	// RoleDevice is one device: it may use its own shadow topics only.
	RoleDevice Role = "device"
	// RoleOperator may send shadow requests for any device and read
	// everything.
	RoleOperator Role = "operator"
	// RoleIntegrator is read-only: it may receive accepted, delta and
	// documents events and presence of all devices, and rollout events.
	RoleIntegrator Role = "integrator"
)

// ParseRole validates s as the role of a token: RoleOperator or
// RoleIntegrator. Device credentials are created with AddDevice, not as
// tokens, so RoleDevice is refused. The error wraps ErrInvalidRole.
func ParseRole(s string) (Role, error) {
	switch r := Role(s); r {
	case RoleOperator, RoleIntegrator:
		return r, nil
	}
	return "", fmt.Errorf("%w: %q (want %q or %q)", ErrInvalidRole, s, RoleOperator, RoleIntegrator)
}

// Principal is an authenticated party: a device or a token.
type Principal struct {
	// Role decides what the principal may do.
	Role Role
	// Name is the device ID for a device and the token name for a token.
	Name string
	// Device is the device a RoleDevice principal is; "" for tokens.
	Device device.ID
}

// CanReadDevice reports whether p may read device id's shadow and presence
// (over HTTP, say): a device only its own, operators and integrators all.
func (p Principal) CanReadDevice(id device.ID) bool {
	switch p.Role {
	case RoleDevice:
		return p.Device != "" && p.Device == id
	case RoleOperator, RoleIntegrator:
		return true
	}
	return false
}

// CanWriteDevice reports whether p may update or delete device id's shadow:
// a device only its own, operators all, integrators none.
func (p Principal) CanWriteDevice(id device.ID) bool {
	switch p.Role {
	case RoleDevice:
		return p.Device != "" && p.Device == id
	case RoleOperator:
		return true
	}
	return false
}

// requestOps are the last topic levels of the shadow request topics, the
// only topics any client may publish on.
var requestOps = []string{"update", "get", "delete"}

// integratorFilters are the filters whose topics an integrator may read,
// split into levels.
var integratorFilters = [][]string{
	{"state", "+", "update", "accepted"},
	{"state", "+", "update", "documents"},
	{"state", "+", "update", "delta"},
	{"state", "+", "presence"},
	{"rollouts", "#"},
}

// Allow reports whether p may publish to topic (write true) or subscribe to
// the filter topic and receive a message on topic (write false). It is a
// pure function of its arguments:
//
//   - A device may publish only on state/<own>/update, …/get and …/delete,
//     and may subscribe to filters under state/<own>/ or firmware/<own>/
//     (wildcards only below its own ID level).
//   - An operator may publish requests (update, get, delete) for any device
//     and subscribe to anything.
//   - An integrator publishes nothing and may subscribe only to filters
//     covered by state/+/update/accepted, …/documents, …/delta,
//     state/+/presence and rollouts/#.
//
// Nobody may publish responses (…/accepted, …/rejected, …/delta,
// …/documents), presence or anything under rollouts/ (rollout events and
// retained statuses, see internal/rolloutfeed): those come from in-process
// publishers, for which the broker never calls Allow. Malformed topics and
// filters (empty levels are allowed, misplaced wildcards are not) are
// refused, as is anything for an unknown role.
func Allow(p Principal, topic string, write bool) bool {
	if len(topic) == 0 || len(topic) > maxTopicLen {
		return false
	}
	var buf [8]string
	levels := splitLevels(buf[:0], topic)
	if hasWildcard(topic) && !wellFormed(levels, !write) {
		return false
	}
	switch p.Role {
	case RoleDevice:
		if p.Device == "" {
			return false
		}
		own := string(p.Device)
		if write {
			return len(levels) == 3 && levels[0] == "state" && levels[1] == own && isRequestOp(levels[2])
		}
		return len(levels) >= 3 && (levels[0] == "state" || levels[0] == "firmware") && levels[1] == own
	case RoleOperator:
		if write {
			if len(levels) != 3 || levels[0] != "state" || !isRequestOp(levels[2]) {
				return false
			}
			_, err := device.ParseID(levels[1])
			return err == nil
		}
		return true
	case RoleIntegrator:
		if write {
			return false
		}
		for _, f := range integratorFilters {
			if covers(f, levels) {
				return true
			}
		}
		return false
	}
	return false
}

// maxTopicLen is the longest topic or filter an MQTT packet can carry.
const maxTopicLen = 65535

// splitLevels appends the "/"-separated levels of topic to dst; with a
// stack buffer as dst, short topics cost no allocation.
func splitLevels(dst []string, topic string) []string {
	for {
		i := strings.IndexByte(topic, '/')
		if i < 0 {
			return append(dst, topic)
		}
		dst = append(dst, topic[:i])
		topic = topic[i+1:]
	}
}

func isRequestOp(s string) bool {
	for _, op := range requestOps {
		if s == op {
			return true
		}
	}
	return false
}

// wellFormed reports whether levels form a valid topic (wildcards false) or
// filter (wildcards true): "+" and "#" only as whole levels, "#" only last.
func wellFormed(levels []string, wildcards bool) bool {
	for i, l := range levels {
		if !hasWildcard(l) {
			continue
		}
		if !wildcards {
			return false
		}
		if l != "+" && l != "#" || l == "#" && i != len(levels)-1 {
			return false
		}
	}
	return true
}

func hasWildcard(s string) bool {
	return strings.IndexByte(s, '+') >= 0 || strings.IndexByte(s, '#') >= 0
}

// covers reports whether every topic matched by filter is also matched by
// pattern; both are split into levels. A topic is a filter without
// wildcards, so this also answers "does pattern match topic".
func covers(pattern, filter []string) bool {
	for i, p := range pattern {
		if p == "#" {
			// "a/#" matches "a" itself and everything below it.
			return len(filter) >= i
		}
		if i >= len(filter) {
			return false
		}
		f := filter[i]
		switch {
		case f == "#":
			return false
		case p == "+":
			// matches any single level, including a "+" in the filter
		case p != f:
			return false
		}
	}
	return len(filter) == len(pattern)
}
