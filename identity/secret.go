package identity

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
)

const (
	// secretBytes is the entropy of a generated secret.
	secretBytes = 32
	// maxSecretLen bounds a presented secret before it is hashed; generated
	// secrets are 43 characters.
	maxSecretLen = 256
	// macDomain separates this use of the server key from any other.
	macDomain = "umbra/identity/v1 secret"
)

// newSecret returns a fresh random secret: 32 bytes, base64url without
// padding (43 characters, no ':' so "name:secret" splits unambiguously).
func newSecret() string {
	b := make([]byte, secretBytes)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// secretMAC returns HMAC-SHA256(key, domain ‖ role ‖ name ‖ secret), the
// only form in which a secret is stored. Binding the role and name means a
// stored MAC copied to another entry does not verify there.
func secretMAC(key []byte, role Role, name string, secret []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(macDomain))
	m.Write([]byte{0})
	m.Write([]byte(role))
	m.Write([]byte{0})
	m.Write([]byte(name))
	m.Write([]byte{0})
	m.Write(secret)
	return m.Sum(nil)
}

// checkSecret reports in constant time (for a given stored MAC) whether
// secret is the one stored as mac.
func checkSecret(key []byte, role Role, name string, secret, mac []byte) bool {
	return hmac.Equal(secretMAC(key, role, name, secret), mac)
}
