package client_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/client"
	"github.com/umbra-iot/umbra/firmware"
	"github.com/umbra-iot/umbra/internal/httpapi"
	"github.com/umbra-iot/umbra/shadow"
	"github.com/umbra-iot/umbra/wire"
)

// newFirmwareServer serves the real API with a firmware store (1 MiB
// limit; version 6.6.6 is "in use" by rollout r-1) and returns a client
// for it.
func newFirmwareServer(t *testing.T) *client.Client {
	t.Helper()
	log := testLogger(t)
	srv := httptest.NewUnstartedServer(nil)
	dir := t.TempDir()
	fw, err := firmware.Open(t.Context(), firmware.Config{
		Dir:          dir,
		Catalog:      fwCatalog(t, dir),
		BaseURL:      "http://" + srv.Listener.Addr().String(),
		MaxImageSize: 1 << 20,
		Logger:       log,
		InUse: func(_ context.Context, v firmware.Version) (string, bool, error) {
			return "r-1", v == "6.6.6", nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fw.Close(context.Background()) })
	eng, err := shadow.Open(t.Context(), shadow.Config{Store: shadowStore(t, filepath.Join(t.TempDir(), "shadow.db")), Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { eng.Close(context.Background()) })
	h, err := httpapi.NewHandler(httpapi.Config{Shadow: eng, Firmware: fw, Logger: log,
		Mounts: map[string]http.Handler{"GET /fw/{sha256}": fw.DownloadHandler()}})
	if err != nil {
		t.Fatal(err)
	}
	srv.Config.Handler = h
	srv.Start()
	t.Cleanup(srv.Close)
	c, err := client.New(client.Config{URL: srv.URL + "/", Token: "secret"})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func hexSum(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

func TestFirmware(t *testing.T) {
	c := newFirmwareServer(t)
	ctx := t.Context()
	data := bytes.Repeat([]byte("firmware"), 4096)

	img, err := c.UploadFirmware(ctx, wire.ImageUpload{Version: "1.0.0", HW: "m1", Notes: "ünïcode notes", SHA256: hexSum(data)}, bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	if img.Version != "1.0.0" || img.HW != "m1" || img.Notes != "ünïcode notes" || img.SHA256 != hexSum(data) {
		t.Errorf("UploadFirmware = %+v, want 1.0.0 m1 with the notes and sha256", img)
	}
	if _, err := c.UploadFirmware(ctx, wire.ImageUpload{Version: "1.1.0"}, bytes.NewReader(data), -1); err != nil {
		t.Errorf("chunked UploadFirmware: %v", err)
	}
	imgs, err := c.ListFirmware(ctx)
	if err != nil || len(imgs) != 2 || imgs[0].Version != "1.0.0" || imgs[1].Version != "1.1.0" {
		t.Errorf("ListFirmware = %+v, %v; want 1.0.0, 1.1.0", imgs, err)
	}
	got, err := c.GetFirmware(ctx, "1.0.0")
	if err != nil || got.SHA256 != img.SHA256 || !bytes.Equal(got.Signature, img.Signature) {
		t.Errorf("GetFirmware = %+v, %v; want %+v", got, err, img)
	}
	pk, err := c.FirmwarePublicKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := firmware.ParsePublicKey([]byte(pk.PEM))
	manifest := firmware.Manifest{Version: got.Version, HW: got.HW, Size: got.Size, SHA256: got.SHA256}
	if err := firmware.Verify(pub, manifest, got.Signature); err != nil {
		t.Errorf("manifest does not verify with FirmwarePublicKey: %v", err)
	}
	u, err := c.FirmwareURL(ctx, "1.0.0", "dev-1", 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Until(u.Expires); d < 9*time.Minute || d > 11*time.Minute {
		t.Errorf("URL expires in %v, want about 10m", d)
	}
	res, err := http.Get(u.URL)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 200 || !bytes.Equal(body, data) {
		t.Errorf("GET URL: status %d, %d bytes; want 200 with the image", res.StatusCode, len(body))
	}
	doc, err := c.AssignFirmware(ctx, "1.0.0", "dev-1", 0)
	if err != nil {
		t.Fatal(err)
	}
	var desired struct{ Firmware firmware.Command }
	if doc.State != nil {
		err = json.Unmarshal(doc.State.Desired, &desired)
	}
	if err != nil || doc.Version != 1 || desired.Firmware.SHA256 != img.SHA256 {
		t.Errorf("AssignFirmware = %+v (%v), want version 1 with the firmware command", doc, err)
	}
	if err := c.DeleteFirmware(ctx, "1.1.0"); err != nil {
		t.Errorf("DeleteFirmware: %v", err)
	}
	if _, err := c.GetFirmware(ctx, "1.1.0"); !errors.Is(err, client.ErrNotFound) {
		t.Errorf("GetFirmware deleted = %v, want ErrNotFound", err)
	}
}

// countingReader counts the bytes read from it.
type countingReader struct {
	r io.Reader
	n atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// TestFirmwareErrors: the client refuses locally only what it cannot send;
// the server refuses the rest, before the body of an upload is sent.
func TestFirmwareErrors(t *testing.T) {
	c := newFirmwareServer(t)
	ctx := t.Context()
	data := []byte("image bytes")
	if _, err := c.UploadFirmware(ctx, wire.ImageUpload{Version: "6.6.6"}, bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
	big := &countingReader{r: bytes.NewReader(make([]byte, 900<<10))}
	tests := []struct {
		name   string
		call   func() error
		is     error
		status int // 0: refused locally
	}{
		{"bad version: refused before the body is sent", func() error {
			_, err := c.UploadFirmware(ctx, wire.ImageUpload{Version: "1"}, big, 900<<10)
			return err
		}, client.ErrInvalid, 400},
		{"no version", func() error {
			_, err := c.UploadFirmware(ctx, wire.ImageUpload{}, bytes.NewReader(data), 11)
			return err
		}, client.ErrInvalid, 0},
		{"zero size", func() error {
			_, err := c.UploadFirmware(ctx, wire.ImageUpload{Version: "1.0.0"}, bytes.NewReader(data), 0)
			return err
		}, client.ErrInvalid, 0},
		{"duplicate: refused before the body is sent", func() error {
			_, err := c.UploadFirmware(ctx, wire.ImageUpload{Version: "6.6.6"}, big, 900<<10)
			return err
		}, client.ErrConflict, 409},
		{"too large", func() error {
			_, err := c.UploadFirmware(ctx, wire.ImageUpload{Version: "2.0.0"}, big, 2<<20)
			return err
		}, client.ErrTooLarge, 413},
		{"checksum", func() error {
			_, err := c.UploadFirmware(ctx, wire.ImageUpload{Version: "2.0.0", SHA256: hexSum(nil)}, bytes.NewReader(data), 11)
			return err
		}, client.ErrChecksumMismatch, 422},
		{"bad hw", func() error {
			_, err := c.UploadFirmware(ctx, wire.ImageUpload{Version: "2.0.0", HW: "a b"}, bytes.NewReader(data), 11)
			return err
		}, client.ErrInvalid, 400},
		{"not found", func() error { _, err := c.GetFirmware(ctx, "9.9.9"); return err }, client.ErrNotFound, 404},
		{"bad version in the path", func() error { _, err := c.GetFirmware(ctx, "latest"); return err }, client.ErrInvalid, 400},
		{"the public key is no version", func() error { _, err := c.GetFirmware(ctx, "pubkey"); return err }, client.ErrInvalid, 0},
		{"dot dot", func() error { return c.DeleteFirmware(ctx, "..") }, client.ErrInvalid, 0},
		{"in use", func() error { return c.DeleteFirmware(ctx, "6.6.6") }, client.ErrConflict, 409},
		{"bad device", func() error { _, err := c.FirmwareURL(ctx, "6.6.6", "a/b", 0); return err }, client.ErrInvalid, 0},
		{"negative ttl", func() error { _, err := c.AssignFirmware(ctx, "6.6.6", "d", -time.Second); return err }, client.ErrInvalid, 0},
		{"ttl below a second", func() error { _, err := c.AssignFirmware(ctx, "6.6.6", "d", time.Millisecond); return err }, client.ErrInvalid, 400},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			if !errors.Is(err, tc.is) {
				t.Fatalf("got %v, want an error matching %v", err, tc.is)
			}
			ae, isAPI := errors.AsType[*client.Error](err)
			switch {
			case tc.status == 0 && isAPI:
				t.Errorf("got server error %v, want it refused locally", err)
			case tc.status != 0 && (!isAPI || ae.Status != tc.status):
				t.Errorf("got %v, want an *Error with status %d", err, tc.status)
			}
		})
	}
	if n := big.n.Load(); n != 0 {
		t.Errorf("refused uploads read %d bytes of their body, want 0 (Expect: 100-continue)", n)
	}
	if err := c.DeleteFirmware(ctx, "6.6.6"); err != nil {
		if ae, _ := errors.AsType[*client.Error](err); ae == nil || ae.Rollout != "r-1" {
			t.Errorf("DeleteFirmware in-use error %#v, want Rollout r-1", err)
		}
	}
}
