package identity

import (
	"crypto/tls"
	"fmt"
	"sync/atomic"
	"time"
)

// KeyPair is a server certificate (chain) and its private key, read from
// PEM files, for a TLS listener that reloads them without a restart:
// GetCertificate hands each handshake the pair in force, Reload reads the
// files again. It is safe for concurrent use.
type KeyPair struct {
	certFile, keyFile string
	now               func() time.Time
	cur               atomic.Pointer[tls.Certificate]
}

// LoadKeyPair reads a certificate and key. It fails with an error wrapping
// ErrInvalidCert, naming the files, when either is missing or unreadable,
// is not PEM, the key does not match the certificate, or the certificate
// is expired or not yet valid.
func LoadKeyPair(certFile, keyFile string) (*KeyPair, error) {
	k := &KeyPair{certFile: certFile, keyFile: keyFile, now: time.Now}
	if err := k.Reload(); err != nil {
		return nil, err
	}
	return k, nil
}

// Reload reads the files again. On error the pair in force stays, and the
// error is as LoadKeyPair's.
func (k *KeyPair) Reload() error {
	pair, err := tls.LoadX509KeyPair(k.certFile, k.keyFile)
	if err != nil {
		return fmt.Errorf("%w: certificate %s, key %s: %w", ErrInvalidCert, k.certFile, k.keyFile, err)
	}
	// LoadX509KeyPair parses the leaf.
	now := k.now()
	if leaf := pair.Leaf; now.After(leaf.NotAfter) || now.Before(leaf.NotBefore) {
		return fmt.Errorf("%w: certificate %s is valid from %s to %s, not now", ErrInvalidCert, k.certFile,
			leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	k.cur.Store(&pair)
	return nil
}

// GetCertificate returns the pair in force, for tls.Config.GetCertificate.
func (k *KeyPair) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return k.cur.Load(), nil
}

// Certificate returns the pair in force; its Leaf is parsed.
func (k *KeyPair) Certificate() *tls.Certificate { return k.cur.Load() }

// Files returns the certificate and key files.
func (k *KeyPair) Files() (certFile, keyFile string) { return k.certFile, k.keyFile }
