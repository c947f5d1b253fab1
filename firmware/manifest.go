package firmware

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
)

// Manifest is what the fleet signing key signs for each image. Its wire form
// (Bytes) is the compact JSON object with the fields in exactly this order:
//
//	{"version":"1.2.0","hw":"m1","size":1048576,"sha256":"<64 lowercase hex>"}
type Manifest struct {
	Version string `json:"version"`
	HW      string `json:"hw"`
	Size    int64  `json:"size"`
	SHA256  string `json:"sha256"`
}

// Bytes returns the exact bytes that are signed: json.Marshal of m. Every
// field is restricted to characters json.Marshal does not escape, so a
// device can rebuild the same bytes with any JSON encoder that writes the
// fields in order without spaces.
func (m Manifest) Bytes() []byte {
	b, err := json.Marshal(m)
	if err != nil { // cannot happen: strings and an int64
		panic(err)
	}
	return b
}

// Verify checks that sig is pub's ed25519 signature of m.Bytes(). The error
// wraps ErrBadSignature.
func Verify(pub ed25519.PublicKey, m Manifest, sig []byte) error {
	if len(pub) != ed25519.PublicKeySize {
		return fmt.Errorf("%w: public key is %d bytes, want %d", ErrBadSignature, len(pub), ed25519.PublicKeySize)
	}
	if !ed25519.Verify(pub, m.Bytes(), sig) {
		return fmt.Errorf("verify manifest %s: %w", m.Version, ErrBadSignature)
	}
	return nil
}

// MarshalPublicKey returns pub as a PEM "PUBLIC KEY" block (PKIX), the form
// `umbra firmware pubkey` prints and devices pin.
func MarshalPublicKey(pub ed25519.PublicKey) []byte {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil { // cannot happen for a 32-byte ed25519 key
		panic(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

// ParsePublicKey accepts a PEM "PUBLIC KEY" block (as MarshalPublicKey
// writes) or the standard base64 of the raw 32-byte key, surrounding white
// space ignored.
func ParsePublicKey(b []byte) (ed25519.PublicKey, error) {
	b = bytes.TrimSpace(b)
	if blk, _ := pem.Decode(b); blk != nil {
		if blk.Type != "PUBLIC KEY" {
			return nil, fmt.Errorf("%w: pem block %q, want PUBLIC KEY", ErrInvalid, blk.Type)
		}
		k, err := x509.ParsePKIXPublicKey(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%w: parse public key: %w", ErrInvalid, err)
		}
		pub, ok := k.(ed25519.PublicKey)
		if !ok {
			return nil, fmt.Errorf("%w: public key is %T, want ed25519", ErrInvalid, k)
		}
		return pub, nil
	}
	raw, err := base64.StdEncoding.DecodeString(string(b))
	if err != nil || len(raw) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("%w: public key is neither PEM nor base64 of %d bytes", ErrInvalid, ed25519.PublicKeySize)
	}
	return ed25519.PublicKey(raw), nil
}

// loadOrCreateSigningKey reads the PKCS#8 PEM ed25519 key at path. When the
// file does not exist and create is set it generates one and writes it 0600.
func loadOrCreateSigningKey(path string, create bool) (ed25519.PrivateKey, bool, error) {
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		k, err := parseSigningKey(b)
		if err != nil {
			return nil, false, fmt.Errorf("signing key %s: %w", path, err)
		}
		return k, false, nil
	case !errors.Is(err, os.ErrNotExist) || !create:
		return nil, false, fmt.Errorf("read signing key: %w", err)
	}
	b, err = NewSigningKey()
	if err != nil {
		return nil, false, err
	}
	if err := writeFileAtomic(path, b, 0o600); err != nil {
		return nil, false, fmt.Errorf("write signing key: %w", err)
	}
	priv, err := parseSigningKey(b)
	return priv, err == nil, err
}

// NewSigningKey returns a new fleet signing key, ed25519 in PEM PKCS#8,
// as Config.SigningKeyPath's file holds it.
func NewSigningKey() ([]byte, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("firmware: generate signing key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("firmware: encode signing key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// SigningPublicKey returns the public key of a fleet signing key in the
// form of Config.SigningKeyPath's file (PEM PKCS#8 ed25519).
func SigningPublicKey(b []byte) (ed25519.PublicKey, error) {
	priv, err := parseSigningKey(b)
	if err != nil {
		return nil, err
	}
	return priv.Public().(ed25519.PublicKey), nil
}

func parseSigningKey(b []byte) (ed25519.PrivateKey, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return nil, errors.New("not a PEM PRIVATE KEY (PKCS#8) block")
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, err
	}
	priv, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("key is %T, want ed25519", k)
	}
	return priv, nil
}
