package sim

import (
	"bytes"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
)

// This file is the device side of the firmware protocol, written as real
// firmware would write it: it deliberately does not import Umbra's firmware
// package, so the simulator doubles as an interoperability check.

// Firmware states a device reports in reported.firmware.state.
const (
	StateDownloading = "downloading"
	StateVerifying   = "verifying"
	StateInstalling  = "installing"
	StateRebooting   = "rebooting"
	StateUpdated     = "updated"
	StateFailed      = "failed"
)

// Failure reasons a device reports in reported.firmware.error.
const (
	ReasonBadCommand     = "bad_command"     // the command is malformed
	ReasonHWMismatch     = "hw_mismatch"     // the image is for other hardware
	ReasonUntrusted      = "untrusted"       // no public key is pinned
	ReasonURLRejected    = "url_rejected"    // HTTP 403 (URL expired or tampered)
	ReasonDownloadFailed = "download_failed" // any other download error
	ReasonSizeMismatch   = "size_mismatch"   // downloaded size ≠ command size
	ReasonSHA256Mismatch = "sha256_mismatch" // downloaded digest ≠ command digest
	ReasonBadSignature   = "bad_signature"   // the manifest signature does not verify
	ReasonInstallFailed  = "install_failed"  // the simulated install failed
)

// retryable says whether a failure reason is worth a retry by the planner:
// transport and install problems are; a bad command, the wrong hardware or
// an image that is not signed by the fleet key are not.
func retryable(reason string) bool {
	switch reason {
	case ReasonURLRejected, ReasonDownloadFailed, ReasonSizeMismatch, ReasonSHA256Mismatch, ReasonInstallFailed:
		return true
	}
	return false
}

// command is a firmware update command: the effective value of
// desired.firmware.
type command struct {
	Version   string `json:"version"`
	HW        string `json:"hw"`
	URL       string `json:"url"`
	SHA256    string `json:"sha256"`
	Size      int64  `json:"size"`
	Signature string `json:"signature"`
	Job       string `json:"job"`
}

// commandDelta is desired.firmware as it appears in a delta: only the
// fields that differ from reported.firmware are present.
type commandDelta struct {
	Version   *string `json:"version"`
	HW        string  `json:"hw"`
	URL       string  `json:"url"`
	SHA256    string  `json:"sha256"`
	Size      int64   `json:"size"`
	Signature string  `json:"signature"`
	Job       *string `json:"job"`
}

// resolve returns the effective command: a field missing from the delta
// equals the reported value (version and job are the only fields a device
// reports back).
func (d commandDelta) resolve(reported report) command {
	c := command{
		Version: reported.Version, HW: d.HW, URL: d.URL, SHA256: d.SHA256,
		Size: d.Size, Signature: d.Signature, Job: reported.Job,
	}
	if d.Version != nil {
		c.Version = *d.Version
	}
	if d.Job != nil {
		c.Job = *d.Job
	}
	return c
}

// sameTarget reports whether c and o install the same image for the same job.
func (c command) sameTarget(o command) bool {
	return c.Version == o.Version && strings.EqualFold(c.SHA256, o.SHA256) && c.Job == o.Job
}

// validate checks the fields a device needs before it starts downloading.
func (c command) validate(maxSize int64) error {
	switch {
	case c.Version == "" || len(c.Version) > 64:
		return errors.New("version: want 1 to 64 bytes")
	case len(c.SHA256) != 64:
		return errors.New("sha256: want 64 hex digits")
	case c.Size <= 0 || c.Size > maxSize:
		return fmt.Errorf("size %d: want 1 to %d", c.Size, maxSize)
	case c.Signature == "":
		return errors.New("signature: missing")
	}
	if _, err := hex.DecodeString(c.SHA256); err != nil {
		return errors.New("sha256: want 64 hex digits")
	}
	u, err := url.Parse(c.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("url %q: want an http(s) URL", c.URL)
	}
	return nil
}

