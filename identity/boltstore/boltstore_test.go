package boltstore_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/identity"
	"github.com/umbra-iot/umbra/identity/boltstore"
	"github.com/umbra-iot/umbra/identity/storetest"
)

// mustOpen opens the storage in dir and closes it in tb.Cleanup.
func mustOpen(tb testing.TB, dir string) *boltstore.Store {
	tb.Helper()
	st, err := boltstore.Open(tb.Context(), boltstore.Config{Path: filepath.Join(dir, "identity.db"), Timeout: 100 * time.Millisecond})
	if err != nil {
		tb.Fatalf("boltstore.Open: %v", err)
	}
	tb.Cleanup(func() { st.Close(context.Background()) })
	return st
}

// openIdentity opens an identity.Store on the storage in dir, closing
// both in tb.Cleanup (the store first).
func openIdentity(tb testing.TB, dir string, cfg identity.Config) (*identity.Store, *boltstore.Store) {
	tb.Helper()
	st := mustOpen(tb, dir)
	cfg.Storage = st
	s, err := identity.Open(tb.Context(), cfg)
	if err != nil {
		tb.Fatalf("identity.Open: %v", err)
	}
	tb.Cleanup(func() {
		if err := s.Close(context.Background()); err != nil {
			tb.Errorf("identity Close: %v", err)
		}
	})
	return s, st
}

func TestContract(t *testing.T) {
	storetest.Run(t, func(tb testing.TB, dir string) (identity.Storage, func()) {
		st, err := boltstore.Open(tb.Context(), boltstore.Config{Path: filepath.Join(dir, "identity.db")})
		if err != nil {
			tb.Fatalf("Open: %v", err)
		}
		return st, func() {
			if err := st.Close(context.Background()); err != nil {
				tb.Errorf("Close: %v", err)
			}
		}
	})
}

