package natsstore

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/internal/natskv"
	"github.com/umbra-iot/umbra/shadow"
)

// DefaultBucket is the bucket's name when Config.Bucket is empty.
const DefaultBucket = "umbra_shadow"

// DefaultTimeout bounds one JetStream request when Config.Timeout is zero.
const DefaultTimeout = 5 * time.Second

// SchemaVersion is the version of the bucket's layout (see doc.go),
// checked by Open against the bucket's schema record.
const SchemaVersion = 1

// Key prefixes: "c.<id>" for a classic shadow, "n.<id>.<name>" for a named
// one, each part escaped by natskv.Token.
const (
	prefixClassic = "c."
	prefixNamed   = "n."
)

// Config configures Open.
type Config struct {
	// JetStream is the client the Store talks through; the caller owns
	// its connection (several stores share one). Required.
	JetStream jetstream.JetStream
	// Bucket is the key-value bucket's name. Default DefaultBucket.
	Bucket string
	// Replicas is the bucket's replica count when Open creates it: 1 for
	// a single server, 3 for a three-server cluster. Default 1.
	Replicas int
	// Timeout bounds each JetStream request. Default DefaultTimeout.
	Timeout time.Duration
}

// Store is a shadow.Store in a JetStream key-value bucket. It is safe for
// concurrent use, by any number of Stores on any number of nodes on the
// same bucket.
type Store struct {
	kv      jetstream.KeyValue
	timeout time.Duration

	mu       sync.Mutex     // guards closed and the Add of inflight
	closed   bool           // Close was called: Commit refuses
	inflight sync.WaitGroup // Commits handed over to JetStream

	commits, writes atomic.Uint64
	commitNanos     atomic.Int64
}

var _ shadow.Store = (*Store)(nil)

// Open opens (creating it if missing) the shadow bucket. It fails with an
// error wrapping natskv.ErrSchemaMismatch if the bucket was written with
// another layout.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if cfg.JetStream == nil {
		return nil, errors.New("shadow/natsstore: Config.JetStream is required")
	}
	if cfg.Bucket == "" {
		cfg.Bucket = DefaultBucket
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	kv, err := natskv.OpenBucket(ctx, cfg.JetStream, natskv.BucketConfig{
		Name: cfg.Bucket, Replicas: cfg.Replicas,
		Schema: natskv.Schema{Kind: "shadow", Version: SchemaVersion},
	})
	if err != nil {
		return nil, fmt.Errorf("shadow/natsstore: %w", err)
	}
	return &Store{kv: kv, timeout: cfg.Timeout}, nil
}

// key returns k's key in the bucket.
func key(k shadow.Key) string {
	if k.Name == "" {
		return prefixClassic + natskv.Token(string(k.Device))
	}
	return prefixNamed + natskv.Token(string(k.Device)) + "." + natskv.Token(string(k.Name))
}

// parseKey reverses key.
func parseKey(s string) (shadow.Key, error) {
	switch {
	case strings.HasPrefix(s, prefixClassic):
		id, err := natskv.Untoken(s[len(prefixClassic):])
		return shadow.Key{Device: device.ID(id)}, err
	case strings.HasPrefix(s, prefixNamed):
		idTok, nameTok, ok := strings.Cut(s[len(prefixNamed):], ".")
		if !ok {
			return shadow.Key{}, fmt.Errorf("shadow/natsstore: key %q: no name", s)
		}
		id, err1 := natskv.Untoken(idTok)
		name, err2 := natskv.Untoken(nameTok)
		return shadow.Key{Device: device.ID(id), Name: shadow.Name(name)}, errors.Join(err1, err2)
	}
	return shadow.Key{}, fmt.Errorf("shadow/natsstore: key %q: not a shadow's", s)
}

// check returns an error if ctx is done or the Store is closed.
func (s *Store) check(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("shadow/natsstore: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return fmt.Errorf("shadow/natsstore: %w", shadow.ErrClosed)
	}
	return nil
}

// Get returns shadow k's record, or the zero Record if it has none.
func (s *Store) Get(ctx context.Context, k shadow.Key) (shadow.Record, error) {
	if err := s.check(ctx); err != nil {
		return shadow.Record{}, err
	}
	return s.get(ctx, key(k))
}

func (s *Store) get(ctx context.Context, k string) (shadow.Record, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	e, err := s.kv.Get(ctx, k)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return shadow.Record{}, nil
	}
	if err != nil {
		return shadow.Record{}, fmt.Errorf("shadow/natsstore: get %s: %w", k, err)
	}
	return shadow.Record{Value: e.Value(), Rev: shadow.Rev(e.Revision())}, nil
}

// Commit applies writes in order, each a compare-and-set on its key's
// revision, and returns once JetStream has acknowledged the last: stored
// on a quorum of the bucket's replicas (fsynced with the server's
// sync_interval: always). JetStream has no transaction across keys, so a
// call that fails at its n-th write leaves the n-1 before it applied (the
// prefix shadow.Store allows); a call refused at its first write changes
// nothing.
//
// Once Commit has handed its first write over, it no longer listens to
// ctx: it waits for every outcome (each bounded by Config.Timeout), so a
// cancelled caller never leaves a write's outcome unknown. When JetStream
// does not answer in time, Commit reads the key back to learn whether the
// write landed.
func (s *Store) Commit(ctx context.Context, writes ...shadow.Write) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("shadow/natsstore: commit: %w", err)
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return fmt.Errorf("shadow/natsstore: commit: %w", shadow.ErrClosed)
	}
	s.inflight.Add(1)
	s.mu.Unlock()
	defer s.inflight.Done()

	start := time.Now()
	ctx = context.WithoutCancel(ctx)
	for _, w := range writes {
		if err := s.write(ctx, w); err != nil {
			return err
		}
	}
	s.commits.Add(1)
	s.writes.Add(1)
	s.commitNanos.Add(int64(time.Since(start)))
	return nil
}

