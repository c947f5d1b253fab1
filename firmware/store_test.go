package firmware_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/firmware"
	"github.com/umbra-iot/umbra/firmware/storetest"
)

func TestUploadListGet(t *testing.T) {
	e := mustOpen(t, nil)
	ctx := context.Background()
	data := map[string][]byte{
		"1.10.0":     image(3000, 1),
		"1.2.0":      image(2000, 2),
		"1.2.0-rc.1": image(1000, 3),
	}
	for _, v := range []string{"1.10.0", "v1.2.0", "1.2.0-rc.1"} {
		d := data[strings.TrimPrefix(v, "v")]
		img, err := e.st.Upload(ctx, firmware.UploadRequest{Version: v, HW: "m1", Notes: "notes " + v, SHA256: strings.ToUpper(sum(d))}, bytes.NewReader(d))
		if err != nil {
			t.Fatalf("Upload(%s): %v", v, err)
		}
		if got, want := img.Size, int64(len(d)); got != want {
			t.Errorf("Upload(%s).Size = %d, want %d", v, got, want)
		}
		if got, want := img.SHA256, sum(d); got != want {
			t.Errorf("Upload(%s).SHA256 = %s, want %s", v, got, want)
		}
	}
	if got, want := versions(t, e.st), []firmware.Version{"1.2.0-rc.1", "1.2.0", "1.10.0"}; !slices.Equal(got, want) {
		t.Errorf("List versions = %v, want %v", got, want)
	}
	img, err := e.st.Get(ctx, "1.2.0")
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	want := firmware.Image{Version: "1.2.0", HW: "m1", Size: 2000, SHA256: sum(data["1.2.0"]), Notes: "notes v1.2.0", Created: e.clock.Now()}
	img.Signature, want.Signature = nil, nil
	if !img.Created.Equal(want.Created) {
		t.Errorf("Get.Created = %v, want %v", img.Created, want.Created)
	}
	img.Created = want.Created
	if fmt.Sprint(img) != fmt.Sprint(want) {
		t.Errorf("Get = %+v, want %+v", img, want)
	}
	if got, want := dirNames(t, filepath.Join(e.dir, "blobs")), sortedSums(data); !slices.Equal(got, want) {
		t.Errorf("blobs/ = %v, want %v", got, want)
	}
	if _, err := e.st.Get(ctx, "9.9.9"); !errors.Is(err, firmware.ErrNotFound) {
		t.Errorf("Get(9.9.9) error = %v, want ErrNotFound", err)
	}
}

func sortedSums(m map[string][]byte) []string {
	var s []string
	for _, d := range m {
		s = append(s, sum(d))
	}
	slices.Sort(s)
	return s
}

// errReader returns n bytes and then fails.
type errReader struct {
	n   int
	err error
}

func (r *errReader) Read(p []byte) (int, error) {
	if r.n == 0 {
		return 0, r.err
	}
	k := min(len(p), r.n)
	clear(p[:k])
	r.n -= k
	return k, nil
}

