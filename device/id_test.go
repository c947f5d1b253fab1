package device_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/umbra-iot/umbra/device"
)

func TestParseID(t *testing.T) {
	tests := []struct {
		name string
		in   string
		ok   bool
	}{
		{"simple", "dev-1", true},
		{"all classes", "Ab9_.:-", true},
		{"max length", strings.Repeat("a", device.MaxIDLen), true},
		{"empty", "", false},
		{"too long", strings.Repeat("a", device.MaxIDLen+1), false},
		{"slash", "a/b", false},
		{"plus wildcard", "a+", false},
		{"hash wildcard", "#", false},
		{"space", "a b", false},
		{"dot", ".", false},
		{"dotdot", "..", false},
		{"nul", "a\x00", false},
		{"unicode", "gerät", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id, err := device.ParseID(tc.in)
			if tc.ok {
				if err != nil || id.String() != tc.in {
					t.Fatalf("ParseID(%q) = %q, %v; want %q, nil", tc.in, id, err, tc.in)
				}
				return
			}
			if !errors.Is(err, device.ErrInvalidID) {
				t.Fatalf("ParseID(%q) error = %v, want ErrInvalidID", tc.in, err)
			}
		})
	}
}

func FuzzParseID(f *testing.F) {
	for _, s := range []string{"dev-1", "", "a/b", "#", strings.Repeat("x", 200)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := device.ParseID(s)
		if err != nil {
			return
		}
		if len(id) == 0 || len(id) > device.MaxIDLen || strings.ContainsAny(string(id), "/+#\x00 ") {
			t.Fatalf("ParseID accepted %q", s)
		}
	})
}
