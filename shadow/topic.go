package shadow

import (
	"strings"

	"github.com/umbra-iot/umbra/device"
)

// Tree is one of the two topic trees the engine serves. Both address the
// same shadows with the same rules; only the spelling of the topics
// differs.
type Tree uint8

// The two trees.
const (
	// TreeState is Umbra's own: state/<id>/<op> for the classic shadow,
	// state/<id>/shadow/<name>/<op> for a named one.
	TreeState Tree = iota
	// TreeAWS is AWS IoT's: $aws/things/<id>/shadow/<op> for the classic
	// shadow, $aws/things/<id>/shadow/name/<name>/<op> for a named one.
	TreeAWS
)

// String returns "state" or "aws".
func (t Tree) String() string {
	if t == TreeAWS {
		return "aws"
	}
	return "state"
}

// Topic returns the topic of suffix (an operation such as "update", or a
// reply such as "update/accepted") for the shadow name of device id on
// tree t; name "" is the classic shadow. For example
// TreeAWS.Topic("lamp1", "cfg", "get/accepted") is
// "$aws/things/lamp1/shadow/name/cfg/get/accepted".
func (t Tree) Topic(id device.ID, name Name, suffix string) string {
	switch {
	case t == TreeAWS && name == "":
		return "$aws/things/" + string(id) + "/shadow/" + suffix
	case t == TreeAWS:
		return "$aws/things/" + string(id) + "/shadow/name/" + string(name) + "/" + suffix
	case name == "":
		return "state/" + string(id) + "/" + suffix
	}
	return "state/" + string(id) + "/shadow/" + string(name) + "/" + suffix
}

// Topic filters the engine subscribes to on the state tree, one per
// request kind of the classic shadow.
const (
	UpdateFilter = "state/+/update"
	GetFilter    = "state/+/get"
	DeleteFilter = "state/+/delete"
)

// RequestFilters lists every filter the engine must be subscribed to (with
// HandleRequest): the classic and named requests of both trees. On the
// $aws tree the last level is a wildcard, so that a device's request for
// an operation Umbra does not serve is answered (404) instead of dropped.
// None of the filters matches a reply topic (…/accepted, /rejected,
// /delta, /documents), so the engine never sees its own replies and a
// reply topic has subscribers only if a client subscribed to it.
var RequestFilters = []string{
	UpdateFilter, GetFilter, DeleteFilter,
	"state/+/shadow/+/update", "state/+/shadow/+/get", "state/+/shadow/+/delete",
	"$aws/things/+/shadow/+",
	"$aws/things/+/shadow/name/+/+",
}

// Op is a shadow operation named by a request topic.
type Op string

// The three request operations.
const (
	OpUpdate Op = "update"
	OpGet    Op = "get"
	OpDelete Op = "delete"
)

// opUnknown labels, in Config.Observe, a request for an operation the
// engine does not serve (on the $aws tree): the label set stays bounded
// whatever devices publish.
const opUnknown Op = "unknown"

func (op Op) valid() bool { return op == OpUpdate || op == OpGet || op == OpDelete }

// Topic returns "state/<id>/<suffix>", e.g. Topic(id, "update/delta").
func Topic(id device.ID, suffix string) string {
	return TreeState.Topic(id, "", suffix)
}

// Topic helpers for the fixed response topics of the classic shadow on the
// state tree.
func UpdateTopic(id device.ID) string    { return Topic(id, "update") }
func AcceptedTopic(id device.ID) string  { return Topic(id, "update/accepted") }
func RejectedTopic(id device.ID) string  { return Topic(id, "update/rejected") }
func DeltaTopic(id device.ID) string     { return Topic(id, "update/delta") }
func DocumentsTopic(id device.ID) string { return Topic(id, "update/documents") }

// treeSpelling is how a tree spells a request topic: prefix, the device
// ID, base, then <op> for the classic shadow or named<name>/<op>.
type treeSpelling struct {
	tree                Tree
	prefix, base, named string
}

var spellings = []treeSpelling{
	{TreeState, "state/", "", "shadow/"},
	{TreeAWS, "$aws/things/", "shadow/", "name/"},
}

// Address is what a request topic names: the tree it was sent on, the
// device, the shadow (Name "" for the classic one) and the operation.
type Address struct {
	Tree   Tree
	Device device.ID
	Name   Name
	Op     Op
}

