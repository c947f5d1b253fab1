package sim_test

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/umbra-iot/umbra/internal/sim"
)

func TestParsePublicKey(t *testing.T) {
	pub := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{1}, 32)).Public().(ed25519.PublicKey)
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	pemKey := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	rsaDER, err := x509.MarshalPKIXPublicKey(&rsa.PublicKey{N: big.NewInt(0).Lsh(big.NewInt(1), 1023), E: 65537})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		in      []byte
		wantErr bool
	}{
		{"raw", pub, false},
		{"base64 std", []byte(base64.StdEncoding.EncodeToString(pub)), false},
		{"base64 with newline", []byte(base64.StdEncoding.EncodeToString(pub) + "\n"), false},
		{"base64 raw url", []byte(base64.RawURLEncoding.EncodeToString(pub)), false},
		{"pem", pemKey, false},
		{"pem private block", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), true},
		{"pem rsa", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: rsaDER}), true},
		{"short base64", []byte(base64.StdEncoding.EncodeToString(pub[:16])), true},
		{"garbage", []byte("hello"), true},
		{"empty", nil, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := sim.ParsePublicKey(tc.in)
			if tc.wantErr {
				if err == nil {
					t.Errorf("ParsePublicKey(%s) = %x, want an error", tc.name, got)
				}
				return
			}
			if err != nil || !got.Equal(pub) {
				t.Errorf("ParsePublicKey(%s) = %x, %v; want %x", tc.name, got, err, pub)
			}
		})
	}
}

func TestLoadPublicKey(t *testing.T) {
	pub := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{2}, 32)).Public().(ed25519.PublicKey)
	dir := t.TempDir()
	rawFile := filepath.Join(dir, "fleet.pub")
	if err := os.WriteFile(rawFile, pub, 0o600); err != nil {
		t.Fatal(err)
	}
	b64File := filepath.Join(dir, "fleet.b64")
	if err := os.WriteFile(b64File, []byte(base64.StdEncoding.EncodeToString(pub)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A path of exactly 32 characters (ed25519.PublicKeySize) is a path,
	// never raw key bytes: the regression `make demo` found.
	short, err := os.MkdirTemp("", "k")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(short) })
	path32 := filepath.Join(short, strings.Repeat("p", 32-len(short)-1))
	if len(path32) != 32 {
		t.Fatalf("path %q has %d characters, want 32", path32, len(path32))
	}
	if err := os.WriteFile(path32, []byte(base64.StdEncoding.EncodeToString(pub)), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		in      string
		wantErr bool
	}{
		{"value", base64.StdEncoding.EncodeToString(pub), false},
		{"32-character path", path32, false},
		{"32-character missing path", path32[:31] + "q", true},
		{"raw file", rawFile, false},
		{"base64 file", b64File, false},
		{"missing file", filepath.Join(dir, "nope"), true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := sim.LoadPublicKey(tc.in)
			if tc.wantErr != (err != nil) || (!tc.wantErr && !got.Equal(pub)) {
				t.Errorf("LoadPublicKey(%s) = %x, %v; want %x (error %v)", tc.name, got, err, pub, tc.wantErr)
			}
		})
	}
}

func TestParseFailMode(t *testing.T) {
	for _, s := range []string{"download", "verify", "install", "silent"} {
		if m, err := sim.ParseFailMode(s); err != nil || string(m) != s {
			t.Errorf("ParseFailMode(%q) = %q, %v; want %q", s, m, err, s)
		}
	}
	if _, err := sim.ParseFailMode("crash"); err == nil {
		t.Error("ParseFailMode(crash) = nil error, want one")
	}
}
