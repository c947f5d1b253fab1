package identity_test

import (
	"context"
	"encoding/base64"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/identity"
	"github.com/umbra-iot/umbra/identity/boltstore"
)

func TestDevices(t *testing.T) {
	ctx := t.Context()
	now := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	s := mustOpen(t, "", identity.Config{Now: func() time.Time { return now }})
	secret, err := s.AddDevice(ctx, "dev-1", map[string]string{"site": "berlin"})
	if err != nil {
		t.Fatalf("AddDevice: %v", err)
	}
	if raw, err := base64.RawURLEncoding.DecodeString(secret); err != nil || len(raw) != 32 {
		t.Errorf("secret %q: got %d bytes (err %v), want 32 base64url bytes", secret, len(raw), err)
	}
	if _, err := s.AddDevice(ctx, "dev-2", nil); err != nil {
		t.Fatalf("AddDevice: %v", err)
	}
	if _, err := s.AddDevice(ctx, "dev-1", nil); !errors.Is(err, identity.ErrExists) {
		t.Errorf("AddDevice(dev-1) again: got %v, want ErrExists", err)
	}
	if _, err := s.AddDevice(ctx, "a/b", nil); !errors.Is(err, identity.ErrInvalidName) {
		t.Errorf("AddDevice(a/b): got %v, want ErrInvalidName", err)
	}
	if _, err := s.AddDevice(ctx, "dev-3", map[string]string{"-x": "1"}); !errors.Is(err, identity.ErrInvalidLabel) {
		t.Errorf("AddDevice with bad label: got %v, want ErrInvalidLabel", err)
	}

	d, err := s.GetDevice(ctx, "dev-1")
	if err != nil {
		t.Fatalf("GetDevice: %v", err)
	}
	if d.ID != "dev-1" || d.Labels["site"] != "berlin" || !d.CreatedAt.Equal(now) || !d.RotatedAt.IsZero() {
		t.Errorf("GetDevice(dev-1) = %+v, want dev-1 site=berlin created %v", d, now)
	}
	if _, err := s.GetDevice(ctx, "nope"); !errors.Is(err, identity.ErrNotFound) {
		t.Errorf("GetDevice(nope): got %v, want ErrNotFound", err)
	}

	now = now.Add(time.Hour)
	rotated, err := s.RotateDevice(ctx, "dev-1")
	if err != nil || rotated == secret {
		t.Fatalf("RotateDevice: got %q, %v; want a new secret", rotated, err)
	}
	if _, err := s.Verify(ctx, "dev-1", []byte(secret)); !errors.Is(err, identity.ErrUnauthenticated) {
		t.Errorf("Verify(old secret): got %v, want ErrUnauthenticated", err)
	}
	if p, err := s.Verify(ctx, "dev-1", []byte(rotated)); err != nil || p.Device != "dev-1" || p.Role != identity.RoleDevice {
		t.Errorf("Verify(new secret) = %+v, %v; want device dev-1", p, err)
	}
	if _, err := s.RotateDevice(ctx, "nope"); !errors.Is(err, identity.ErrNotFound) {
		t.Errorf("RotateDevice(nope): got %v, want ErrNotFound", err)
	}

	list, err := s.ListDevices(ctx)
	if err != nil {
		t.Fatalf("ListDevices: %v", err)
	}
	if got := ids(list); got != "dev-1,dev-2" {
		t.Errorf("ListDevices: got %s, want dev-1,dev-2", got)
	}
	if !list[0].RotatedAt.Equal(now) {
		t.Errorf("RotatedAt: got %v, want %v", list[0].RotatedAt, now)
	}

	if err := s.RemoveDevice(ctx, "dev-1"); err != nil {
		t.Fatalf("RemoveDevice: %v", err)
	}
	if err := s.RemoveDevice(ctx, "dev-1"); !errors.Is(err, identity.ErrNotFound) {
		t.Errorf("RemoveDevice twice: got %v, want ErrNotFound", err)
	}
	if _, err := s.Verify(ctx, "dev-1", []byte(rotated)); !errors.Is(err, identity.ErrUnauthenticated) {
		t.Errorf("Verify(removed device): got %v, want ErrUnauthenticated", err)
	}
	list, _ = s.ListDevices(ctx)
	if got := ids(list); got != "dev-2" {
		t.Errorf("ListDevices after remove: got %s, want dev-2", got)
	}
}

func ids(list []identity.Device) string {
	var s []string
	for _, d := range list {
		s = append(s, string(d.ID))
	}
	return strings.Join(s, ",")
}

