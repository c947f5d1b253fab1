package identity_test

import (
	"strings"
	"testing"
)

// aclTopics are concrete topics of the product (device A is the
// principal's own, B another device) that a granted filter may match.
var aclTopics = []string{
	"state/A/update", "state/A/get", "state/A/delete",
	"state/A/update/accepted", "state/A/update/rejected", "state/A/update/delta", "state/A/update/documents",
	"state/A/get/accepted", "state/A/delete/accepted", "state/A/presence",
	"state/B/update", "state/B/update/accepted", "state/B/update/delta", "state/B/presence", "state/B/get/accepted",
	"firmware/A/url", "firmware/B/url", "rollouts/r1", "rollouts/r1/status", "rollouts/r1/devices/B",
	"$SYS/broker/uptime", "other/x/y", "state//update", "state/A/update/accepted/x",
	// Named shadows and the AWS IoT tree.
	"state/A/shadow/n1/update", "state/A/shadow/n1/update/accepted", "state/B/shadow/n1/update/delta",
	"state/B/shadow/n1/get/accepted", "$aws/things/A/shadow/update", "$aws/things/A/shadow/update/accepted",
	"$aws/things/A/shadow/get/rejected", "$aws/things/B/shadow/update/delta", "$aws/things/B/shadow/update/documents",
	"$aws/things/A/shadow/name/n1/update/accepted", "$aws/things/B/shadow/name/n1/update/accepted",
	"$aws/things/B/shadow/name/n1/get/accepted",
}

// substitutes are what FuzzAllowFilter puts in place of a filter's
// wildcards to build topics the filter matches.
var substitutes = map[string][]string{
	"+": {"A", "B", "update", "shadow", "n1", ""},
	"#": {"x", "A/update/accepted", "B/update/delta", "r1/status", "shadow/name/n1/update/accepted", "B/shadow/update/delta"},
}

// FuzzAllowFilter checks that a granted subscription reaches no topic the
// session may not read, under the built-in default policy (which holds no
// deny line): for a device, operators and integrators, if the store's
// Allow grants the filter, every topic the filter matches under MQTT's
// rules (a list of the product's topics, and topics built from the filter
// by replacing its wildcards) must be readable. The broker checks every
// delivery too, but a filter whose wildcards reach further than Allow's
// own reading of it would be a policy bug (and the shadow engine's
// catch-up deltas go to granted filters).
func FuzzAllowFilter(f *testing.F) {
	for _, s := range []string{"state/A/#", "state/A/+", "state/+/update/accepted", "state/+/presence", "rollouts/#",
		"state/+/#", "+/A/#", "#", "+/+/+", "state/A/update/+", "firmware/A/#", "state/+/+/accepted", "state/#",
		"+/B/#", "state/A/+/+", "$SYS/#", "+/+/update/#", "state/A", "state/A/#/x", "state/A+/#", "state//+",
		"$aws/things/A/shadow/#", "$aws/things/+/shadow/update/accepted", "$aws/things/A/shadow/name/+/+/+",
		"$aws/things/+/shadow/name/+/update/delta", "$aws/#", "$aws/things/+/#", "state/+/shadow/+/update/accepted",
		"state/A/shadow/#", "$aws/things/A/#", "$aws/+/A/shadow/#"} {
		f.Add(s)
	}
	s, ids := fuzzSessions(f)
	sessions := append(append(ids["device"], ids["operator"]...), ids["integrator"]...)
	f.Fuzz(func(t *testing.T, filter string) {
		var topics []string
		for _, topic := range append(expand(filter, 64), aclTopics...) {
			if matches(filter, topic) {
				topics = append(topics, topic)
			}
		}
		for _, id := range sessions {
			if !s.Allow(id, filter, false) {
				continue
			}
			for _, topic := range topics {
				if !s.Allow(id, topic, false) {
					t.Errorf("%s (%q) may subscribe to %q, which matches %q, but may not read %q", id.Principal.Name, id.ClientID, filter, topic, topic)
				}
			}
		}
	})
}

// expand returns up to limit topics that filter matches, built by
// replacing each wildcard level with each of its substitutes; nil if
// filter is not a well-formed filter.
func expand(filter string, limit int) []string {
	levels := strings.Split(filter, "/")
	for i, l := range levels {
		if strings.ContainsAny(l, "+#") && (l != "+" && l != "#" || l == "#" && i != len(levels)-1) {
			return nil
		}
	}
	out := []string{""}
	for i, l := range levels {
		subs, wild := substitutes[l]
		if !wild {
			subs = []string{l}
		}
		var next []string
		for _, prefix := range out {
			for _, s := range subs {
				if i > 0 {
					s = prefix + "/" + s
				}
				if len(next) < limit {
					next = append(next, s)
				}
			}
		}
		out = next
	}
	return out
}

// matches reports whether the MQTT filter matches topic (MQTT 3.1.1
// section 4.7): "+" is one whole level, "#" the last level and everything
// below it including its parent, and a filter starting with a wildcard
// does not match a topic starting with "$".
func matches(filter, topic string) bool {
	if strings.ContainsAny(topic, "+#") || topic == "" {
		return false
	}
	if strings.HasPrefix(topic, "$") && (strings.HasPrefix(filter, "+") || strings.HasPrefix(filter, "#")) {
		return false
	}
	fl, tl := strings.Split(filter, "/"), strings.Split(topic, "/")
	for i, f := range fl {
		switch {
		case f == "#":
			return i == len(fl)-1
		case i >= len(tl):
			return false
		case f == "+":
		case strings.ContainsAny(f, "+#"):
			return false
		case f != tl[i]:
			return false
		}
	}
	return len(fl) == len(tl)
}

// TestMatches pins the reference matcher FuzzAllowFilter relies on.
func TestMatches(t *testing.T) {
	tests := []struct {
		filter, topic string
		want          bool
	}{
		{"state/A/#", "state/A/update/accepted", true},
		{"state/A/#", "state/A", true},
		{"state/+/presence", "state/B/presence", true},
		{"state/+/presence", "state/B/x/presence", false},
		{"+/+", "state/A", true},
		{"#", "$SYS/x", false},
		{"+/x", "$SYS/x", false},
		{"$SYS/#", "$SYS/x", true},
		{"state//+", "state//update", true},
		{"state/A+/#", "state/A+/x", false},
		{"a/#/b", "a/x/b", false},
		{"a/b", "a/b/c", false},
	}
	for _, tc := range tests {
		if got := matches(tc.filter, tc.topic); got != tc.want {
			t.Errorf("matches(%q, %q) = %t, want %t", tc.filter, tc.topic, got, tc.want)
		}
	}
	if got := expand("state/+/#", 64); len(got) != 36 || got[0] != "state/A/x" {
		t.Errorf("expand(state/+/#) = %q, want 36 topics starting with state/A/x", got)
	}
}
