package boltstore_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/rollout"
	"github.com/umbra-iot/umbra/rollout/boltstore"
	"github.com/umbra-iot/umbra/rollout/storetest"
)

func open(tb testing.TB, dir string) (rollout.Store, func()) {
	tb.Helper()
	s, err := boltstore.Open(tb.Context(), boltstore.Config{Path: filepath.Join(dir, "rollout.db"), Timeout: 100 * time.Millisecond})
	if err != nil {
		tb.Fatalf("Open: %v", err)
	}
	return s, func() {
		if err := s.Close(context.Background()); err != nil {
			tb.Errorf("Close: %v", err)
		}
	}
}

func TestContract(t *testing.T) { storetest.Run(t, open) }

func TestOpenErrors(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rollout.db")
	s, closeStore := open(t, filepath.Dir(path))
	defer closeStore()
	// The file is locked by s (a second umbra serve on the same data dir).
	if _, err := boltstore.Open(t.Context(), boltstore.Config{Path: path, Timeout: 50 * time.Millisecond}); !errors.Is(err, boltstore.ErrLocked) {
		t.Errorf("second Open = %v, want ErrLocked", err)
	}
	for _, cfg := range []boltstore.Config{{}, {Path: path, Timeout: -1}} {
		if _, err := boltstore.Open(t.Context(), cfg); !errors.Is(err, rollout.ErrInvalid) {
			t.Errorf("Open(%+v) = %v, want ErrInvalid", cfg, err)
		}
	}
	closeStore()
	if _, err := s.Rollouts(t.Context()); !errors.Is(err, boltstore.ErrClosed) {
		t.Errorf("Rollouts after Close = %v, want ErrClosed", err)
	}
	if err := s.(*boltstore.Store).Close(t.Context()); err != nil {
		t.Errorf("second Close = %v, want nil", err)
	}
}
