package boltstore

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"

	boltdb "github.com/umbra-iot/umbra/internal/boltstore"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/identity"
)

// DefaultTimeout is how long Open waits for another process's lock on the
// file when Config.Timeout is zero.
const DefaultTimeout = time.Second

// Bucket and key names: the layout every version of identity.db has.
var (
	bucketDevices  = []byte("devices")  // device ID → deviceRecord (JSON)
	bucketTokens   = []byte("tokens")   // token name → tokenRecord (JSON)
	bucketPresence = []byte("presence") // device ID → presenceRecord (JSON)
	bucketMeta     = []byte("meta")     // keyKeyCheck → the key check
	// bucketRemoved maps a removed device ID to when it was last removed
	// (RFC 3339 with nanoseconds).
	bucketRemoved = []byte("removed")
	// bucketCerts maps the SHA-256 fingerprint (lowercase hex) of a bound
	// client certificate to the device ID it is bound to. It is kept in
	// step with deviceRecord.CertSHA256.
	bucketCerts = []byte("certs")
	keyKeyCheck = []byte("keycheck")

	buckets = [][]byte{bucketDevices, bucketTokens, bucketPresence, bucketMeta, bucketRemoved, bucketCerts}
)

// Config configures Open.
type Config struct {
	// Path is the bbolt file, e.g. "<data-dir>/identity.db". Required.
	// It is created (mode 0600, its directory 0700) if missing.
	Path string
	// KeyPath is the file holding the server key. Empty means
	// identity.KeyFileName beside Path. It is created with mode 0600 by
	// CreateServerKey.
	KeyPath string
	// Timeout bounds the wait for another process's lock on Path.
	// Default DefaultTimeout.
	Timeout time.Duration
	// Logger receives warnings (a key file readable by others, presence
	// that cannot be decoded). Nil discards.
	Logger *slog.Logger
}

// Store is an identity.Storage in one bbolt file and a key file. It is
// safe for concurrent use.
type Store struct {
	db      *bolt.DB
	keyPath string
	log     *slog.Logger

	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error
}

var _ identity.Storage = (*Store)(nil)

