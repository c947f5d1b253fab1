package firmware_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/firmware"
	"github.com/umbra-iot/umbra/internal/goldentest"
)

func TestSignatureVerifies(t *testing.T) {
	e := mustOpen(t, nil)
	img := mustUpload(t, e.st, "1.2.0", image(1234, 1))
	pub := e.st.PublicKey()
	real := img.Manifest()
	if err := firmware.Verify(pub, real, img.Signature); err != nil {
		t.Fatalf("Verify(real manifest) = %v, want nil", err)
	}
	otherPub, _, _ := ed25519.GenerateKey(nil)
	tests := []struct {
		name string
		pub  ed25519.PublicKey
		m    firmware.Manifest
		sig  []byte
	}{
		{"version", pub, firmware.Manifest{Version: "1.2.1", HW: real.HW, Size: real.Size, SHA256: real.SHA256}, img.Signature},
		{"hw", pub, firmware.Manifest{Version: real.Version, HW: "m2", Size: real.Size, SHA256: real.SHA256}, img.Signature},
		{"size", pub, firmware.Manifest{Version: real.Version, HW: real.HW, Size: real.Size + 1, SHA256: real.SHA256}, img.Signature},
		{"sha256", pub, firmware.Manifest{Version: real.Version, HW: real.HW, Size: real.Size, SHA256: sum([]byte("evil"))}, img.Signature},
		{"signature", pub, real, append([]byte{img.Signature[0] ^ 1}, img.Signature[1:]...)},
		{"short signature", pub, real, img.Signature[:10]},
		{"other key", otherPub, real, img.Signature},
		{"short key", pub[:16], real, img.Signature},
	}
	for _, tc := range tests {
		if err := firmware.Verify(tc.pub, tc.m, tc.sig); !errors.Is(err, firmware.ErrBadSignature) {
			t.Errorf("Verify(modified %s) = %v, want ErrBadSignature", tc.name, err)
		}
	}
}

func TestPublicKeyEncoding(t *testing.T) {
	e := mustOpen(t, nil)
	pub := e.st.PublicKey()
	pemBytes := firmware.MarshalPublicKey(pub)
	for name, in := range map[string][]byte{
		"pem":    pemBytes,
		"base64": []byte(" " + base64.StdEncoding.EncodeToString(pub) + "\n"),
	} {
		got, err := firmware.ParsePublicKey(in)
		if err != nil || !got.Equal(pub) {
			t.Errorf("ParsePublicKey(%s) = %x, %v, want %x", name, got, err, pub)
		}
	}
	priv, err := os.ReadFile(filepath.Join(e.dir, "signing.key"))
	if err != nil {
		t.Fatal(err)
	}
	for name, in := range map[string][]byte{
		"empty":       nil,
		"garbage":     []byte("hello"),
		"short":       []byte(base64.StdEncoding.EncodeToString(pub[:31])),
		"private pem": priv,
	} {
		if _, err := firmware.ParsePublicKey(in); !errors.Is(err, firmware.ErrInvalid) {
			t.Errorf("ParsePublicKey(%s) error = %v, want ErrInvalid", name, err)
		}
	}
}

// goldenStore opens a store with a fixed signing key, URL secret, base URL
// and clock, so its signatures and URLs are reproducible.
func goldenStore(t *testing.T) *env {
	t.Helper()
	seed := bytes.Repeat([]byte{7}, ed25519.SeedSize)
	der, err := x509.MarshalPKCS8PrivateKey(ed25519.NewKeyFromSeed(seed))
	if err != nil {
		t.Fatal(err)
	}
	keyPath := filepath.Join(t.TempDir(), "fleet.key")
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return mustOpen(t, func(c *firmware.Config) {
		c.SigningKeyPath = keyPath
		c.URLSecret = bytes.Repeat([]byte{9}, 32)
		c.BaseURL = "http://127.0.0.1:8080"
		c.URLTTL = 10 * time.Minute
		c.Enrolment = func(device.ID) string { return "Q2Xv9s0mZ1lWb3cK" }
	})
}

// TestWireFormatGolden pins the manifest, public key, command, desired and
// reported encodings. Regenerate with:
// go test ./firmware -run TestWireFormatGolden -update
func TestWireFormatGolden(t *testing.T) {
	e := goldenStore(t)
	img, err := e.st.Upload(context.Background(), firmware.UploadRequest{Version: "v1.2.0", HW: "m1"}, bytes.NewReader([]byte("firmware image bytes\n")))
	if err != nil {
		t.Fatal(err)
	}
	goldentest.Check(t, filepath.Join("testdata", "manifest.golden"), append(img.Manifest().Bytes(), '\n'))
	goldentest.Check(t, filepath.Join("testdata", "pubkey.golden"), firmware.MarshalPublicKey(e.st.PublicKey()))

	cmd := e.st.Command(img, "dev-1", 0, "rollout-7")
	goldentest.CheckJSON(t, filepath.Join("testdata", "command.golden"), cmd)
	goldentest.CheckJSON(t, filepath.Join("testdata", "desired.golden"), cmd.Desired())
	report := firmware.Report{Version: "1.1.0", State: firmware.StateFailed, Error: "download: 403", Retryable: true, Job: "rollout-7"}
	r, err := json.Marshal(map[string]any{"firmware": report})
	if err != nil {
		t.Fatal(err)
	}
	goldentest.Check(t, filepath.Join("testdata", "reported.golden"), append(r, '\n'))
}
