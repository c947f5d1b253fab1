package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/umbra-iot/umbra/internal/natskv"
)

// Registry defaults.
const (
	DefaultRegistryBucket = "umbra_nodes"
	DefaultHeartbeat      = 5 * time.Second
	// registryTTLBeats is how many heartbeats a registration outlives its
	// last one.
	registryTTLBeats = 3
	registrySchema   = 1
	prefixNode       = "n."
)

// ErrNodeIDInUse is returned by OpenRegistry when another live node has
// registered the same node ID.
var ErrNodeIDInUse = errors.New("cluster: node ID in use by another live node")

// Node is one node's registration.
type Node struct {
	ID          string    `json:"id"`
	Addr        string    `json:"addr"`        // where operators and devices reach it
	Version     string    `json:"version"`     // Umbra's version
	Connections int       `json:"connections"` // connected MQTT clients at the last heartbeat
	Started     time.Time `json:"started"`
	Heartbeat   time.Time `json:"heartbeat"`
	Token       string    `json:"token"` // this process's incarnation
}

// RegistryConfig configures OpenRegistry.
type RegistryConfig struct {
	// JetStream is the client; the caller owns its connection. Required.
	JetStream jetstream.JetStream
	// Bucket is the registry bucket. Default DefaultRegistryBucket.
	Bucket string
	// Node is this node's registration: ID is required; Heartbeat, Started
	// and Token are set by the Registry.
	Node Node
	// Connections, when set, is called at every heartbeat for the
	// connection count.
	Connections func() int
	// Heartbeat is the interval of the heartbeats; a node is gone
	// 3 heartbeats after its last. Default DefaultHeartbeat. It must match
	// the bucket's (Heartbeat × 3 is the bucket's TTL).
	Heartbeat time.Duration
	// Replicas is the bucket's replica count when OpenRegistry creates it.
	Replicas int
	// Logger receives heartbeat failures. Nil discards.
	Logger *slog.Logger
}

// Registry registers this node and keeps its registration alive with
// heartbeats; Nodes lists every live node.
type Registry struct {
	b    *natskv.Bucket
	cfg  RegistryConfig
	log  *slog.Logger
	node Node

	mu  sync.Mutex // guards rev
	rev uint64

	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once
}

// OpenRegistry registers cfg.Node and starts its heartbeats. It fails with
// ErrNodeIDInUse when a live node (one that sent a heartbeat within the
// TTL) has the same ID.
func OpenRegistry(ctx context.Context, cfg RegistryConfig) (*Registry, error) {
	if cfg.JetStream == nil || cfg.Node.ID == "" {
		return nil, errors.New("cluster: OpenRegistry: JetStream and Node.ID are required")
	}
	if cfg.Bucket == "" {
		cfg.Bucket = DefaultRegistryBucket
	}
	if cfg.Heartbeat == 0 {
		cfg.Heartbeat = DefaultHeartbeat
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	ttl := registryTTLBeats * cfg.Heartbeat
	b, err := natskv.Open(ctx, cfg.JetStream, natskv.BucketConfig{Name: cfg.Bucket, Replicas: cfg.Replicas,
		TTL: ttl, LimitMarkerTTL: ttl, Schema: natskv.Schema{Kind: "nodes", Version: registrySchema}})
	if err != nil {
		return nil, fmt.Errorf("cluster: registry: %w", err)
	}
	if st, err := b.KV.Status(ctx); err != nil {
		return nil, fmt.Errorf("cluster: registry: %w", err)
	} else if st.TTL() != ttl {
		return nil, fmt.Errorf("cluster: registry bucket %s has TTL %v (heartbeat %v), this node's heartbeat is %v: give every node the same heartbeat",
			cfg.Bucket, st.TTL(), st.TTL()/registryTTLBeats, cfg.Heartbeat)
	}
	tok := make([]byte, 8)
	_, _ = rand.Read(tok)
	r := &Registry{b: b, cfg: cfg, log: cfg.Logger.With("component", "registry", "node", cfg.Node.ID)}
	r.node = cfg.Node
	r.node.Token, r.node.Started = hex.EncodeToString(tok), time.Now().UTC()
	key := prefixNode + natskv.Token(cfg.Node.ID)
	e, err := b.Read(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("cluster: registry: %w", err)
	}
	if e.Rev != 0 {
		var other Node
		_ = json.Unmarshal(e.Value, &other)
		return nil, fmt.Errorf("%w: %s (address %s, last heartbeat %s; a node that stopped is forgotten %v after its last heartbeat)",
			ErrNodeIDInUse, cfg.Node.ID, other.Addr, other.Heartbeat.Format(time.RFC3339), ttl)
	}
	rev, err := b.Apply(ctx, natskv.Op{Key: key, Value: r.encode(), Check: true, Expect: e.Last})
	if errors.Is(err, natskv.ErrConflict) {
		return nil, fmt.Errorf("%w: %s (registered concurrently)", ErrNodeIDInUse, cfg.Node.ID)
	}
	if err != nil {
		return nil, fmt.Errorf("cluster: registry: register %s: %w", cfg.Node.ID, err)
	}
	r.rev = rev
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	r.cancel = cancel
	r.wg.Go(func() { r.run(runCtx) })
	return r, nil
}

// encode returns the registration with a fresh heartbeat.
func (r *Registry) encode() []byte {
	n := r.node
	n.Heartbeat = time.Now().UTC()
	if r.cfg.Connections != nil {
		n.Connections = r.cfg.Connections()
	}
	raw, _ := json.Marshal(n)
	return raw
}

func (r *Registry) key() string { return prefixNode + natskv.Token(r.cfg.Node.ID) }

// ours reports whether raw is a registration of this incarnation.
func (r *Registry) ours(raw []byte) bool {
	var n Node
	return json.Unmarshal(raw, &n) == nil && n.Token == r.node.Token
}

// run sends a heartbeat every interval: a compare-and-set on the
// registration's revision, or, when it was lost (expired while NATS was
// away), a new registration.
func (r *Registry) run(ctx context.Context) {
	t := time.NewTicker(r.cfg.Heartbeat)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		hctx, cancel := context.WithTimeout(ctx, r.cfg.Heartbeat)
		r.mu.Lock()
		rev := r.rev
		r.mu.Unlock()
		next, err := r.b.Apply(hctx, natskv.Op{Key: r.key(), Value: r.encode(), Check: true, Expect: rev})
		if errors.Is(err, natskv.ErrConflict) {
			// Expired meanwhile: register again if the ID is free.
			if e, rerr := r.b.Read(hctx, r.key()); rerr == nil && e.Rev == 0 {
				next, err = r.b.Apply(hctx, natskv.Op{Key: r.key(), Value: r.encode(), Check: true, Expect: e.Last})
			}
		}
		cancel()
		if err != nil {
			r.log.Warn("heartbeat failed", "err", err)
			continue
		}
		r.mu.Lock()
		r.rev = next
		r.mu.Unlock()
	}
}

