package natsstore

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/internal/natskv"
)

// Defaults of Config.
const (
	DefaultBucket  = "umbra_broker"
	DefaultTimeout = 10 * time.Second
)

// SchemaVersion is the version of the bucket's layout (see doc.go).
const SchemaVersion = 1

// Key prefixes (client IDs, topics and filters escaped by
// natskv.HashToken).
const (
	prefixRetained = "rt."
	prefixSession  = "s."
	prefixSub      = "sub."
	prefixQueued   = "q."
)

// Config configures Open.
type Config struct {
	// JetStream is the client the Store talks through; the caller owns
	// its connection. Required.
	JetStream jetstream.JetStream
	// Bucket is the bucket's name. Default DefaultBucket.
	Bucket string
	// Replicas is the bucket's replica count when Open creates it.
	// Default 1.
	Replicas int
	// Timeout bounds each Load and each atomic batch of Apply. Default
	// DefaultTimeout.
	Timeout time.Duration
	// MaxBatch is the most writes of one atomic batch (see
	// natskv.BucketConfig.MaxBatch). Default natskv.DefaultMaxBatch.
	MaxBatch int
}

// Store is a broker.Store in one JetStream key-value bucket. It is safe
// for concurrent use.
type Store struct {
	b        *natskv.Bucket
	timeout  time.Duration
	maxBatch int
}

var _ broker.Store = (*Store)(nil)

// Open opens (creating it if missing) the broker bucket. It fails with an
// error wrapping natskv.ErrSchemaMismatch if the bucket was written with
// another layout.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if cfg.JetStream == nil {
		return nil, errors.New("broker/natsstore: Config.JetStream is required")
	}
	if cfg.Bucket == "" {
		cfg.Bucket = DefaultBucket
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.MaxBatch == 0 {
		cfg.MaxBatch = natskv.DefaultMaxBatch
	}
	b, err := natskv.Open(ctx, cfg.JetStream, natskv.BucketConfig{Name: cfg.Bucket, Replicas: cfg.Replicas, MaxBatch: cfg.MaxBatch,
		Schema: natskv.Schema{Kind: "broker", Version: SchemaVersion}})
	if err != nil {
		return nil, fmt.Errorf("broker/natsstore: %w", err)
	}
	return &Store{b: b, timeout: cfg.Timeout, maxBatch: cfg.MaxBatch}, nil
}

func sessionKey(cid string) string { return prefixSession + natskv.HashToken(cid) }
func subPrefix(cid string) string  { return prefixSub + natskv.HashToken(cid) + "." }
func subKey(cid, filter string) string {
	return subPrefix(cid) + natskv.HashToken(filter)
}
func queuedPrefix(cid string) string { return prefixQueued + natskv.HashToken(cid) + "." }
func queuedKey(cid string, seq uint64) string {
	return fmt.Sprintf("%s%020d", queuedPrefix(cid), seq)
}

// Stored values: each carries the strings its key may only hash.
type (
	storedSub struct {
		ClientID string `json:"clientId"`
		broker.Subscription
	}
	storedQueued struct {
		ClientID string `json:"clientId"`
		broker.QueuedMessage
	}
)

// Apply applies ops in order. The ops between two OpResets are committed
// in atomic batches of at most MaxBatch writes, in order, so a failure or
// a crash leaves a prefix of ops (as broker.Store allows); an OpReset
// commits what precedes it, then purges the bucket's broker keys.
func (s *Store) Apply(ctx context.Context, ops []broker.StoreOp) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("broker/natsstore: apply: %w", err)
	}
	b := &batch{s: s, t: s.b.Txn()}
	for _, op := range ops {
		if op.Kind == broker.OpReset {
			if err := b.commit(ctx); err != nil {
				return fmt.Errorf("broker/natsstore: apply: %w", err)
			}
			if err := s.reset(ctx); err != nil {
				return err
			}
			continue
		}
		if err := s.stage(ctx, b, op); err != nil {
			return fmt.Errorf("broker/natsstore: apply %s: %w", op.Kind, err)
		}
	}
	if err := b.commit(ctx); err != nil {
		return fmt.Errorf("broker/natsstore: apply: %w", err)
	}
	return nil
}

// batch is the atomic batch an Apply is filling.
type batch struct {
	s *Store
	t *natskv.Txn
}

// commit commits the batch, if it has writes, and starts the next.
func (b *batch) commit(ctx context.Context) error {
	if b.t.Len() == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, b.s.timeout)
	defer cancel()
	err := b.t.Commit(ctx)
	b.t = b.s.b.Txn()
	return err
}

// room commits the batch first if it is full, so one more write fits.
func (b *batch) room(ctx context.Context) (*natskv.Txn, error) {
	if b.t.Len() >= b.s.maxBatch {
		if err := b.commit(ctx); err != nil {
			return nil, err
		}
	}
	return b.t, nil
}

