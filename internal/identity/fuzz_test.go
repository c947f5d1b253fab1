package identity_test

import (
	"strings"
	"testing"

	"github.com/umbra-iot/umbra/internal/identity"
)

// FuzzAllow checks invariants of the ACL that hold for every topic: no
// integrator ever writes, a device never touches topics outside its own
// subtrees, nobody publishes a wildcard, and nobody publishes on a reply
// topic.
func FuzzAllow(f *testing.F) {
	for _, s := range []string{"state/A/update", "state/A/#", "state/+/update/accepted", "#", "rollouts/#",
		"firmware/A/x", "state/A/update/accepted", "$SYS/#", "state//update", "state/A/+/#",
		"$aws/things/A/shadow/update", "$aws/things/A/shadow/name/n/get", "$aws/things/A/shadow/get/+",
		"$aws/things/A/shadow/update/accepted", "$aws/things/B/shadow/#", "state/A/shadow/n/update/delta"} {
		f.Add(s, true)
		f.Add(s, false)
	}
	devA := identity.Principal{Role: identity.RoleDevice, Name: "A", Device: "A"}
	op := identity.Principal{Role: identity.RoleOperator, Name: "op"}
	integ := identity.Principal{Role: identity.RoleIntegrator, Name: "i"}
	f.Fuzz(func(t *testing.T, topic string, write bool) {
		if identity.Allow(integ, topic, true) {
			t.Errorf("integrator may publish %q", topic)
		}
		if identity.Allow(devA, topic, write) && !strings.HasPrefix(topic, "state/A/") && !strings.HasPrefix(topic, "firmware/A/") &&
			!strings.HasPrefix(topic, "$aws/things/A/shadow/") {
			t.Errorf("device A allowed %q (write=%t)", topic, write)
		}
		for _, p := range []identity.Principal{devA, op} {
			if !identity.Allow(p, topic, true) {
				continue
			}
			if strings.ContainsAny(topic, "+#") || !strings.HasPrefix(topic, "state/") && !strings.HasPrefix(topic, "$aws/things/") {
				t.Errorf("%s may publish %q", p.Role, topic)
			}
			// A reply topic is <request>/<result>, or presence.
			levels := strings.Split(topic, "/")
			last, parent := levels[len(levels)-1], ""
			if len(levels) > 1 {
				parent = levels[len(levels)-2]
			}
			isRequest := parent == "update" || parent == "get" || parent == "delete"
			isResult := last == "accepted" || last == "rejected" || last == "delta" || last == "documents"
			if isRequest && isResult || last == "presence" {
				t.Errorf("%s may publish the reply topic %q", p.Role, topic)
			}
		}
	})
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
