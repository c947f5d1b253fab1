package firmware

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/umbra-iot/umbra/device"
)

// Defaults for Config's zero values, and limits.
const (
	DefaultMaxImageSize = 512 << 20
	DefaultURLTTL       = time.Hour
	// MaxURLTTL is the longest lifetime a download URL can have; longer
	// requests are clamped to it.
	MaxURLTTL = 7 * 24 * time.Hour
	// MinURLSecret is the shortest accepted Config.URLSecret, in bytes.
	MinURLSecret = 16

	maxHWLen    = 64
	maxNotesLen = 4 << 10
	urlKeyLen   = 32
	copyBufSize = 256 << 10
)

// File and directory names under Config.Dir (the Catalog's firmware.db is
// firmware/boltstore's).
const (
	blobsDir    = "blobs"
	tmpDir      = "tmp"
	signingFile = "signing.key"
	urlKeyFile  = "url.key"
)

// Log attribute keys.
const (
	logKeyComponent = "component"
	logKeyVersion   = "version"
	logKeySHA256    = "sha256"
	logKeyDevice    = "device"
	logKeyReason    = "reason"
	logKeyErr       = "err"
)

// Config configures a Store. Zero values mean the documented defaults.
type Config struct {
	// Dir holds the image bytes, blobs/<sha256> (unless Blobs is set), and uploads in progress,
	// tmp/, and, unless configured otherwise, signing.key and url.key (and,
	// by convention, the bbolt Catalog's firmware.db). Required; created
	// 0750 if missing.
	Dir string
	// Blobs holds the image bytes (see Blobs). Nil means files under Dir,
	// blobs/<sha256>; cluster mode passes firmware/natsstore's object
	// store. The Store does not close it.
	Blobs Blobs
	// Catalog holds the image records (see Catalog; firmware/boltstore
	// opens firmware.db). Required. The Store never closes it: whoever
	// opened it closes it after Close (or after an Open that failed).
	Catalog Catalog
	// MaxImageSize caps an upload in bytes. Default DefaultMaxImageSize.
	MaxImageSize int64
	// SigningKeyPath is the fleet's ed25519 signing key (PEM, PKCS#8
	// "PRIVATE KEY"). Empty means <Dir>/signing.key, created 0600 on first
	// Open. A path given here must exist.
	SigningKeyPath string
	// URLSecret is the HMAC key for download URLs, at least MinURLSecret
	// bytes. Nil means <Dir>/url.key (hex), created 0600 on first Open.
	URLSecret []byte
	// URLTTL is the default lifetime of a download URL. Default
	// DefaultURLTTL, at most MaxURLTTL.
	URLTTL time.Duration
	// BaseURL prefixes minted URLs: BaseURL + "/fw/<sha256>?d=&g=&e=&s=", e.g.
	// "http://127.0.0.1:8080". It must be an absolute http or https URL
	// without query or fragment; a path prefix is allowed (mount the handler
	// under it with http.StripPrefix). Empty means URLs are relative
	// ("/fw/…").
	BaseURL string
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// InUse guards Delete: it reports whether a rollout still uses v and
	// which. Nil means a version is never in use.
	InUse func(ctx context.Context, v Version) (rolloutID string, inUse bool, err error)
	// DeviceAuth, when set, is consulted for every download whose signed URL
	// is valid; it receives the request and the device the URL was minted
	// for and returns false to refuse (403). Nil means the signed URL alone
	// grants access. This is the hook for "device credentials additionally
	// required".
	DeviceAuth func(r *http.Request, id device.ID) bool
	// Enrolment, when set, returns the current enrolment generation of
	// device id, "" if id is not enrolled (identity.Store.Enrolment). URL
	// signs it into the URL, and a download whose generation is no longer
	// current gets 410: removing a device (and enrolling it again) revokes
	// every URL minted for it. A URL minted while the device was not
	// enrolled is bound to no enrolment. It is called for every mint and
	// download and must be cheap. Nil means URLs are bound to no
	// enrolment.
	Enrolment func(id device.ID) string
	// Logger receives the store's logs; nil discards them.
	Logger *slog.Logger
}

