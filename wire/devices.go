package wire

import (
	"bytes"
	"encoding/json"
	"errors"
	"time"

	"github.com/umbra-iot/umbra/device"
)

// Page sizes of the listing routes (GET /v1/devices and GET
// /v1/rollouts/{id}/devices, ?limit=).
const (
	DefaultListLimit = 100
	MaxListLimit     = 1000
)

// DeviceList is the body of GET /v1/devices?limit=&cursor=: a page of
// devices with a shadow, in ID order, and the cursor of the next page (""
// after the last).
type DeviceList struct {
	Devices []DeviceSummary `json:"devices"`
	Next    string          `json:"next"`
}

// DeviceSummary is one device of a DeviceList: its classic shadow's
// version and last update, and, when the server tracks it, its presence.
type DeviceSummary struct {
	ID       device.ID `json:"id"`
	Version  uint64    `json:"version"`
	Updated  time.Time `json:"updated"`
	Presence *Presence `json:"presence,omitempty"`
}

// Presence is a device's last known connection state; the zero value for a
// device that never connected.
type Presence struct {
	Connected        bool      `json:"connected"`
	ConnectedAt      time.Time `json:"connected_at,omitzero"`
	DisconnectedAt   time.Time `json:"disconnected_at,omitzero"` // may predate ConnectedAt while connected
	DisconnectReason string    `json:"disconnect_reason,omitempty"`
	RemoteAddr       string    `json:"remote_addr,omitempty"`
	// Node is the cluster node holding (or that last held) the device's
	// connection; empty in single-node mode.
	Node string `json:"node,omitempty"`
}

// Device is the body of GET /v1/devices/{id}: everything about one
// device in one place. Enrolled is false (and the enrolment fields empty)
// for a device with a shadow but no identity (anonymous mode); Shadow is
// nil for a device without a classic shadow.
type Device struct {
	ID         device.ID         `json:"id"`
	Enrolled   bool              `json:"enrolled"`
	Labels     map[string]string `json:"labels,omitempty"`
	CreatedAt  time.Time         `json:"created_at,omitzero"`
	RotatedAt  time.Time         `json:"rotated_at,omitzero"`
	CertSHA256 string            `json:"cert_sha256,omitempty"`
	Presence   Presence          `json:"presence"`
	Shadow     *ShadowInfo       `json:"shadow,omitempty"` // the classic shadow; Name ""
	// Firmware is the version the device reports running
	// (state.reported.firmware.version) and the one it is asked to run
	// (state.desired.firmware.version), when its shadow says.
	Firmware DeviceFirmware `json:"firmware"`
}

// DeviceFirmware is a Device's firmware versions, "" when unknown.
type DeviceFirmware struct {
	Reported string `json:"reported,omitempty"`
	Desired  string `json:"desired,omitempty"`
}

// ShadowList is the body of GET /v1/devices/{id}/shadows: the classic
// shadow (Name "") first if it exists, then the named ones in name order.
type ShadowList struct {
	Device  device.ID    `json:"device"`
	Shadows []ShadowInfo `json:"shadows"`
}

// ShadowInfo is one shadow of a ShadowList.
type ShadowInfo struct {
	Name    string    `json:"name"` // "" for the classic shadow
	Version uint64    `json:"version"`
	Updated time.Time `json:"updated"`
}

// Shadow is the answer of the shadow routes, GET, POST and DELETE
// /v1/devices/{id}/shadow[?name=]: the same JSON as the MQTT get/accepted,
// update/accepted and delete/accepted messages (docs/protocol.md). A get
// carries the whole document with its delta; an update echoes the request's
// state and the metadata it wrote, or only the version with StateOmitted
// when that would not fit an MQTT packet; a delete carries the deleted
// version.
type Shadow struct {
	State        *ShadowState    `json:"state,omitempty"`
	Metadata     json.RawMessage `json:"metadata,omitempty"`
	Version      uint64          `json:"version"`
	Timestamp    int64           `json:"timestamp"` // Unix seconds
	ClientToken  string          `json:"clientToken,omitempty"`
	StateOmitted bool            `json:"stateOmitted,omitempty"`
}

// ShadowState is the state of a Shadow or a ShadowUpdate. Each section is
// raw JSON: an object, or null (in an update, null deletes the section),
// or absent.
type ShadowState struct {
	Desired  json.RawMessage `json:"desired,omitempty"`
	Reported json.RawMessage `json:"reported,omitempty"`
	Delta    json.RawMessage `json:"delta,omitempty"` // in answers only
}

// ShadowUpdate is the body of POST /v1/devices/{id}/shadow: exactly the
// MQTT update request. A nil Version applies the update whatever the
// shadow's version; a set one applies it only at that version (0 for a
// shadow that never existed), else 409. The server echoes ClientToken.
type ShadowUpdate struct {
	State       ShadowState `json:"state"`
	Version     *uint64     `json:"version,omitempty"`
	ClientToken string      `json:"clientToken,omitempty"`
}

// Field names: the HTTP API's JSON is snake_case (docs/protocol.md, "JSON
// field names"), except the shadow documents (Shadow, ShadowUpdate), whose
// names are AWS IoT's. Until release 0.3, the request bodies also accept
// the camelCase names of earlier releases: certSha256 and dryRun.

// Roles of tokens and principals.
type Role string

