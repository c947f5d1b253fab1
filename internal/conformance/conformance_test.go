package conformance_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/umbra-iot/umbra/internal/conformance"
)

func results(passed ...string) []conformance.Result {
	var rs []conformance.Result
	for _, t := range conformance.Tests {
		rs = append(rs, conformance.Result{Test: t, Passed: slices.Contains(passed, t), Detail: "why " + t})
	}
	return rs
}

// TestMissing: the tests the reference passes and the other does not, in
// suite order; none when the other passes a superset.
func TestMissing(t *testing.T) {
	for _, tc := range []struct {
		name        string
		ref, got    []string
		wantMissing []string
	}{
		{"superset", []string{"basic"}, []string{"basic", "keepalive"}, nil},
		{"equal", []string{"basic", "unsubscribe"}, []string{"unsubscribe", "basic"}, nil},
		{"missing two", []string{"unsubscribe", "basic", "keepalive"}, []string{"keepalive"}, []string{"basic", "unsubscribe"}},
		{"nothing passed", conformance.Tests, nil, conformance.Tests},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := conformance.Missing(results(tc.ref...), results(tc.got...)); !slices.Equal(got, tc.wantMissing) {
				t.Errorf("Missing = %v, want %v", got, tc.wantMissing)
			}
		})
	}
}

// TestTable: a row per test with ✔ or ✘ and the detail (pipes escaped),
// and the totals.
func TestTable(t *testing.T) {
	a := results(conformance.Tests...)
	b := results("basic")
	b[1].Detail = "got a|b"
	table := conformance.Table([]string{"A", "B"}, [][]conformance.Result{a, b})
	for _, want := range []string{
		"| Test | A | B |",
		"| basic | ✔ | ✔ |",
		`| retained_messages | ✔ | ✘ got a\|b |`,
		"| **passed** | **11 of 11** | **1 of 11** |",
	} {
		if !strings.Contains(table, want) {
			t.Errorf("table lacks %q:\n%s", want, table)
		}
	}
}
