// Package identitytest opens identity stores for tests: on the bbolt
// storage in a test's directory, closed (store first, then storage) when
// the test ends, with every error checked.
package identitytest

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/identity"
	"github.com/umbra-iot/umbra/identity/boltstore"
)

// closeTimeout bounds the Close of a test's store and storage.
const closeTimeout = 5 * time.Second

// storages maps each store Open returned to its storage, for Close.
var storages sync.Map // *identity.Store → *boltstore.Store

// Open opens an identity store on the bbolt storage identity.db in dir
// (tb.TempDir() if empty) with cfg's other fields, and closes both in
// tb.Cleanup. It fails the test if either fails to open or to close.
func Open(tb testing.TB, dir string, cfg identity.Config) *identity.Store {
	tb.Helper()
	if dir == "" {
		dir = tb.TempDir()
	}
	st, err := boltstore.Open(tb.Context(), boltstore.Config{Path: filepath.Join(dir, "identity.db"), Logger: cfg.Logger})
	if err != nil {
		tb.Fatalf("identity storage: %v", err)
	}
	cfg.Storage = st
	s, err := identity.Open(tb.Context(), cfg)
	if err != nil {
		st.Close(context.Background())
		tb.Fatalf("identity.Open: %v", err)
	}
	storages.Store(s, st)
	tb.Cleanup(func() { Close(tb, s) })
	return s
}

// Close closes s, a store Open returned, and then its storage, so that
// the test may open the same directory again. It fails the test if either
// Close fails; closing again does nothing.
func Close(tb testing.TB, s *identity.Store) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	if err := s.Close(ctx); err != nil {
		tb.Errorf("identity Close: %v", err)
	}
	if st, ok := storages.LoadAndDelete(s); ok {
		if err := st.(*boltstore.Store).Close(ctx); err != nil {
			tb.Errorf("identity storage Close: %v", err)
		}
	}
}
