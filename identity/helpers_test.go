package identity_test

import (
	"log/slog"
	"testing"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/identity"
	"github.com/umbra-iot/umbra/identity/identitytest"
)

// mustOpen opens a store on the bbolt storage in dir (a new temporary
// directory if empty) with cfg's other fields, and closes both in
// tb.Cleanup.
func mustOpen(tb testing.TB, dir string, cfg identity.Config) *identity.Store {
	tb.Helper()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(tb.Output(), nil))
	}
	return identitytest.Open(tb, dir, cfg)
}

// mustClose closes s and its storage, failing the test on error.
func mustClose(tb testing.TB, s *identity.Store) {
	tb.Helper()
	identitytest.Close(tb, s)
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