// TestOpenErrors: no path, a file another process holds, and a file that
// is no bbolt database are clear errors.
func TestOpenErrors(t *testing.T) {
	ctx := t.Context()
	if _, err := boltstore.Open(ctx, boltstore.Config{}); !errors.Is(err, identity.ErrInvalidConfig) {
		t.Errorf("Open(no path): got %v, want ErrInvalidConfig", err)
	}
	dir := t.TempDir()
	mustOpen(t, dir)
	start := time.Now()
	_, err := boltstore.Open(ctx, boltstore.Config{Path: filepath.Join(dir, "identity.db"), Timeout: 50 * time.Millisecond})
	if !errors.Is(err, identity.ErrLocked) || !strings.Contains(err.Error(), "identity.db") {
		t.Errorf("second Open of a locked file: got %v, want ErrLocked naming the file", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("second Open took %v, want about the 50ms timeout", d)
	}
	junk := filepath.Join(t.TempDir(), "identity.db")
	if err := os.WriteFile(junk, []byte(strings.Repeat("not a database ", 1000)), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := boltstore.Open(ctx, boltstore.Config{Path: junk}); err == nil || !strings.Contains(err.Error(), junk) {
		t.Errorf("Open(junk): got %v, want an error naming the file", err)
	}
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := boltstore.Open(canceled, boltstore.Config{Path: filepath.Join(t.TempDir(), "x.db")}); !errors.Is(err, context.Canceled) {
		t.Errorf("Open with a canceled context: got %v, want context.Canceled", err)
	}
}

// fixture is testdata/v1/fixture.json: the secrets of testdata/v1's
// identity.db, written by the code before identity/boltstore existed.
type fixture struct {
	Secrets    map[string]string `json:"secrets"`
	CertSHA256 string            `json:"certSha256"`
}

// copyV1 copies testdata/v1 to a new directory and returns it with the
// fixture.
func copyV1(t *testing.T) (string, fixture) {
	t.Helper()
	dir := t.TempDir()
	for _, f := range []string{"identity.db", "identity.key"} {
		data, err := os.ReadFile(filepath.Join("testdata", "v1", f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	data, err := os.ReadFile(filepath.Join("testdata", "v1", "fixture.json"))
	if err != nil {
		t.Fatal(err)
	}
	var fx fixture
	if err := json.Unmarshal(data, &fx); err != nil {
		t.Fatal(err)
	}
	return dir, fx
}

// TestV1File: an identity.db written before the storage was behind an
// interface opens unchanged: its secrets, labels, bindings, removal and
// presence are all there.
func TestV1File(t *testing.T) {
	ctx := t.Context()
	dir, fx := copyV1(t)
	now := time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC)
	s, st := openIdentity(t, dir, identity.Config{Now: func() time.Time { return now }})

	for name, secret := range fx.Secrets {
		p, err := s.Verify(ctx, name, []byte(secret))
		if name == "gone" {
			if !errors.Is(err, identity.ErrUnauthenticated) {
				t.Errorf("Verify(removed device) = %+v, %v; want ErrUnauthenticated", p, err)
			}
			continue
		}
		if err != nil || p.Name != name {
			t.Errorf("Verify(%s) = %+v, %v; want it", name, p, err)
		}
	}
	devs, err := s.ListDevices(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, d := range devs {
		got = append(got, fmt.Sprintf("%s labels=%v cert=%.8s rotated=%t connected=%t reason=%q",
			d.ID, d.Labels, d.CertSHA256, !d.RotatedAt.IsZero(), d.Presence.Connected, d.Presence.DisconnectReason))
	}
	want := []string{
		"aws-1 labels=map[site:aws] cert=81acd762 rotated=false connected=false reason=\"\"",
		"lamp-1 labels=map[hw:rev2 site:berlin] cert= rotated=false connected=false reason=\"server restart\"",
		"lamp-2 labels=map[] cert= rotated=true connected=false reason=\"connection_lost\"",
	}
	if !slices.Equal(got, want) {
		t.Errorf("ListDevices:\ngot  %q\nwant %q", got, want)
	}
	if id, err := st.CertOwner(ctx, fx.CertSHA256); err != nil || id != "aws-1" {
		t.Errorf("CertOwner(aws-1's certificate) = %q, %v; want aws-1", id, err)
	}
	if at, err := st.RemovedAt(ctx, "gone"); err != nil || !at.Equal(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)) {
		t.Errorf("RemovedAt(gone) = %v, %v; want 2026-01-02T03:04:05Z", at, err)
	}
	toks, err := s.ListTokens(ctx)
	if err != nil || len(toks) != 2 || toks[0].Name != "dash" || toks[1].Role != identity.RoleOperator {
		t.Errorf("ListTokens = %+v, %v; want dash and ops", toks, err)
	}
	if s.Enrolment("lamp-1") == "" || s.Enrolment("gone") != "" {
		t.Errorf("Enrolment: lamp-1 %q, gone %q; want one and none", s.Enrolment("lamp-1"), s.Enrolment("gone"))
	}
	if _, err := s.AddDevice(ctx, "lamp-3", nil); err != nil {
		t.Errorf("AddDevice on the v1 file: %v", err)
	}
}

// TestLayout: the same calls that wrote testdata/v1 write a file with the
// same buckets, keys and fields (random values masked).
func TestLayout(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	st, err := boltstore.Open(ctx, boltstore.Config{Path: filepath.Join(dir, "identity.db")})
	if err != nil {
		t.Fatal(err)
	}
	s, err := identity.Open(ctx, identity.Config{Storage: st, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	// The calls of the generator of testdata/v1 (see its README.md).
	must := func(_ string, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(s.AddDevice(ctx, "lamp-1", map[string]string{"site": "berlin", "hw": "rev2"}))
	must(s.AddDevice(ctx, "lamp-2", nil))
	sum := sha256.Sum256([]byte("a certificate"))
	must(s.EnrollDevice(ctx, identity.Enrollment{ID: "aws-1", Labels: map[string]string{"site": "aws"}, CertSHA256: hex.EncodeToString(sum[:])}))
	must(s.AddDevice(ctx, "gone", nil))
	must("", s.RemoveDevice(ctx, "gone"))
	now = now.Add(time.Hour)
	must(s.RotateDevice(ctx, "lamp-2"))
	must(s.CreateToken(ctx, identity.RoleOperator, "ops"))
	must(s.CreateToken(ctx, identity.RoleIntegrator, "dash"))
	s.Connected("lamp-1", 1, now, "192.0.2.1:1883")
	s.Connected("lamp-2", 2, now, "192.0.2.2:1883")
	s.Disconnected("lamp-2", 2, now.Add(time.Minute), "connection_lost")
	if err := errors.Join(s.Close(ctx), st.Close(ctx)); err != nil {
		t.Fatal(err)
	}
	if got, want := dump(t, filepath.Join(dir, "identity.db")), dump(t, filepath.Join("testdata", "v1", "identity.db")); got != want {
		t.Errorf("layout differs from testdata/v1:\ngot\n%s\nwant\n%s", got, want)
	}
}

// random matches the values that differ from run to run: secret MACs and
// credential generations.
var random = regexp.MustCompile(`"(mac|enrolment|secretGen)":"[^"]*"`)

// dump lists every bucket, key and value of the bbolt file at path, with
// random values and the key check masked.
func dump(t *testing.T, path string) string {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var b strings.Builder
	err = db.View(func(tx *bolt.Tx) error {
		return tx.ForEach(func(name []byte, bk *bolt.Bucket) error {
			fmt.Fprintf(&b, "[%s]\n", name)
			return bk.ForEach(func(k, v []byte) error {
				val := random.ReplaceAllString(string(v), `"$1":"…"`)
				if string(name) == "meta" {
					val = fmt.Sprintf("%d bytes", len(v))
				}
				fmt.Fprintf(&b, "  %s = %s\n", k, val)
				return nil
			})
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// TestOpenAddsGenerations: devices and tokens stored by a version without
// credential generations get them at Open, and their secrets keep
// working.
func TestOpenAddsGenerations(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	st, err := boltstore.Open(ctx, boltstore.Config{Path: filepath.Join(dir, "identity.db")})
	if err != nil {
		t.Fatal(err)
	}
	s, err := identity.Open(ctx, identity.Config{Storage: st})
	if err != nil {
		t.Fatal(err)
	}
	devSecret, err := s.AddDevice(ctx, "dev-1", nil)
	if err != nil {
		t.Fatal(err)
	}
	tokSecret, err := s.CreateToken(ctx, identity.RoleOperator, "ops")
	if err != nil {
		t.Fatal(err)
	}
	if err := errors.Join(s.Close(ctx), st.Close(ctx)); err != nil {
		t.Fatal(err)
	}

	// Strip the generations, as an earlier version stored the records.
	db, err := bolt.Open(filepath.Join(dir, "identity.db"), 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, bucket := range []string{"devices", "tokens"} {
			b := tx.Bucket([]byte(bucket))
			c := b.Cursor()
			for k, v := c.First(); k != nil; k, v = c.Next() {
				var rec map[string]any
				if err := json.Unmarshal(v, &rec); err != nil {
					return err
				}
				delete(rec, "enrolment")
				delete(rec, "secretGen")
				nv, err := json.Marshal(rec)
				if err != nil {
					return err
				}
				if err := b.Put(k, nv); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err := errors.Join(err, db.Close()); err != nil {
		t.Fatal(err)
	}

	s, st2 := openIdentity(t, dir, identity.Config{})
	if s.Enrolment("dev-1") == "" {
		t.Error("Enrolment(dev-1) is empty after Open, want a generation")
	}
	for _, c := range []identity.Credentials{
		{ClientID: "dev-1", Password: []byte(devSecret)},
		{ClientID: "cli", Username: "ops", Password: []byte(tokSecret)},
	} {
		id, err := s.Authenticate(ctx, c)
		if err != nil {
			t.Fatalf("Authenticate %s: %v", c.ClientID, err)
		}
		if !s.Valid(id) || !s.Allow(id, "state/dev-1/update", true) {
			t.Errorf("%s: Valid %t, Allow %t; want both true", c.ClientID, s.Valid(id), s.Allow(id, "state/dev-1/update", true))
		}
	}
	// The generations are stored: a second Open finds them.
	for _, name := range []string{"dev-1", "ops"} {
		rec, err := st2.Get(ctx, name)
		if err != nil || rec.SecretGen == "" || rec.IsDevice() && rec.Enrolment == "" {
			t.Errorf("Get(%s) after Open = %+v, %v; want generations", name, rec, err)
		}
	}
}

// crashEnv makes the test binary, run again by TestCrashKeepsAcknowledged,
// write to the storage in the directory it names and kill itself.
const crashEnv = "UMBRA_BOLTSTORE_CRASH_DIR"

// TestCrashKeepsAcknowledged: what a method acknowledged is on disk even
// when the process dies right after without closing anything (SIGKILL).
func TestCrashKeepsAcknowledged(t *testing.T) {
	if dir := os.Getenv(crashEnv); dir != "" {
		crashWriter(t, dir)
		return
	}
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestCrashKeepsAcknowledged$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashEnv+"="+dir)
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != -1 { // -1: killed by a signal
		t.Fatalf("writer: got %v, want killed by SIGKILL; output:\n%s", err, out)
	}
	st := mustOpen(t, dir)
	rec, err := st.Get(ctx, "dev-1")
	if err != nil || rec.SecretGen != "g2" {
		t.Errorf("Get(dev-1) after the crash = %+v, %v; want the replaced record", rec, err)
	}
	p, err := st.Presence(ctx)
	if err != nil || !p["dev-1"].Connected {
		t.Errorf("Presence after the crash = %v, %v; want dev-1 connected", p, err)
	}
	if _, err := st.Get(ctx, "ops"); !errors.Is(err, identity.ErrNotFound) {
		t.Errorf("Get(ops) after the crash: got %v, want ErrNotFound (deleted)", err)
	}
}

// crashWriter makes acknowledged changes and dies without closing.
func crashWriter(t *testing.T, dir string) {
	ctx := context.Background()
	st, err := boltstore.Open(ctx, boltstore.Config{Path: filepath.Join(dir, "identity.db")})
	if err != nil {
		t.Fatal(err)
	}
	dev := identity.Record{Name: "dev-1", Role: identity.RoleDevice, MAC: []byte{1}, SecretGen: "g1", Enrolment: "e"}
	ops := identity.Record{Name: "ops", Role: identity.RoleOperator, MAC: []byte{2}, SecretGen: "t"}
	if c, err := st.Create(ctx, []identity.Record{dev, ops}, false); err != nil || len(c) > 0 {
		t.Fatal(c, err)
	}
	next := dev
	next.SecretGen = "g2"
	if err := st.Replace(ctx, dev, next); err != nil {
		t.Fatal(err)
	}
	if err := st.SavePresence(ctx, map[device.ID]identity.Presence{"dev-1": {Connected: true}}, true); err != nil {
		t.Fatal(err)
	}
	if _, err := st.DeleteToken(ctx, "ops"); err != nil {
		t.Fatal(err)
	}
	p, _ := os.FindProcess(os.Getpid())
	p.Kill()
	select {} // the kill ends the process
}
