package identity

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/policy"
)

// Defaults applied by Open to zero Config fields.
const (
	// DefaultPresenceFlushInterval is how often presence changes are
	// written to the storage.
	DefaultPresenceFlushInterval = time.Second
	// KeyFileName is the usual file name of the server key, beside the
	// database (identity/boltstore keeps it there).
	KeyFileName = "identity.key"
	// KeySize is the length of the server key in bytes.
	KeySize = 32

	// logKeyComponent is the slog attribute naming the component.
	logKeyComponent = "component"
	// pageSize is how many records a long scan reads per Storage call;
	// it checks ctx between pages.
	pageSize = 1000
)

// Errors returned by Store methods.
var (
	// ErrClosed is returned by every method after Close.
	ErrClosed = errors.New("identity: closed")
	// ErrLocked is wrapped by a Storage's open (identity/boltstore.Open)
	// when another process holds the database (another umbra serve).
	ErrLocked = errors.New("identity: database locked by another process")
	// ErrInvalidConfig is wrapped by Open (and a Storage's open) when
	// the configuration is invalid.
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

// Config configures a Store.
type Config struct {
	// Storage keeps the devices, tokens, presence and server key.
	// Required: identity/boltstore.Open returns the single-node one. The
	// caller closes it after the Store.
	Storage Storage
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
	// the storage. Default DefaultPresenceFlushInterval.
	PresenceFlushInterval time.Duration
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
	// OnEnrolled, when set, is called after devices were enrolled, with
	// what was enrolled (labels copied), by every path: AddDevice,
	// EnrollDevice (a certificate binding too) and EnrollDevices (not a
	// dry run). It runs on the goroutine of the enrolling call, after the
	// change is committed, outside the store's locks, with that call's
	// ctx, and may call the store; the enrolment stands whatever it does.
	// umbra serve wires the rollout planner's DevicesEnrolled to it
	// (devices enrolled later join dynamic rollouts).
	OnEnrolled func(ctx context.Context, enrolled []Enrollment)
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
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.PresenceFlushInterval == 0 {
		c.PresenceFlushInterval = DefaultPresenceFlushInterval
	}
	if c.Policy == nil {
		c.Policy = policy.Default()
	}
}

func (c *Config) validate() error {
	if c.Storage == nil {
		return fmt.Errorf("%w: no Storage", ErrInvalidConfig)
	}
	if c.PresenceFlushInterval < 0 {
		return fmt.Errorf("%w: negative interval", ErrInvalidConfig)
	}
	return nil
}

// Store holds devices, tokens and presence, authenticates MQTT clients and
// authorizes their topics. All methods are safe for concurrent use.
type Store struct {
	cfg Config
	log *slog.Logger
	st  Storage
	key []byte // server key; read-only after Open

	denied atomic.Uint64
	// boundOnly holds the SHA-256 of every Config.BoundOnlyCAs
	// certificate; read-only after Open.
	boundOnly map[[sha256.Size]byte]bool
	policy    atomic.Pointer[policy.Policy] // never nil after Open
	// current maps every device ID and token name to its current
	// *credential, for Allow, which reads it without a lock. Entries are
	// replaced or deleted under credMu right after the storage change
	// that changed the credential.
	current sync.Map
	// epoch moves after every change of current or of the policy (see
	// AllowEpoch).
	epoch atomic.Uint64
	// credMu is held (Lock) across a credential change in the storage
	// and the update of current, and (RLock) by Authenticate across its
	// reads, so a session Authenticate returns never runs ahead of
	// current.
	credMu sync.RWMutex

	// flushMu serialises presence flushes with presence deletions, so a
	// flush never resurrects a removed device's presence. Lock order:
	// flushMu, credMu, presenceMu.
	flushMu    sync.Mutex
	presenceMu sync.Mutex                   // guards presence and dirty
	presence   map[device.ID]*presenceEntry // by device ID
	dirty      map[device.ID]struct{}       // device IDs changed since the last flush

	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error
	cancel    context.CancelFunc
	flushDone chan struct{} // closed when the flusher returned
	watchDone chan struct{} // closed when the change feed's loop returned
}

// Open opens a Store on cfg.Storage: it loads (creating it if the storage
// holds no secret yet) and checks the server key, gives records of
// earlier versions their credential generations, loads presence, and
// starts the presence flusher. It fails with an error wrapping
// ErrKeyMismatch when the storage holds secrets and the key is missing or
// different, and ErrInvalidConfig without a Storage.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	s := &Store{
		cfg:       cfg,
		log:       cfg.Logger.With(logKeyComponent, "identity"),
		st:        cfg.Storage,
		presence:  make(map[device.ID]*presenceEntry),
		dirty:     make(map[device.ID]struct{}),
		flushDone: make(chan struct{}),
	}
	for _, ca := range cfg.BoundOnlyCAs {
		if s.boundOnly == nil {
			s.boundOnly = make(map[[sha256.Size]byte]bool)
		}
		s.boundOnly[sha256.Sum256(ca.Raw)] = true
	}
	s.policy.Store(cfg.Policy)
	bg, cancel := context.WithCancel(context.WithoutCancel(ctx))
	// A shared storage's change feed starts before the credentials are
	// loaded, so no change made meanwhile by another server is missed.
	var names <-chan string
	watcher, shared := cfg.Storage.(NameWatcher)
	if shared {
		var err error
		if names, err = watcher.WatchNames(bg); err != nil {
			cancel()
			return nil, fmt.Errorf("identity: watch the storage: %w", err)
		}
	}
	if err := s.init(ctx); err != nil {
		cancel()
		return nil, err
	}
	s.cancel = cancel
	go func() {
		defer close(s.flushDone)
		s.flushLoop(bg)
	}()
	s.watchDone = make(chan struct{})
	go func() {
		defer close(s.watchDone)
		if shared {
			s.watchLoop(bg, watcher, names)
		}
	}()
	return s, nil
}