// Open opens (creating it if needed) the bbolt file at cfg.Path with the
// buckets of identity.db. It fails with an error wrapping
// identity.ErrLocked when another process holds the file for longer than
// Config.Timeout (another umbra serve using the data dir), and
// identity.ErrInvalidConfig without a Path.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("identity/boltstore: open: %w", err)
	}
	if cfg.Path == "" {
		return nil, fmt.Errorf("%w: empty Path", identity.ErrInvalidConfig)
	}
	if cfg.Timeout < 0 {
		return nil, fmt.Errorf("%w: negative Timeout", identity.ErrInvalidConfig)
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.KeyPath == "" {
		cfg.KeyPath = filepath.Join(filepath.Dir(cfg.Path), identity.KeyFileName)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(filepath.Dir(cfg.Path), 0o700); err != nil {
		return nil, fmt.Errorf("identity/boltstore: create data dir: %w", err)
	}
	db, err := boltdb.Open(cfg.Path, boltdb.Options{Timeout: cfg.Timeout, Locked: identity.ErrLocked})
	if err != nil {
		return nil, fmt.Errorf("identity/boltstore: %w", err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range buckets {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return fmt.Errorf("create bucket %s: %w", b, err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, errors.Join(fmt.Errorf("identity/boltstore: open %s: %w", cfg.Path, err), db.Close())
	}
	return &Store{db: db, keyPath: cfg.KeyPath, log: cfg.Logger.With("component", "identity/boltstore")}, nil
}

// Close closes the file, waiting for the transactions in progress; ctx
// bounds the wait. It is idempotent: later calls return the first call's
// result. Methods called after Close fail with identity.ErrClosed.
func (s *Store) Close(ctx context.Context) error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		done := make(chan error, 1)
		go func() { done <- s.db.Close() }()
		select {
		case err := <-done:
			s.closeErr = err
		case <-ctx.Done():
			s.closeErr = fmt.Errorf("identity/boltstore: close: %w", ctx.Err())
		}
	})
	return s.closeErr
}

// deviceRecord is a device as stored in the devices bucket.
type deviceRecord struct {
	MAC        []byte            `json:"mac"`
	Labels     map[string]string `json:"labels,omitempty"`
	CreatedAt  time.Time         `json:"createdAt"`
	RotatedAt  time.Time         `json:"rotatedAt,omitzero"`
	Enrolment  string            `json:"enrolment,omitempty"`
	SecretGen  string            `json:"secretGen,omitempty"`
	CertSHA256 string            `json:"certSha256,omitempty"`
}

// tokenRecord is a token as stored in the tokens bucket.
type tokenRecord struct {
	Role      identity.Role `json:"role"`
	MAC       []byte        `json:"mac"`
	CreatedAt time.Time     `json:"createdAt"`
	SecretGen string        `json:"secretGen,omitempty"`
}

// presenceRecord is a device's presence as stored in the presence bucket.
type presenceRecord struct {
	Connected        bool      `json:"connected"`
	ConnectedAt      time.Time `json:"connectedAt,omitzero"`
	DisconnectedAt   time.Time `json:"disconnectedAt,omitzero"`
	DisconnectReason string    `json:"disconnectReason,omitempty"`
	RemoteAddr       string    `json:"remoteAddr,omitempty"`
	Node             string    `json:"node,omitempty"` // cluster mode only; never set in single-node mode
}

func (r deviceRecord) record(id string) identity.Record {
	return identity.Record{Name: id, Role: identity.RoleDevice, MAC: r.MAC, CreatedAt: r.CreatedAt, SecretGen: r.SecretGen,
		Labels: r.Labels, RotatedAt: r.RotatedAt, Enrolment: r.Enrolment, CertSHA256: r.CertSHA256}
}

func (r tokenRecord) record(name string) identity.Record {
	return identity.Record{Name: name, Role: r.Role, MAC: r.MAC, CreatedAt: r.CreatedAt, SecretGen: r.SecretGen}
}

// put stores r in its bucket.
func put(tx *bolt.Tx, r identity.Record) error {
	if r.IsDevice() {
		return putJSON(tx.Bucket(bucketDevices), r.Name, deviceRecord{MAC: r.MAC, Labels: r.Labels, CreatedAt: r.CreatedAt,
			RotatedAt: r.RotatedAt, Enrolment: r.Enrolment, SecretGen: r.SecretGen, CertSHA256: r.CertSHA256})
	}
	return putJSON(tx.Bucket(bucketTokens), r.Name, tokenRecord{Role: r.Role, MAC: r.MAC, CreatedAt: r.CreatedAt, SecretGen: r.SecretGen})
}

// get returns the device or token name, or ok false.
func get(tx *bolt.Tx, name string) (r identity.Record, ok bool, err error) {
	if v := tx.Bucket(bucketDevices).Get([]byte(name)); v != nil {
		var d deviceRecord
		if err := json.Unmarshal(v, &d); err != nil {
			return r, false, fmt.Errorf("decode device %q: %w", name, err)
		}
		return d.record(name), true, nil
	}
	if v := tx.Bucket(bucketTokens).Get([]byte(name)); v != nil {
		var t tokenRecord
		if err := json.Unmarshal(v, &t); err != nil {
			return r, false, fmt.Errorf("decode token %q: %w", name, err)
		}
		return t.record(name), true, nil
	}
	return r, false, nil
}

func putJSON(b *bolt.Bucket, key string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return b.Put([]byte(key), data)
}

// start fails with identity.ErrClosed after Close and with ctx's error
// when ctx is done: bbolt transactions cannot be cancelled once begun.
func (s *Store) start(ctx context.Context) error {
	if s.closed.Load() {
		return identity.ErrClosed
	}
	return ctx.Err()
}

// view runs fn in a read transaction unless ctx is done.
func (s *Store) view(ctx context.Context, fn func(*bolt.Tx) error) error {
	if err := s.start(ctx); err != nil {
		return err
	}
	return closedErr(s.db.View(fn))
}

// update runs fn in a write transaction unless ctx is done. The change is
// on disk (fsync) when it returns nil.
func (s *Store) update(ctx context.Context, fn func(*bolt.Tx) error) error {
	if err := s.start(ctx); err != nil {
		return err
	}
	return closedErr(s.db.Update(fn))
}

func closedErr(err error) error {
	if errors.Is(err, bolt.ErrDatabaseNotOpen) {
		return identity.ErrClosed
	}
	return err
}

// ServerKey reads the key file. It fails with an error wrapping
// identity.ErrNotFound when the file does not exist, and
// identity.ErrKeyMismatch when it does not hold identity.KeySize bytes.
// It warns when the file is readable by others.
func (s *Store) ServerKey(ctx context.Context) ([]byte, error) {
	if err := s.start(ctx); err != nil {
		return nil, err
	}
	key, err := os.ReadFile(s.keyPath)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("key file %s is missing: %w", s.keyPath, identity.ErrNotFound)
	case err != nil:
		return nil, err
	case len(key) != identity.KeySize:
		return nil, fmt.Errorf("%w: key file %s holds %d bytes, want %d", identity.ErrKeyMismatch, s.keyPath, len(key), identity.KeySize)
	}
	if fi, err := os.Stat(s.keyPath); err == nil && fi.Mode().Perm()&0o077 != 0 {
		s.log.Warn("server key file is readable by others; chmod 600 it", "path", s.keyPath, "mode", fi.Mode().Perm().String())
	}
	return key, nil
}

