package boltstore

import (
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// DefaultTimeout is how long Open waits for another process's lock on
// the file.
const DefaultTimeout = time.Second

// FileMode is the mode of a file Open creates: only Umbra's user reads
// the data dir.
const FileMode = 0o600

// Options are Open's settings.
type Options struct {
	// Timeout bounds the wait for another process's lock; 0 means
	// DefaultTimeout.
	Timeout time.Duration
	// Locked is the adapter's sentinel, wrapped when the lock is still
	// held after Timeout. Required.
	Locked error
	// Corrupt, when set, is the adapter's sentinel wrapped for a file
	// bbolt cannot read (not a bbolt file, another format version, a bad
	// checksum, or a panic of bbolt on a damaged file). Without it such a
	// file fails with bbolt's error.
	Corrupt error
}

// Open opens the bbolt file at path, creating it with FileMode if it is
// missing. Its errors name path; one that wraps o.Locked also asks
// whether another umbra serve uses the data dir.
func Open(path string, o Options) (db *bolt.DB, err error) {
	if o.Locked == nil {
		return nil, errors.New("boltstore: Options.Locked is required")
	}
	if o.Timeout == 0 {
		o.Timeout = DefaultTimeout
	}
	if o.Corrupt != nil {
		defer func() {
			if r := recover(); r != nil {
				db, err = nil, fmt.Errorf("boltstore: open %s: %w: %v", path, o.Corrupt, r)
			}
		}()
	}
	db, err = bolt.Open(path, FileMode, &bolt.Options{Timeout: o.Timeout})
	switch {
	case errors.Is(err, bolt.ErrTimeout):
		return nil, fmt.Errorf("boltstore: open %s: %w (is another umbra serve using this data dir?): %w", path, o.Locked, err)
	case o.Corrupt != nil && (errors.Is(err, bolt.ErrInvalid) || errors.Is(err, bolt.ErrVersionMismatch) || errors.Is(err, bolt.ErrChecksum)):
		return nil, fmt.Errorf("boltstore: open %s: %w: %w", path, o.Corrupt, err)
	case err != nil:
		return nil, fmt.Errorf("boltstore: open %s: %w", path, err)
	}
	return db, nil
}
