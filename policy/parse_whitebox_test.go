package policy

import (
	"errors"
	"testing"
)

// parseErrorCases are bad files and the one error each must produce.
// FuzzParseRules is seeded with them.
var parseErrorCases = []struct {
	name string
	src  string
	want string // the whole error
}{
	{"unknown keyword", "topic read a\nbogus x\n", `t.acl:2: unknown keyword "bogus" (want topic, pattern, user, role or default)`},
	{"keyword is case-sensitive", "Topic read a\n", `t.acl:1: unknown keyword "Topic" (want topic, pattern, user, role or default)`},
	{"unknown access", "topic raed a/b\n", `t.acl:1: topic: unknown access "raed" (want read, write, readwrite or deny)`},
	{"missing filter", "\n\ntopic read\n", `t.acl:3: topic read: missing topic filter`},
	{"missing everything", "pattern\n", `t.acl:1: pattern: missing access and topic filter`},
	{"missing filter after deny", "pattern deny \n", `t.acl:1: pattern deny: missing topic filter`},
	{"hash not last", "topic read a/#/b\n", `t.acl:1: topic "a/#/b": "#" must be the last level`},
	{"wildcard inside a level", "topic read a/b+\n", `t.acl:1: topic "a/b+": level "b+": "+" and "#" must be whole levels`},
	{"inline comment", "topic read a/b # note\n", `t.acl:1: topic "a/b # note": level "b # note": "+" and "#" must be whole levels`},
	{"substitution in a topic line", "topic read devices/%c/#\n", `t.acl:1: topic "devices/%c/#": %c in a topic line: only pattern lines substitute %c and %u`},
	{"substitution inside a level", "pattern read devices/x%u\n", `t.acl:1: pattern "devices/x%u": level "x%u": %c and %u must be whole levels`},
	{"shared subscription", "topic read $share/g/a\n", `t.acl:1: topic "$share/g/a": a rule names topics, not shared subscriptions: a $share/<group>/<filter> subscription is checked as <filter>`},
	{"missing user", "user \n", `t.acl:1: user: missing user name`},
	{"unknown role", "role admin\n", `t.acl:1: role "admin": unknown role (want device, operator, integrator)`},
	{"role is case-sensitive", "role Device\n", `t.acl:1: role "Device": unknown role (want device, operator, integrator)`},
	{"bad default", "default off\n", `t.acl:1: default "off": want "default extend" or "default replace"`},
	{"repeated default", "default replace\ntopic a\ndefault replace\n", `t.acl:3: default: repeated (first on line 1)`},
	{"invalid UTF-8", "topic read a/\xff\n", `t.acl:1: not valid UTF-8`},
	{"NUL", "topic read a/\x00\n", `t.acl:1: topic "a/\x00": holds a NUL character`},
}

func TestParseErrors(t *testing.T) {
	for _, tc := range parseErrorCases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("t.acl", []byte(tc.src))
			var pe *ParseError
			if !errors.As(err, &pe) || !errors.Is(err, ErrSyntax) {
				t.Fatalf("Parse(%q) = %v, want a *ParseError wrapping ErrSyntax", tc.src, err)
			}
			if err.Error() != tc.want {
				t.Errorf("Parse(%q) error:\n got %s\nwant %s", tc.src, err, tc.want)
			}
		})
	}
}

func TestOverlap(t *testing.T) {
	tests := []struct {
		a, b string
		want bool
	}{
		{"state/+/+/accepted", "state/%u/update", false},
		{"state/+/+/accepted", "state/%u/#", true},
		{"state/+/+/accepted", "#", true},
		{"state/+/+/accepted", "+/+/+/+", true},
		{"state/+/+/accepted", "state/a/b/rejected", false},
		{"a/#", "a", true},
		{"a", "a/#", true},
		{"a/b", "a", false},
		{"$SYS/#", "#", true}, // conservative: MQTT's "$" rule is ignored
		{"rollouts/#", "devices/%u/telemetry/#", false},
		{"x/%c", "x/%u", true},
	}
	for _, tc := range tests {
		if got := overlap(tc.a, tc.b); got != tc.want {
			t.Errorf("overlap(%q, %q) = %t, want %t", tc.a, tc.b, got, tc.want)
		}
	}
}