func TestUploadRejected(t *testing.T) {
	e := mustOpen(t, func(c *firmware.Config) { c.MaxImageSize = 4096 })
	if got := e.st.MaxImageSize(); got != 4096 {
		t.Errorf("MaxImageSize() = %d, want 4096", got)
	}
	existing := mustUpload(t, e.st, "1.0.0", image(100, 9))
	errBroken := errors.New("connection reset")
	tests := []struct {
		name string
		req  firmware.UploadRequest
		body io.Reader
		want error
	}{
		{"duplicate version", firmware.UploadRequest{Version: "1.0.0"}, bytes.NewReader(image(10, 1)), firmware.ErrExists},
		{"duplicate version with v", firmware.UploadRequest{Version: "v1.0.0"}, bytes.NewReader(image(10, 1)), firmware.ErrExists},
		{"not semver", firmware.UploadRequest{Version: "latest"}, bytes.NewReader(image(10, 1)), firmware.ErrInvalidVersion},
		{"shorthand", firmware.UploadRequest{Version: "1.2"}, bytes.NewReader(image(10, 1)), firmware.ErrInvalidVersion},
		{"empty version", firmware.UploadRequest{}, bytes.NewReader(image(10, 1)), firmware.ErrInvalidVersion},
		{"sha mismatch", firmware.UploadRequest{Version: "2.0.0", SHA256: sum([]byte("other"))}, bytes.NewReader(image(10, 1)), firmware.ErrChecksumMismatch},
		{"sha malformed", firmware.UploadRequest{Version: "2.0.0", SHA256: "abc"}, bytes.NewReader(image(10, 1)), firmware.ErrInvalid},
		{"oversize", firmware.UploadRequest{Version: "2.0.0"}, bytes.NewReader(image(4097, 1)), firmware.ErrTooLarge},
		{"oversize stream", firmware.UploadRequest{Version: "2.0.0"}, io.LimitReader(zeroReader{}, 1<<20), firmware.ErrTooLarge},
		{"empty image", firmware.UploadRequest{Version: "2.0.0"}, bytes.NewReader(nil), firmware.ErrInvalid},
		{"bad hw", firmware.UploadRequest{Version: "2.0.0", HW: "m1/../x"}, bytes.NewReader(image(10, 1)), firmware.ErrInvalid},
		{"long hw", firmware.UploadRequest{Version: "2.0.0", HW: strings.Repeat("h", 65)}, bytes.NewReader(image(10, 1)), firmware.ErrInvalid},
		{"control char in notes", firmware.UploadRequest{Version: "2.0.0", Notes: "a\x00b"}, bytes.NewReader(image(10, 1)), firmware.ErrInvalid},
		{"reader fails mid-stream", firmware.UploadRequest{Version: "2.0.0"}, &errReader{n: 3000, err: errBroken}, errBroken},
		{"existing bytes, reader fails", firmware.UploadRequest{Version: "2.0.0"}, io.MultiReader(bytes.NewReader(image(100, 9)), &errReader{err: errBroken}), errBroken},
	}
	blobsBefore := dirNames(t, filepath.Join(e.dir, "blobs"))
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.st.Upload(context.Background(), tc.req, tc.body)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Upload error = %v, want %v", err, tc.want)
			}
			if got, want := versions(t, e.st), []firmware.Version{existing.Version}; !slices.Equal(got, want) {
				t.Errorf("List = %v, want %v", got, want)
			}
			if got := dirNames(t, filepath.Join(e.dir, "blobs")); !slices.Equal(got, blobsBefore) {
				t.Errorf("blobs/ = %v, want %v", got, blobsBefore)
			}
			checkNoTemp(t, e.dir)
		})
	}
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// cancelReader cancels its context after the first read.
type cancelReader struct {
	cancel context.CancelFunc
}

func (r cancelReader) Read(p []byte) (int, error) {
	r.cancel()
	clear(p)
	return len(p), nil
}

func TestUploadCancelled(t *testing.T) {
	e := mustOpen(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	_, err := e.st.Upload(ctx, firmware.UploadRequest{Version: "1.0.0"}, cancelReader{cancel})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Upload error = %v, want context.Canceled", err)
	}
	if got := versions(t, e.st); len(got) != 0 {
		t.Errorf("List = %v, want none", got)
	}
	checkNoTemp(t, e.dir)
}

// blockingReader delivers one chunk, signals, then blocks until released.
type blockingReader struct {
	started chan struct{}
	release chan struct{}
	sent    bool
}

func (r *blockingReader) Read(p []byte) (int, error) {
	if !r.sent {
		r.sent = true
		close(r.started)
		clear(p)
		return len(p), nil
	}
	<-r.release
	clear(p)
	return len(p), nil
}