// write applies one Write with its compare-and-set.
func (s *Store) write(ctx context.Context, w shadow.Write) error {
	k := key(w.Key)
	attempt, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	var err error
	switch {
	case w.Value == nil && w.Rev == 0:
		// Delete what must not exist: nothing to do if it does not.
		var rec shadow.Record
		if rec, err = s.get(attempt, k); err == nil && rec.Rev != 0 {
			err = shadow.ErrRevisionMismatch
		}
	case w.Value == nil:
		err = s.kv.Delete(attempt, k, jetstream.LastRevision(uint64(w.Rev)))
	case w.Rev == 0:
		_, err = s.kv.Create(attempt, k, w.Value)
	default:
		_, err = s.kv.Update(attempt, k, w.Value, uint64(w.Rev))
	}
	if err != nil && natskv.IsUnavailable(err) {
		err = s.resolve(ctx, k, w, err)
	}
	switch {
	case err == nil:
		return nil
	case errors.Is(err, shadow.ErrRevisionMismatch) || natskv.IsConflict(err):
		return fmt.Errorf("shadow/natsstore: commit %s: %w", w.Key, shadow.ErrRevisionMismatch)
	default:
		return fmt.Errorf("shadow/natsstore: commit %s: %w", w.Key, err)
	}
}

// resolve learns, by reading k back, whether write w landed after its
// request went unanswered (cause): it returns nil if k now holds w's
// outcome under a new revision, cause if it does not or cannot be read.
func (s *Store) resolve(ctx context.Context, k string, w shadow.Write, cause error) error {
	rec, err := s.get(ctx, k)
	if err != nil {
		return fmt.Errorf("%w (and reading it back: %w)", cause, err)
	}
	landed := rec.Rev != w.Rev && (w.Value == nil && rec.Rev == 0 || w.Value != nil && bytes.Equal(rec.Value, w.Value))
	if landed {
		return nil
	}
	return cause
}

// Scan calls fn with the classic shadows whose ID sorts after after, in
// byte order. It lists the bucket's classic keys (sorted here: the
// escaping does not keep byte order), then reads each record; a record
// deleted meanwhile is skipped.
func (s *Store) Scan(ctx context.Context, after device.ID, fn func(id device.ID, rec shadow.Record) bool) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	keys, err := s.list(ctx, prefixClassic+">")
	if err != nil {
		return err
	}
	for _, k := range keys {
		if k.Device <= after {
			continue
		}
		if err := s.check(ctx); err != nil {
			return err
		}
		rec, err := s.get(ctx, key(k))
		if err != nil {
			return err
		}
		if rec.Rev == 0 {
			continue
		}
		if !fn(k.Device, rec) {
			return nil
		}
	}
	return nil
}

// ScanNamed calls fn with the named shadows of id in name order, or of
// every device (in key order) when id is "".
func (s *Store) ScanNamed(ctx context.Context, id device.ID, fn func(k shadow.Key, rec shadow.Record) bool) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	filter := prefixNamed + ">"
	if id != "" {
		filter = prefixNamed + natskv.Token(string(id)) + ".*"
	}
	keys, err := s.list(ctx, filter)
	if err != nil {
		return err
	}
	for _, k := range keys {
		if err := s.check(ctx); err != nil {
			return err
		}
		rec, err := s.get(ctx, key(k))
		if err != nil {
			return err
		}
		if rec.Rev == 0 {
			continue
		}
		if !fn(k, rec) {
			return nil
		}
	}
	return nil
}

// list returns the keys matching filter, decoded and sorted by device ID
// then name.
func (s *Store) list(ctx context.Context, filter string) ([]shadow.Key, error) {
	lctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	kl, err := s.kv.ListKeysFiltered(lctx, filter)
	if err != nil {
		return nil, fmt.Errorf("shadow/natsstore: list %s: %w", filter, err)
	}
	defer kl.Stop()
	var keys []shadow.Key
	var bad error
	// Read to the end even after a bad key: the lister's goroutine blocks
	// until its keys are taken.
	for raw := range kl.Keys() {
		k, err := parseKey(raw)
		if err != nil {
			bad = cmp.Or(bad, err)
			continue
		}
		keys = append(keys, k)
	}
	if err := lctx.Err(); err != nil {
		return nil, fmt.Errorf("shadow/natsstore: list %s: %w", filter, err)
	}
	if bad != nil {
		return nil, bad
	}
	slices.SortFunc(keys, func(a, b shadow.Key) int {
		if c := strings.Compare(string(a.Device), string(b.Device)); c != 0 {
			return c
		}
		return strings.Compare(string(a.Name), string(b.Name))
	})
	return slices.Compact(keys), nil
}

// CommitStats reports the Store's commit counters (one commit per Commit
// call: JetStream does not group them).
func (s *Store) CommitStats() shadow.CommitStats {
	return shadow.CommitStats{Commits: s.commits.Load(), Writes: s.writes.Load(), Time: time.Duration(s.commitNanos.Load())}
}

// Close stops taking Commits and waits for those already handed over to
// JetStream (each bounded by Config.Timeout, whatever ctx says: their
// outcome must be known). It leaves the connection open: the caller owns
// it. It is idempotent.
func (s *Store) Close(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.inflight.Wait()
	return nil
}