func TestTokens(t *testing.T) {
	ctx := t.Context()
	s := mustOpen(t, "", identity.Config{})
	opSecret, err := s.CreateToken(ctx, identity.RoleOperator, "ops")
	if err != nil {
		t.Fatalf("CreateToken: %v", err)
	}
	if _, err := s.CreateToken(ctx, identity.RoleIntegrator, "dash"); err != nil {
		t.Fatalf("CreateToken: %v", err)
	}
	if _, err := s.AddDevice(ctx, "dev-1", nil); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		role identity.Role
		tok  string
		want error
	}{
		{"duplicate", identity.RoleOperator, "ops", identity.ErrExists},
		{"device name", identity.RoleOperator, "dev-1", identity.ErrExists},
		{"device role", identity.RoleDevice, "x", identity.ErrInvalidRole},
		{"unknown role", "root", "x", identity.ErrInvalidRole},
		{"bad name", identity.RoleOperator, "a b", identity.ErrInvalidName},
		{"empty name", identity.RoleOperator, "", identity.ErrInvalidName},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := s.CreateToken(ctx, tc.role, tc.tok); !errors.Is(err, tc.want) {
				t.Errorf("CreateToken(%s, %q): got %v, want %v", tc.role, tc.tok, err, tc.want)
			}
		})
	}
	if _, err := s.AddDevice(ctx, "ops", nil); !errors.Is(err, identity.ErrExists) {
		t.Errorf("AddDevice(token name): got %v, want ErrExists", err)
	}

	toks, err := s.ListTokens(ctx)
	if err != nil {
		t.Fatalf("ListTokens: %v", err)
	}
	if len(toks) != 2 || toks[0].Name != "dash" || toks[0].Role != identity.RoleIntegrator || toks[1].Name != "ops" || toks[1].Role != identity.RoleOperator {
		t.Errorf("ListTokens: got %+v, want dash (integrator), ops (operator)", toks)
	}
	p, err := s.VerifyBearer(ctx, "ops:"+opSecret)
	if err != nil || p.Role != identity.RoleOperator || p.Name != "ops" {
		t.Errorf("VerifyBearer(ops) = %+v, %v; want operator ops", p, err)
	}
	if err := s.RevokeToken(ctx, "ops"); err != nil {
		t.Fatalf("RevokeToken: %v", err)
	}
	if err := s.RevokeToken(ctx, "ops"); !errors.Is(err, identity.ErrNotFound) {
		t.Errorf("RevokeToken twice: got %v, want ErrNotFound", err)
	}
	if _, err := s.VerifyBearer(ctx, "ops:"+opSecret); !errors.Is(err, identity.ErrUnauthenticated) {
		t.Errorf("VerifyBearer(revoked): got %v, want ErrUnauthenticated", err)
	}
}

func TestVerifyBearer(t *testing.T) {
	ctx := t.Context()
	s := mustOpen(t, "", identity.Config{})
	secret, err := s.CreateToken(ctx, identity.RoleOperator, "a:b")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, token string
		wantErr     bool
	}{
		{"name with colon", "a:b:" + secret, false},
		{"wrong secret", "a:b:" + secret[1:] + "x", true},
		{"no colon", secret, true},
		{"empty", "", true},
		{"empty name", ":" + secret, true},
		{"long secret", "a:b:" + strings.Repeat("x", 1000), true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := s.VerifyBearer(ctx, tc.token)
			if gotErr := err != nil; gotErr != tc.wantErr {
				t.Fatalf("VerifyBearer: got %+v, %v; want error %t", p, err, tc.wantErr)
			}
			if err != nil && !errors.Is(err, identity.ErrUnauthenticated) {
				t.Errorf("VerifyBearer: got %v, want ErrUnauthenticated", err)
			}
		})
	}
}