// stage adds op's writes to b.
func (s *Store) stage(ctx context.Context, b *batch, op broker.StoreOp) error {
	put := func(key string, v any) error {
		raw, err := json.Marshal(v)
		if err != nil {
			return err
		}
		t, err := b.room(ctx)
		if err != nil {
			return err
		}
		t.Put(key, raw)
		return nil
	}
	del := func(key string) error {
		t, err := b.room(ctx)
		if err != nil {
			return err
		}
		t.Delete(key)
		return nil
	}
	switch op.Kind {
	case broker.OpPutRetained:
		return put(prefixRetained+natskv.HashToken(op.Message.Topic), op.Message)
	case broker.OpDeleteRetained:
		return del(prefixRetained + natskv.HashToken(op.Topic))
	case broker.OpPutSession:
		return put(sessionKey(op.ClientID), op.Session)
	case broker.OpDeleteSession:
		if err := del(sessionKey(op.ClientID)); err != nil {
			return err
		}
		for _, prefix := range []string{subPrefix(op.ClientID), queuedPrefix(op.ClientID)} {
			lctx, cancel := context.WithTimeout(ctx, s.timeout)
			keys, err := s.b.Keys(lctx, prefix+">")
			cancel()
			if err != nil {
				return err
			}
			for k := range b.t.Staged(prefix) {
				keys = append(keys, k)
			}
			for _, k := range keys {
				if err := del(k); err != nil {
					return err
				}
			}
		}
	case broker.OpPutSubscription:
		return put(subKey(op.ClientID, op.Subscription.Filter), storedSub{ClientID: op.ClientID, Subscription: op.Subscription})
	case broker.OpDeleteSubscription:
		return del(subKey(op.ClientID, op.Topic))
	case broker.OpPutQueued:
		return put(queuedKey(op.ClientID, op.Queued.Seq), storedQueued{ClientID: op.ClientID, QueuedMessage: op.Queued})
	case broker.OpSetQueuedState:
		k := queuedKey(op.ClientID, op.Queued.Seq)
		rctx, cancel := context.WithTimeout(ctx, s.timeout)
		raw, found, err := b.t.Get(rctx, k)
		cancel()
		if err != nil || !found {
			return err
		}
		var q storedQueued
		if err := json.Unmarshal(raw, &q); err != nil {
			return fmt.Errorf("decode %s: %w", k, err)
		}
		q.PacketID, q.Released = op.Queued.PacketID, op.Queued.Released
		return put(k, q)
	case broker.OpDeleteQueued:
		return del(queuedKey(op.ClientID, op.Queued.Seq))
	default:
		return fmt.Errorf("unknown op kind %d", op.Kind)
	}
	return nil
}

// reset purges every broker key of the bucket (its schema record stays).
func (s *Store) reset(ctx context.Context) error {
	for _, prefix := range []string{prefixRetained, prefixSession, prefixSub, prefixQueued} {
		pctx, cancel := context.WithTimeout(ctx, s.timeout)
		err := s.b.Purge(pctx, prefix+">")
		cancel()
		if err != nil {
			return fmt.Errorf("broker/natsstore: reset: %w", err)
		}
	}
	return nil
}

// Load returns everything the bucket holds, read in one pass per kind of
// key. Subscriptions and queued messages of a client without a session
// are left out.
func (s *Store) Load(ctx context.Context) (broker.StoreState, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	var st broker.StoreState
	vals := map[string]map[string][]byte{}
	for _, prefix := range []string{prefixRetained, prefixSession, prefixSub, prefixQueued} {
		v, err := s.b.Values(ctx, prefix+">")
		if err != nil {
			return st, fmt.Errorf("broker/natsstore: load: %w", err)
		}
		vals[prefix] = v
	}
	for k, raw := range vals[prefixRetained] {
		var m broker.Message
		if err := json.Unmarshal(raw, &m); err != nil {
			return st, fmt.Errorf("broker/natsstore: load %s: %w", k, err)
		}
		st.Retained = append(st.Retained, m)
	}
	sessions := map[string]*broker.SessionState{}
	for k, raw := range vals[prefixSession] {
		var ss broker.SessionState
		if err := json.Unmarshal(raw, &ss.Session); err != nil {
			return st, fmt.Errorf("broker/natsstore: load %s: %w", k, err)
		}
		sessions[ss.ClientID] = &ss
	}
	for k, raw := range vals[prefixSub] {
		var sub storedSub
		if err := json.Unmarshal(raw, &sub); err != nil {
			return st, fmt.Errorf("broker/natsstore: load %s: %w", k, err)
		}
		if ss := sessions[sub.ClientID]; ss != nil {
			ss.Subscriptions = append(ss.Subscriptions, sub.Subscription)
		}
	}
	for k, raw := range vals[prefixQueued] {
		var q storedQueued
		if err := json.Unmarshal(raw, &q); err != nil {
			return st, fmt.Errorf("broker/natsstore: load %s: %w", k, err)
		}
		if ss := sessions[q.ClientID]; ss != nil {
			ss.Queued = append(ss.Queued, q.QueuedMessage)
		}
	}
	for _, ss := range sessions {
		slices.SortFunc(ss.Queued, func(a, b broker.QueuedMessage) int { return cmp.Compare(a.Seq, b.Seq) })
		slices.SortFunc(ss.Subscriptions, func(a, b broker.Subscription) int { return strings.Compare(a.Filter, b.Filter) })
		st.Sessions = append(st.Sessions, *ss)
	}
	return st, nil
}
