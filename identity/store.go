package identity

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
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
	berrors "go.etcd.io/bbolt/errors"

	"github.com/umbra-iot/umbra/policy"
)

// Defaults applied by Open to zero Config fields.
const (
	// DefaultPresenceFlushInterval is how often presence changes are
	// written to the database.
	DefaultPresenceFlushInterval = time.Second
	// DefaultOpenTimeout is how long Open waits for the database file lock.
	DefaultOpenTimeout = time.Second
	// KeyFileName is the server key's file name beside the database when
	// Config.KeyPath is empty.
	KeyFileName = "identity.key"

	keySize = 32
	// logKeyComponent is the slog attribute naming the component.
	logKeyComponent = "component"
)

// Errors returned by Store methods.
var (
	// ErrClosed is returned by every method after Close.
	ErrClosed = errors.New("identity: closed")
	// ErrLocked is wrapped by Open when another process holds the
	// database (another umbra serve, or a CLI command while it runs).
	ErrLocked = errors.New("identity: database locked by another process")
	// ErrInvalidConfig is wrapped by Open when Config is invalid.
	ErrInvalidConfig = errors.New("identity: invalid config")
	// ErrKeyMismatch is wrapped by Open when the server key is missing or
	// is not the key the database's secrets were hashed with.
	ErrKeyMismatch = errors.New("identity: server key does not match database")
	// ErrNotFound is wrapped when a device or token does not exist.
	ErrNotFound = errors.New("identity: not found")
	// ErrExists is wrapped when a device or token name is already taken
	// (devices and tokens share one namespace), or the CA already exists.
	ErrExists = errors.New("identity: already exists")
	// ErrInvalidName is wrapped for an invalid token name or device ID.
	ErrInvalidName = errors.New("identity: invalid name")
	// ErrInvalidRole is wrapped for an unknown or unusable role.
	ErrInvalidRole = errors.New("identity: invalid role")
	// ErrInvalidLabel is wrapped for a malformed label or too many labels.
	ErrInvalidLabel = errors.New("identity: invalid label")
	// ErrUnauthenticated is wrapped by Authenticate and Verify when the
	// credentials are not valid; the wrapping error says why, for logs.
	ErrUnauthenticated = errors.New("identity: unauthenticated")
)

// Bucket names.
var (
	bucketDevices  = []byte("devices")
	bucketTokens   = []byte("tokens")
	bucketPresence = []byte("presence")
	bucketMeta     = []byte("meta")
	// bucketRemoved maps a removed device ID to when it was last removed
	// (RFC 3339 with nanoseconds): certificates issued before are refused.
	bucketRemoved = []byte("removed")
	keyKeyCheck   = []byte("keycheck")
)

// Config configures a Store.
type Config struct {
	// Path is the bbolt database file, e.g. "<data-dir>/identity.db".
	// Required. The file is created with mode 0600.
	Path string
	// KeyPath is the file holding the 32-byte server key that secrets are
	// hashed with. Empty means KeyFileName beside Path. It is created with
	// mode 0600 when neither it nor any secret exists yet.
	KeyPath string
	// Now returns the current time. Nil means time.Now.
	Now func() time.Time
	// Logger receives the store's logs. Nil discards.
	Logger *slog.Logger
	// Anonymous makes Authenticate accept every client as an operator,
	// without checking credentials (umbra serve --insecure-anonymous).
	Anonymous bool
	// Policy is the topic policy Allow applies. Nil means
	// policy.Default(), the built-in default. SetPolicy replaces it.
	Policy *policy.Policy
	// PresenceFlushInterval is how often changed presence is written to
	// the database. Default DefaultPresenceFlushInterval.
	PresenceFlushInterval time.Duration
	// OpenTimeout is how long Open waits for another process's lock on the
	// database file before failing. Default DefaultOpenTimeout.
	OpenTimeout time.Duration
	// OnRevoke, when set, is called after a credential ended: after
	// RemoveDevice, RotateDevice and RevokeToken, and after
	// EnsureAdminToken replaced the admin token. Allow already refuses
	// the sessions that logged in with the ended credential; OnRevoke lets
	// the caller disconnect them (umbra serve evicts every session that
	// Revocation.Match reports from the broker). It runs on the goroutine
	// of the call that ended the credential, after the change is
	// committed, outside the store's locks, with that call's ctx, and may
	// call the store.
	OnRevoke func(ctx context.Context, r Revocation)
	// BoundOnlyCAs are CAs the TLS listener trusts only for certificates
	// bound to a device (Enrollment.CertSHA256): a certificate whose every
	// verified chain ends at one of them does not log in by its common
	// name. Use it for a CA that also signs others' certificates, such as
	// the AWS IoT CA that issued a migrated fleet's certificates (umbra
	// serve --bound-client-ca). Nil: every CA the listener trusts vouches
	// for common names.
	BoundOnlyCAs []*x509.Certificate
}

