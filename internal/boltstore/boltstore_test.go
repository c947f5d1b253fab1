package boltstore_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/internal/boltstore"
)

var (
	errLocked  = errors.New("locked")
	errCorrupt = errors.New("corrupt")
)

func TestOpen(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "x.db")
	db, err := boltstore.Open(path, boltstore.Options{Locked: errLocked})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != boltstore.FileMode {
		t.Errorf("mode %v, want %v", fi.Mode().Perm(), os.FileMode(boltstore.FileMode))
	}
	// The second open waits for the lock, then names the file and the
	// adapter's sentinel.
	start := time.Now()
	_, err = boltstore.Open(path, boltstore.Options{Timeout: 50 * time.Millisecond, Locked: errLocked})
	if !errors.Is(err, errLocked) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "another umbra serve") {
		t.Errorf("second Open = %v, want errLocked naming %s", err, path)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("second Open took %v", d)
	}
}

func TestOpenCorrupt(t *testing.T) {
	for _, tc := range []struct {
		name    string
		corrupt error
		want    error
	}{
		{"with Corrupt", errCorrupt, errCorrupt},
		{"without Corrupt", nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "x.db")
			if err := os.WriteFile(path, []byte(strings.Repeat("not a bbolt file ", 1024)), 0o600); err != nil {
				t.Fatal(err)
			}
			db, err := boltstore.Open(path, boltstore.Options{Locked: errLocked, Corrupt: tc.corrupt})
			if err == nil {
				db.Close()
				t.Fatal("Open of garbage succeeded")
			}
			if tc.want != nil && !errors.Is(err, tc.want) || !strings.Contains(err.Error(), path) {
				t.Errorf("Open = %v, want an error naming %s (wrapping %v)", err, path, tc.want)
			}
			got, _ := os.ReadFile(path)
			if !strings.HasPrefix(string(got), "not a bbolt file") {
				t.Error("Open changed the file")
			}
		})
	}
}

func TestOpenNeedsLocked(t *testing.T) {
	if _, err := boltstore.Open(filepath.Join(t.TempDir(), "x.db"), boltstore.Options{}); err == nil {
		t.Error("Open without Options.Locked succeeded")
	}
}