// ParseRequestTopic parses a request topic of either tree:
//
//	state/<id>/<op>                         state/<id>/shadow/<name>/<op>
//	$aws/things/<id>/shadow/<op>            $aws/things/<id>/shadow/name/<name>/<op>
//
// ok is false for a topic of any other shape, and on the state tree for an
// op other than update, get and delete. When ok is true but err is not
// nil, the topic has a request's shape but cannot be served: err is a
// *RequestError (an invalid device ID or shadow name is a 400, an
// operation other than update, get and delete on the $aws tree a 404) to
// be answered on the topic's own /rejected, and a's fields are only partly
// set.
func ParseRequestTopic(topic string) (a Address, ok bool, err error) {
	var sp treeSpelling
	var rest string
	for _, t := range spellings {
		if r, found := strings.CutPrefix(topic, t.prefix); found {
			sp, rest = t, r
			break
		}
	}
	if sp.prefix == "" {
		return a, false, nil
	}
	a.Tree = sp.tree
	idLevel, more, _ := strings.Cut(rest, "/")
	more, found := strings.CutPrefix(more, sp.base)
	if !found || more == "" && sp.tree == TreeState {
		return a, false, nil
	}
	var nameLevel, opLevel string
	named := false
	switch n := strings.Count(more, "/"); {
	case n == 0:
		opLevel = more
	case n == 2 && strings.HasPrefix(more, sp.named):
		nameLevel, opLevel, _ = strings.Cut(more[len(sp.named):], "/")
		named = true
	default:
		return a, false, nil
	}
	if sp.tree == TreeState && !Op(opLevel).valid() {
		// The state tree answers only its three operations; the ACL lets
		// nobody publish others there.
		return a, false, nil
	}
	a.Op = Op(opLevel)
	id, perr := device.ParseID(idLevel)
	if perr != nil {
		return a, true, reject(ErrInvalid, "", "Invalid device ID in topic: %v", perr)
	}
	a.Device = id
	if named {
		name, perr := ParseName(nameLevel)
		if perr != nil {
			return a, true, perr
		}
		a.Name = name
	}
	if !a.Op.valid() {
		return a, true, reject(ErrNotFound, "", "Unsupported shadow operation %q: the operations are update, get and delete", clipString(opLevel, 64))
	}
	return a, true, nil
}

// clipString shortens s for a message.
func clipString(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// deltaFilter is what a subscription filter says about delta topics (see
// parseDeltaFilter).
type deltaFilter struct {
	tree     Tree
	id       device.ID
	classic  bool // it matches the classic shadow's delta topic
	name     Name // it matches this named shadow's delta topic ("" none)
	allNamed bool // it matches the delta topic of every named shadow
}

// parseDeltaFilter reports which of one device's delta topics a
// subscription filter matches: the classic shadow's
// (state/<id>/update/delta, $aws/things/<id>/shadow/update/delta, or a
// wildcard form such as state/<id>/#), one named shadow's, or every named
// shadow's (state/<id>/shadow/+/update/delta, …/shadow/#). ok is false when
// it matches none, and for filters with a wildcard in the device position:
// those are operators' feeds.
func parseDeltaFilter(filter string) (d deltaFilter, ok bool) {
	var rest string
	if r, found := strings.CutPrefix(filter, "state/"); found {
		d.tree, rest = TreeState, r
	} else if r, found := strings.CutPrefix(filter, "$aws/things/"); found {
		d.tree, rest = TreeAWS, r
	} else {
		return d, false
	}
	idLevel, _, _ := strings.Cut(rest, "/")
	id, err := device.ParseID(idLevel) // refuses "+" and "#"
	if err != nil {
		return d, false
	}
	d.id = id
	d.classic = matchFilter(filter, d.tree.Topic(id, "", "update/delta"))
	// "+" is no valid name: only a wildcard level of the filter matches it.
	d.allNamed = matchFilter(filter, d.tree.Topic(id, "+", "update/delta"))
	if !d.allNamed {
		skip := 2 // state/<id>/shadow/<name>
		if d.tree == TreeAWS {
			skip = 3 // $aws/things/<id>/shadow/name/<name>, after "$aws/things/"
		}
		levels := strings.SplitN(rest, "/", skip+2)
		if len(levels) > skip {
			if n, err := ParseName(levels[skip]); err == nil && matchFilter(filter, d.tree.Topic(id, n, "update/delta")) {
				d.name = n
			}
		}
	}
	return d, d.classic || d.allNamed || d.name != ""
}

// matchFilter reports whether the MQTT filter matches topic ("+" one
// level, a trailing "#" any number of levels, including none).
func matchFilter(filter, topic string) bool {
	for {
		f, fRest, fMore := strings.Cut(filter, "/")
		if f == "#" {
			return true
		}
		t, tRest, tMore := strings.Cut(topic, "/")
		if f != "+" && f != t {
			return false
		}
		switch {
		case !fMore && !tMore:
			return true
		case !tMore:
			return fRest == "#" // "a/#" matches "a"
		case !fMore:
			return false
		}
		filter, topic = fRest, tRest
	}
}