// CreateServerKey writes key to the key file (mode 0600), synced. It
// fails with an error wrapping identity.ErrExists when the file exists.
func (s *Store) CreateServerKey(ctx context.Context, key []byte) error {
	if err := s.start(ctx); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(s.keyPath), 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(s.keyPath, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("key file %s: %w", s.keyPath, identity.ErrExists)
	}
	if err != nil {
		return err
	}
	_, err = f.Write(key)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = syncDir(filepath.Dir(s.keyPath))
	}
	if err != nil {
		os.Remove(s.keyPath)
		return fmt.Errorf("write key file %s: %w", s.keyPath, err)
	}
	return nil
}

// syncDir makes a file created in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	return errors.Join(d.Sync(), d.Close())
}

// KeyCheck returns the key check of the meta bucket; nil if none.
func (s *Store) KeyCheck(ctx context.Context) ([]byte, error) {
	var check []byte
	err := s.view(ctx, func(tx *bolt.Tx) error {
		check = bytes.Clone(tx.Bucket(bucketMeta).Get(keyKeyCheck))
		return nil
	})
	return check, err
}

// SetKeyCheck stores check in the meta bucket unless one is there
// (identity.ErrExists).
func (s *Store) SetKeyCheck(ctx context.Context, check []byte) error {
	return s.update(ctx, func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if meta.Get(keyKeyCheck) != nil {
			return fmt.Errorf("key check: %w", identity.ErrExists)
		}
		return meta.Put(keyKeyCheck, check)
	})
}

// Get implements identity.Storage.
func (s *Store) Get(ctx context.Context, name string) (identity.Record, error) {
	var r identity.Record
	err := s.view(ctx, func(tx *bolt.Tx) error {
		var ok bool
		var err error
		if r, ok, err = get(tx, name); err == nil && !ok {
			return identity.ErrNotFound
		}
		return err
	})
	return r, err
}

// Devices implements identity.Storage.
func (s *Store) Devices(ctx context.Context, after device.ID, limit int) ([]identity.Record, error) {
	var page []identity.Record
	err := s.scan(ctx, bucketDevices, string(after), limit, func(k, v []byte) error {
		var d deviceRecord
		if err := json.Unmarshal(v, &d); err != nil {
			return fmt.Errorf("decode device %q: %w", k, err)
		}
		page = append(page, d.record(string(k)))
		return nil
	})
	return page, err
}

