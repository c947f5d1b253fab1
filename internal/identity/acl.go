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

// requestOps are the shadow request operations, the values of "{op}" in
// the rules below.
var requestOps = []string{"update", "get", "delete"}

// rule grants publishing (write) or subscribing (and receiving) to every
// topic or filter its pattern covers, with at least minLevels levels.
// Pattern levels are literals, "+" (any one level), a final "#" (any
// levels below, and the level above itself) and placeholders:
//
//	{own}  the principal's own device ID (a device's rules)
//	{id}   any one valid device ID
//	{op}   a shadow request operation: update, get or delete
//
// A filter is covered only if every topic it matches is: a wildcard in a
// filter counts as any value, so "state/+/update" is not covered by
// "state/{own}/update".
type rule struct {
	write     bool
	pattern   []level
	minLevels int
}

// level is one compiled level of a rule's pattern.
type level struct {
	kind    levelKind
	literal string // for levelLiteral
}

type levelKind uint8

const (
	levelLiteral levelKind = iota
	levelPlus              // "+"
	levelHash              // "#"
	levelOwn               // "{own}"
	levelID                // "{id}"
	levelOp                // "{op}"
)

func compile(pattern string) []level {
	kinds := map[string]levelKind{"+": levelPlus, "#": levelHash, "{own}": levelOwn, "{id}": levelID, "{op}": levelOp}
	var out []level
	for _, l := range strings.Split(pattern, "/") {
		k, ok := kinds[l]
		if !ok && strings.ContainsAny(l, "+#{}") {
			panic("identity: malformed ACL pattern " + pattern)
		}
		out = append(out, level{kind: k, literal: l})
	}
	return out
}

func pub(pattern string) rule { return rule{write: true, pattern: compile(pattern)} }
func sub(pattern string, minLevels int) rule {
	return rule{pattern: compile(pattern), minLevels: minLevels}
}

// The rules of each role. They are data: a topic is allowed if one rule of
// the principal's role covers it.
var (
	deviceRules = []rule{
		// Requests on its own shadows, classic and named, on both trees.
		pub("state/{own}/{op}"),
		pub("state/{own}/shadow/+/{op}"),
		// On the $aws tree any operation: the engine answers one it does
		// not serve with a 404 on its /rejected, so an AWS SDK is never
		// disconnected for a request on its own thing. Reply topics
		// (…/<op>/accepted, …) have one level more and stay refused.
		pub("$aws/things/{own}/shadow/+"),
		pub("$aws/things/{own}/shadow/name/+/+"),
		// Everything below its own ID (not the ID level itself); the AWS
		// SDKs subscribe with wildcards below the thing (v2: …/get/+).
		sub("state/{own}/#", 3),
		sub("firmware/{own}/#", 3),
		sub("$aws/things/{own}/shadow/#", 5),
	}
	operatorRules = []rule{
		pub("state/{id}/{op}"),
		pub("state/{id}/shadow/+/{op}"),
		pub("$aws/things/{id}/shadow/{op}"),
		pub("$aws/things/{id}/shadow/name/+/{op}"),
		sub("#", 0), // everything, $SYS and $aws included
	}
	integratorRules = []rule{
		sub("state/+/update/accepted", 0),
		sub("state/+/update/documents", 0),
		sub("state/+/update/delta", 0),
		sub("state/+/shadow/+/update/accepted", 0),
		sub("state/+/shadow/+/update/documents", 0),
		sub("state/+/shadow/+/update/delta", 0),
		sub("$aws/things/+/shadow/update/accepted", 0),
		sub("$aws/things/+/shadow/update/documents", 0),
		sub("$aws/things/+/shadow/update/delta", 0),
		sub("$aws/things/+/shadow/name/+/update/accepted", 0),
		sub("$aws/things/+/shadow/name/+/update/documents", 0),
		sub("$aws/things/+/shadow/name/+/update/delta", 0),
		sub("state/+/presence", 0),
		sub("rollouts/#", 0),
	}
)

func rulesFor(r Role) []rule {
	switch r {
	case RoleDevice:
		return deviceRules
	case RoleOperator:
		return operatorRules
	case RoleIntegrator:
		return integratorRules
	}
	return nil
}

// Allow reports whether p may publish to topic (write true) or subscribe to
// the filter topic and receive a message on topic (write false). It is a
// pure function of its arguments and the rule tables above:
//
//   - A device may publish only its shadow requests: state/<own>/update,
//     …/get, …/delete, state/<own>/shadow/<name>/update|get|delete, and
//     $aws/things/<own>/shadow/<op> and …/shadow/name/<name>/<op> for any
//     op (unserved ones are answered 404 by the engine); it may subscribe
//     to filters under state/<own>/, firmware/<own>/ and
//     $aws/things/<own>/shadow/ (wildcards only below its own ID level).
//   - An operator may publish requests (update, get, delete) for any
//     device's shadows on both trees, and subscribe to anything.
//   - An integrator publishes nothing and may subscribe only to filters
//     covered by the accepted, documents and delta topics of every shadow
//     on both trees, state/+/presence and rollouts/#.
//
// Nobody may publish responses (…/accepted, …/rejected, …/delta,
// …/documents, on either tree), presence or anything under rollouts/
// (rollout events and retained statuses, see internal/rolloutfeed): those
// come from in-process publishers, for which the broker never calls Allow.
// Malformed topics and filters (empty levels are allowed, misplaced
// wildcards are not) are refused, as is anything for an unknown role.
func Allow(p Principal, topic string, write bool) bool {
	if len(topic) == 0 || len(topic) > maxTopicLen {
		return false
	}
	var buf [10]string
	levels := splitLevels(buf[:0], topic)
	if hasWildcard(topic) && !wellFormed(levels, !write) {
		return false
	}
	for _, r := range rulesFor(p.Role) {
		if r.write == write && r.covers(p, levels) {
			return true
		}
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

// covers reports whether every topic matched by filter (split into levels)
// is also matched by the rule's pattern, for principal p. A topic is a
// filter without wildcards, so this also answers "does the rule match
// topic".
func (r rule) covers(p Principal, filter []string) bool {
	if len(filter) < r.minLevels {
		return false
	}
	for i, pat := range r.pattern {
		if pat.kind == levelHash {
			// "a/#" matches "a" itself and everything below it.
			return len(filter) >= i
		}
		if i >= len(filter) {
			return false
		}
		f := filter[i]
		if f == "#" {
			return false
		}
		switch pat.kind {
		case levelPlus:
			// matches any single level, including a "+" in the filter
		case levelOwn:
			if p.Device == "" || f != string(p.Device) {
				return false
			}
		case levelID:
			if _, err := device.ParseID(f); err != nil { // refuses "+"
				return false
			}
		case levelOp:
			if !isRequestOp(f) {
				return false
			}
		default:
			if f != pat.literal {
				return false
			}
		}
	}
	return len(filter) == len(r.pattern)
}
