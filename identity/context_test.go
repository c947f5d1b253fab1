package identity_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/identity"
	"github.com/umbra-iot/umbra/identity/boltstore"
)

// TestCanceledContext: every method that uses the storage fails with the
// context's error when it is done, and changes nothing.
func TestCanceledContext(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	s := mustOpen(t, dir, identity.Config{})
	devSec := mustAddDevice(t, s, "dev-1")
	opSec := mustCreateToken(t, s, identity.RoleOperator, "ops")
	adminFile := filepath.Join(dir, "admin.token")
	canceled, cancel := context.WithCancel(ctx)
	cancel()

	calls := []struct {
		name string
		call func(context.Context) error
	}{
		{"AddDevice", func(ctx context.Context) error { _, err := s.AddDevice(ctx, "dev-2", nil); return err }},
		{"EnrollDevices", func(ctx context.Context) error {
			_, err := s.EnrollDevices(ctx, []identity.Enrollment{{ID: "dev-3"}}, false)
			return err
		}},
		{"RotateDevice", func(ctx context.Context) error { _, err := s.RotateDevice(ctx, "dev-1"); return err }},
		{"RemoveDevice", func(ctx context.Context) error { return s.RemoveDevice(ctx, "dev-1") }},
		{"GetDevice", func(ctx context.Context) error { _, err := s.GetDevice(ctx, "dev-1"); return err }},
		{"ListDevices", func(ctx context.Context) error { _, err := s.ListDevices(ctx); return err }},
		{"CreateToken", func(ctx context.Context) error {
			_, err := s.CreateToken(ctx, identity.RoleIntegrator, "dash")
			return err
		}},
		{"ListTokens", func(ctx context.Context) error { _, err := s.ListTokens(ctx); return err }},
		{"RevokeToken", func(ctx context.Context) error { return s.RevokeToken(ctx, "ops") }},
		{"EnsureAdminToken", func(ctx context.Context) error { _, err := s.EnsureAdminToken(ctx, adminFile); return err }},
		{"Verify", func(ctx context.Context) error { _, err := s.Verify(ctx, "dev-1", []byte(devSec)); return err }},
		{"VerifyBearer", func(ctx context.Context) error { _, err := s.VerifyBearer(ctx, "ops:"+opSec); return err }},
		{"Authenticate", func(ctx context.Context) error {
			_, err := s.Authenticate(ctx, identity.Credentials{ClientID: "dev-1", Password: []byte(devSec)})
			return err
		}},
	}
	for _, c := range calls {
		if err := c.call(canceled); !errors.Is(err, context.Canceled) {
			t.Errorf("%s with a canceled context: got %v, want context.Canceled", c.name, err)
		}
	}
	// Nothing changed: the same devices and tokens, the same secrets.
	devs, err := s.ListDevices(ctx)
	if err != nil || ids(devs) != "dev-1" {
		t.Errorf("ListDevices after canceled calls = %s, %v; want dev-1", ids(devs), err)
	}
	toks, err := s.ListTokens(ctx)
	if err != nil || len(toks) != 1 || toks[0].Name != "ops" {
		t.Errorf("ListTokens after canceled calls = %+v, %v; want ops", toks, err)
	}
	if _, err := s.Verify(ctx, "dev-1", []byte(devSec)); err != nil {
		t.Errorf("Verify(dev-1) after canceled calls: %v", err)
	}
	if _, err := s.VerifyBearer(ctx, "ops:"+opSec); err != nil {
		t.Errorf("VerifyBearer(ops) after canceled calls: %v", err)
	}
}

// pagedStorage cancels a context after the first page of devices it
// returns, as a caller's deadline would expire during a long listing.
type pagedStorage struct {
	identity.Storage
	cancel context.CancelFunc
	pages  atomic.Int32
}

func (p *pagedStorage) Devices(ctx context.Context, after device.ID, limit int) ([]identity.Record, error) {
	page, err := p.Storage.Devices(ctx, after, limit)
	if p.pages.Add(1) == 1 && p.cancel != nil {
		p.cancel()
	}
	return page, err
}

// TestListDevicesChecksContextBetweenPages: a listing longer than a page
// stops at the next page once its context is done.
func TestListDevicesChecksContextBetweenPages(t *testing.T) {
	ctx := t.Context()
	st, err := boltstore.Open(ctx, boltstore.Config{Path: filepath.Join(t.TempDir(), "identity.db")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close(context.Background()) })
	paged := &pagedStorage{Storage: st}
	s, err := identity.Open(ctx, identity.Config{Storage: paged})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(context.Background()) })
	list := make([]identity.Enrollment, 1500) // more than one page
	for i := range list {
		list[i].ID = device.ID(fmt.Sprintf("dev-%04d", i))
	}
	if _, err := s.EnrollDevices(ctx, list, false); err != nil {
		t.Fatal(err)
	}
	if devs, err := s.ListDevices(ctx); err != nil || len(devs) != len(list) {
		t.Fatalf("ListDevices = %d devices, %v; want %d", len(devs), err, len(list))
	}
	lctx, cancel := context.WithCancel(ctx)
	paged.pages.Store(0)
	paged.cancel = cancel
	if devs, err := s.ListDevices(lctx); !errors.Is(err, context.Canceled) {
		t.Errorf("ListDevices canceled after its first page = %d devices, %v; want context.Canceled", len(devs), err)
	}
	if n := paged.pages.Load(); n != 1 {
		t.Errorf("ListDevices read %d pages after its context was canceled by the first, want 1", n)
	}
}

// stuckStorage never answers SavePresence until released, like a storage
// on a partitioned network that ignores its context.
type stuckStorage struct {
	identity.Storage
	entered chan struct{} // closed at the first SavePresence
	release chan struct{}
}

func (s *stuckStorage) SavePresence(ctx context.Context, batch map[device.ID]identity.Presence, enrolledOnly bool) error {
	select {
	case <-s.entered:
	default:
		close(s.entered)
	}
	<-s.release
	return s.Storage.SavePresence(ctx, batch, enrolledOnly)
}

// TestCloseBoundedByContext: Close returns when its context ends, even
// while the storage does not answer the last presence flush.
func TestCloseBoundedByContext(t *testing.T) {
	ctx := t.Context()
	st, err := boltstore.Open(ctx, boltstore.Config{Path: filepath.Join(t.TempDir(), "identity.db")})
	if err != nil {
		t.Fatal(err)
	}
	stuck := &stuckStorage{Storage: st, entered: make(chan struct{}), release: make(chan struct{})}
	s, err := identity.Open(ctx, identity.Config{Storage: stuck, Anonymous: true, PresenceFlushInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	s.Connected("dev-1", 1, time.Now(), "127.0.0.1:1")
	cctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	closed := make(chan error, 1)
	go func() { closed <- s.Close(cctx) }()
	select {
	case err := <-closed:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Close with a stuck storage: got %v, want context.DeadlineExceeded", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return after its context ended")
	}
	<-stuck.entered // the flush did try
	close(stuck.release)
	if err := s.Close(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Close again: got %v, want the first call's result", err)
	}
	if err := st.Close(ctx); err != nil { // waits for the flush in the background
		t.Errorf("storage Close: %v", err)
	}
}
