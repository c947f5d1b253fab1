package identity_test

import (
	"context"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/identity"
)

// mustOpen opens a store in dir (a new temporary directory if empty) with
// cfg's other fields, and closes it in tb.Cleanup.
func mustOpen(tb testing.TB, dir string, cfg identity.Config) *identity.Store {
	tb.Helper()
	if dir == "" {
		dir = tb.TempDir()
	}
	cfg.Path = filepath.Join(dir, "identity.db")
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(tb.Output(), nil))
	}
	s, err := identity.Open(tb.Context(), cfg)
	if err != nil {
		tb.Fatalf("Open: %v", err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Close(ctx); err != nil {
			tb.Errorf("Close: %v", err)
		}
	})
	return s
}

// mustClose closes s, failing the test on error.
func mustClose(tb testing.TB, s *identity.Store) {
	tb.Helper()
	if err := s.Close(context.Background()); err != nil {
		tb.Fatalf("Close: %v", err)
	}
}

// mustAddDevice enrolls id without labels and returns its secret.
func mustAddDevice(tb testing.TB, s *identity.Store, id device.ID) string {
	tb.Helper()
	secret, err := s.AddDevice(tb.Context(), id, nil)
	if err != nil {
		tb.Fatalf("AddDevice(%s): %v", id, err)
	}
	return secret
}

// mustCreateToken creates token name with role and returns its secret.
func mustCreateToken(tb testing.TB, s *identity.Store, role identity.Role, name string) string {
	tb.Helper()
	secret, err := s.CreateToken(tb.Context(), role, name)
	if err != nil {
		tb.Fatalf("CreateToken(%s, %s): %v", role, name, err)
	}
	return secret
}