// init loads or creates the server key, checks it against the storage's
// key check, and loads credentials and presence.
func (s *Store) init(ctx context.Context) error {
	check, err := s.st.KeyCheck(ctx)
	if err != nil {
		return fmt.Errorf("identity: read key check: %w", err)
	}
	key, err := s.loadKey(ctx, check == nil)
	if err != nil {
		return err
	}
	want := keyCheck(key)
	if check == nil {
		if err := s.st.SetKeyCheck(ctx, want); err != nil {
			return fmt.Errorf("identity: store key check: %w", err)
		}
	} else if !hmac.Equal(check, want) {
		return fmt.Errorf("%w: the server key is not the key this database was created with", ErrKeyMismatch)
	}
	s.key = key
	if err := s.loadCredentials(ctx); err != nil {
		return err
	}
	return s.loadPresence(ctx)
}

// loadKey reads the server key, creating it if create is set and there is
// none.
func (s *Store) loadKey(ctx context.Context, create bool) ([]byte, error) {
	key, err := s.st.ServerKey(ctx)
	switch {
	case errors.Is(err, ErrNotFound) && create:
		key = make([]byte, KeySize)
		rand.Read(key)
		if err := s.st.CreateServerKey(ctx, key); err != nil {
			return nil, fmt.Errorf("identity: create key: %w", err)
		}
		return key, nil
	case errors.Is(err, ErrNotFound):
		return nil, fmt.Errorf("%w: the server key is missing: %w", ErrKeyMismatch, err)
	case err != nil:
		return nil, fmt.Errorf("identity: read key: %w", err)
	}
	if len(key) != KeySize {
		return nil, fmt.Errorf("%w: the server key holds %d bytes, want %d", ErrKeyMismatch, len(key), KeySize)
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

// Close stops the presence flusher and writes the presence changed since
// the last flush. It does not close Config.Storage, which the caller
// closes afterwards. It returns when ctx ends even if the storage has not
// answered (the flush then finishes or fails in the background), with an
// error wrapping ctx's: presence changes not yet written are then lost,
// as in a crash (see Presence). It is idempotent; later calls return the
// first call's result.
func (s *Store) Close(ctx context.Context) error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		s.cancel()
		done := make(chan error, 1)
		go func() {
			<-s.watchDone
			<-s.flushDone
			done <- s.flushPresence(ctx)
		}()
		select {
		case err := <-done:
			s.closeErr = err
		case <-ctx.Done():
			s.closeErr = fmt.Errorf("identity: close: presence changes since the last flush not written: %w", ctx.Err())
		}
	})
	return s.closeErr
}

// check fails with ErrClosed after Close and with ctx's error when ctx is
// done.
func (s *Store) check(ctx context.Context) error {
	if s.closed.Load() {
		return ErrClosed
	}
	return ctx.Err()
}