func TestLabels(t *testing.T) {
	tests := []struct {
		name    string
		in      []string
		want    map[string]string
		wantErr bool
	}{
		{"none", nil, map[string]string{}, false},
		{"simple", []string{"site=berlin", "rack=7"}, map[string]string{"site": "berlin", "rack": "7"}, false},
		{"empty value", []string{"a="}, map[string]string{"a": ""}, false},
		{"equals in value", []string{"a=b=c"}, map[string]string{"a": "b=c"}, false},
		{"prefixed key", []string{"umbra.io/zone=eu-1"}, map[string]string{"umbra.io/zone": "eu-1"}, false},
		{"unicode value", []string{"city=Zürich"}, map[string]string{"city": "Zürich"}, false},
		{"no equals", []string{"site"}, nil, true},
		{"empty key", []string{"=x"}, nil, true},
		{"key starts with dash", []string{"-a=x"}, nil, true},
		{"key with space", []string{"a b=x"}, nil, true},
		{"long key", []string{strings.Repeat("k", 64) + "=x"}, nil, true},
		{"long value", []string{"k=" + strings.Repeat("v", 256)}, nil, true},
		{"control in value", []string{"k=a\nb"}, nil, true},
		{"invalid utf-8", []string{"k=\xff"}, nil, true},
		{"duplicate key", []string{"k=1", "k=2"}, nil, true},
		{"too many", manyLabels(identity.MaxLabels + 1), nil, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := identity.ParseLabels(tc.in)
			if tc.wantErr {
				if !errors.Is(err, identity.ErrInvalidLabel) {
					t.Errorf("ParseLabels(%q): got %v, %v; want ErrInvalidLabel", tc.in, got, err)
				}
				return
			}
			if err != nil || len(got) != len(tc.want) {
				t.Fatalf("ParseLabels(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
			}
			for k, v := range tc.want {
				if got[k] != v {
					t.Errorf("ParseLabels(%q)[%q] = %q, want %q", tc.in, k, got[k], v)
				}
			}
		})
	}
}

func manyLabels(n int) []string {
	var kvs []string
	for i := range n {
		kvs = append(kvs, "k"+strings.Repeat("x", i)+"=v")
	}
	return kvs
}