func (c *Config) setDefaults() {
	if c.KeyPath == "" && c.Path != "" {
		c.KeyPath = filepath.Join(filepath.Dir(c.Path), KeyFileName)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.PresenceFlushInterval == 0 {
		c.PresenceFlushInterval = DefaultPresenceFlushInterval
	}
	if c.OpenTimeout == 0 {
		c.OpenTimeout = DefaultOpenTimeout
	}
	if c.Policy == nil {
		c.Policy = policy.Default()
	}
}

func (c *Config) validate() error {
	if c.Path == "" {
		return fmt.Errorf("%w: empty Path", ErrInvalidConfig)
	}
	if c.PresenceFlushInterval < 0 || c.OpenTimeout < 0 {
		return fmt.Errorf("%w: negative interval", ErrInvalidConfig)
	}
	return nil
}

// Store holds devices, tokens and presence, authenticates MQTT clients and
// authorizes their topics. It implements broker.Authenticator. All methods
// are safe for concurrent use.
type Store struct {
	cfg Config
	log *slog.Logger
	db  *bolt.DB
	key []byte // server key; read-only after Open

	denied atomic.Uint64
	// boundOnly holds the SHA-256 of every Config.BoundOnlyCAs
	// certificate; read-only after Open.
	boundOnly map[[sha256.Size]byte]bool
	policy    atomic.Pointer[policy.Policy] // never nil after Open
	// current maps every device ID and token name to its current
	// *credential, for Allow, which reads it without a lock. Entries are
	// replaced or deleted under credMu right after the transaction that
	// changed the credential commits.
	current sync.Map
	// credMu is held (Lock) across a credential change's transaction and
	// the update of current, and (RLock) by Authenticate across its read,
	// so an identity Authenticate returns never runs ahead of current.
	credMu sync.RWMutex

	// flushMu serialises presence flushes with presence deletions, so a
	// flush never resurrects a removed device's presence. Lock order:
	// flushMu, credMu, presenceMu.
	flushMu    sync.Mutex
	presenceMu sync.Mutex                // guards presence and dirty
	presence   map[string]*presenceEntry // by device ID
	dirty      map[string]struct{}       // device IDs changed since the last flush

	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error
	cancel    context.CancelFunc
	wg        sync.WaitGroup
}

// Open opens (creating if needed) the database at cfg.Path and the server
// key, loads presence, and starts the presence flusher. It fails with an
// error wrapping ErrKeyMismatch when the database holds secrets and the key
// is missing or different, and ErrLocked when another process holds the
// database for longer than Config.OpenTimeout.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(cfg.Path), 0o700); err != nil {
		return nil, fmt.Errorf("identity: create data dir: %w", err)
	}
	db, err := bolt.Open(cfg.Path, 0o600, &bolt.Options{Timeout: cfg.OpenTimeout})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("%w: %s", ErrLocked, cfg.Path)
	}
	if err != nil {
		return nil, fmt.Errorf("identity: open %s: %w", cfg.Path, err)
	}
	s := &Store{
		cfg:      cfg,
		log:      cfg.Logger.With(logKeyComponent, "identity"),
		db:       db,
		presence: make(map[string]*presenceEntry),
		dirty:    make(map[string]struct{}),
	}
	for _, ca := range cfg.BoundOnlyCAs {
		if s.boundOnly == nil {
			s.boundOnly = make(map[[sha256.Size]byte]bool)
		}
		s.boundOnly[sha256.Sum256(ca.Raw)] = true
	}
	s.policy.Store(cfg.Policy)
	if err := s.init(); err != nil {
		return nil, errors.Join(err, db.Close())
	}
	bg, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.cancel = cancel
	s.wg.Go(func() { s.flushLoop(bg) })
	return s, nil
}

