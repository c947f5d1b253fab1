package identity_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/identity"
)

// selfSigned writes a self-signed certificate valid from notBefore to
// notAfter, and its key, into dir.
func selfSigned(t *testing.T, dir, name string, notBefore, notAfter time.Time) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: notBefore, NotAfter: notAfter, DNSNames: []string{"localhost"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

func TestLoadKeyPair(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	good, goodKey := selfSigned(t, dir, "good", now.Add(-time.Hour), now.Add(time.Hour))
	_, otherKey := selfSigned(t, dir, "other", now.Add(-time.Hour), now.Add(time.Hour))
	expired, expiredKey := selfSigned(t, dir, "expired", now.Add(-2*time.Hour), now.Add(-time.Hour))
	future, futureKey := selfSigned(t, dir, "future", now.Add(time.Hour), now.Add(2*time.Hour))
	tests := []struct {
		name, cert, key, want string
	}{
		{"good", good, goodKey, ""},
		{"missing cert", filepath.Join(dir, "nope.crt"), goodKey, "nope.crt: no such file"},
		{"missing key", good, filepath.Join(dir, "nope.key"), "nope.key: no such file"},
		{"key of another", good, otherKey, "private key does not match public key"},
		{"key as cert", goodKey, goodKey, "PEM inputs may have been switched"},
		{"expired", expired, expiredKey, "expired.crt is valid from"},
		{"not yet valid", future, futureKey, "future.crt is valid from"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			kp, err := identity.LoadKeyPair(tc.cert, tc.key)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("LoadKeyPair: %v", err)
				}
				if c, _ := kp.GetCertificate(nil); c == nil || c.Leaf.Subject.CommonName != "good" {
					t.Fatalf("GetCertificate = %v, want the good pair", c)
				}
				return
			}
			if !errors.Is(err, identity.ErrInvalidCert) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("LoadKeyPair = %v, want ErrInvalidCert containing %q", err, tc.want)
			}
		})
	}
}

// TestKeyPairReload: Reload takes the files' new pair; a bad one is an
// error and the pair in force stays.
func TestKeyPairReload(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	cert, key := selfSigned(t, dir, "first", now.Add(-time.Hour), now.Add(time.Hour))
	kp, err := identity.LoadKeyPair(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	cn := func() string { c, _ := kp.GetCertificate(nil); return c.Leaf.Subject.CommonName }
	expired, expiredKey := selfSigned(t, t.TempDir(), "expired", now.Add(-2*time.Hour), now.Add(-time.Hour))
	for _, mv := range [][2]string{{expired, cert}, {expiredKey, key}} {
		if err := os.Rename(mv[0], mv[1]); err != nil {
			t.Fatal(err)
		}
	}
	if err := kp.Reload(); !errors.Is(err, identity.ErrInvalidCert) || cn() != "first" {
		t.Fatalf("Reload of an expired pair = %v, serving %q; want ErrInvalidCert, first kept", err, cn())
	}
	second, secondKey := selfSigned(t, t.TempDir(), "second", now.Add(-time.Hour), now.Add(time.Hour))
	for _, mv := range [][2]string{{second, cert}, {secondKey, key}} {
		if err := os.Rename(mv[0], mv[1]); err != nil {
			t.Fatal(err)
		}
	}
	if err := kp.Reload(); err != nil || cn() != "second" {
		t.Fatalf("Reload = %v, serving %q; want second", err, cn())
	}
	if c, k := kp.Files(); c != cert || k != key {
		t.Errorf("Files = %s, %s; want %s, %s", c, k, cert, key)
	}
}