// report is the value of reported.firmware. Every report carries every
// field so that a partial-merge shadow never keeps a stale error.
type report struct {
	Version   string `json:"version"`
	State     string `json:"state"`
	Error     string `json:"error"`
	Retryable bool   `json:"retryable"`
	Job       string `json:"job"`
}

// manifest is the signed description of an image; json.Marshal of it, in
// this field order, is the byte string the fleet key signs.
type manifest struct {
	Version string `json:"version"`
	HW      string `json:"hw"`
	Size    int64  `json:"size"`
	SHA256  string `json:"sha256"`
}

// verify checks a downloaded image of n bytes with digest sum against the
// command and the pinned key. It returns "" or a failure reason.
func verify(key ed25519.PublicKey, c command, n int64, sum [32]byte) string {
	if n != c.Size {
		return ReasonSizeMismatch
	}
	if !strings.EqualFold(hex.EncodeToString(sum[:]), c.SHA256) {
		return ReasonSHA256Mismatch
	}
	if len(key) != ed25519.PublicKeySize {
		return ReasonUntrusted
	}
	sig, err := base64.StdEncoding.DecodeString(c.Signature)
	if err != nil || len(sig) != ed25519.SignatureSize {
		return ReasonBadSignature
	}
	msg, err := json.Marshal(manifest{Version: c.Version, HW: c.HW, Size: c.Size, SHA256: c.SHA256})
	if err != nil || !ed25519.Verify(key, msg, sig) {
		return ReasonBadSignature
	}
	return ""
}

// ParsePublicKey decodes an ed25519 public key given as the 32 raw bytes,
// their standard or URL-safe base64 (padded or not), or a PEM "PUBLIC KEY"
// (PKIX) block.
func ParsePublicKey(data []byte) (ed25519.PublicKey, error) {
	text := bytes.TrimSpace(data)
	if block, _ := pem.Decode(text); block != nil {
		if block.Type != "PUBLIC KEY" {
			return nil, fmt.Errorf("pem block %q: want PUBLIC KEY", block.Type)
		}
		k, err := x509.ParsePKIXPublicKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse pem public key: %w", err)
		}
		pub, ok := k.(ed25519.PublicKey)
		if !ok {
			return nil, fmt.Errorf("pem public key is %T, want ed25519", k)
		}
		return pub, nil
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if raw, err := enc.DecodeString(string(text)); err == nil && len(raw) == ed25519.PublicKeySize {
			return ed25519.PublicKey(raw), nil
		}
	}
	if len(data) == ed25519.PublicKeySize {
		return ed25519.PublicKey(bytes.Clone(data)), nil
	}
	return nil, errors.New("not an ed25519 public key (want 32 raw bytes, their base64, or a PEM PUBLIC KEY)")
}

// LoadPublicKey resolves a key given as the path of a file holding the
// key in any form ParsePublicKey accepts, or as a value: base64 or PEM
// text. An existing file wins, so a path can never be mistaken for a
// value (a 32-character path is not 32 raw key bytes).
func LoadPublicKey(s string) (ed25519.PublicKey, error) {
	if st, err := os.Stat(s); err == nil && st.Mode().IsRegular() {
		data, err := os.ReadFile(s)
		if err != nil {
			return nil, err
		}
		return ParsePublicKey(data)
	}
	text := strings.TrimSpace(s)
	if len(text) == ed25519.PublicKeySize && !strings.HasPrefix(text, "-----BEGIN") {
		// Raw bytes are accepted from files only: as a value they would
		// shadow a mistyped path.
		return nil, fmt.Errorf("%q: neither a key file nor a base64 or PEM key", s)
	}
	k, err := ParsePublicKey([]byte(text))
	if err != nil {
		if strings.HasPrefix(text, "-----BEGIN") {
			return nil, err
		}
		return nil, fmt.Errorf("%q: neither a key file nor a base64 or PEM key: %w", s, err)
	}
	return k, nil
}
