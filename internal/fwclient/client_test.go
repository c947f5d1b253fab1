package fwclient_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/firmware"
	"github.com/umbra-iot/umbra/internal/fwclient"
	"github.com/umbra-iot/umbra/internal/httpapi"
	"github.com/umbra-iot/umbra/shadow"
)

// newServer serves the real API with a firmware store (1 MiB limit; version
// 6.6.6 is "in use" by rollout r-1) and returns a client for it.
func newServer(t *testing.T) (*fwclient.Client, *firmware.Store) {
	t.Helper()
	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	srv := httptest.NewUnstartedServer(nil)
	fw, err := firmware.Open(t.Context(), firmware.Config{
		Dir:          t.TempDir(),
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
	eng, err := shadow.Open(t.Context(), shadow.Config{Path: filepath.Join(t.TempDir(), "shadow.db"), Logger: log})
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
	c, err := fwclient.New(fwclient.Config{API: srv.URL + "/", Token: "secret"})
	if err != nil {
		t.Fatal(err)
	}
	return c, fw
}

func hexSum(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

func TestClient(t *testing.T) {
	c, _ := newServer(t)
	ctx := t.Context()
	data := bytes.Repeat([]byte("firmware"), 4096)

	img, err := c.Upload(ctx, firmware.UploadRequest{Version: "1.0.0", HW: "m1", Notes: "ünïcode notes", SHA256: hexSum(data)}, bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	if img.Version != "1.0.0" || img.HW != "m1" || img.Notes != "ünïcode notes" || img.SHA256 != hexSum(data) {
		t.Errorf("Upload = %+v, want 1.0.0 m1 with the notes and sha256", img)
	}
	if _, err := c.Upload(ctx, firmware.UploadRequest{Version: "1.1.0"}, bytes.NewReader(data), -1); err != nil {
		t.Errorf("chunked Upload: %v", err)
	}
	imgs, err := c.List(ctx)
	if err != nil || len(imgs) != 2 || imgs[0].Version != "1.0.0" || imgs[1].Version != "1.1.0" {
		t.Errorf("List = %+v, %v; want 1.0.0, 1.1.0", imgs, err)
	}
	got, err := c.Get(ctx, "1.0.0")
	if err != nil || got.SHA256 != img.SHA256 || !bytes.Equal(got.Signature, img.Signature) {
		t.Errorf("Get = %+v, %v; want %+v", got, err, img)
	}
	pk, err := c.PublicKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := firmware.ParsePublicKey([]byte(pk.PEM))
	if err := firmware.Verify(pub, got.Manifest(), got.Signature); err != nil {
		t.Errorf("manifest does not verify with PublicKey: %v", err)
	}
	u, err := c.URL(ctx, "1.0.0", "dev-1", 10*time.Minute)
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
	doc, err := c.Assign(ctx, "1.0.0", "dev-1", 0)
	if err != nil {
		t.Fatal(err)
	}
	var acc struct {
		Version int
		State   struct {
			Desired struct{ Firmware firmware.Command }
		}
	}
	if err := json.Unmarshal(doc, &acc); err != nil || acc.Version != 1 || acc.State.Desired.Firmware.SHA256 != img.SHA256 {
		t.Errorf("Assign = %s (%v), want version 1 with the firmware command", doc, err)
	}
	if err := c.Delete(ctx, "1.1.0"); err != nil {
		t.Errorf("Delete: %v", err)
	}
	if _, err := c.Get(ctx, "1.1.0"); !errors.Is(err, firmware.ErrNotFound) {
		t.Errorf("Get deleted = %v, want ErrNotFound", err)
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

func TestClientErrors(t *testing.T) {
	c, _ := newServer(t)
	ctx := t.Context()
	data := []byte("image bytes")
	if _, err := c.Upload(ctx, firmware.UploadRequest{Version: "6.6.6"}, bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
	big := &countingReader{r: bytes.NewReader(make([]byte, 900<<10))}
	tests := []struct {
		name   string
		call   func() error
		is     error
		status int // 0: refused locally
	}{
		{"bad version", func() error {
			_, err := c.Upload(ctx, firmware.UploadRequest{Version: "1"}, bytes.NewReader(data), 11)
			return err
		}, fwclient.ErrInvalid, 0},
		{"zero size", func() error {
			_, err := c.Upload(ctx, firmware.UploadRequest{Version: "1.0.0"}, bytes.NewReader(data), 0)
			return err
		}, fwclient.ErrInvalid, 0},
		{"duplicate: refused before the body is sent", func() error {
			_, err := c.Upload(ctx, firmware.UploadRequest{Version: "6.6.6"}, big, 900<<10)
			return err
		}, firmware.ErrExists, 409},
		{"too large", func() error {
			_, err := c.Upload(ctx, firmware.UploadRequest{Version: "2.0.0"}, big, 2<<20)
			return err
		}, firmware.ErrTooLarge, 413},
		{"checksum", func() error {
			_, err := c.Upload(ctx, firmware.UploadRequest{Version: "2.0.0", SHA256: hexSum(nil)}, bytes.NewReader(data), 11)
			return err
		}, firmware.ErrChecksumMismatch, 422},
		{"bad hw", func() error {
			_, err := c.Upload(ctx, firmware.UploadRequest{Version: "2.0.0", HW: "a b"}, bytes.NewReader(data), 11)
			return err
		}, firmware.ErrInvalid, 400},
		{"not found", func() error { _, err := c.Get(ctx, "9.9.9"); return err }, firmware.ErrNotFound, 404},
		{"in use", func() error { return c.Delete(ctx, "6.6.6") }, firmware.ErrInUse, 409},
		{"bad device", func() error { _, err := c.URL(ctx, "6.6.6", "a/b", 0); return err }, fwclient.ErrInvalid, 0},
		{"bad ttl", func() error { _, err := c.Assign(ctx, "6.6.6", "d", time.Millisecond); return err }, fwclient.ErrInvalid, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			if !errors.Is(err, tc.is) {
				t.Fatalf("got %v, want an error matching %v", err, tc.is)
			}
			ae, isAPI := errors.AsType[*fwclient.APIError](err)
			switch {
			case tc.status == 0 && isAPI:
				t.Errorf("got server error %v, want it refused locally", err)
			case tc.status != 0 && (!isAPI || ae.Status != tc.status):
				t.Errorf("got %v, want an *APIError with status %d", err, tc.status)
			}
		})
	}
	if n := big.n.Load(); n != 0 {
		t.Errorf("refused uploads read %d bytes of their body, want 0 (Expect: 100-continue)", n)
	}
	if err := c.Delete(ctx, "6.6.6"); err != nil {
		if ae, _ := errors.AsType[*fwclient.APIError](err); ae == nil || ae.Rollout != "r-1" {
			t.Errorf("Delete in-use error %#v, want Rollout r-1", err)
		}
	}
}

func TestNonJSONErrors(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer tok" {
			http.Error(w, "no token", http.StatusUnauthorized)
			return
		}
		http.Error(w, "bad gateway\nsecond line", http.StatusBadGateway)
	}))
	t.Cleanup(srv.Close)
	for _, tc := range []struct{ token, want string }{
		{"", "401 Unauthorized: no token"},
		{"tok", "502 Bad Gateway: bad gateway"},
	} {
		c, err := fwclient.New(fwclient.Config{API: srv.URL, Token: tc.token})
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.List(t.Context())
		if err == nil || !strings.HasSuffix(err.Error(), tc.want) {
			t.Errorf("token %q: got %v, want an error ending %q", tc.token, err, tc.want)
		}
	}
}

func TestNewErrors(t *testing.T) {
	for _, cfg := range []fwclient.Config{
		{API: "ftp://host"},
		{API: "http://"},
		{API: "http://host/?q=1"},
		{API: "::"},
		{Timeout: -time.Second},
		{Token: "a\nb"},
	} {
		if _, err := fwclient.New(cfg); !errors.Is(err, fwclient.ErrInvalid) {
			t.Errorf("New(%+v) = %v, want ErrInvalid", cfg, err)
		}
	}
	if _, err := fwclient.New(fwclient.Config{}); err != nil {
		t.Errorf("New(zero Config) = %v, want the defaults", err)
	}
}