// Tokens implements identity.Storage.
func (s *Store) Tokens(ctx context.Context, after string, limit int) ([]identity.Record, error) {
	var page []identity.Record
	err := s.scan(ctx, bucketTokens, after, limit, func(k, v []byte) error {
		var t tokenRecord
		if err := json.Unmarshal(v, &t); err != nil {
			return fmt.Errorf("decode token %q: %w", k, err)
		}
		page = append(page, t.record(string(k)))
		return nil
	})
	return page, err
}

// scan calls fn for at most limit entries of bucket whose keys sort after
// after, in key order.
func (s *Store) scan(ctx context.Context, bucket []byte, after string, limit int, fn func(k, v []byte) error) error {
	if limit <= 0 {
		return fmt.Errorf("identity/boltstore: scan limit %d, want > 0", limit)
	}
	return s.view(ctx, func(tx *bolt.Tx) error {
		c := tx.Bucket(bucket).Cursor()
		k, v := c.First()
		if after != "" {
			if k, v = c.Seek([]byte(after)); k != nil && string(k) == after {
				k, v = c.Next()
			}
		}
		for n := 0; k != nil && n < limit; k, v = c.Next() {
			if err := fn(k, v); err != nil {
				return err
			}
			n++
		}
		return nil
	})
}

// CertOwner implements identity.Storage.
func (s *Store) CertOwner(ctx context.Context, fp string) (device.ID, error) {
	var id device.ID
	err := s.view(ctx, func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketCerts).Get([]byte(fp))
		if v == nil {
			return identity.ErrNotFound
		}
		id = device.ID(v) // a copy
		return nil
	})
	return id, err
}

// RemovedAt implements identity.Storage.
func (s *Store) RemovedAt(ctx context.Context, id device.ID) (time.Time, error) {
	var t time.Time
	err := s.view(ctx, func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketRemoved).Get([]byte(id))
		if v == nil {
			return nil
		}
		if err := t.UnmarshalText(v); err != nil {
			return fmt.Errorf("decode removal time of %q: %w", id, err)
		}
		return nil
	})
	return t, err
}

// errRollback ends a write transaction that must store nothing.
var errRollback = errors.New("roll back")

// Create implements identity.Storage: with dryRun in a read transaction,
// otherwise in one write transaction that stores nothing when there is a
// conflict.
func (s *Store) Create(ctx context.Context, recs []identity.Record, dryRun bool) ([]identity.Conflict, error) {
	names, fps := make(map[string]bool, len(recs)), make(map[string]bool)
	for _, r := range recs {
		if names[r.Name] || r.IsDevice() && r.CertSHA256 != "" && fps[r.CertSHA256] {
			return nil, fmt.Errorf("identity/boltstore: create: %q or its certificate comes twice", r.Name)
		}
		names[r.Name] = true
		if r.IsDevice() && r.CertSHA256 != "" {
			fps[r.CertSHA256] = true
		}
	}
	var conflicts []identity.Conflict
	check := func(tx *bolt.Tx) error {
		conflicts = nil
		for i, r := range recs {
			c := identity.Conflict{Index: i}
			if have, ok, err := get(tx, r.Name); err != nil {
				return err
			} else if ok {
				c.Taken = have.Role
			}
			if r.IsDevice() && r.CertSHA256 != "" {
				if v := tx.Bucket(bucketCerts).Get([]byte(r.CertSHA256)); v != nil {
					c.BoundTo = device.ID(v)
				}
			}
			if c.Taken != "" || c.BoundTo != "" {
				conflicts = append(conflicts, c)
			}
		}
		return nil
	}
	if dryRun {
		return conflicts, s.view(ctx, check)
	}
	err := s.update(ctx, func(tx *bolt.Tx) error {
		if err := check(tx); err != nil {
			return err
		}
		if len(conflicts) > 0 {
			return errRollback
		}
		certs := tx.Bucket(bucketCerts)
		for _, r := range recs {
			if err := put(tx, r); err != nil {
				return fmt.Errorf("store %q: %w", r.Name, err)
			}
			if r.IsDevice() && r.CertSHA256 != "" {
				if err := certs.Put([]byte(r.CertSHA256), []byte(r.Name)); err != nil {
					return fmt.Errorf("bind certificate of %q: %w", r.Name, err)
				}
			}
		}
		return nil
	})
	if errors.Is(err, errRollback) {
		return conflicts, nil
	}
	if err != nil {
		return nil, err
	}
	return nil, nil
}

