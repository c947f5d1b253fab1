package identity_test

import (
	"testing"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/identity"
)

func TestPrincipalCan(t *testing.T) {
	devA := identity.Principal{Role: identity.RoleDevice, Name: "A", Device: "A"}
	op := identity.Principal{Role: identity.RoleOperator, Name: "admin"}
	integ := identity.Principal{Role: identity.RoleIntegrator, Name: "dash"}
	tests := []struct {
		p                   identity.Principal
		id                  device.ID
		wantRead, wantWrite bool
	}{
		{devA, "A", true, true},
		{devA, "B", false, false},
		{op, "B", true, true},
		{integ, "B", true, false},
		{identity.Principal{Role: "root"}, "B", false, false},
	}
	for _, tc := range tests {
		if got := tc.p.CanReadDevice(tc.id); got != tc.wantRead {
			t.Errorf("%s.CanReadDevice(%s) = %t, want %t", tc.p.Role, tc.id, got, tc.wantRead)
		}
		if got := tc.p.CanWriteDevice(tc.id); got != tc.wantWrite {
			t.Errorf("%s.CanWriteDevice(%s) = %t, want %t", tc.p.Role, tc.id, got, tc.wantWrite)
		}
	}
}

func TestParseRole(t *testing.T) {
	tests := []struct {
		in      string
		wantErr bool
	}{
		{"operator", false},
		{"integrator", false},
		{"device", true},
		{"", true},
		{"Operator", true},
	}
	for _, tc := range tests {
		r, err := identity.ParseRole(tc.in)
		if (err != nil) != tc.wantErr || err == nil && string(r) != tc.in {
			t.Errorf("ParseRole(%q) = %q, %v; want error %t", tc.in, r, err, tc.wantErr)
		}
	}
}