// init creates the buckets, loads or creates the key and loads presence.
func (s *Store) init() error {
	return s.db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketDevices, bucketTokens, bucketPresence, bucketMeta, bucketRemoved, bucketCerts} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return fmt.Errorf("identity: create bucket %s: %w", b, err)
			}
		}
		meta := tx.Bucket(bucketMeta)
		check := meta.Get(keyKeyCheck)
		key, err := s.loadKey(check == nil)
		if err != nil {
			return err
		}
		want := keyCheck(key)
		if check == nil {
			if err := meta.Put(keyKeyCheck, want); err != nil {
				return fmt.Errorf("identity: store key check: %w", err)
			}
		} else if !hmac.Equal(check, want) {
			return fmt.Errorf("%w: %s is not the key this database was created with", ErrKeyMismatch, s.cfg.KeyPath)
		}
		s.key = key
		if err := s.loadCredentials(tx); err != nil {
			return err
		}
		return s.loadPresence(tx)
	})
}

// loadKey reads the server key, creating it if create is set and it does
// not exist.
func (s *Store) loadKey(create bool) ([]byte, error) {
	key, err := os.ReadFile(s.cfg.KeyPath)
	switch {
	case errors.Is(err, fs.ErrNotExist) && create:
		return createKey(s.cfg.KeyPath)
	case errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("%w: key file %s is missing", ErrKeyMismatch, s.cfg.KeyPath)
	case err != nil:
		return nil, fmt.Errorf("identity: read key: %w", err)
	}
	if len(key) != keySize {
		return nil, fmt.Errorf("%w: key file %s holds %d bytes, want %d", ErrKeyMismatch, s.cfg.KeyPath, len(key), keySize)
	}
	if fi, err := os.Stat(s.cfg.KeyPath); err == nil && fi.Mode().Perm()&0o077 != 0 {
		s.log.Warn("server key file is readable by others; chmod 600 it", "path", s.cfg.KeyPath, "mode", fi.Mode().Perm().String())
	}
	return key, nil
}

func createKey(path string) ([]byte, error) {
	key := make([]byte, keySize)
	rand.Read(key)
	if err := writeFileExclusive(path, key, 0o600); err != nil {
		return nil, fmt.Errorf("identity: create key: %w", err)
	}
	return key, nil
}

// writeFileExclusive creates path with perm, failing if it exists, and
// syncs it.
func writeFileExclusive(path string, data []byte, perm os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
	}
	return err
}

// keyCheck is a value derived from key that tells, without revealing key,
// whether a later key is the same one.
func keyCheck(key []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte("umbra/identity/v1 key check"))
	return m.Sum(nil)
}

// Close flushes presence, stops the flusher and closes the database. It is
// idempotent; later calls return the first call's result.
func (s *Store) Close(ctx context.Context) error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		s.cancel()
		s.wg.Wait()
		err := s.flushPresence()
		s.closeErr = errors.Join(err, s.db.Close())
	})
	return s.closeErr
}

// update runs fn in a write transaction unless ctx is done, mapping a
// closed database to ErrClosed.
func (s *Store) update(ctx context.Context, fn func(*bolt.Tx) error) error {
	if s.closed.Load() {
		return ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return closedErr(s.db.Update(fn))
}

// view runs fn in a read transaction unless ctx is done, mapping a closed
// database to ErrClosed.
func (s *Store) view(ctx context.Context, fn func(*bolt.Tx) error) error {
	if s.closed.Load() {
		return ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return closedErr(s.db.View(fn))
}

func closedErr(err error) error {
	if errors.Is(err, bolt.ErrDatabaseNotOpen) {
		return ErrClosed
	}
	return err
}
