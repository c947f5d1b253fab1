package boltstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	boltdb "github.com/umbra-iot/umbra/internal/boltstore"

	"github.com/umbra-iot/umbra/firmware"
)

// File is the Catalog's file name under firmware.Config.Dir, where every
// Umbra release has kept it.
const File = "firmware.db"

// DefaultTimeout is how long Open waits for the file lock when
// Config.Timeout is zero.
const DefaultTimeout = time.Second

// listCheck is how many records List decodes between two checks of its
// context.
const listCheck = 256

// bucketImages holds one record per version, keyed by the version string:
// the JSON form of firmware.Image.
var bucketImages = []byte("images")

// ErrLocked is wrapped by Open when another process holds the file.
var ErrLocked = errors.New("boltstore: database is locked by another process")

// Config configures Open.
type Config struct {
	// Path is the bbolt file, conventionally File under
	// firmware.Config.Dir; it is created (mode 0600) if missing. Required.
	Path string
	// Timeout bounds the wait for the file lock held by another process.
	// Default DefaultTimeout.
	Timeout time.Duration
}

// Store is a firmware.Catalog in one bbolt file. It is safe for
// concurrent use.
type Store struct {
	db   *bolt.DB
	path string

	mu     sync.RWMutex // guards closed
	closed bool

	closeOnce sync.Once
	closeErr  error
}

// Open opens (or creates) the file at cfg.Path. It fails fast, with an
// error wrapping ErrLocked, if another process holds the file.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("boltstore: open: %w", err)
	}
	if cfg.Path == "" {
		return nil, errors.New("boltstore: open: Config.Path is required")
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	db, err := boltdb.Open(cfg.Path, boltdb.Options{Timeout: cfg.Timeout, Locked: ErrLocked})
	if err != nil {
		return nil, err
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucketImages)
		return err
	}); err != nil {
		db.Close()
		return nil, fmt.Errorf("boltstore: init %s: %w", cfg.Path, err)
	}
	return &Store{db: db, path: cfg.Path}, nil
}

// Path returns the file's path.
func (s *Store) Path() string { return s.path }

// tx runs fn in a read (update false) or write transaction, or fails with
// ctx's error or ErrClosed. The read lock keeps Close from closing the
// file under it.
func (s *Store) tx(ctx context.Context, op string, update bool, fn func(*bolt.Bucket) error) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("boltstore: %s: %w", op, err)
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return fmt.Errorf("boltstore: %s: %w", op, firmware.ErrClosed)
	}
	run := s.db.View
	if update {
		run = s.db.Update
	}
	if err := run(func(tx *bolt.Tx) error { return fn(tx.Bucket(bucketImages)) }); err != nil {
		return fmt.Errorf("boltstore: %s: %w", op, err)
	}
	return nil
}

func decode(k, v []byte) (firmware.Image, error) {
	var img firmware.Image
	if err := json.Unmarshal(v, &img); err != nil {
		return img, fmt.Errorf("decode image %q: %w", k, err)
	}
	return img, nil
}

func put(b *bolt.Bucket, img firmware.Image) error {
	v, err := json.Marshal(img)
	if err != nil {
		return err
	}
	return b.Put([]byte(img.Version), v)
}

// Get implements firmware.Catalog.
func (s *Store) Get(ctx context.Context, v firmware.Version) (firmware.Image, error) {
	var img firmware.Image
	err := s.tx(ctx, "get "+string(v), false, func(b *bolt.Bucket) error {
		raw := b.Get([]byte(v))
		if raw == nil {
			return firmware.ErrNotFound
		}
		var err error
		img, err = decode([]byte(v), raw)
		return err
	})
	return img, err
}

// List implements firmware.Catalog: the records in key order.
func (s *Store) List(ctx context.Context) ([]firmware.Image, error) {
	var imgs []firmware.Image
	err := s.tx(ctx, "list", false, func(b *bolt.Bucket) error {
		return b.ForEach(func(k, v []byte) error {
			if len(imgs)%listCheck == listCheck-1 {
				if err := ctx.Err(); err != nil {
					return err
				}
			}
			img, err := decode(k, v)
			imgs = append(imgs, img)
			return err
		})
	})
	if err != nil {
		return nil, err
	}
	return imgs, nil
}

// Create implements firmware.Catalog: the check and the put are one
// transaction.
func (s *Store) Create(ctx context.Context, img firmware.Image) error {
	return s.tx(ctx, "create "+string(img.Version), true, func(b *bolt.Bucket) error {
		if b.Get([]byte(img.Version)) != nil {
			return firmware.ErrExists
		}
		return put(b, img)
	})
}

// Replace implements firmware.Catalog, in one transaction.
func (s *Store) Replace(ctx context.Context, imgs ...firmware.Image) error {
	return s.tx(ctx, "replace", true, func(b *bolt.Bucket) error {
		for _, img := range imgs {
			if b.Get([]byte(img.Version)) == nil {
				continue
			}
			if err := put(b, img); err != nil {
				return err
			}
		}
		return nil
	})
}

// Delete implements firmware.Catalog: the read and the removal are one
// transaction.
func (s *Store) Delete(ctx context.Context, v firmware.Version) (firmware.Image, error) {
	var img firmware.Image
	err := s.tx(ctx, "delete "+string(v), true, func(b *bolt.Bucket) error {
		raw := b.Get([]byte(v))
		if raw == nil {
			return firmware.ErrNotFound
		}
		var err error
		if img, err = decode([]byte(v), raw); err != nil {
			return err
		}
		return b.Delete([]byte(v))
	})
	return img, err
}

// Close implements firmware.Catalog: it waits for the transactions in
// progress (each is short: a Catalog never waits for anything else inside
// one) and closes the file. It is idempotent; later calls return the
// first call's result.
func (s *Store) Close(context.Context) error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		if err := s.db.Close(); err != nil {
			s.closeErr = fmt.Errorf("boltstore: close %s: %w", s.path, err)
		}
	})
	return s.closeErr
}