// TestSecretNotInFiles checks that no secret appears, as text or as raw
// bytes, in any file of the data directory (database, key, token file).
func TestSecretNotInFiles(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	s := mustOpen(t, dir, identity.Config{})
	var secrets []string
	for _, id := range []device.ID{"dev-1", "dev-2"} {
		sec, err := s.AddDevice(ctx, id, nil)
		if err != nil {
			t.Fatal(err)
		}
		secrets = append(secrets, sec)
	}
	rot, err := s.RotateDevice(ctx, "dev-2")
	if err != nil {
		t.Fatal(err)
	}
	tok, err := s.CreateToken(ctx, identity.RoleIntegrator, "dash")
	if err != nil {
		t.Fatal(err)
	}
	secrets = append(secrets, rot, tok)
	if _, err := s.EnsureAdminToken(ctx, filepath.Join(t.TempDir(), "admin.token")); err != nil {
		t.Fatal(err)
	}
	mustClose(t, s)

	var files int
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		files++
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, sec := range secrets {
			raw, _ := base64.RawURLEncoding.DecodeString(sec)
			if strings.Contains(string(data), sec) || strings.Contains(string(data), string(raw)) {
				t.Errorf("%s contains secret %q", filepath.Base(path), sec)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files < 2 {
		t.Errorf("data dir holds %d files, want at least the database and the key", files)
	}
}

func TestServerKey(t *testing.T) {
	dir := t.TempDir()
	s := mustOpen(t, dir, identity.Config{})
	secret := mustAddDevice(t, s, "dev-1")
	mustClose(t, s)
	keyPath := filepath.Join(dir, identity.KeyFileName)
	fi, err := os.Stat(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("key file mode: got %v, want 0600", perm)
	}

	// Reopening with the same key verifies old secrets.
	s = mustOpen(t, dir, identity.Config{})
	if _, err := s.Verify(t.Context(), "dev-1", []byte(secret)); err != nil {
		t.Errorf("Verify after reopen: %v", err)
	}
	mustClose(t, s)

	// A missing or different key is refused, never silently replaced.
	key, _ := os.ReadFile(keyPath)
	if err := os.Remove(keyPath); err != nil {
		t.Fatal(err)
	}
	if err := openErr(t, dir); !errors.Is(err, identity.ErrKeyMismatch) {
		t.Errorf("Open without key: got %v, want ErrKeyMismatch", err)
	}
	if _, err := os.Stat(keyPath); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Open without key created a key file (stat err %v)", err)
	}
	key[0] ^= 1
	if err := os.WriteFile(keyPath, key, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := openErr(t, dir); !errors.Is(err, identity.ErrKeyMismatch) {
		t.Errorf("Open with wrong key: got %v, want ErrKeyMismatch", err)
	}
	if err := os.WriteFile(keyPath, key[:31], 0o600); err != nil {
		t.Fatal(err)
	}
	if err := openErr(t, dir); !errors.Is(err, identity.ErrKeyMismatch) {
		t.Errorf("Open with a short key: got %v, want ErrKeyMismatch", err)
	}
}

// openErr opens a store on the storage in dir and returns Open's error,
// closing whatever it opened.
func openErr(t *testing.T, dir string) error {
	t.Helper()
	st, err := boltstore.Open(t.Context(), boltstore.Config{Path: filepath.Join(dir, "identity.db")})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close(context.Background())
	s, err := identity.Open(t.Context(), identity.Config{Storage: st})
	if err == nil {
		s.Close(context.Background())
	}
	return err
}

func TestOpenConfig(t *testing.T) {
	if _, err := identity.Open(t.Context(), identity.Config{}); !errors.Is(err, identity.ErrInvalidConfig) {
		t.Errorf("Open(no storage): got %v, want ErrInvalidConfig", err)
	}
	st, err := boltstore.Open(t.Context(), boltstore.Config{Path: filepath.Join(t.TempDir(), "identity.db")})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close(context.Background())
	if _, err := identity.Open(t.Context(), identity.Config{Storage: st, PresenceFlushInterval: -1}); !errors.Is(err, identity.ErrInvalidConfig) {
		t.Errorf("Open(negative flush interval): got %v, want ErrInvalidConfig", err)
	}
}

func TestClosed(t *testing.T) {
	ctx := t.Context()
	s := mustOpen(t, "", identity.Config{})
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := s.AddDevice(cancelled, "dev-1", nil); !errors.Is(err, context.Canceled) {
		t.Errorf("AddDevice with cancelled ctx: got %v, want context.Canceled", err)
	}
	mustClose(t, s)
	mustClose(t, s) // idempotent
	if _, err := s.AddDevice(ctx, "dev-1", nil); !errors.Is(err, identity.ErrClosed) {
		t.Errorf("AddDevice after Close: got %v, want ErrClosed", err)
	}
	if _, err := s.ListTokens(ctx); !errors.Is(err, identity.ErrClosed) {
		t.Errorf("ListTokens after Close: got %v, want ErrClosed", err)
	}
	if _, err := s.Verify(ctx, "x", []byte("y")); !errors.Is(err, identity.ErrClosed) {
		t.Errorf("Verify after Close: got %v, want ErrClosed", err)
	}
}

func TestEnsureAdminToken(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	path := filepath.Join(dir, "admin.token")
	s := mustOpen(t, dir, identity.Config{})

	created, err := s.EnsureAdminToken(ctx, path)
	if err != nil || !created {
		t.Fatalf("EnsureAdminToken first: got %t, %v; want created", created, err)
	}
	first := readToken(t, path)
	if !strings.HasPrefix(first, identity.AdminTokenName+":") {
		t.Errorf("admin.token: got %q, want admin:<secret>", first)
	}
	if p, err := s.VerifyBearer(ctx, first); err != nil || p.Role != identity.RoleOperator {
		t.Errorf("VerifyBearer(admin.token) = %+v, %v; want operator", p, err)
	}

	// Idempotent, also across a restart.
	mustClose(t, s)
	s = mustOpen(t, dir, identity.Config{})
	created, err = s.EnsureAdminToken(ctx, path)
	if err != nil || created {
		t.Errorf("EnsureAdminToken again: got %t, %v; want kept", created, err)
	}
	if got := readToken(t, path); got != first {
		t.Errorf("admin.token changed: got %q, want %q", got, first)
	}

	// A revoked token is replaced.
	if err := s.RevokeToken(ctx, identity.AdminTokenName); err != nil {
		t.Fatal(err)
	}
	created, err = s.EnsureAdminToken(ctx, path)
	if err != nil || !created {
		t.Errorf("EnsureAdminToken after revoke: got %t, %v; want created", created, err)
	}
	second := readToken(t, path)
	if second == first {
		t.Errorf("admin.token after revoke: unchanged, want a new secret")
	}
	if _, err := s.VerifyBearer(ctx, second); err != nil {
		t.Errorf("VerifyBearer(new admin.token): %v", err)
	}

	// A deleted file rotates the admin secret; the old one stops working.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if created, err := s.EnsureAdminToken(ctx, path); err != nil || !created {
		t.Errorf("EnsureAdminToken after delete: got %t, %v; want created", created, err)
	}
	if _, err := s.VerifyBearer(ctx, second); !errors.Is(err, identity.ErrUnauthenticated) {
		t.Errorf("VerifyBearer(old admin secret): got %v, want ErrUnauthenticated", err)
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.Contains(e.Name(), ".tmp") {
			t.Errorf("temporary file %s left behind", e.Name())
		}
	}
}

func readToken(t *testing.T, path string) string {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("%s mode: got %v, want 0600", path, perm)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(data))
}