// Replace implements identity.Storage.
func (s *Store) Replace(ctx context.Context, prev, next identity.Record) error {
	if next.Name != prev.Name || next.IsDevice() != prev.IsDevice() {
		return fmt.Errorf("identity/boltstore: replace %q: a record of another name or kind", prev.Name)
	}
	return s.update(ctx, func(tx *bolt.Tx) error {
		have, ok, err := get(tx, prev.Name)
		switch {
		case err != nil:
			return err
		case !ok || have.IsDevice() != prev.IsDevice():
			return identity.ErrNotFound
		case have.SecretGen != prev.SecretGen || have.Enrolment != prev.Enrolment:
			return fmt.Errorf("replace %q: %w", prev.Name, identity.ErrConflict)
		case have.CertSHA256 != next.CertSHA256:
			return fmt.Errorf("identity/boltstore: replace %q: the certificate binding cannot change", prev.Name)
		}
		return put(tx, next)
	})
}

// RemoveDevice implements identity.Storage.
func (s *Store) RemoveDevice(ctx context.Context, id device.ID, at time.Time) (identity.Record, error) {
	var r identity.Record
	err := s.update(ctx, func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketDevices).Get([]byte(id))
		if v == nil {
			return identity.ErrNotFound
		}
		var d deviceRecord
		if err := json.Unmarshal(v, &d); err != nil {
			return fmt.Errorf("decode device %q: %w", id, err)
		}
		r = d.record(string(id))
		if err := tx.Bucket(bucketDevices).Delete([]byte(id)); err != nil {
			return err
		}
		if d.CertSHA256 != "" {
			if err := tx.Bucket(bucketCerts).Delete([]byte(d.CertSHA256)); err != nil {
				return err
			}
		}
		t, err := at.MarshalText()
		if err != nil {
			return err
		}
		if err := tx.Bucket(bucketRemoved).Put([]byte(id), t); err != nil {
			return err
		}
		return tx.Bucket(bucketPresence).Delete([]byte(id))
	})
	return r, err
}

// DeleteToken implements identity.Storage.
func (s *Store) DeleteToken(ctx context.Context, name string) (identity.Record, error) {
	var r identity.Record
	err := s.update(ctx, func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketTokens)
		v := b.Get([]byte(name))
		if v == nil {
			return identity.ErrNotFound
		}
		var t tokenRecord
		if err := json.Unmarshal(v, &t); err != nil {
			return fmt.Errorf("decode token %q: %w", name, err)
		}
		r = t.record(name)
		return b.Delete([]byte(name))
	})
	return r, err
}

// Presence implements identity.Storage. Presence that cannot be decoded
// is left out with a warning: it is rewritten at the device's next
// connection.
func (s *Store) Presence(ctx context.Context) (map[device.ID]identity.Presence, error) {
	all := make(map[device.ID]identity.Presence)
	err := s.view(ctx, func(tx *bolt.Tx) error {
		return tx.Bucket(bucketPresence).ForEach(func(k, v []byte) error {
			var p presenceRecord
			if err := json.Unmarshal(v, &p); err != nil {
				s.log.Warn("dropping undecodable presence", "device", string(k), "error", err)
				return nil
			}
			all[device.ID(k)] = identity.Presence(p)
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	return all, nil
}

// SavePresence implements identity.Storage.
func (s *Store) SavePresence(ctx context.Context, batch map[device.ID]identity.Presence, enrolledOnly bool) error {
	if len(batch) == 0 {
		return s.start(ctx)
	}
	return s.update(ctx, func(tx *bolt.Tx) error {
		devices, b := tx.Bucket(bucketDevices), tx.Bucket(bucketPresence)
		for id, p := range batch {
			if enrolledOnly && devices.Get([]byte(id)) == nil {
				continue
			}
			if err := putJSON(b, string(id), presenceRecord(p)); err != nil {
				return err
			}
		}
		return nil
	})
}