// The roles. Tokens are created with RoleOperator or RoleIntegrator; a
// device's credential has RoleDevice.
const (
	RoleOperator   Role = "operator"
	RoleIntegrator Role = "integrator"
	RoleDevice     Role = "device"
)

// Identity administration bodies.
type (
	// EnrollRequest is the body of POST /v1/devices, and one device of an
	// ImportRequest.
	EnrollRequest struct {
		ID     string            `json:"id"`
		Labels map[string]string `json:"labels,omitempty"`
		// Certificate, if set, is an existing client certificate (PEM,
		// the certificate alone) to bind to the device by its SHA-256
		// fingerprint: it then logs in as the device whatever its
		// subject and issuer, and the device gets no secret.
		Certificate string `json:"certificate,omitempty"`
		// CertSHA256 binds a certificate by its fingerprint alone (64
		// lowercase hex digits of the SHA-256 of its DER form, AWS IoT's
		// certificate ID). With Certificate, it must be that
		// certificate's.
		CertSHA256 string `json:"cert_sha256,omitempty"`
	}
	// SecretResponse answers POST /v1/devices and POST
	// /v1/devices/{id}/rotate: the device's new secret, shown once; none
	// for a device enrolled with a certificate, which answers the
	// certificate's fingerprint instead.
	SecretResponse struct {
		ID         string `json:"id"`
		Secret     string `json:"secret,omitempty"`
		CertSHA256 string `json:"cert_sha256,omitempty"`
	}
	// ImportRequest is the body of POST /v1/identities/devices: devices to
	// enroll all at once, or, if any is bad, none.
	ImportRequest struct {
		Devices []EnrollRequest `json:"devices"`
		// DryRun checks every device and enrolls none.
		DryRun bool `json:"dry_run,omitempty"`
	}
	// ImportResponse answers an import: the devices in request order with
	// their secrets (none for a dry run or a bound certificate).
	ImportResponse struct {
		Devices []SecretResponse `json:"devices"`
		DryRun  bool             `json:"dry_run,omitempty"`
	}
	// ImportProblem is one bad device of an import, listed in the
	// Problems of its 400 answer.
	ImportProblem struct {
		Index   int    `json:"index"` // position in ImportRequest.Devices, from 0
		ID      string `json:"id"`
		Message string `json:"message"`
	}
	// EnrolledDevice is one device of an IdentityList.
	EnrolledDevice struct {
		ID         device.ID         `json:"id"`
		Labels     map[string]string `json:"labels,omitempty"`
		CreatedAt  time.Time         `json:"created_at"`
		RotatedAt  time.Time         `json:"rotated_at,omitzero"` // zero if the secret was never rotated
		CertSHA256 string            `json:"cert_sha256,omitempty"`
		Presence   Presence          `json:"presence"`
		// Firmware is set by umbra device list, which reads it from GET
		// /v1/devices/{id}; GET /v1/identities/devices leaves it out.
		Firmware *DeviceFirmware `json:"firmware,omitempty"`
	}
	// IdentityList answers GET /v1/identities/devices.
	IdentityList struct {
		Devices []EnrolledDevice `json:"devices"`
	}
	// TokenRequest is the body of POST /v1/tokens.
	TokenRequest struct {
		Name string `json:"name"`
		Role Role   `json:"role"`
	}
	// TokenResponse answers POST /v1/tokens; Token is "name:secret", the
	// bearer token and the value of UMBRA_TOKEN, shown once.
	TokenResponse struct {
		Name  string `json:"name"`
		Role  Role   `json:"role"`
		Token string `json:"token"`
	}
	// Token is one token of a TokenList (never its secret).
	Token struct {
		Name      string    `json:"name"`
		Role      Role      `json:"role"`
		CreatedAt time.Time `json:"created_at"`
	}
	// TokenList answers GET /v1/tokens.
	TokenList struct {
		Tokens []Token `json:"tokens"`
	}
)

// UnmarshalJSON decodes an EnrollRequest strictly (unknown fields are an
// error), accepting the old name certSha256 for cert_sha256.
func (r *EnrollRequest) UnmarshalJSON(b []byte) error {
	type plain EnrollRequest
	var v struct {
		plain
		OldCertSHA256 string `json:"certSha256,omitempty"`
	}
	if err := decodeStrict(b, &v); err != nil {
		return err
	}
	if v.OldCertSHA256 != "" {
		if v.CertSHA256 != "" && v.CertSHA256 != v.OldCertSHA256 {
			return errors.New("cert_sha256 and its old name certSha256 differ")
		}
		v.CertSHA256 = v.OldCertSHA256
	}
	*r = EnrollRequest(v.plain)
	return nil
}

// UnmarshalJSON decodes an ImportRequest strictly, accepting the old name
// dryRun for dry_run.
func (r *ImportRequest) UnmarshalJSON(b []byte) error {
	type plain ImportRequest
	var v struct {
		plain
		OldDryRun *bool `json:"dryRun,omitempty"`
	}
	if err := decodeStrict(b, &v); err != nil {
		return err
	}
	if v.OldDryRun != nil {
		v.DryRun = v.DryRun || *v.OldDryRun
	}
	*r = ImportRequest(v.plain)
	return nil
}

// decodeStrict decodes one JSON value into v, refusing unknown fields.
func decodeStrict(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}
