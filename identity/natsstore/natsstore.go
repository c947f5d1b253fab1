package natsstore

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/identity"
	"github.com/umbra-iot/umbra/internal/natskv"
)

// Default bucket names and timeout.
const (
	DefaultBucket    = "umbra_identity"
	DefaultKeyBucket = "umbra_identity_key"
	DefaultTimeout   = 5 * time.Second
)

// SchemaVersion is the version of the buckets' layout (see doc.go).
const SchemaVersion = 1

// maxAttempts bounds how often a change is read and tried again when a
// key it checked changed meanwhile (another node wrote it).
const maxAttempts = 10

// maxName is the longest name looked up: longer ones are stored by no
// one (device IDs and token names are far shorter).
const maxName = 1024

// Key prefixes in the bucket (every name, ID and fingerprint escaped by
// natskv.Token).
const (
	prefixName     = "n." // a device's or token's record: one namespace of names
	prefixDevice   = "d." // an index entry per device, for listing devices
	prefixToken    = "t." // an index entry per token, for listing tokens
	prefixCert     = "c." // a bound certificate's fingerprint → the device ID
	prefixRemoved  = "r." // a removed device → when (RFC 3339, nanoseconds)
	prefixPresence = "p." // a device's presence
	keyKeyCheck    = "m.keycheck"
	keyServerKey   = "server"
)

// Config configures Open.
type Config struct {
	// JetStream is the client the Storage talks through; the caller owns
	// its connection. Required.
	JetStream jetstream.JetStream
	// Bucket holds the records; KeyBucket the server key alone, so that a
	// copy of the records reveals nothing usable. Defaults DefaultBucket
	// and DefaultKeyBucket.
	Bucket, KeyBucket string
	// Replicas is the buckets' replica count when Open creates them.
	// Default 1.
	Replicas int
	// Timeout bounds each JetStream request. Default DefaultTimeout.
	Timeout time.Duration
	// MaxBatch is the most writes one atomic change may carry (see
	// natskv.BucketConfig.MaxBatch): a Create of more records (two writes
	// each, three with a certificate) is written in several batches and
	// undone if one fails (see Storage.Create). Default
	// natskv.DefaultMaxBatch.
	MaxBatch int
}

// Storage is an identity.Storage on two JetStream key-value buckets,
// shared by every node. It is safe for concurrent use.
type Storage struct {
	b, keys  *natskv.Bucket
	timeout  time.Duration
	maxBatch int
	closed   atomic.Bool
}

var _ identity.Storage = (*Storage)(nil)

// Open opens (creating them if missing) the identity buckets. It fails
// with an error wrapping natskv.ErrSchemaMismatch if a bucket was written
// with another layout.
func Open(ctx context.Context, cfg Config) (*Storage, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("identity/natsstore: open: %w", err)
	}
	if cfg.JetStream == nil {
		return nil, fmt.Errorf("%w: identity/natsstore: Config.JetStream is required", identity.ErrInvalidConfig)
	}
	if cfg.Bucket == "" {
		cfg.Bucket = DefaultBucket
	}
	if cfg.KeyBucket == "" {
		cfg.KeyBucket = DefaultKeyBucket
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.MaxBatch == 0 {
		cfg.MaxBatch = natskv.DefaultMaxBatch
	}
	b, err := natskv.Open(ctx, cfg.JetStream, natskv.BucketConfig{Name: cfg.Bucket, Replicas: cfg.Replicas, MaxBatch: cfg.MaxBatch,
		Schema: natskv.Schema{Kind: "identity", Version: SchemaVersion}})
	if err != nil {
		return nil, fmt.Errorf("identity/natsstore: %w", err)
	}
	keys, err := natskv.Open(ctx, cfg.JetStream, natskv.BucketConfig{Name: cfg.KeyBucket, Replicas: cfg.Replicas,
		Schema: natskv.Schema{Kind: "identity-key", Version: SchemaVersion}})
	if err != nil {
		return nil, fmt.Errorf("identity/natsstore: %w", err)
	}
	return &Storage{b: b, keys: keys, timeout: cfg.Timeout, maxBatch: cfg.MaxBatch}, nil
}