func TestCloseAbortsUpload(t *testing.T) {
	e := mustOpen(t, nil)
	r := &blockingReader{started: make(chan struct{}), release: make(chan struct{})}
	errc := make(chan error, 1)
	go func() {
		_, err := e.st.Upload(context.Background(), firmware.UploadRequest{Version: "1.0.0"}, r)
		errc <- err
	}()
	select {
	case <-r.started:
	case <-time.After(5 * time.Second):
		t.Fatal("upload did not start")
	}
	closed := make(chan error, 1)
	go func() { closed <- e.st.Close(context.Background()) }()
	// Close cancels uploads before it refuses new calls; once List fails the
	// upload's next read must see the cancellation.
	waitFor(t, func() bool {
		_, err := e.st.List(context.Background())
		return errors.Is(err, firmware.ErrClosed)
	})
	close(r.release)
	select {
	case err := <-errc:
		if !errors.Is(err, firmware.ErrClosed) {
			t.Errorf("Upload error = %v, want ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("upload not aborted by Close")
	}
	select {
	case err := <-closed:
		if err != nil {
			t.Errorf("Close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return")
	}
}

func TestOpenRecoversFromCrash(t *testing.T) {
	e := mustOpen(t, nil)
	keep := mustUpload(t, e.st, "1.0.0", image(100, 1))
	// What a crash leaves: a half-written upload in tmp/ and a blob renamed
	// into blobs/ whose metadata commit never happened.
	orphan := image(200, 2)
	files := map[string][]byte{
		filepath.Join(e.dir, "tmp", "upload-123"):  orphan[:77],
		filepath.Join(e.dir, "blobs", sum(orphan)): orphan,
	}
	for p, b := range files {
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	e.reopen(t)
	checkNoTemp(t, e.dir)
	if got, want := dirNames(t, filepath.Join(e.dir, "blobs")), []string{keep.SHA256}; !slices.Equal(got, want) {
		t.Errorf("blobs/ after reopen = %v, want %v", got, want)
	}
	if got, want := versions(t, e.st), []firmware.Version{"1.0.0"}; !slices.Equal(got, want) {
		t.Errorf("List after reopen = %v, want %v", got, want)
	}
}

func TestReopenKeepsImagesAndKeys(t *testing.T) {
	e := mustOpen(t, nil)
	data := image(5000, 4)
	img := mustUpload(t, e.st, "1.0.0", data)
	pub := e.st.PublicKey()
	u, _ := e.st.URL(img, "dev-1", 0)
	e.reopen(t)
	if !pub.Equal(e.st.PublicKey()) {
		t.Error("public key changed across reopen")
	}
	got, err := e.st.Get(context.Background(), "1.0.0")
	if err != nil {
		t.Fatalf("Get after reopen: %v", err)
	}
	if !bytes.Equal(got.Signature, img.Signature) || got.SHA256 != img.SHA256 {
		t.Errorf("Get after reopen = %+v, want %+v", got, img)
	}
	resp, body := get(t, http.MethodGet, u, nil)
	if resp.StatusCode != http.StatusOK || !bytes.Equal(body, data) {
		t.Errorf("URL minted before reopen: got %d (%d bytes), want 200 with the image", resp.StatusCode, len(body))
	}
	for name, want := range map[string]os.FileMode{"signing.key": 0o600, "url.key": 0o600} {
		st, err := os.Stat(filepath.Join(e.dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != want {
			t.Errorf("%s mode = %v, want %v", name, st.Mode().Perm(), want)
		}
	}
}

func writeKey(t *testing.T, path string) ed25519.PublicKey {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return pub
}

func TestSigningKeyPath(t *testing.T) {
	keyPath := filepath.Join(t.TempDir(), "fleet.key")
	pub := writeKey(t, keyPath)
	e := mustOpen(t, func(c *firmware.Config) { c.SigningKeyPath = keyPath })
	if !pub.Equal(e.st.PublicKey()) {
		t.Fatal("PublicKey does not match the configured key")
	}
	img := mustUpload(t, e.st, "1.0.0", image(10, 1))
	if err := firmware.Verify(pub, img.Manifest(), img.Signature); err != nil {
		t.Errorf("Verify: %v", err)
	}
	if _, err := os.Stat(filepath.Join(e.dir, "signing.key")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("signing.key created despite SigningKeyPath: stat error %v", err)
	}

	// Key rotation: reopening with another key re-signs every manifest.
	newPub := writeKey(t, keyPath)
	e.reopen(t)
	got, err := e.st.Get(context.Background(), "1.0.0")
	if err != nil {
		t.Fatal(err)
	}
	if err := firmware.Verify(newPub, got.Manifest(), got.Signature); err != nil {
		t.Errorf("after key change, Verify with new key: %v", err)
	}
	if err := firmware.Verify(pub, got.Manifest(), got.Signature); !errors.Is(err, firmware.ErrBadSignature) {
		t.Errorf("after key change, Verify with old key = %v, want ErrBadSignature", err)
	}
}

func TestOpenInvalidConfig(t *testing.T) {
	dir := t.TempDir()
	badKey := filepath.Join(dir, "bad.key")
	if err := os.WriteFile(badKey, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	badURLKeyDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(badURLKeyDir, "url.key"), []byte("zz\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		cfg  firmware.Config
	}{
		{"no dir", firmware.Config{}},
		{"corrupt url.key", firmware.Config{Dir: badURLKeyDir}},
		{"negative size", firmware.Config{Dir: dir, MaxImageSize: -1}},
		{"ttl too long", firmware.Config{Dir: dir, URLTTL: 8 * 24 * time.Hour}},
		{"ttl too short", firmware.Config{Dir: dir, URLTTL: time.Millisecond}},
		{"short secret", firmware.Config{Dir: dir, URLSecret: []byte("short")}},
		{"base url relative", firmware.Config{Dir: dir, BaseURL: "127.0.0.1:8080"}},
		{"base url query", firmware.Config{Dir: dir, BaseURL: "http://127.0.0.1:8080/?x=1"}},
		{"base url scheme", firmware.Config{Dir: dir, BaseURL: "ftp://127.0.0.1"}},
		{"missing key file", firmware.Config{Dir: dir, SigningKeyPath: filepath.Join(dir, "missing.key")}},
		{"garbage key file", firmware.Config{Dir: dir, SigningKeyPath: badKey}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st, err := openStore(t, tc.cfg)
			if err == nil {
				closeStore(t, st)
				t.Fatalf("Open(%+v) succeeded, want error", tc.cfg)
			}
		})
	}
}

// TestOpenNeedsCatalog: a Config without a Catalog is refused with
// ErrInvalid, and nothing is created in Dir.
func TestOpenNeedsCatalog(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "fw")
	st, err := firmware.Open(t.Context(), firmware.Config{Dir: dir})
	if err == nil {
		st.Close(context.Background())
		t.Fatal("Open without a Catalog succeeded")
	}
	if !errors.Is(err, firmware.ErrInvalid) || !strings.Contains(err.Error(), "Catalog") {
		t.Errorf("Open = %v, want ErrInvalid naming Config.Catalog", err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Open without a Catalog created %s (%v)", dir, err)
	}
}

func TestSameBytesShareBlob(t *testing.T) {
	e := mustOpen(t, nil)
	data := image(4000, 7)
	a := mustUpload(t, e.st, "1.0.0", data)
	b := mustUpload(t, e.st, "1.0.1", data)
	if a.SHA256 != b.SHA256 {
		t.Fatalf("sha256 differ: %s vs %s", a.SHA256, b.SHA256)
	}
	if got, want := dirNames(t, filepath.Join(e.dir, "blobs")), []string{a.SHA256}; !slices.Equal(got, want) {
		t.Fatalf("blobs/ = %v, want %v", got, want)
	}
	if err := e.st.Delete(context.Background(), "1.0.0"); err != nil {
		t.Fatalf("Delete(1.0.0): %v", err)
	}
	u, _ := e.st.URL(b, "dev-1", 0)
	if resp, body := get(t, http.MethodGet, u, nil); resp.StatusCode != http.StatusOK || !bytes.Equal(body, data) {
		t.Errorf("download of 1.0.1 after deleting 1.0.0: got %d, want 200 with the image", resp.StatusCode)
	}
	if err := e.st.Delete(context.Background(), "1.0.1"); err != nil {
		t.Fatalf("Delete(1.0.1): %v", err)
	}
	if got := dirNames(t, filepath.Join(e.dir, "blobs")); len(got) != 0 {
		t.Errorf("blobs/ after deleting both = %v, want empty", got)
	}
	if resp, _ := get(t, http.MethodGet, u, nil); resp.StatusCode != http.StatusGone {
		t.Errorf("download after delete: got %d, want 410", resp.StatusCode)
	}
}

func TestDelete(t *testing.T) {
	errDB := errors.New("rollout db down")
	inUse := map[firmware.Version]string{"1.0.0": "r-42"}
	e := mustOpen(t, func(c *firmware.Config) {
		c.InUse = func(_ context.Context, v firmware.Version) (string, bool, error) {
			if v == "1.0.2" {
				return "", false, errDB
			}
			r, ok := inUse[v]
			return r, ok, nil
		}
	})
	for i, v := range []string{"1.0.0", "1.0.1", "1.0.2"} {
		mustUpload(t, e.st, v, image(100, uint64(i)))
	}
	tests := []struct {
		v    firmware.Version
		want error
		left []firmware.Version
	}{
		{"1.0.0", firmware.ErrInUse, []firmware.Version{"1.0.0", "1.0.1", "1.0.2"}},
		{"1.0.2", errDB, []firmware.Version{"1.0.0", "1.0.1", "1.0.2"}},
		{"9.9.9", firmware.ErrNotFound, []firmware.Version{"1.0.0", "1.0.1", "1.0.2"}},
		{"1.0.1", nil, []firmware.Version{"1.0.0", "1.0.2"}},
		{"1.0.1", firmware.ErrNotFound, []firmware.Version{"1.0.0", "1.0.2"}},
	}
	for _, tc := range tests {
		err := e.st.Delete(context.Background(), tc.v)
		if !errors.Is(err, tc.want) {
			t.Errorf("Delete(%s) error = %v, want %v", tc.v, err, tc.want)
		}
		if got := versions(t, e.st); !slices.Equal(got, tc.left) {
			t.Errorf("after Delete(%s): List = %v, want %v", tc.v, got, tc.left)
		}
	}
	err := e.st.Delete(context.Background(), "1.0.0")
	var iue *firmware.InUseError
	if !errors.As(err, &iue) || iue.Rollout != "r-42" || iue.Version != "1.0.0" {
		t.Errorf("Delete(1.0.0) error = %#v, want *InUseError{1.0.0, r-42}", err)
	}
	if !strings.Contains(fmt.Sprint(err), "r-42") {
		t.Errorf("Delete(1.0.0) error %q does not name the rollout", err)
	}
}

func TestClosedStore(t *testing.T) {
	e := mustOpen(t, nil)
	img := mustUpload(t, e.st, "1.0.0", image(10, 1))
	u, _ := e.st.URL(img, "dev-1", 0)
	for range 2 {
		if err := e.st.Close(context.Background()); err != nil {
			t.Fatalf("Close: %v", err)
		}
	}
	ctx := context.Background()
	_, errUp := e.st.Upload(ctx, firmware.UploadRequest{Version: "2.0.0"}, bytes.NewReader([]byte("x")))
	_, errList := e.st.List(ctx)
	_, errGet := e.st.Get(ctx, "1.0.0")
	errDel := e.st.Delete(ctx, "1.0.0")
	for name, err := range map[string]error{"Upload": errUp, "List": errList, "Get": errGet, "Delete": errDel} {
		if !errors.Is(err, firmware.ErrClosed) {
			t.Errorf("%s after Close: error = %v, want ErrClosed", name, err)
		}
	}
	if resp, _ := get(t, http.MethodGet, u, nil); resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("download after Close: got %d, want 503", resp.StatusCode)
	}
}

func TestConcurrentUploads(t *testing.T) {
	e := mustOpen(t, nil)
	const n = 16
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			// Even and odd uploads share two distinct byte sequences.
			_, errs[i] = e.st.Upload(context.Background(), firmware.UploadRequest{Version: fmt.Sprintf("1.0.%d", i)}, bytes.NewReader(image(64<<10, uint64(i%2))))
		})
	}
	// Deletes racing with uploads of the same bytes must never remove a
	// blob a committed version references.
	wg.Go(func() {
		for i := 0; i < n; i += 2 {
			e.st.Delete(context.Background(), firmware.Version(fmt.Sprintf("1.0.%d", i)))
		}
	})
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("Upload 1.0.%d: %v", i, err)
		}
	}
	imgs, err := e.st.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, img := range imgs {
		u, _ := e.st.URL(img, device.MustParseID("dev-1"), 0)
		if resp, body := get(t, http.MethodGet, u, nil); resp.StatusCode != http.StatusOK || sum(body) != img.SHA256 {
			t.Errorf("download %s: got %d sha %s, want 200 sha %s", img.Version, resp.StatusCode, sum(body), img.SHA256)
		}
	}
}