// Nodes returns every live node, sorted by ID.
func (r *Registry) Nodes(ctx context.Context) ([]Node, error) {
	vals, err := r.b.Values(ctx, prefixNode+">")
	if err != nil {
		return nil, fmt.Errorf("cluster: nodes: %w", err)
	}
	out := make([]Node, 0, len(vals))
	for k, raw := range vals {
		var n Node
		if err := json.Unmarshal(raw, &n); err != nil {
			return nil, fmt.Errorf("cluster: node %s: %w", k, err)
		}
		n.Token = ""
		out = append(out, n)
	}
	slices.SortFunc(out, func(a, b Node) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}

// Close stops the heartbeats and removes the registration. While the
// connection to NATS is up but the bucket cannot take the removal (no
// stream leader during an election: "no responders", or a timeout), it is
// tried again every deregisterRetry, until it is done, ctx ends, or the
// registration would have expired by itself (3 heartbeats): so a node
// closed during a leader election leaves the registry once the stream has
// a leader again instead of staying listed until it expires. With NATS
// lost it gives up after one attempt (the entry expires). It is
// idempotent.
func (r *Registry) Close(ctx context.Context) error {
	var err error
	r.once.Do(func() {
		r.cancel()
		r.wg.Wait()
		r.mu.Lock()
		rev := r.rev
		r.mu.Unlock()
		ctx, cancel := context.WithTimeout(ctx, registryTTLBeats*r.cfg.Heartbeat)
		defer cancel()
		if derr := r.deregister(ctx, rev); derr != nil {
			err = fmt.Errorf("cluster: deregister %s: %w", r.cfg.Node.ID, derr)
		}
	})
	return err
}

// deregisterRetry is the pause between two attempts of Close's removal.
const deregisterRetry = 250 * time.Millisecond

// deregister deletes the registration of revision rev, retrying (see
// Close) until ctx ends. A registration gone meanwhile, or another
// incarnation's, is left alone; one of this incarnation's at a later
// revision (a write committed late, after an election) is removed.
func (r *Registry) deregister(ctx context.Context, rev uint64) error {
	for {
		actx, cancel := context.WithTimeout(ctx, min(r.cfg.Heartbeat, 2*time.Second))
		_, err := r.b.Apply(actx, natskv.Op{Key: r.key(), Delete: true, Check: true, Expect: rev})
		cancel()
		switch {
		case err == nil:
			return nil
		case errors.Is(err, natskv.ErrConflict):
			// Changed since the last revision this node saw. A write of
			// its own may have been committed late, after an election
			// (a heartbeat or an earlier attempt whose answer was lost):
			// if the entry is still this incarnation's, remove that.
			actx, cancel := context.WithTimeout(ctx, min(r.cfg.Heartbeat, 2*time.Second))
			e, rerr := r.b.Read(actx, r.key())
			cancel()
			if rerr == nil && (e.Rev == 0 || !r.ours(e.Value)) {
				return nil // gone, or another incarnation's
			}
			if rerr == nil {
				rev = e.Last // tried again below, after the usual pause
			} else {
				err = rerr
			}
		case !r.cfg.JetStream.Conn().IsConnected():
			return err // NATS is lost, not electing: the registration expires by itself
		}
		r.log.Debug("deregister failed, trying again", "err", err)
		t := time.NewTimer(deregisterRetry)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (last attempt: %w; the registration expires %v after its last heartbeat)",
				ctx.Err(), err, registryTTLBeats*r.cfg.Heartbeat)
		case <-t.C:
		}
	}
}
