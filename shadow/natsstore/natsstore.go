package natsstore

import (
	"bytes"
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

// listTimeout is how many Config.Timeouts a key listing may take.
const listTimeout = 10

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
	b       *natskv.Bucket
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
	b, err := natskv.Open(ctx, cfg.JetStream, natskv.BucketConfig{
		Name: cfg.Bucket, Replicas: cfg.Replicas,
		Schema: natskv.Schema{Kind: "shadow", Version: SchemaVersion},
	})
	if err != nil {
		return nil, fmt.Errorf("shadow/natsstore: %w", err)
	}
	return &Store{b: b, timeout: cfg.Timeout}, nil
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
	e, err := s.read(ctx, k)
	if err != nil {
		return shadow.Record{}, fmt.Errorf("shadow/natsstore: get: %w", unavailable(ctx, err))
	}
	return shadow.Record{Value: e.Value, Rev: shadow.Rev(e.Rev)}, nil
}

// Commit applies writes atomically (one JetStream atomic batch; one
// conditional publish for a single write), each a compare-and-set on its
// key's revision, and returns once JetStream has acknowledged them: stored
// on a quorum of the bucket's replicas (fsynced with the servers'
// sync_interval: always). A write with Rev 0 (no record) first reads its
// key, to expect the sequence of its delete marker if it has one.
//
// Once Commit has handed its writes over, it no longer listens to ctx: it
// waits for the outcome (bounded by Config.Timeout), so a cancelled caller
// never leaves it unknown. When JetStream does not answer in time, Commit
// reads the last key back to learn whether the batch landed.
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
	ops := make([]natskv.Op, 0, len(writes))
	for _, w := range writes {
		op := natskv.Op{Key: key(w.Key), Value: w.Value, Delete: w.Value == nil, Check: true, Expect: uint64(w.Rev)}
		if w.Rev == 0 {
			e, err := s.read(ctx, op.Key)
			if err != nil {
				return fmt.Errorf("shadow/natsstore: commit %s: %w", w.Key, unavailable(ctx, err))
			}
			if e.Rev != 0 {
				return fmt.Errorf("shadow/natsstore: commit %s: %w", w.Key, shadow.ErrRevisionMismatch)
			}
			if op.Delete {
				continue // delete what must not exist: nothing to do
			}
			op.Expect = e.Last
		}
		ops = append(ops, op)
	}
	if len(ops) == 0 {
		return nil
	}
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.timeout)
	defer cancel()
	_, err := s.b.Apply(actx, ops...)
	if err != nil && natskv.IsUnavailable(err) {
		err = s.resolve(context.WithoutCancel(ctx), ops[len(ops)-1], err)
	}
	switch {
	case errors.Is(err, natskv.ErrConflict):
		if errors.Is(err, natskv.ErrInFlight) {
			// Another node's write of the key is being replicated: give
			// it a moment, so the engine's next read sees it instead of
			// conflicting with it again.
			_ = natskv.Backoff(ctx, 1)
		}
		return fmt.Errorf("shadow/natsstore: commit: %w", shadow.ErrRevisionMismatch)
	case err != nil:
		return fmt.Errorf("shadow/natsstore: commit: %w", unavailable(ctx, err))
	}
	s.commits.Add(1)
	s.writes.Add(1)
	s.commitNanos.Add(int64(time.Since(start)))
	return nil
}

// unavailable wraps err with shadow.ErrUnavailable when it says the NATS
// servers did not answer (and not that the caller's ctx ended).
func unavailable(ctx context.Context, err error) error {
	if ctx.Err() == nil && natskv.IsUnavailable(err) {
		return fmt.Errorf("%w: %w", shadow.ErrUnavailable, err)
	}
	return err
}

// read returns key k's entry, bounded by Config.Timeout.
func (s *Store) read(ctx context.Context, k string) (natskv.Entry, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	return s.b.Read(ctx, k)
}

// resolve learns, by reading op's key back, whether a batch whose last op
// is op landed after its request went unanswered (cause): nil if the key
// now holds op's outcome under a revision other than the expected one,
// cause if it does not or cannot be read.
func (s *Store) resolve(ctx context.Context, op natskv.Op, cause error) error {
	e, err := s.read(ctx, op.Key)
	if err != nil {
		return fmt.Errorf("%w (and reading it back: %w)", cause, err)
	}
	if e.Last != op.Expect && (op.Delete && e.Rev == 0 || !op.Delete && bytes.Equal(e.Value, op.Value)) {
		return nil
	}
	return cause
}

// Scan calls fn with the classic shadows whose ID sorts after after, in
// byte order. It lists the bucket's classic keys (sorted here: the
// escaping does not keep byte order), then reads each record; a record
// deleted meanwhile is skipped.
func (s *Store) Scan(ctx context.Context, after device.ID, fn func(id device.ID, rec shadow.Record) bool) error {
	return s.scan(ctx, prefixClassic+">", func(k shadow.Key) bool { return k.Device > after },
		func(k shadow.Key, rec shadow.Record) bool { return fn(k.Device, rec) })
}

// ScanNamed calls fn with the named shadows of id in name order, or of
// every device (in key order) when id is "".
func (s *Store) ScanNamed(ctx context.Context, id device.ID, fn func(k shadow.Key, rec shadow.Record) bool) error {
	filter := prefixNamed + ">"
	if id != "" {
		filter = prefixNamed + natskv.Token(string(id)) + ".*"
	}
	return s.scan(ctx, filter, func(shadow.Key) bool { return true }, fn)
}

// scan lists the keys matching filter, then reads and visits, in order,
// those that want keeps and that still have a record, until fn returns
// false.
func (s *Store) scan(ctx context.Context, filter string, want func(shadow.Key) bool, fn func(shadow.Key, shadow.Record) bool) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	keys, err := s.list(ctx, filter)
	if err != nil {
		return err
	}
	for _, k := range keys {
		if !want(k) {
			continue
		}
		if err := s.check(ctx); err != nil {
			return err
		}
		rec, err := s.get(ctx, key(k))
		if err != nil {
			return err
		}
		if rec.Rev != 0 && !fn(k, rec) {
			return nil
		}
	}
	return nil
}

// list returns the keys matching filter, decoded and sorted by device ID
// then name.
func (s *Store) list(ctx context.Context, filter string) ([]shadow.Key, error) {
	lctx, cancel := context.WithTimeout(ctx, listTimeout*s.timeout)
	defer cancel()
	raw, err := s.b.Keys(lctx, filter)
	if err != nil {
		return nil, fmt.Errorf("shadow/natsstore: %w", unavailable(ctx, err))
	}
	keys := make([]shadow.Key, 0, len(raw))
	for _, r := range raw {
		k, err := parseKey(r)
		if err != nil {
			return nil, err
		}
		keys = append(keys, k)
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

// WatchDevices reports the device of every classic shadow that any node
// writes or deletes from now on (a watch of the bucket's "c." keys,
// metadata only: no document crosses), until ctx ends or the watch fails;
// then it closes the channel. A consumer slower than the writes holds the
// watch back (JetStream's flow control), not the writers. The cluster's
// planner leader feeds rollout.Planner.Notify from it (docs/cluster.md).
func (s *Store) WatchDevices(ctx context.Context) (<-chan device.ID, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	out, err := natskv.WatchKeys(ctx, s.b, prefixClassic+">", 1024, func(key string) (device.ID, bool) {
		k, err := parseKey(key)
		return k.Device, err == nil && k.Name == ""
	})
	if err != nil {
		return nil, fmt.Errorf("shadow/natsstore: watch: %w", err)
	}
	return out, nil
}
