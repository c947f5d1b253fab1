package boltstore_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/firmware/boltstore"
	"github.com/umbra-iot/umbra/firmware/storetest"
)

func open(tb testing.TB, dir string) storetest.Catalog {
	tb.Helper()
	s, err := boltstore.Open(context.Background(), boltstore.Config{Path: filepath.Join(dir, boltstore.File)})
	if err != nil {
		tb.Fatalf("open: %v", err)
	}
	return s
}

func TestContract(t *testing.T) { storetest.Contract(t, open) }

func TestSecondOpenFailsFast(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	defer s.Close(context.Background())
	start := time.Now()
	_, err := boltstore.Open(t.Context(), boltstore.Config{Path: filepath.Join(dir, boltstore.File), Timeout: 50 * time.Millisecond})
	if !errors.Is(err, boltstore.ErrLocked) || !strings.Contains(err.Error(), "locked by another process") {
		t.Fatalf("second Open = %v, want ErrLocked, 'locked by another process'", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("second Open took %v, want it to fail fast", d)
	}
}

func TestOpenInvalid(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	notDB := filepath.Join(t.TempDir(), "garbage.db")
	if err := os.WriteFile(notDB, []byte(strings.Repeat("not a bbolt file ", 512)), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		ctx  context.Context
		cfg  boltstore.Config
		want string
	}{
		{"no path", t.Context(), boltstore.Config{}, "Path is required"},
		{"done context", ctx, boltstore.Config{Path: filepath.Join(t.TempDir(), boltstore.File)}, "context canceled"},
		{"not a bbolt file", t.Context(), boltstore.Config{Path: notDB}, notDB},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := boltstore.Open(tc.ctx, tc.cfg)
			if err == nil {
				s.Close(context.Background())
				t.Fatal("Open succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Open = %v, want it to mention %q", err, tc.want)
			}
		})
	}
	if b, err := os.ReadFile(notDB); err != nil || !strings.HasPrefix(string(b), "not a bbolt file") {
		t.Errorf("the file that is not a database was changed: %v", err)
	}
}