func TestConcurrentSameVersion(t *testing.T) {
	e := mustOpen(t, nil)
	const n = 8
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			_, errs[i] = e.st.Upload(context.Background(), firmware.UploadRequest{Version: "1.0.0"}, bytes.NewReader(image(32<<10, uint64(i))))
		})
	}
	wg.Wait()
	ok := 0
	for i, err := range errs {
		switch {
		case err == nil:
			ok++
		case !errors.Is(err, firmware.ErrExists):
			t.Errorf("upload %d: error %v, want nil or ErrExists", i, err)
		}
	}
	if ok != 1 {
		t.Errorf("%d uploads of 1.0.0 succeeded, want 1", ok)
	}
	img, err := e.st.Get(context.Background(), "1.0.0")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := dirNames(t, filepath.Join(e.dir, "blobs")), []string{img.SHA256}; !slices.Equal(got, want) {
		t.Errorf("blobs/ = %v, want %v (only the winner's)", got, want)
	}
}

// TestCancelledContextReturnsPromptly: every call that takes a ctx returns
// its error at once when ctx is done, and changes nothing.
func TestCancelledContextReturnsPromptly(t *testing.T) {
	e := mustOpen(t, nil)
	mustUpload(t, e.st, "1.0.0", image(10, 1))
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	for name, call := range map[string]func() error{
		"List":   func() error { _, err := e.st.List(ctx); return err },
		"Get":    func() error { _, err := e.st.Get(ctx, "1.0.0"); return err },
		"Delete": func() error { return e.st.Delete(ctx, "1.0.0") },
		"Upload": func() error {
			_, err := e.st.Upload(ctx, firmware.UploadRequest{Version: "2.0.0"}, bytes.NewReader(image(10, 2)))
			return err
		},
	} {
		if err := call(); !errors.Is(err, context.Canceled) {
			t.Errorf("%s with a done ctx = %v, want context.Canceled", name, err)
		}
	}
	if got := versions(t, e.st); !slices.Equal(got, []firmware.Version{"1.0.0"}) {
		t.Errorf("List = %v, want [1.0.0] unchanged", got)
	}
	if n := len(dirNames(t, filepath.Join(e.dir, "blobs"))); n != 1 {
		t.Errorf("blobs/ has %d entries, want 1", n)
	}
	checkNoTemp(t, e.dir)
}