func (c *Config) setDefaults() error {
	if c.Dir == "" {
		return fmt.Errorf("%w: Config.Dir is required", ErrInvalid)
	}
	if c.Catalog == nil {
		return fmt.Errorf("%w: Config.Catalog is required", ErrInvalid)
	}
	if c.MaxImageSize == 0 {
		c.MaxImageSize = DefaultMaxImageSize
	}
	if c.MaxImageSize < 0 {
		return fmt.Errorf("%w: Config.MaxImageSize %d is negative", ErrInvalid, c.MaxImageSize)
	}
	if c.URLTTL == 0 {
		c.URLTTL = DefaultURLTTL
	}
	if c.URLTTL < time.Second || c.URLTTL > MaxURLTTL {
		return fmt.Errorf("%w: Config.URLTTL %s not in [1s, %s]", ErrInvalid, c.URLTTL, MaxURLTTL)
	}
	if c.URLSecret != nil && len(c.URLSecret) < MinURLSecret {
		return fmt.Errorf("%w: Config.URLSecret is %d bytes, at least %d required", ErrInvalid, len(c.URLSecret), MinURLSecret)
	}
	if c.BaseURL != "" {
		u, err := url.Parse(c.BaseURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" ||
			u.RawQuery != "" || u.Fragment != "" || u.User != nil {
			return fmt.Errorf("%w: Config.BaseURL %q is not an absolute http(s) URL without query", ErrInvalid, c.BaseURL)
		}
		c.BaseURL = strings.TrimRight(c.BaseURL, "/")
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Image is one stored firmware version. Its JSON form is what the HTTP API
// returns.
type Image struct {
	Version   Version   `json:"version"`
	HW        string    `json:"hw"` // hardware model; empty = any
	Size      int64     `json:"size"`
	SHA256    string    `json:"sha256"` // 64 lowercase hex
	Notes     string    `json:"notes,omitempty"`
	Created   time.Time `json:"created"`
	Signature []byte    `json:"signature"` // ed25519 over Manifest().Bytes(); base64 in JSON
}

// Manifest returns the signed manifest of img.
func (img Image) Manifest() Manifest {
	return Manifest{Version: string(img.Version), HW: img.HW, Size: img.Size, SHA256: img.SHA256}
}

// UploadRequest describes an image being uploaded.
type UploadRequest struct {
	Version string // semantic version, see ParseVersion; required
	HW      string // hardware model, [A-Za-z0-9_.:+-]{0,64}; empty = any
	Notes   string // free text, valid UTF-8, at most 4 KiB
	SHA256  string // optional: when set, the upload fails unless the bytes hash to it
}

type validUpload struct {
	version Version
	hw      string
	notes   string
	sha256  string
}

func (req UploadRequest) validate() (validUpload, error) {
	v, err := ParseVersion(req.Version)
	if err != nil {
		return validUpload{}, err
	}
	if len(req.HW) > maxHWLen || !allBytes(req.HW, hwByte) {
		return validUpload{}, fmt.Errorf("%w: hw %q must be at most %d bytes of [A-Za-z0-9_.:+-]", ErrInvalid, req.HW, maxHWLen)
	}
	if len(req.Notes) > maxNotesLen || !utf8.ValidString(req.Notes) ||
		strings.ContainsFunc(req.Notes, func(r rune) bool { return r < 0x20 && r != '\n' && r != '\t' || r == 0x7f }) {
		return validUpload{}, fmt.Errorf("%w: notes must be at most %d bytes of printable UTF-8", ErrInvalid, maxNotesLen)
	}
	sum := strings.ToLower(req.SHA256)
	if sum != "" && !isSHA256(sum) {
		return validUpload{}, fmt.Errorf("%w: sha256 %q is not 64 hex digits", ErrInvalid, req.SHA256)
	}
	return validUpload{version: v, hw: req.HW, notes: req.Notes, sha256: sum}, nil
}

func hwByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
		c == '_' || c == '.' || c == ':' || c == '+' || c == '-'
}

func lowerHexByte(c byte) bool { return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' }

func allBytes(s string, ok func(byte) bool) bool {
	for i := 0; i < len(s); i++ {
		if !ok(s[i]) {
			return false
		}
	}
	return true
}

// isSHA256 reports whether s is 64 lowercase hex digits, the only form a
// blob name or URL path segment may take.
func isSHA256(s string) bool { return len(s) == 2*sha256.Size && allBytes(s, lowerHexByte) }

// Store keeps firmware images, signs their manifests and serves them to
// devices through signed URLs. It is safe for concurrent use.
type Store struct {
	cfg     Config
	log     *slog.Logger
	catalog Catalog
	blobs   Blobs
	uploads *uploads
	priv    ed25519.PrivateKey
	pub     ed25519.PublicKey
	urlKey  []byte

	// ctx is cancelled by Close to abort uploads in progress.
	ctx    context.Context
	cancel context.CancelFunc

	mu     sync.Mutex // guards closed and the Add side of ops
	closed bool
	ops    sync.WaitGroup // Upload/Delete/List/Get calls in progress

	// blobMu serialises the publish step of Upload (link blob, commit
	// metadata) with the unpublish step of Delete (remove metadata, remove
	// an unreferenced blob), so a blob is never removed while another
	// version starts to reference it. It is never held while streaming.
	blobMu sync.Mutex

	closeOnce sync.Once
	closeErr  error

	bytesServed atomic.Int64
	downloads   atomic.Int64
	denied      atomic.Int64
}

// Open opens (creating if needed) the store in cfg.Dir on cfg.Catalog,
// which stays the caller's to close. It loads or creates the signing and URL keys, removes temp
// files left by an interrupted upload and blobs no version references (a
// crash between the blob rename and the metadata commit), and re-signs
// manifests whose signature does not verify with the current key (after
// a key change). It returns ctx's error (wrapped) if ctx ends first.
func Open(ctx context.Context, cfg Config) (_ *Store, err error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("firmware: open: %w", err)
	}
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	s := &Store{
		cfg:     cfg,
		log:     cfg.Logger.With(logKeyComponent, "firmware"),
		catalog: cfg.Catalog,
	}
	if s.uploads, err = openUploads(cfg.Dir); err != nil {
		return nil, fmt.Errorf("firmware: open: %w", err)
	}
	if s.blobs = cfg.Blobs; s.blobs == nil {
		if s.blobs, err = openFileBlobs(cfg.Dir); err != nil {
			return nil, fmt.Errorf("firmware: open: %w", err)
		}
	}
	if err := s.init(ctx); err != nil {
		return nil, fmt.Errorf("firmware: open: %w", err)
	}
	s.ctx, s.cancel = context.WithCancel(context.WithoutCancel(ctx))
	return s, nil
}

func (s *Store) init(ctx context.Context) error {
	keyPath, create := s.cfg.SigningKeyPath, false
	if keyPath == "" {
		keyPath, create = filepath.Join(s.cfg.Dir, signingFile), true
	}
	priv, created, err := loadOrCreateSigningKey(keyPath, create)
	if err != nil {
		return err
	}
	if created {
		s.log.Info("created fleet signing key", "path", keyPath)
	} else if st, err := os.Stat(keyPath); err == nil && st.Mode().Perm()&0o077 != 0 {
		s.log.Warn("signing key is readable by group or others", "path", keyPath, "mode", st.Mode().Perm().String())
	}
	s.priv, s.pub = priv, priv.Public().(ed25519.PublicKey)
	if s.urlKey = s.cfg.URLSecret; s.urlKey == nil {
		if s.urlKey, err = loadOrCreateURLKey(filepath.Join(s.cfg.Dir, urlKeyFile)); err != nil {
			return err
		}
	}
	if n, err := s.uploads.cleanTmp(); err != nil {
		return err
	} else if n > 0 {
		s.log.Info("removed interrupted uploads", "count", n)
	}
	if err := s.resign(ctx); err != nil {
		return err
	}
	refs, err := s.referenced(ctx)
	if err != nil {
		return err
	}
	if n, err := s.collect(ctx, refs); err != nil {
		return err
	} else if n > 0 {
		s.log.Info("removed unreferenced blobs", "count", n)
	}
	return nil
}

func loadOrCreateURLKey(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		k, err := hex.DecodeString(string(bytes.TrimSpace(b)))
		if err != nil || len(k) < MinURLSecret {
			return nil, fmt.Errorf("url key %s: want at least %d hex-encoded bytes", path, MinURLSecret)
		}
		return k, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("read url key: %w", err)
	}
	k := make([]byte, urlKeyLen)
	rand.Read(k)
	if err := writeFileAtomic(path, []byte(hex.EncodeToString(k)+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("write url key: %w", err)
	}
	return k, nil
}

// resign re-signs every manifest whose signature does not verify with the
// current key, so Image.Signature always verifies with PublicKey.
func (s *Store) resign(ctx context.Context) error {
	imgs, err := s.catalog.List(ctx)
	if err != nil {
		return err
	}
	var fix []Image
	for _, img := range imgs {
		if Verify(s.pub, img.Manifest(), img.Signature) != nil {
			img.Signature = ed25519.Sign(s.priv, img.Manifest().Bytes())
			fix = append(fix, img)
		}
	}
	if len(fix) == 0 {
		return nil
	}
	if err := s.catalog.Replace(ctx, fix...); err != nil {
		return err
	}
	s.log.Warn("re-signed manifests with the current signing key; devices must pin the new public key", "count", len(fix))
	return nil
}

// collect removes the blobs refs does not name and returns how many.
func (s *Store) collect(ctx context.Context, refs map[string]bool) (int, error) {
	sums, err := s.blobs.List(ctx)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, sum := range sums {
		if refs[sum] {
			continue
		}
		if err := s.blobs.Remove(ctx, sum); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

// referenced returns the set of blobs some version references.
func (s *Store) referenced(ctx context.Context) (map[string]bool, error) {
	imgs, err := s.catalog.List(ctx)
	if err != nil {
		return nil, err
	}
	refs := make(map[string]bool, len(imgs))
	for _, img := range imgs {
		refs[img.SHA256] = true
	}
	return refs, nil
}

// Close aborts uploads in progress and waits (bounded by ctx) for calls
// in progress; it does not close the Catalog. When ctx ends first it
// returns an error wrapping ctx's error; the calls still in progress then
// fail with ErrClosed at their next use of the Catalog, which the caller
// closes next. It is idempotent; later
// calls return the first call's result. Downloads already being served
// finish from their open file; new ones get 503.
func (s *Store) Close(ctx context.Context) error {
	s.closeOnce.Do(func() {
		s.cancel() // before closed is set: once calls fail, uploads are already aborting
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		done := make(chan struct{})
		go func() { s.ops.Wait(); close(done) }()
		var waitErr error
		select {
		case <-done:
		case <-ctx.Done():
			waitErr = fmt.Errorf("firmware: close: calls still in progress: %w", ctx.Err())
		}
		s.closeErr = waitErr
	})
	return s.closeErr
}

// begin registers a call in progress; it fails with ErrClosed after Close.
// The caller must call s.ops.Done.
func (s *Store) begin() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	s.ops.Add(1)
	return nil
}

func (s *Store) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// PublicKey returns the fleet's ed25519 public key, which verifies every
// Image.Signature and Command.Signature.
func (s *Store) PublicKey() ed25519.PublicKey { return slices.Clone(s.pub) }

// MaxImageSize returns the configured upload limit in bytes, so an HTTP edge
// can refuse an oversized Content-Length before reading the body.
func (s *Store) MaxImageSize() int64 { return s.cfg.MaxImageSize }

// Upload streams an image from r into the store: into a temp file in tmp/,
// hashing while writing, up to MaxImageSize bytes; then fsync, rename to
// blobs/<sha256> (kept as is if those bytes are already stored under another
// version), fsync the directory, sign the manifest and commit the metadata.
// Until that commit nothing of the upload is visible, and a failure at any
// step leaves no file behind.
//
// Errors wrap ErrInvalid or ErrInvalidVersion (bad request fields, empty
// image), ErrExists (the version is taken), ErrTooLarge, ErrChecksumMismatch
// (req.SHA256 given and different), ErrClosed, the context's error or the
// reader's error.
func (s *Store) Upload(ctx context.Context, req UploadRequest, r io.Reader) (Image, error) {
	u, err := req.validate()
	if err != nil {
		return Image{}, fmt.Errorf("upload: %w", err)
	}
	if err := s.begin(); err != nil {
		return Image{}, fmt.Errorf("upload %s: %w", u.version, err)
	}
	defer s.ops.Done()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(s.ctx, cancel)()

	// Fail fast on a duplicate before reading the body; checked again at
	// commit.
	if _, err := s.catalog.Get(ctx, u.version); err == nil {
		return Image{}, fmt.Errorf("upload %s: %w", u.version, ErrExists)
	} else if !errors.Is(err, ErrNotFound) {
		return Image{}, fmt.Errorf("upload %s: %w", u.version, err)
	}
	tmp, size, sum, err := s.uploads.receive(ctx, r, s.cfg.MaxImageSize)
	if err != nil {
		if s.ctx.Err() != nil {
			err = ErrClosed
		}
		return Image{}, fmt.Errorf("upload %s: %w", u.version, err)
	}
	defer os.Remove(tmp) // no-op once renamed
	if u.sha256 != "" && u.sha256 != sum {
		return Image{}, fmt.Errorf("upload %s: got sha256 %s, uploader said %s: %w", u.version, sum, u.sha256, ErrChecksumMismatch)
	}
	img := Image{
		Version: u.version,
		HW:      u.hw,
		Size:    size,
		SHA256:  sum,
		Notes:   u.notes,
		Created: s.cfg.Now().UTC().Truncate(time.Millisecond),
	}
	img.Signature = ed25519.Sign(s.priv, img.Manifest().Bytes())
	if err := s.publish(ctx, tmp, img); err != nil {
		if s.ctx.Err() != nil && !errors.Is(err, ErrExists) {
			err = ErrClosed
		}
		return Image{}, fmt.Errorf("upload %s: %w", u.version, err)
	}
	s.log.Info("firmware uploaded", logKeyVersion, img.Version, "hw", img.HW, "size", img.Size, logKeySHA256, img.SHA256)
	return img, nil
}

// publish links the received temp file as the image's blob and commits its
// record.
func (s *Store) publish(ctx context.Context, tmp string, img Image) error {
	s.blobMu.Lock()
	defer s.blobMu.Unlock()
	if _, err := s.catalog.Get(ctx, img.Version); err == nil {
		return ErrExists
	} else if !errors.Is(err, ErrNotFound) {
		return err
	}
	linked, err := s.blobs.Put(ctx, img.SHA256, tmp, img.Size)
	if err != nil {
		return err
	}
	err = s.catalog.Create(ctx, img)
	if err != nil && linked {
		// Nothing references the blob unless another version has the
		// same bytes; Open collects it if this check fails.
		if refs, rerr := s.referenced(context.WithoutCancel(ctx)); rerr == nil && !refs[img.SHA256] {
			s.blobs.Remove(context.WithoutCancel(ctx), img.SHA256)
		}
	}
	return err
}

// List returns every stored image, lowest version first.
func (s *Store) List(ctx context.Context) ([]Image, error) {
	if err := s.begin(); err != nil {
		return nil, fmt.Errorf("list: %w", err)
	}
	defer s.ops.Done()
	imgs, err := s.catalog.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("list: %w", err)
	}
	slices.SortFunc(imgs, func(a, b Image) int { return a.Version.Compare(b.Version) })
	return imgs, nil
}

// Get returns the image stored as v. The error wraps ErrNotFound if there is
// none.
func (s *Store) Get(ctx context.Context, v Version) (Image, error) {
	if err := s.begin(); err != nil {
		return Image{}, fmt.Errorf("get %s: %w", v, err)
	}
	defer s.ops.Done()
	img, err := s.catalog.Get(ctx, v)
	if err != nil {
		return Image{}, fmt.Errorf("get %s: %w", v, err)
	}
	return img, nil
}

// CheckDeletable reports what Delete would refuse before removing anything:
// an error wrapping ErrNotFound for an unknown version, or an *InUseError
// while a rollout uses v (Config.InUse). A caller with checks of its own
// (the HTTP API's desired-state check, which ?force=true overrides) asks
// this first, so that the refusal no flag overrides is the one reported.
func (s *Store) CheckDeletable(ctx context.Context, v Version) error {
	if err := s.begin(); err != nil {
		return fmt.Errorf("delete %s: %w", v, err)
	}
	defer s.ops.Done()
	return s.checkDeletable(ctx, v)
}

func (s *Store) checkDeletable(ctx context.Context, v Version) error {
	if _, err := s.catalog.Get(ctx, v); err != nil {
		return fmt.Errorf("delete %s: %w", v, err)
	}
	if s.cfg.InUse != nil {
		rollout, used, err := s.cfg.InUse(ctx, v)
		if err != nil {
			return fmt.Errorf("delete %s: check rollouts: %w", v, err)
		}
		if used {
			return &InUseError{Version: v, Rollout: rollout}
		}
	}
	return nil
}

// Delete removes version v, and its blob when no other version has the same
// bytes. It asks Config.InUse first and refuses with an *InUseError (wrapping
// ErrInUse, naming the rollout) while a rollout uses v. Other errors wrap
// ErrNotFound, ErrClosed or InUse's error. A rollout created between the
// InUse check and the removal is not detected here: rollout creation must
// itself check that the version exists.
func (s *Store) Delete(ctx context.Context, v Version) error {
	if err := s.begin(); err != nil {
		return fmt.Errorf("delete %s: %w", v, err)
	}
	defer s.ops.Done()
	if err := s.checkDeletable(ctx, v); err != nil {
		return err
	}
	s.blobMu.Lock()
	defer s.blobMu.Unlock()
	img, err := s.catalog.Delete(ctx, v)
	if err != nil {
		return fmt.Errorf("delete %s: %w", v, err)
	}
	// The version is gone. Its blob goes too unless another version has
	// the same bytes; if this check fails the blob stays, and the next
	// Open collects it.
	sum, shared := img.SHA256, true
	if refs, err := s.referenced(context.WithoutCancel(ctx)); err != nil {
		s.log.Warn("check blob references", logKeySHA256, sum, logKeyErr, err)
	} else {
		shared = refs[sum]
	}
	if !shared {
		if err := s.blobs.Remove(context.WithoutCancel(ctx), sum); err != nil {
			s.log.Warn("remove blob", logKeySHA256, sum, logKeyErr, err)
		}
	}
	s.log.Info("firmware deleted", logKeyVersion, v, logKeySHA256, sum, "blob_kept", shared)
	return nil
}
