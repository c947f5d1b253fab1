package server_test

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/internal/server"
)

// TestClusterModeFirmwareURLsOnEveryNode: the nodes of a cluster share
// the firmware signing key and the download-URL secret through NATS, so a
// URL minted on node A downloads the image from node B, and both publish
// one fleet public key. A node whose own signing key is another one
// refuses to start, naming both keys, and keeps its key file.
func TestClusterModeFirmwareURLsOnEveryNode(t *testing.T) {
	a, b, ns := openClusterPair(t)
	if !a.Firmware().PublicKey().Equal(b.Firmware().PublicKey()) {
		t.Fatal("the nodes sign with different keys")
	}
	img := a.mustUpload(t, "1.0.0")
	minted, _ := a.Firmware().URL(img, "dev-1", time.Minute)
	u, err := url.Parse(minted)
	if err != nil {
		t.Fatal(err)
	}
	get := func(host string) (int, []byte) {
		t.Helper()
		u.Host = host
		resp, err := http.Get(u.String())
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, body
	}
	codeA, bodyA := get(a.HTTPAddr().String())
	codeB, bodyB := get(b.HTTPAddr().String())
	if codeA != http.StatusOK || codeB != http.StatusOK || !bytes.Equal(bodyA, bodyB) || int64(len(bodyB)) != img.Size {
		t.Fatalf("URL minted on node A: %d (%d bytes) on A, %d (%d bytes) on B; want the %d-byte image on both",
			codeA, len(bodyA), codeB, len(bodyB), img.Size)
	}
	// A forged URL is still refused on node B.
	q := u.Query()
	q.Set("d", "dev-2")
	u.RawQuery = q.Encode()
	if code, _ := get(b.HTTPAddr().String()); code != http.StatusForbidden {
		t.Errorf("URL altered for another device on node B = %d, want 403", code)
	}

	// A node with a signing key of its own refuses to join.
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "firmware", "signing.key")
	if err := os.MkdirAll(filepath.Dir(keyFile), 0o700); err != nil {
		t.Fatal(err)
	}
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	der, _ := x509.MarshalPKCS8PrivateKey(priv)
	own := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	if err := os.WriteFile(keyFile, own, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = server.Open(t.Context(), server.Config{DataDir: dir, MQTTAddr: "127.0.0.1:0", Anonymous: true,
		NATS: ns.URLs(), NodeID: "c", NATSReplicas: 1, Logger: testLogger(t)})
	if !errors.Is(err, server.ErrInvalidConfig) || !strings.Contains(err.Error(), "is not the cluster's") {
		t.Errorf("Open of a node with its own signing key = %v, want ErrInvalidConfig saying it is not the cluster's", err)
	}
	if got, _ := os.ReadFile(keyFile); !bytes.Equal(got, own) {
		t.Error("the refused node's signing key file changed")
	}
}
