package firmware_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/umbra-iot/umbra/firmware"
)

func TestParseVersion(t *testing.T) {
	tests := []struct {
		in   string
		want firmware.Version
		ok   bool
	}{
		{"1.2.0", "1.2.0", true},
		{"v1.2.0", "1.2.0", true},
		{"0.0.1", "0.0.1", true},
		{"10.20.30", "10.20.30", true},
		{"1.2.0-rc.1", "1.2.0-rc.1", true},
		{"v2.0.0-alpha", "2.0.0-alpha", true},
		{"", "", false},
		{"1", "", false},
		{"1.2", "", false},
		{"v1.2", "", false},
		{"01.2.0", "", false},
		{"1.2.0+build.5", "", false},
		{"1.2.0 ", "", false},
		{"V1.2.0", "", false},
		{"vv1.2.0", "", false},
		{"1.2.0-", "", false},
		{"1.2.0/../x", "", false},
		{"latest", "", false},
		{"1.0.0-" + strings.Repeat("a", 60), "", false},
	}
	for _, tc := range tests {
		got, err := firmware.ParseVersion(tc.in)
		if tc.ok && (err != nil || got != tc.want) {
			t.Errorf("ParseVersion(%q) = %q, %v, want %q, nil", tc.in, got, err, tc.want)
		}
		if !tc.ok && !errors.Is(err, firmware.ErrInvalidVersion) {
			t.Errorf("ParseVersion(%q) = %q, %v, want ErrInvalidVersion", tc.in, got, err)
		}
	}
}

func TestVersionCompare(t *testing.T) {
	tests := []struct {
		a, b firmware.Version
		want int
	}{
		{"1.2.0", "1.2.0", 0},
		{"1.2.0", "1.10.0", -1},
		{"1.2.0-rc.1", "1.2.0", -1},
		{"1.2.0-rc.2", "1.2.0-rc.10", -1},
		{"2.0.0", "1.99.99", 1},
	}
	for _, tc := range tests {
		if got := tc.a.Compare(tc.b); got != tc.want {
			t.Errorf("%s.Compare(%s) = %d, want %d", tc.a, tc.b, got, tc.want)
		}
	}
}
