package errtext

import "testing"

func TestStrip(t *testing.T) {
	tests := []struct{ in, want string }{
		{"create: rollout: invalid request: firmware 9.9.9: get 9.9.9: firmware: version not found",
			"invalid request: firmware 9.9.9: version not found"},
		{`rollback r1: boltstore: load r1: rollout "r1": rollout: not found`, `rollout "r1": not found`},
		{`identity: invalid role: "bogus" (want "operator" or "integrator")`, `invalid role: "bogus" (want "operator" or "integrator")`},
		{"get 1.0.0: boltstore: get 1.0.0: firmware: version not found", "version not found"},
		{"No shadow exists for device: lamp", "No shadow exists for device: lamp"},
		{"rollout", "rollout"}, // the last segment stays
		{`label "a: b": invalid`, `label "a: b": invalid`},
		{"", ""},
	}
	for _, tc := range tests {
		if got := Strip(tc.in); got != tc.want {
			t.Errorf("Strip(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
