package boltstore_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/shadow"
	"github.com/umbra-iot/umbra/shadow/boltstore"
	"github.com/umbra-iot/umbra/shadow/storetest"
)

func open(tb testing.TB, dir string) storetest.Store {
	tb.Helper()
	s, err := boltstore.Open(context.Background(), boltstore.Config{Path: filepath.Join(dir, "shadow.db")})
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
	_, err := boltstore.Open(t.Context(), boltstore.Config{Path: filepath.Join(dir, "shadow.db"), Timeout: 50 * time.Millisecond})
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
		{"done context", ctx, boltstore.Config{Path: filepath.Join(t.TempDir(), "shadow.db")}, "context canceled"},
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

func TestCommitStatsAndObserver(t *testing.T) {
	var batches, calls int
	s, err := boltstore.Open(t.Context(), boltstore.Config{
		Path:           filepath.Join(t.TempDir(), "shadow.db"),
		CommitObserved: func(d time.Duration, n int) { batches++; calls += n }, // the committer is one goroutine
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"a", "b", "c"} {
		if err := s.Commit(t.Context(), shadow.Write{Key: shadow.Key{Device: device.ID("d-" + id)}, Value: []byte(`{}`)}); err != nil {
			t.Fatal(err)
		}
	}
	st := s.CommitStats()
	if err := s.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	if st.Commits != 3 || st.Writes != 3 || st.Time <= 0 {
		t.Errorf("CommitStats = %+v, want 3 commits of 3 writes and some time", st)
	}
	if batches != 3 || calls != 3 {
		t.Errorf("observer saw %d commits of %d calls, want 3 and 3", batches, calls)
	}
}
