package client

import (
	"context"
	"fmt"
	"net/http"
	"net/url"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/wire"
)

// EnrollDevice enrolls a device and returns its secret, shown once; with
// req.Certificate or req.CertSHA256 it binds that certificate instead and
// returns its fingerprint. A device enrolled already is an *Error matching
// ErrConflict. Only an operator may enroll.
func (c *Client) EnrollDevice(ctx context.Context, req wire.EnrollRequest) (wire.SecretResponse, error) {
	op := "enroll " + req.ID
	if _, err := device.ParseID(req.ID); err != nil {
		return wire.SecretResponse{}, fmt.Errorf("client: %s: %w: %w", op, ErrInvalid, err)
	}
	var resp wire.SecretResponse
	if err := c.call(ctx, op, http.MethodPost, "/v1/devices", req, http.StatusCreated, &resp); err != nil {
		return wire.SecretResponse{}, err
	}
	return resp, nil
}

// ImportDevices enrolls every device of req at once, or none: when any is
// bad the *Error (matching ErrInvalid) lists each in Problems. With
// req.DryRun it checks them all and enrolls none.
func (c *Client) ImportDevices(ctx context.Context, req wire.ImportRequest) (wire.ImportResponse, error) {
	want := http.StatusCreated
	if req.DryRun {
		want = http.StatusOK
	}
	var resp wire.ImportResponse
	if err := c.call(ctx, "import devices", http.MethodPost, "/v1/identities/devices", req, want, &resp); err != nil {
		return wire.ImportResponse{}, err
	}
	return resp, nil
}

// ListEnrolled returns every enrolled device with its labels and presence.
func (c *Client) ListEnrolled(ctx context.Context) ([]wire.EnrolledDevice, error) {
	var l wire.IdentityList
	if err := c.call(ctx, "list enrolled devices", http.MethodGet, "/v1/identities/devices", nil, http.StatusOK, &l); err != nil {
		return nil, err
	}
	return l.Devices, nil
}

// GetDevice returns everything about device id in one answer: its
// enrolment, presence, classic shadow and firmware versions (GET
// /v1/devices/{id}).
func (c *Client) GetDevice(ctx context.Context, id device.ID) (wire.Device, error) {
	op := "get device " + string(id)
	if _, err := device.ParseID(string(id)); err != nil {
		return wire.Device{}, fmt.Errorf("client: %s: %w: %w", op, ErrInvalid, err)
	}
	var d wire.Device
	err := c.call(ctx, op, http.MethodGet, "/v1/devices/"+url.PathEscape(string(id)), nil, http.StatusOK, &d)
	return d, err
}

// RemoveDevice removes device id: its new connections are refused and its
// live session loses all rights.
func (c *Client) RemoveDevice(ctx context.Context, id device.ID) error {
	op := "remove " + string(id)
	if _, err := device.ParseID(string(id)); err != nil {
		return fmt.Errorf("client: %s: %w: %w", op, ErrInvalid, err)
	}
	return c.call(ctx, op, http.MethodDelete, "/v1/devices/"+url.PathEscape(string(id)), nil, http.StatusNoContent, nil)
}

// RotateDevice gives device id a new secret and returns it, shown once.
func (c *Client) RotateDevice(ctx context.Context, id device.ID) (wire.SecretResponse, error) {
	op := "rotate " + string(id)
	if _, err := device.ParseID(string(id)); err != nil {
		return wire.SecretResponse{}, fmt.Errorf("client: %s: %w: %w", op, ErrInvalid, err)
	}
	var resp wire.SecretResponse
	if err := c.call(ctx, op, http.MethodPost, "/v1/devices/"+url.PathEscape(string(id))+"/rotate", nil, http.StatusOK, &resp); err != nil {
		return wire.SecretResponse{}, err
	}
	return resp, nil
}

// CreateToken creates a token of role (wire.RoleOperator or
// wire.RoleIntegrator) and returns it, "name:secret", shown once.
func (c *Client) CreateToken(ctx context.Context, name string, role wire.Role) (wire.TokenResponse, error) {
	var resp wire.TokenResponse
	if err := c.call(ctx, "create token "+name, http.MethodPost, "/v1/tokens", wire.TokenRequest{Name: name, Role: role}, http.StatusCreated, &resp); err != nil {
		return wire.TokenResponse{}, err
	}
	return resp, nil
}

// ListTokens returns every token, never its secret.
func (c *Client) ListTokens(ctx context.Context) ([]wire.Token, error) {
	var l wire.TokenList
	if err := c.call(ctx, "list tokens", http.MethodGet, "/v1/tokens", nil, http.StatusOK, &l); err != nil {
		return nil, err
	}
	return l.Tokens, nil
}

// RevokeToken revokes token name: new connections and requests with it are
// refused.
func (c *Client) RevokeToken(ctx context.Context, name string) error {
	op := "revoke token " + name
	seg, err := segment("token name", name)
	if err != nil {
		return fmt.Errorf("client: %s: %w", op, err)
	}
	return c.call(ctx, op, http.MethodDelete, "/v1/tokens/"+seg, nil, http.StatusNoContent, nil)
}
