package firmware

import (
	"crypto/ed25519"
	"encoding/base64"
	"fmt"
	"time"

	"github.com/umbra-iot/umbra/device"
)

// Command is the firmware update command a device receives as
// desired.firmware in its shadow delta. Its JSON form is the wire format:
//
//	{"version":"1.2.0","hw":"m1","url":"http://…/fw/<sha256>?d=…&g=…&e=…&s=…",
//	 "sha256":"<64 hex>","size":1048576,"signature":"<base64>","job":"r1"}
type Command struct {
	Version   string `json:"version"`
	HW        string `json:"hw"`
	URL       string `json:"url"`
	SHA256    string `json:"sha256"`
	Size      int64  `json:"size"`
	Signature string `json:"signature"` // standard base64 of the ed25519 manifest signature
	Job       string `json:"job,omitempty"`
}

// Command returns the update command for device id to install img, with a
// freshly minted download URL (ttl as for URL) and job echoed back by the
// device in reported.firmware.job. Call it again to re-issue an expired URL.
func (s *Store) Command(img Image, id device.ID, ttl time.Duration, job string) Command {
	u, _ := s.URL(img, id, ttl)
	return Command{
		Version:   string(img.Version),
		HW:        img.HW,
		URL:       u,
		SHA256:    img.SHA256,
		Size:      img.Size,
		Signature: base64.StdEncoding.EncodeToString(img.Signature),
		Job:       job,
	}
}

// Desired returns {"firmware": {…}}, c as a desired-state fragment ready to
// merge into a shadow's desired section. The inner object has exactly the
// keys of c's JSON form.
func (c Command) Desired() map[string]any {
	fw := map[string]any{
		"version":   c.Version,
		"hw":        c.HW,
		"url":       c.URL,
		"sha256":    c.SHA256,
		"size":      c.Size,
		"signature": c.Signature,
	}
	if c.Job != "" {
		fw["job"] = c.Job
	}
	return map[string]any{"firmware": fw}
}

// Manifest returns the manifest c's signature covers.
func (c Command) Manifest() Manifest {
	return Manifest{Version: c.Version, HW: c.HW, Size: c.Size, SHA256: c.SHA256}
}

// Verify checks c's signature with the fleet public key, as a device does
// before downloading. It does not check the image bytes: the device compares
// their sha256 with c.SHA256 (and their length with c.Size) after download.
// The error wraps ErrBadSignature.
func (c Command) Verify(pub ed25519.PublicKey) error {
	sig, err := base64.StdEncoding.DecodeString(c.Signature)
	if err != nil {
		return fmt.Errorf("%w: signature is not base64", ErrBadSignature)
	}
	return Verify(pub, c.Manifest(), sig)
}

// State is a device's firmware update state, reported as
// reported.firmware.state.
type State string

// The states a device reports, in the order it passes through them.
const (
	StateDownloading State = "downloading"
	StateVerifying   State = "verifying"
	StateInstalling  State = "installing"
	StateRebooting   State = "rebooting"
	StateUpdated     State = "updated" // the new version is running
	StateFailed      State = "failed"  // see Report.Error and Report.Retryable
)

// Valid reports whether s is one of the defined states.
func (s State) Valid() bool {
	switch s {
	case StateDownloading, StateVerifying, StateInstalling, StateRebooting, StateUpdated, StateFailed:
		return true
	}
	return false
}

// Terminal reports whether s ends an update attempt (updated or failed).
func (s State) Terminal() bool { return s == StateUpdated || s == StateFailed }

// Report is what a device reports as reported.firmware.
type Report struct {
	Version   string `json:"version"`             // the running version
	State     State  `json:"state,omitempty"`     // progress of the current command
	Error     string `json:"error,omitempty"`     // why it failed, with State failed
	Retryable bool   `json:"retryable,omitempty"` // whether a retry may succeed (e.g. URL expired, network)
	Job       string `json:"job,omitempty"`       // echo of Command.Job
}