// TestCloseBoundedByContext: a Delete stuck in the delete guard does not
// hold Close past its ctx; once released it is refused (ErrClosed) and
// the version stays.
func TestCloseBoundedByContext(t *testing.T) {
	entered, release := make(chan struct{}), make(chan struct{})
	e := mustOpen(t, func(c *firmware.Config) {
		c.InUse = func(context.Context, firmware.Version) (string, bool, error) {
			close(entered)
			<-release
			return "", false, nil
		}
	})
	mustUpload(t, e.st, "1.0.0", image(10, 1))
	deleted := make(chan error, 1)
	go func() { deleted <- e.st.Delete(context.Background(), "1.0.0") }()
	<-entered
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	closed := make(chan error, 1)
	go func() { closed <- e.st.Close(ctx) }()
	select {
	case err := <-closed:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Close = %v, want context.DeadlineExceeded", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return when its ctx ended")
	}
	// The owner closes the catalog next, with the same done ctx.
	c, _ := catalogs.LoadAndDelete(e.st)
	if err := c.(storetest.Catalog).Close(ctx); err != nil {
		t.Errorf("close catalog: %v", err)
	}
	close(release)
	if err := <-deleted; !errors.Is(err, firmware.ErrClosed) {
		t.Errorf("Delete after Close = %v, want ErrClosed", err)
	}
	st, err := openStore(t, e.cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.st = st // closed on cleanup
	if got := versions(t, e.st); !slices.Equal(got, []firmware.Version{"1.0.0"}) {
		t.Errorf("after reopen: List = %v, want [1.0.0]", got)
	}
}
