package firmware_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/firmware"
	"github.com/umbra-iot/umbra/firmware/boltstore"
	"github.com/umbra-iot/umbra/firmware/storetest"
	"github.com/umbra-iot/umbra/internal/waitfor"
)

// clock is a settable test clock.
type clock struct {
	mu sync.Mutex // guards t
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// env is a store served by a real HTTP server on 127.0.0.1.
type env struct {
	st    *firmware.Store
	srv   *httptest.Server
	clock *clock
	dir   string
	cfg   firmware.Config
}

// mustOpen opens a store in a temp dir with BaseURL pointing at a loopback
// httptest server that serves its DownloadHandler. Both are closed on
// cleanup.
func mustOpen(tb testing.TB, mutate func(*firmware.Config)) *env {
	tb.Helper()
	srv := httptest.NewUnstartedServer(nil)
	e := &env{srv: srv, clock: newClock(), dir: tb.TempDir()}
	e.cfg = firmware.Config{
		Dir:     e.dir,
		BaseURL: "http://" + srv.Listener.Addr().String(),
		Now:     e.clock.Now,
		Logger:  testLogger(tb),
	}
	if mutate != nil {
		mutate(&e.cfg)
	}
	st, err := openStore(tb, e.cfg)
	if err != nil {
		srv.Close()
		tb.Fatalf("Open: %v", err)
	}
	e.st = st
	srv.Config.Handler = st.DownloadHandler()
	srv.Start()
	tb.Cleanup(func() {
		srv.Close()
		closeStore(tb, e.st)
		checkNoTemp(tb, e.dir)
	})
	return e
}

// catalogs are the Catalogs openStore opened, by their Store: the test
// owns them and closes them after their Store (closeStore).
var catalogs sync.Map // *firmware.Store → storetest.Catalog

// closeStore closes st and then the Catalog openStore opened for it, as
// their owner does.
func closeStore(tb testing.TB, st *firmware.Store) {
	tb.Helper()
	if err := st.Close(context.Background()); err != nil {
		tb.Errorf("Close: %v", err)
	}
	if c, ok := catalogs.LoadAndDelete(st); ok {
		if err := c.(storetest.Catalog).Close(context.Background()); err != nil {
			tb.Errorf("close catalog: %v", err)
		}
	}
}

// openStore opens a store with cfg on a bbolt Catalog in cfg.Dir (in a
// temp dir if cfg has no Dir) unless cfg has a Catalog. The Catalog it
// opens is closed by closeStore, or in tb.Cleanup (also when Open fails).
func openStore(tb testing.TB, cfg firmware.Config) (*firmware.Store, error) {
	tb.Helper()
	if cfg.Catalog == nil {
		dir := cfg.Dir
		if dir == "" {
			dir = tb.TempDir()
		}
		if err := os.MkdirAll(dir, 0o750); err != nil {
			tb.Fatal(err)
		}
		c, err := boltstore.Open(context.Background(), boltstore.Config{Path: filepath.Join(dir, boltstore.File)})
		if err != nil {
			return nil, err
		}
		tb.Cleanup(func() { c.Close(context.Background()) }) // idempotent
		st, err := firmware.Open(context.Background(), withCatalog(cfg, c))
		if err == nil {
			catalogs.Store(st, storetest.Catalog(c))
		}
		return st, err
	}
	return firmware.Open(context.Background(), cfg)
}

func withCatalog(cfg firmware.Config, c firmware.Catalog) firmware.Config {
	cfg.Catalog = c
	return cfg
}

// reopen closes the store (and its catalog) and opens it again on the
// same directory.
func (e *env) reopen(tb testing.TB) {
	tb.Helper()
	closeStore(tb, e.st)
	st, err := openStore(tb, e.cfg)
	if err != nil {
		tb.Fatalf("reopen: %v", err)
	}
	e.st = st
	e.srv.Config.Handler = st.DownloadHandler()
}

func testLogger(tb testing.TB) *slog.Logger {
	if tl, ok := tb.(interface{ Output() io.Writer }); ok && testing.Verbose() {
		return slog.New(slog.NewTextHandler(tl.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// image returns n deterministic pseudo-random bytes.
func image(n int, seed uint64) []byte {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16)})
	r.Read(b)
	return b
}

func sum(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

func mustUpload(tb testing.TB, st *firmware.Store, version string, data []byte) firmware.Image {
	tb.Helper()
	img, err := st.Upload(context.Background(), firmware.UploadRequest{Version: version, HW: "m1"}, bytes.NewReader(data))
	if err != nil {
		tb.Fatalf("Upload(%s): %v", version, err)
	}
	return img
}

func versions(tb testing.TB, st *firmware.Store) []firmware.Version {
	tb.Helper()
	imgs, err := st.List(context.Background())
	if err != nil {
		tb.Fatalf("List: %v", err)
	}
	var vs []firmware.Version
	for _, img := range imgs {
		vs = append(vs, img.Version)
	}
	return vs
}

// dirNames lists the names in dir, sorted.
func dirNames(tb testing.TB, dir string) []string {
	tb.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		tb.Fatalf("ReadDir: %v", err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	slices.Sort(names)
	return names
}

func checkNoTemp(tb testing.TB, dir string) {
	tb.Helper()
	ents, err := os.ReadDir(filepath.Join(dir, "tmp"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		tb.Errorf("ReadDir tmp: %v", err)
	}
	if len(ents) != 0 {
		tb.Errorf("tmp/ has %d entries, want 0", len(ents))
	}
}

// denyBody is the body of every refused download: no detail.
const denyBody = `{"code":403,"message":"forbidden"}` + "\n"

// get downloads u and returns the response and its body.
func get(tb testing.TB, method, u string, hdr map[string]string) (*http.Response, []byte) {
	tb.Helper()
	req, err := http.NewRequest(method, u, nil)
	if err != nil {
		tb.Fatalf("NewRequest: %v", err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatalf("%s %s: %v", method, u, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatalf("read body: %v", err)
	}
	return resp, body
}

// waitFor polls cond until it holds, failing after 5 s. Only for conditions
// that have no event to wait on.
func waitFor(tb testing.TB, cond func() bool) {
	tb.Helper()
	waitfor.Poll(tb, 5*time.Second, "condition", cond)
}

// wantServed checks that st.BytesServed() settles at want. The handler adds
// a response's bytes after its last write returns, which can be after the
// client has read the whole body, so the count is awaited before it is
// compared (there is no event to wait on).
func wantServed(tb testing.TB, st *firmware.Store, want int64) {
	tb.Helper()
	waitfor.Poll(tb, 5*time.Second, fmt.Sprintf("BytesServed to reach %d (it is %d)", want, st.BytesServed()), func() bool {
		return st.BytesServed() >= want
	})
	if got := st.BytesServed(); got != want {
		tb.Errorf("BytesServed = %d, want %d", got, want)
	}
}