// Close marks the Storage closed: later calls fail with
// identity.ErrClosed. It leaves the connection open (the caller owns it)
// and is idempotent.
func (s *Storage) Close(context.Context) error {
	s.closed.Store(true)
	return nil
}

// start fails with identity.ErrClosed after Close and with ctx's error
// when ctx is done, and bounds ctx by the Storage's timeout.
func (s *Storage) start(ctx context.Context) (context.Context, context.CancelFunc, error) {
	if s.closed.Load() {
		return nil, nil, identity.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	return ctx, cancel, nil
}

// startList is start for a listing of the bucket, which may take ten
// times the timeout.
func (s *Storage) startList(ctx context.Context) (context.Context, context.CancelFunc, error) {
	if s.closed.Load() {
		return nil, nil, identity.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*s.timeout)
	return ctx, cancel, nil
}

// record is a device or token as stored under "n.<name>".
type record struct {
	Role       identity.Role     `json:"role"`
	MAC        []byte            `json:"mac"`
	Labels     map[string]string `json:"labels,omitempty"`
	CreatedAt  time.Time         `json:"createdAt"`
	RotatedAt  time.Time         `json:"rotatedAt,omitzero"`
	Enrolment  string            `json:"enrolment,omitempty"`
	SecretGen  string            `json:"secretGen,omitempty"`
	CertSHA256 string            `json:"certSha256,omitempty"`
}

func encode(r identity.Record) ([]byte, error) {
	return json.Marshal(record{Role: r.Role, MAC: r.MAC, Labels: r.Labels, CreatedAt: r.CreatedAt, RotatedAt: r.RotatedAt,
		Enrolment: r.Enrolment, SecretGen: r.SecretGen, CertSHA256: r.CertSHA256})
}

func decode(name string, v []byte) (identity.Record, error) {
	var r record
	if err := json.Unmarshal(v, &r); err != nil {
		return identity.Record{}, fmt.Errorf("identity/natsstore: decode %q: %w", name, err)
	}
	return identity.Record{Name: name, Role: r.Role, MAC: r.MAC, Labels: r.Labels, CreatedAt: r.CreatedAt, RotatedAt: r.RotatedAt,
		Enrolment: r.Enrolment, SecretGen: r.SecretGen, CertSHA256: r.CertSHA256}, nil
}

func nameKey(name string) string { return prefixName + natskv.Token(name) }
func indexKey(r identity.Record) string {
	if r.IsDevice() {
		return prefixDevice + natskv.Token(r.Name)
	}
	return prefixToken + natskv.Token(r.Name)
}
func certKey(fp string) string        { return prefixCert + natskv.Token(fp) }
func removedKey(id device.ID) string  { return prefixRemoved + natskv.Token(string(id)) }
func presenceKey(id device.ID) string { return prefixPresence + natskv.Token(string(id)) }
func storable(name string) bool       { return name != "" && len(name) <= maxName }

// ServerKey returns the server key from the key bucket, or an error
// wrapping identity.ErrNotFound.
func (s *Storage) ServerKey(ctx context.Context) ([]byte, error) {
	ctx, cancel, err := s.start(ctx)
	if err != nil {
		return nil, err
	}
	defer cancel()
	e, err := s.keys.Read(ctx, keyServerKey)
	switch {
	case err != nil:
		return nil, fmt.Errorf("identity/natsstore: server key: %w", err)
	case e.Rev == 0:
		return nil, fmt.Errorf("identity/natsstore: server key: %w", identity.ErrNotFound)
	case len(e.Value) != identity.KeySize:
		return nil, fmt.Errorf("%w: the key bucket holds %d bytes, want %d", identity.ErrKeyMismatch, len(e.Value), identity.KeySize)
	}
	return e.Value, nil
}

// CreateServerKey stores key unless one is stored (identity.ErrExists).
func (s *Storage) CreateServerKey(ctx context.Context, key []byte) error {
	return s.createOnce(ctx, s.keys, keyServerKey, key, "server key")
}

// KeyCheck returns the key check; nil if none.
func (s *Storage) KeyCheck(ctx context.Context) ([]byte, error) {
	ctx, cancel, err := s.start(ctx)
	if err != nil {
		return nil, err
	}
	defer cancel()
	e, err := s.b.Read(ctx, keyKeyCheck)
	if err != nil {
		return nil, fmt.Errorf("identity/natsstore: key check: %w", err)
	}
	return e.Value, nil
}

// SetKeyCheck stores check unless one is stored (identity.ErrExists).
func (s *Storage) SetKeyCheck(ctx context.Context, check []byte) error {
	return s.createOnce(ctx, s.b, keyKeyCheck, check, "key check")
}

// createOnce stores v under k in b if k has never been written.
func (s *Storage) createOnce(ctx context.Context, b *natskv.Bucket, k string, v []byte, what string) error {
	ctx, cancel, err := s.start(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	_, err = b.Apply(ctx, natskv.Op{Key: k, Value: v, Check: true})
	switch {
	case errors.Is(err, natskv.ErrConflict):
		return fmt.Errorf("identity/natsstore: %s: %w", what, identity.ErrExists)
	case err != nil:
		return fmt.Errorf("identity/natsstore: %s: %w", what, err)
	}
	return nil
}

// Get returns the device or token name.
func (s *Storage) Get(ctx context.Context, name string) (identity.Record, error) {
	ctx, cancel, err := s.start(ctx)
	if err != nil {
		return identity.Record{}, err
	}
	defer cancel()
	r, _, err := s.get(ctx, name)
	return r, err
}

// get returns name's record and the entry it was read from (Last is the
// revision a change must expect), or identity.ErrNotFound.
func (s *Storage) get(ctx context.Context, name string) (identity.Record, natskv.Entry, error) {
	if !storable(name) {
		return identity.Record{}, natskv.Entry{}, fmt.Errorf("%q: %w", name, identity.ErrNotFound)
	}
	e, err := s.b.Read(ctx, nameKey(name))
	if err != nil {
		return identity.Record{}, e, fmt.Errorf("identity/natsstore: get: %w", err)
	}
	if e.Rev == 0 {
		return identity.Record{}, e, fmt.Errorf("%q: %w", name, identity.ErrNotFound)
	}
	r, err := decode(name, e.Value)
	return r, e, err
}

// Devices returns a page of devices in ID order.
func (s *Storage) Devices(ctx context.Context, after device.ID, limit int) ([]identity.Record, error) {
	return s.page(ctx, prefixDevice, string(after), limit)
}

// Tokens returns a page of tokens in name order.
func (s *Storage) Tokens(ctx context.Context, after string, limit int) ([]identity.Record, error) {
	return s.page(ctx, prefixToken, after, limit)
}

// page lists the index under prefix, sorts the names and reads the
// records of up to limit names after after. A name whose record is gone
// meanwhile is skipped.
func (s *Storage) page(ctx context.Context, prefix, after string, limit int) ([]identity.Record, error) {
	lctx, cancel, err := s.startList(ctx)
	if err != nil {
		return nil, err
	}
	defer cancel()
	raw, err := s.b.Keys(lctx, prefix+">")
	if err != nil {
		return nil, fmt.Errorf("identity/natsstore: list: %w", err)
	}
	names := make([]string, 0, len(raw))
	for _, k := range raw {
		n, err := natskv.Untoken(strings.TrimPrefix(k, prefix))
		if err != nil {
			return nil, fmt.Errorf("identity/natsstore: list: %w", err)
		}
		if n > after {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	var out []identity.Record
	for _, n := range names {
		if len(out) == limit {
			break
		}
		rctx, cancel, err := s.start(ctx)
		if err != nil {
			return nil, err
		}
		r, _, err := s.get(rctx, n)
		cancel()
		if errors.Is(err, identity.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

// CertOwner returns the device certificate fp is bound to.
func (s *Storage) CertOwner(ctx context.Context, fp string) (device.ID, error) {
	ctx, cancel, err := s.start(ctx)
	if err != nil {
		return "", err
	}
	defer cancel()
	if !storable(fp) {
		return "", identity.ErrNotFound
	}
	e, err := s.b.Read(ctx, certKey(fp))
	if err != nil {
		return "", fmt.Errorf("identity/natsstore: certificate owner: %w", err)
	}
	if e.Rev == 0 {
		return "", fmt.Errorf("certificate %s: %w", fp, identity.ErrNotFound)
	}
	return device.ID(e.Value), nil
}

// RemovedAt returns when id was last removed; zero if never.
func (s *Storage) RemovedAt(ctx context.Context, id device.ID) (time.Time, error) {
	ctx, cancel, err := s.start(ctx)
	if err != nil {
		return time.Time{}, err
	}
	defer cancel()
	if !storable(string(id)) {
		return time.Time{}, nil
	}
	e, err := s.b.Read(ctx, removedKey(id))
	if err != nil || e.Rev == 0 {
		return time.Time{}, err
	}
	t, err := time.Parse(time.RFC3339Nano, string(e.Value))
	if err != nil {
		return time.Time{}, fmt.Errorf("identity/natsstore: removal time of %s: %w", id, err)
	}
	return t, nil
}

// Create stores recs: each name's record and index entry, each
// certificate's binding, every key checked unchanged since this call read
// it. Up to MaxBatch writes this is one atomic batch. A larger Create is
// written in atomic batches of whole records (see createChunks): if one
// fails, the batches written before it are deleted again, so the Create
// stores nothing, as the interface promises; while it runs, other readers
// may see the first batches' records. A batch refused because another
// node wrote one of its keys meanwhile is read and tried again.
func (s *Storage) Create(ctx context.Context, recs []identity.Record, dryRun bool) ([]identity.Conflict, error) {
	if s.closed.Load() {
		return nil, identity.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	names, fps := map[string]bool{}, map[string]bool{}
	for _, r := range recs {
		if names[r.Name] || r.CertSHA256 != "" && fps[r.CertSHA256] {
			return nil, fmt.Errorf("identity/natsstore: create: %q or its certificate appears twice", r.Name)
		}
		names[r.Name] = true
		if r.CertSHA256 != "" {
			fps[r.CertSHA256] = true
		}
	}
	for attempt := range maxAttempts {
		if err := natskv.Backoff(ctx, attempt); err != nil {
			return nil, err
		}
		conflicts, ops, err := s.plan(ctx, recs, dryRun)
		if err != nil || len(conflicts) > 0 || dryRun {
			return conflicts, err
		}
		err = s.createChunks(ctx, ops)
		if !errors.Is(err, natskv.ErrConflict) {
			if err != nil {
				return nil, fmt.Errorf("identity/natsstore: create: %w", err)
			}
			return nil, nil
		}
	}
	return nil, fmt.Errorf("identity/natsstore: create: names kept changing: %w", identity.ErrConflict)
}

// plan reads what Create needs and returns its conflicts or, if none and
// it is no dry run, its writes.
func (s *Storage) plan(ctx context.Context, recs []identity.Record, dryRun bool) ([]identity.Conflict, [][]natskv.Op, error) {
	var conflicts []identity.Conflict
	var ops [][]natskv.Op // the writes of each record
	for i, r := range recs {
		rctx, cancel, err := s.start(ctx)
		if err != nil {
			return nil, nil, err
		}
		c := identity.Conflict{Index: i}
		taken, ne, err := s.get(rctx, r.Name)
		switch {
		case err == nil:
			c.Taken = taken.Role
		case !errors.Is(err, identity.ErrNotFound):
			cancel()
			return nil, nil, err
		}
		var ce natskv.Entry
		if r.IsDevice() && r.CertSHA256 != "" && storable(r.CertSHA256) {
			if ce, err = s.b.Read(rctx, certKey(r.CertSHA256)); err != nil {
				cancel()
				return nil, nil, fmt.Errorf("identity/natsstore: create: %w", err)
			}
			if ce.Rev != 0 {
				c.BoundTo = device.ID(ce.Value)
			}
		}
		cancel()
		if c.Taken != "" || c.BoundTo != "" {
			conflicts = append(conflicts, c)
			continue
		}
		if dryRun {
			continue
		}
		if !storable(r.Name) {
			return nil, nil, fmt.Errorf("identity/natsstore: create: name %.40q cannot be stored", r.Name)
		}
		v, err := encode(r)
		if err != nil {
			return nil, nil, err
		}
		w := []natskv.Op{
			{Key: nameKey(r.Name), Value: v, Check: true, Expect: ne.Last},
			{Key: indexKey(r), Value: []byte{}},
		}
		if r.IsDevice() && r.CertSHA256 != "" {
			w = append(w, natskv.Op{Key: certKey(r.CertSHA256), Value: []byte(r.Name), Check: true, Expect: ce.Last})
		}
		if len(w) > s.maxBatch {
			return nil, nil, fmt.Errorf("identity/natsstore: create: %d writes per record, MaxBatch is %d", len(w), s.maxBatch)
		}
		ops = append(ops, w)
	}
	if len(conflicts) > 0 {
		return conflicts, nil, nil
	}
	return nil, ops, nil
}

// createChunks applies the records' writes (one group per record) in
// atomic batches of at most MaxBatch writes, whole records each. When a
// batch fails, the batches applied before it are deleted again (undo) and
// its error is returned: the Create stored nothing. If the undo fails too
// (NATS lost meanwhile), the error says how many records remain.
func (s *Storage) createChunks(ctx context.Context, records [][]natskv.Op) error {
	var done [][]natskv.Op // the batches applied, each op's Expect the revision it wrote
	var batch []natskv.Op
	flush := func() error {
		actx, cancel, err := s.start(ctx)
		if err != nil {
			return err
		}
		last, err := s.b.Apply(actx, batch...)
		cancel()
		if err != nil {
			return err
		}
		// An atomic batch is stored as consecutive messages of the
		// stream: op i of n has revision last-(n-1-i).
		undo := make([]natskv.Op, len(batch))
		for i, op := range batch {
			undo[i] = natskv.Op{Key: op.Key, Value: op.Value, Delete: true, Check: true, Expect: last - uint64(len(batch)-1-i)}
		}
		done = append(done, undo)
		batch = nil
		return nil
	}
	var err error
	for _, w := range records {
		if len(batch)+len(w) > s.maxBatch {
			if err = flush(); err != nil {
				break
			}
		}
		batch = append(batch, w...)
	}
	if err == nil {
		err = flush()
	}
	if err == nil || len(done) == 0 {
		return err
	}
	if uerr := s.undo(ctx, done); uerr != nil {
		return fmt.Errorf("%w; the %d batches already written could not all be removed: %w", err, len(done), uerr)
	}
	return err
}

// undo deletes the writes of the batches a failed Create applied, newest
// first, each key only if it still holds the revision written. It runs on
// even if ctx is cancelled (each request bounded by the timeout). A batch
// refused because another node changed one of its keys since is undone
// key by key, leaving the changed keys (someone else's now).
func (s *Storage) undo(ctx context.Context, done [][]natskv.Op) error {
	ctx = context.WithoutCancel(ctx)
	for _, batch := range slices.Backward(done) {
		actx, cancel, err := s.start(ctx)
		if err != nil {
			return err
		}
		_, err = s.b.Apply(actx, batch...)
		cancel()
		if err == nil {
			continue
		}
		if !errors.Is(err, natskv.ErrConflict) {
			return err
		}
		for _, op := range batch {
			if err := s.undoKey(ctx, op); err != nil {
				return err
			}
		}
	}
	return nil
}

// undoKey deletes op.Key if it still holds op.Value (the value this
// Create wrote), checked against the revision read.
func (s *Storage) undoKey(ctx context.Context, op natskv.Op) error {
	actx, cancel, err := s.start(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	e, err := s.b.Read(actx, op.Key)
	if err != nil || e.Rev == 0 || !bytes.Equal(e.Value, op.Value) {
		return err
	}
	_, err = s.b.Apply(actx, natskv.Op{Key: op.Key, Delete: true, Check: true, Expect: e.Last})
	if errors.Is(err, natskv.ErrConflict) {
		return nil // changed meanwhile: not ours any more
	}
	return err
}

// Replace stores next in place of prev.Name when the stored record is of
// prev's kind and has prev's generations, checked against the revision
// it was read at.
func (s *Storage) Replace(ctx context.Context, prev, next identity.Record) error {
	ctx, cancel, err := s.start(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	cur, e, err := s.get(ctx, prev.Name)
	if err != nil {
		return err
	}
	switch {
	case cur.IsDevice() != prev.IsDevice():
		return fmt.Errorf("%q is not a %s: %w", prev.Name, kind(prev), identity.ErrNotFound)
	case cur.SecretGen != prev.SecretGen || cur.Enrolment != prev.Enrolment:
		return fmt.Errorf("%q: %w", prev.Name, identity.ErrConflict)
	case next.Name != prev.Name || next.IsDevice() != prev.IsDevice():
		return fmt.Errorf("identity/natsstore: replace %q: the name and kind cannot change", prev.Name)
	case next.CertSHA256 != cur.CertSHA256:
		return fmt.Errorf("identity/natsstore: replace %q: the certificate binding cannot change", prev.Name)
	}
	v, err := encode(next)
	if err != nil {
		return err
	}
	_, err = s.b.Apply(ctx, natskv.Op{Key: nameKey(prev.Name), Value: v, Check: true, Expect: e.Last})
	switch {
	case errors.Is(err, natskv.ErrConflict):
		return fmt.Errorf("%q: %w", prev.Name, identity.ErrConflict)
	case err != nil:
		return fmt.Errorf("identity/natsstore: replace: %w", err)
	}
	return nil
}

func kind(r identity.Record) string {
	if r.IsDevice() {
		return "device"
	}
	return "token"
}

// RemoveDevice deletes device id, its index entry, its certificate
// binding and its presence, and records at, in one atomic batch checked
// against the record's revision.
func (s *Storage) RemoveDevice(ctx context.Context, id device.ID, at time.Time) (identity.Record, error) {
	return s.remove(ctx, string(id), true, func(r identity.Record) []natskv.Op {
		ops := []natskv.Op{
			{Key: presenceKey(id), Delete: true},
			{Key: removedKey(id), Value: []byte(at.Format(time.RFC3339Nano))},
		}
		if r.CertSHA256 != "" {
			ops = append(ops, natskv.Op{Key: certKey(r.CertSHA256), Delete: true})
		}
		return ops
	})
}

// DeleteToken deletes token name and its index entry.
func (s *Storage) DeleteToken(ctx context.Context, name string) (identity.Record, error) {
	return s.remove(ctx, name, false, func(identity.Record) []natskv.Op { return nil })
}

// remove deletes the device (or token) name with the writes more returns,
// retrying when another node changed it meanwhile.
func (s *Storage) remove(ctx context.Context, name string, isDevice bool, more func(identity.Record) []natskv.Op) (identity.Record, error) {
	for attempt := range maxAttempts {
		if err := natskv.Backoff(ctx, attempt); err != nil {
			return identity.Record{}, err
		}
		actx, cancel, err := s.start(ctx)
		if err != nil {
			return identity.Record{}, err
		}
		r, e, err := s.get(actx, name)
		if err == nil && r.IsDevice() != isDevice {
			err = fmt.Errorf("%q: %w", name, identity.ErrNotFound)
		}
		if err != nil {
			cancel()
			return identity.Record{}, err
		}
		ops := append([]natskv.Op{
			{Key: nameKey(name), Delete: true, Check: true, Expect: e.Last},
			{Key: indexKey(r), Delete: true},
		}, more(r)...)
		_, err = s.b.Apply(actx, ops...)
		cancel()
		if err == nil {
			return r, nil
		}
		if !errors.Is(err, natskv.ErrConflict) {
			return identity.Record{}, fmt.Errorf("identity/natsstore: remove %q: %w", name, err)
		}
	}
	return identity.Record{}, fmt.Errorf("identity/natsstore: remove %q: it kept changing: %w", name, identity.ErrConflict)
}

// Presence returns every stored presence, read in one pass.
func (s *Storage) Presence(ctx context.Context) (map[device.ID]identity.Presence, error) {
	lctx, cancel, err := s.startList(ctx)
	if err != nil {
		return nil, err
	}
	defer cancel()
	vals, err := s.b.Values(lctx, prefixPresence+">")
	if err != nil {
		return nil, fmt.Errorf("identity/natsstore: presence: %w", err)
	}
	out := make(map[device.ID]identity.Presence, len(vals))
	for k, v := range vals {
		id, err := natskv.Untoken(strings.TrimPrefix(k, prefixPresence))
		if err != nil {
			return nil, fmt.Errorf("identity/natsstore: presence: %w", err)
		}
		var p identity.Presence
		if err := json.Unmarshal(v, &p); err != nil {
			return nil, fmt.Errorf("identity/natsstore: presence of %s: %w", id, err)
		}
		out[device.ID(id)] = p
	}
	return out, nil
}

// SavePresence stores batch in atomic batches of at most MaxBatch
// presences (one batch when it fits). With enrolledOnly each presence is
// checked, in its batch, against the revision of its device's record, so
// a presence is never stored for a device removed meanwhile; IDs that are
// no device are left out.
func (s *Storage) SavePresence(ctx context.Context, batch map[device.ID]identity.Presence, enrolledOnly bool) error {
	if s.closed.Load() {
		return identity.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	ids := slices.Sorted(maps.Keys(batch))
	for chunk := range slices.Chunk(ids, s.maxBatch) {
		if err := s.savePresence(ctx, batch, chunk, enrolledOnly); err != nil {
			return err
		}
	}
	return nil
}

// readDevice is get with a Timeout of its own.
func (s *Storage) readDevice(ctx context.Context, id device.ID) (identity.Record, natskv.Entry, error) {
	rctx, cancel, err := s.start(ctx)
	if err != nil {
		return identity.Record{}, natskv.Entry{}, err
	}
	defer cancel()
	return s.get(rctx, string(id))
}

func (s *Storage) savePresence(ctx context.Context, batch map[device.ID]identity.Presence, ids []device.ID, enrolledOnly bool) error {
	for attempt := range maxAttempts {
		if err := natskv.Backoff(ctx, attempt); err != nil {
			return err
		}
		var ops []natskv.Op
		for _, id := range ids {
			if !storable(string(id)) {
				continue
			}
			v, err := json.Marshal(batch[id])
			if err != nil {
				return err
			}
			op := natskv.Op{Key: presenceKey(id), Value: v}
			if enrolledOnly {
				r, e, err := s.readDevice(ctx, id)
				if errors.Is(err, identity.ErrNotFound) || err == nil && !r.IsDevice() {
					continue
				}
				if err != nil {
					return err
				}
				op.Check, op.CheckKey, op.Expect = true, nameKey(string(id)), e.Last
			}
			ops = append(ops, op)
		}
		actx, cancel, err := s.start(ctx) // Timeout bounds each request: the reads had theirs
		if err != nil {
			return err
		}
		_, err = s.b.Apply(actx, ops...)
		cancel()
		if err == nil {
			return nil
		}
		if !errors.Is(err, natskv.ErrConflict) {
			return fmt.Errorf("identity/natsstore: save presence: %w", err)
		}
	}
	return fmt.Errorf("identity/natsstore: save presence: devices kept changing: %w", identity.ErrConflict)
}

var _ identity.NameWatcher = (*Storage)(nil)

// WatchNames reports the name of every device or token whose record any
// node changes from now on (a watch of the bucket's "n." keys), until ctx
// ends or the watch fails; then it closes the channel.
func (s *Storage) WatchNames(ctx context.Context) (<-chan string, error) {
	if s.closed.Load() {
		return nil, identity.ErrClosed
	}
	out, err := natskv.WatchKeys(ctx, s.b, prefixName+">", 64, func(key string) (string, bool) {
		name, err := natskv.Untoken(strings.TrimPrefix(key, prefixName))
		return name, err == nil
	})
	if err != nil {
		return nil, fmt.Errorf("identity/natsstore: watch: %w", err)
	}
	return out, nil
}
