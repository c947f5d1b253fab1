package broker

import "testing"

func TestMatchFilter(t *testing.T) {
	tests := []struct {
		filter, topic string
		want          bool
	}{
		{"state/+/update", "state/d1/update", true},
		{"state/+/update", "state/d1/update/accepted", false},
		{"state/+/update", "state/update", false},
		{"state/+/update", "state//update", true},
		{"state/#", "state", true},
		{"state/#", "state/a/b", true},
		{"#", "a", true},
		{"#", "$SYS/x", false},
		{"+/x", "$SYS/x", false},
		{"$SYS/#", "$SYS/x", true},
		{"a/b", "a/b", true},
		{"a/b", "a/b/c", false},
		{"a/b/c", "a/b", false},
		{"a/+", "a/", true},
		{"+", "a/b", false},
	}
	for _, tc := range tests {
		if got := matchFilter(tc.filter, tc.topic); got != tc.want {
			t.Errorf("matchFilter(%q, %q) = %t, want %t", tc.filter, tc.topic, got, tc.want)
		}
	}
}
