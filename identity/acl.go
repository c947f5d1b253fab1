package identity

import (
	"fmt"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/policy"
)

// Role is what a principal may do.
type Role string

// The three roles. Which topics each may use is the topic policy's
// business (policy, docs/acl.md); these are its role names.
const (
	// RoleDevice is one device.
	RoleDevice Role = policy.RoleDevice
	// RoleOperator administers the fleet.
	RoleOperator Role = policy.RoleOperator
	// RoleIntegrator is a read-only service.
	RoleIntegrator Role = policy.RoleIntegrator
)

// ParseRole validates s as the role of a token: RoleOperator or
// RoleIntegrator. Device credentials are created with AddDevice, not as
// tokens, so RoleDevice is refused. The error wraps ErrInvalidRole.
func ParseRole(s string) (Role, error) {
	switch r := Role(s); r {
	case RoleOperator, RoleIntegrator:
		return r, nil
	}
	return "", fmt.Errorf("%w: %q (want %q or %q)", ErrInvalidRole, s, RoleOperator, RoleIntegrator)
}

// Principal is an authenticated party: a device or a token.
type Principal struct {
	// Role decides what the principal may do.
	Role Role
	// Name is the device ID for a device and the token name for a token.
	Name string
	// Device is the device a RoleDevice principal is; "" for tokens.
	Device device.ID
}

// CanReadDevice reports whether p may read device id's shadow and presence
// (over HTTP, say): a device only its own, operators and integrators all.
func (p Principal) CanReadDevice(id device.ID) bool {
	switch p.Role {
	case RoleDevice:
		return p.Device != "" && p.Device == id
	case RoleOperator, RoleIntegrator:
		return true
	}
	return false
}

// CanWriteDevice reports whether p may update or delete device id's shadow:
// a device only its own, operators all, integrators none.
func (p Principal) CanWriteDevice(id device.ID) bool {
	switch p.Role {
	case RoleDevice:
		return p.Device != "" && p.Device == id
	case RoleOperator:
		return true
	}
	return false
}
