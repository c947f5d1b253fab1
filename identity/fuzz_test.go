package identity_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/umbra-iot/umbra/identity"
	"github.com/umbra-iot/umbra/policy"
)

// FuzzAllow checks invariants of the store's ACL with the built-in
// default policy that hold for every topic, for sessions with several
// client IDs: no integrator ever writes, device A never touches topics
// outside its own trees, and nobody publishes a wildcard, on a reserved
// topic or on a reply topic.
func FuzzAllow(f *testing.F) {
	for _, s := range []string{"state/A/update", "state/A/#", "state/+/update/accepted", "#", "rollouts/#",
		"firmware/A/x", "state/A/update/accepted", "$SYS/#", "state//update", "state/A/+/#",
		"$aws/things/A/shadow/update", "$aws/things/A/shadow/name/n/get", "$aws/things/A/shadow/get/+",
		"$aws/things/A/shadow/update/accepted", "$aws/things/B/shadow/#", "state/A/shadow/n/update/delta",
		"devices/A/telemetry", "devices/+/telemetry", "$share/g/devices/A/#", "devices/A/commands/x"} {
		f.Add(s, true)
		f.Add(s, false)
	}
	s, ids := fuzzSessions(f)
	devA := ids["device"][0]
	reserved := policy.Reserved()
	f.Fuzz(func(t *testing.T, topic string, write bool) {
		for _, integ := range ids["integrator"] {
			if s.Allow(integ, topic, true) {
				t.Errorf("integrator %q may publish %q", integ.ClientID, topic)
			}
		}
		own := []string{"state/A/", "devices/A/", "firmware/A/", "$aws/things/A/shadow/", "$share/"}
		// "a/#" covers "a": a tree's root is the device's too.
		inOwn := func(p string) bool { return strings.HasPrefix(topic, p) || topic == strings.TrimSuffix(p, "/") }
		if s.Allow(devA, topic, write) && !slices.ContainsFunc(own, inOwn) {
			t.Errorf("device A allowed %q (write=%t)", topic, write)
		}
		for _, id := range append([]identity.Session{devA}, ids["operator"]...) {
			if !s.Allow(id, topic, true) {
				continue
			}
			if strings.ContainsAny(topic, "+#") {
				t.Errorf("%s (%q) may publish wildcard topic %q", id.Principal.Name, id.ClientID, topic)
			}
			for _, r := range reserved {
				if matches(r, topic) {
					t.Errorf("%s (%q) may publish %q, reserved by %s", id.Principal.Name, id.ClientID, topic, r)
				}
			}
			if isReply(topic) {
				t.Errorf("%s may publish the reply topic %q", id.Principal.Name, topic)
			}
		}
	})
}

// isReply reports whether topic has the shape of a shadow reply or of
// presence: a request topic (state/<id>/<op>, state/<id>/shadow/<name>/<op>,
// $aws/things/<id>/shadow/<op>, …/shadow/name/<name>/<op>) followed by
// accepted, rejected, delta or documents, or state/<id>/presence.
func isReply(topic string) bool {
	l := strings.Split(topic, "/")
	last := l[len(l)-1]
	if len(l) == 3 && l[0] == "state" && last == "presence" {
		return true
	}
	switch last {
	case "accepted", "rejected", "delta", "documents":
	default:
		return false
	}
	switch {
	case l[0] == "state" && (len(l) == 4 || len(l) == 6 && l[2] == "shadow"):
		return true
	case len(l) >= 6 && l[0] == "$aws" && l[1] == "things" && l[3] == "shadow":
		return len(l) == 6 || len(l) == 8 && l[4] == "name"
	}
	return false
}

// fuzzSessions opens a store with device A, an operator and an
// integrator, and returns sessions of each by role: the device with its
// own client ID, the tokens with several client IDs (anything MQTT
// allows but a device's).
func fuzzSessions(f *testing.F) (*identity.Store, map[string][]identity.Session) {
	s := mustOpen(f, "", identity.Config{Logger: quiet})
	ctx := f.Context()
	devSec := mustAddDevice(f, s, "A")
	opSec := mustCreateToken(f, s, identity.RoleOperator, "op")
	intSec := mustCreateToken(f, s, identity.RoleIntegrator, "i")
	login := func(clientID, user, secret string) identity.Session {
		id, err := s.Authenticate(ctx, identity.Credentials{ClientID: clientID, Username: user, Password: []byte(secret)})
		if err != nil {
			f.Fatal(err)
		}
		return id
	}
	ids := map[string][]identity.Session{"device": {login("A", "A", devSec)}}
	for _, c := range []string{"op-1", "B", "+", "#", "a/b", "$SYS", "ü x"} {
		ids["operator"] = append(ids["operator"], login(c, "op", opSec))
		ids["integrator"] = append(ids["integrator"], login(c, "i", intSec))
	}
	return s, ids
}

// FuzzParseLabels checks that accepted labels round-trip and stay within
// the documented bounds.
func FuzzParseLabels(f *testing.F) {
	for _, s := range []string{"site=berlin", "a=", "=b", "k/x.y-z_1=v=w", "k=\x00", "k=ü"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, kv string) {
		labels, err := identity.ParseLabels([]string{kv})
		if err != nil {
			return
		}
		if len(labels) != 1 {
			t.Fatalf("ParseLabels(%q) = %v, want one label", kv, labels)
		}
		for k, v := range labels {
			if k+"="+v != kv || len(k) > identity.MaxLabelKeyLen || len(v) > identity.MaxLabelValueLen {
				t.Errorf("ParseLabels(%q) = %q=%q, want the input within bounds", kv, k, v)
			}
		}
	})
}
