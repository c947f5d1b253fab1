package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/identity"
	"github.com/umbra-iot/umbra/internal/natskv"
)

// Presence across nodes (docs/cluster.md, "Presence").
//
// Every device's presence is one record in a bucket every node reads and
// writes: p.<device ID> = the identity.Presence fields, the node holding
// the connection it describes, that node's incarnation (boot) and the
// node's connection sequence number. Each node watches the bucket and
// reports what it holds (OnChange, in the bucket's order), so every node
// gives one answer. The rules that keep it right:
//
//   - A connect is written by the node that accepted it before the
//     connection handles its first packet (Connected is synchronous, in
//     the broker's OnConnect). A client connecting to another node waits
//     until the first node has released its session, which waits for the
//     old connection to end (broker/natsbridge), so the connects of one
//     device reach the bucket in the order the device made them.
//   - A disconnect is written (in the background) only over the record of
//     the same connection, or an older one of the same node incarnation:
//     a node's late "taken_over" never overwrites the connect of the node
//     the device moved to. Each write is a compare-and-set on the key's
//     revision, re-read and retried on a conflict.
//   - A node that dies without saying so: every live node sweeps, every
//     SweepInterval, the connected records of nodes missing from the
//     registry (older than Grace, so a node registering is not swept) and
//     marks them disconnected with reason ReasonNodeLost (one
//     compare-and-set wins). A node's own records of an earlier
//     incarnation are marked at Open with identity.ReasonServerRestart.
//   - A write that fails (NATS unreachable) waits in a per-device pending
//     entry (the device's latest event) and is retried; each sweep also
//     writes again the connects of this node's connected devices that the
//     bucket does not show (after a partition during which other nodes
//     marked them lost).

// Presence's defaults.
const (
	DefaultPresenceBucket = "umbra_presence"
	// ReasonNodeLost is the disconnect reason written for a device whose
	// node left the registry without reporting its disconnect.
	ReasonNodeLost = "node_lost"
	// DefaultPresenceTimeout bounds one write (a connect waits for it).
	DefaultPresenceTimeout = 2 * time.Second

	presenceSchema = 1
	prefixPresence = "p."
	maxWriteTries  = 5
	retryInterval  = 250 * time.Millisecond
)

// NodeLister lists the live nodes; Registry implements it.
type NodeLister interface {
	Nodes(ctx context.Context) ([]Node, error)
}

// PresenceConfig configures OpenPresence.
type PresenceConfig struct {
	// JetStream is the client the bucket is reached through. Required.
	JetStream jetstream.JetStream
	// Bucket is the bucket's name. Default DefaultPresenceBucket.
	Bucket string
	// Replicas is the bucket's replica count when OpenPresence creates it.
	Replicas int
	// Node is this node's ID. Required.
	Node string
	// Nodes lists the live nodes for the sweep (the Registry). Required.
	Nodes NodeLister
	// SweepInterval is how often the records of lost nodes are swept.
	// Default DefaultHeartbeat.
	SweepInterval time.Duration
	// Grace is how old a connect must be before a sweep may mark it lost:
	// at least the registry's TTL, so that a node that has not registered
	// yet is not taken for lost. Default three SweepIntervals.
	Grace time.Duration
	// Timeout bounds each write. Default DefaultPresenceTimeout.
	Timeout time.Duration
	// OnChange is called with every record the bucket holds when
	// OpenPresence starts, and with every change after, one at a time and
	// in the bucket's order (deleted: the zero Presence). It must not
	// call the Presence.
	OnChange func(id device.ID, p identity.Presence)
	// Logger receives the logs; nil discards.
	Logger *slog.Logger
}

// PresenceStats are Presence's counters since OpenPresence, and the
// pending writes now.
type PresenceStats struct {
	Written  int64 // records written
	Stale    int64 // events not written: the record describes a newer connection (another node's, or a later one here)
	Lost     int64 // connected records of lost nodes (or of this node's earlier incarnation) marked disconnected
	Corrupt  int64 // records that could not be decoded: reported and skipped
	Errors   int64 // writes that failed (retried)
	Pending  int64 // devices whose latest event awaits a retry, now
	Watching bool  // the bucket's change feed is live
}

// presenceRecord is what the bucket holds per device.
type presenceRecord struct {
	identity.Presence
	Boot string `json:"boot"`
	Seq  uint64 `json:"seq"`
}

// presenceEvent is a connect or a disconnect of this node's connection
// seq of a device.
type presenceEvent struct {
	connect bool
	seq     uint64
	at      time.Time
	remote  string
	reason  string
	// connectedAt is set on a disconnect whose connect was never written
	// (it was pending when the disconnect came): the connect's time, with
	// remote its address.
	connectedAt time.Time
}

// viewEntry is a record as the watch delivered it.
type viewEntry struct {
	rec presenceRecord
	rev uint64
}

// Presence is the cluster's device presence; see the comment above.
type Presence struct {
	cfg  PresenceConfig
	b    *natskv.Bucket
	log  *slog.Logger
	boot string

	mu      sync.Mutex                  // guards view, pending, local
	view    map[device.ID]viewEntry     // the bucket, as watched
	pending map[device.ID]presenceEvent // latest event awaiting a retry
	local   map[device.ID]presenceEvent // devices connected here: their connect
	kick    chan struct{}               // wakes the writer; capacity 1

	written, stale, lost, corrupt, errs atomic.Int64
	watching                            atomic.Bool
	corruptLogged                       atomic.Bool

	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once
}

// OpenPresence opens (creating it if missing) the presence bucket, reads
// every record (calling OnChange for each), marks this node's records of
// an earlier incarnation disconnected, and starts the watch, the writer
// and the sweep.
func OpenPresence(ctx context.Context, cfg PresenceConfig) (*Presence, error) {
	if cfg.JetStream == nil || cfg.Node == "" || cfg.Nodes == nil {
		return nil, errors.New("cluster: OpenPresence: JetStream, Node and Nodes are required")
	}
	if cfg.Bucket == "" {
		cfg.Bucket = DefaultPresenceBucket
	}
	if cfg.SweepInterval <= 0 {
		cfg.SweepInterval = DefaultHeartbeat
	}
	if cfg.Grace <= 0 {
		cfg.Grace = registryTTLBeats * cfg.SweepInterval
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultPresenceTimeout
	}
	if cfg.OnChange == nil {
		cfg.OnChange = func(device.ID, identity.Presence) {}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	b, err := natskv.Open(ctx, cfg.JetStream, natskv.BucketConfig{Name: cfg.Bucket, Replicas: cfg.Replicas,
		Schema: natskv.Schema{Kind: "presence", Version: presenceSchema}})
	if err != nil {
		return nil, fmt.Errorf("cluster: presence: %w", err)
	}
	tok := make([]byte, 8)
	_, _ = rand.Read(tok)
	p := &Presence{cfg: cfg, b: b, log: cfg.Logger.With("component", "presence", "node", cfg.Node),
		boot: hex.EncodeToString(tok), view: map[device.ID]viewEntry{}, pending: map[device.ID]presenceEvent{},
		local: map[device.ID]presenceEvent{}, kick: make(chan struct{}, 1)}
	feed, err := b.StartFeed(ctx, prefixPresence+">", p.apply)
	if err != nil {
		return nil, fmt.Errorf("cluster: presence: load: %w", err)
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	p.cancel = cancel
	p.markEarlierIncarnations(ctx)
	p.wg.Go(func() { feed.Follow(runCtx, p.apply, p.watching.Store) })
	p.wg.Go(func() { p.writeLoop(runCtx) })
	p.wg.Go(func() { p.sweepLoop(runCtx) })
	return p, nil
}

func presenceKey(id device.ID) string { return prefixPresence + natskv.Token(string(id)) }

// apply records a watched entry in the view and reports it.
func (p *Presence) apply(e jetstream.KeyValueEntry) {
	raw, err := natskv.Untoken(strings.TrimPrefix(e.Key(), prefixPresence))
	if err == nil {
		_, err = device.ParseID(raw)
	}
	if err != nil {
		p.reportCorrupt(e.Key(), fmt.Errorf("key is not a device ID: %w", err))
		return
	}
	id := device.ID(raw)
	if e.Operation() != jetstream.KeyValuePut {
		p.mu.Lock()
		delete(p.view, id)
		p.mu.Unlock()
		p.cfg.OnChange(id, identity.Presence{})
		return
	}
	var rec presenceRecord
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		p.reportCorrupt(e.Key(), err)
		return
	}
	p.mu.Lock()
	p.view[id] = viewEntry{rec: rec, rev: e.Revision()}
	p.mu.Unlock()
	p.cfg.OnChange(id, rec.Presence)
}

// reportCorrupt counts and logs (once) a record that cannot be read; the
// record is skipped and nothing else changes.
func (p *Presence) reportCorrupt(key string, err error) {
	p.corrupt.Add(1)
	if p.corruptLogged.CompareAndSwap(false, true) {
		p.log.Error("presence record skipped: cannot be decoded (the next connect of the device replaces it)", "key", key, "err", err)
	}
}

// Connected records that this node accepted connection seq of device id
// at at from remote. It writes the record before it returns (bounded by
// Timeout), so that the device's next connection, on any node, comes
// after it; when the write fails it is retried in the background.
func (p *Presence) Connected(id device.ID, seq uint64, at time.Time, remote string) {
	ev := presenceEvent{connect: true, seq: seq, at: at.UTC(), remote: truncateReason(remote)}
	p.mu.Lock()
	p.local[id] = ev
	p.mu.Unlock()
	if p.cfg.JetStream.Conn().IsConnected() {
		ctx, cancel := context.WithTimeout(context.Background(), p.cfg.Timeout)
		err := p.write(ctx, id, ev, false)
		cancel()
		if err == nil {
			return
		}
		p.errs.Add(1)
		p.log.Warn("presence of a connect not written: retried in the background", "device", id, "err", err)
	}
	p.enqueue(id, ev)
}

// Disconnected records that this node's connection seq of device id
// ended at at for reason; written in the background.
func (p *Presence) Disconnected(id device.ID, seq uint64, at time.Time, reason string) {
	p.mu.Lock()
	if p.local[id].seq == seq {
		delete(p.local, id)
	}
	p.mu.Unlock()
	p.enqueue(id, presenceEvent{seq: seq, at: at.UTC(), reason: truncateReason(reason)})
}

func truncateReason(s string) string {
	const n = 256
	if len(s) > n {
		s = s[:n]
	}
	return strings.ToValidUTF8(s, "")
}

// enqueue makes ev id's pending event unless a later one is pending.
func (p *Presence) enqueue(id device.ID, ev presenceEvent) {
	p.mu.Lock()
	if old, ok := p.pending[id]; !ok || ev.seq >= old.seq {
		if ok && old.connect && !ev.connect && old.seq == ev.seq {
			ev.connectedAt, ev.remote = old.at, old.remote // both are written as one
		}
		p.pending[id] = ev
	}
	p.mu.Unlock()
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// writeLoop writes the pending events, retrying those that fail.
func (p *Presence) writeLoop(ctx context.Context) {
	t := time.NewTicker(retryInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.kick:
		case <-t.C:
		}
		p.mu.Lock()
		batch := make(map[device.ID]presenceEvent, len(p.pending))
		for id, ev := range p.pending {
			batch[id] = ev
		}
		p.mu.Unlock()
		failed := false
		for id, ev := range batch {
			if failed || ctx.Err() != nil {
				break // NATS is away: wait for the next tick
			}
			wctx, cancel := context.WithTimeout(ctx, p.cfg.Timeout)
			err := p.write(wctx, id, ev, true)
			cancel()
			if err != nil {
				p.errs.Add(1)
				failed = true
				continue
			}
			p.mu.Lock()
			if cur, ok := p.pending[id]; ok && cur == ev {
				delete(p.pending, id)
			}
			p.mu.Unlock()
		}
	}
}

// write applies ev to id's record with a compare-and-set, re-reading on
// a conflict. retry marks an event written late: its connect then yields
// to a newer connect of another node.
func (p *Presence) write(ctx context.Context, id device.ID, ev presenceEvent, retry bool) error {
	key := presenceKey(id)
	for attempt := range maxWriteTries {
		// A conflict may be another write of the key still replicating
		// (natskv.ErrInFlight): wait a little before reading again.
		if err := natskv.Backoff(ctx, attempt); err != nil {
			return fmt.Errorf("cluster: presence of %s: %w", id, err)
		}
		e, err := p.b.Read(ctx, key)
		if err != nil {
			return err
		}
		var cur presenceRecord
		has := e.Rev != 0
		if has {
			if err := json.Unmarshal(e.Value, &cur); err != nil {
				p.reportCorrupt(key, err)
				has, cur = false, presenceRecord{}
			}
		}
		next, ok := p.next(id, cur, has, ev, retry)
		if !ok {
			p.stale.Add(1)
			return nil
		}
		raw, err := json.Marshal(next)
		if err != nil {
			return fmt.Errorf("cluster: presence of %s: %w", id, err)
		}
		_, err = p.b.Apply(ctx, natskv.Op{Key: key, Value: raw, Check: true, Expect: e.Last})
		if natskv.IsConflict(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("cluster: presence of %s: %w", id, err)
		}
		p.written.Add(1)
		return nil
	}
	return fmt.Errorf("cluster: presence of %s: kept changing: %w", id, natskv.ErrConflict)
}

// mine reports whether r describes a connection of this incarnation.
func (p *Presence) mine(r presenceRecord) bool {
	return r.Node == p.cfg.Node && r.Boot == p.boot
}

// next is the record after ev given the current one, or false when ev
// must not be written (see the rules above).
func (p *Presence) next(id device.ID, cur presenceRecord, has bool, ev presenceEvent, retry bool) (presenceRecord, bool) {
	if ev.connect {
		switch {
		case has && p.mine(cur) && cur.Seq > ev.seq:
			return cur, false // a later connection here is recorded
		case retry && has && cur.Connected && !p.mine(cur) && cur.ConnectedAt.After(ev.at):
			return cur, false // written late, and another node has a later connect
		case retry && !p.stillLocal(id, ev.seq):
			return cur, false // the connection ended before its connect could be written
		}
		n := cur
		n.Connected, n.ConnectedAt, n.RemoteAddr = true, ev.at, ev.remote
		n.Node, n.Boot, n.Seq = p.cfg.Node, p.boot, ev.seq
		return n, true
	}
	if !ev.connectedAt.IsZero() && (!has || !p.mine(cur) || cur.Seq < ev.seq) {
		// The connection's connect was never written: write both, unless
		// the record describes a later connection.
		if has && !p.mine(cur) && !cur.ConnectedAt.Before(ev.connectedAt) {
			return cur, false
		}
		n := cur
		n.Connected, n.ConnectedAt, n.RemoteAddr = false, ev.connectedAt, ev.remote
		n.DisconnectedAt, n.DisconnectReason = ev.at, ev.reason
		n.Node, n.Boot, n.Seq = p.cfg.Node, p.boot, ev.seq
		return n, true
	}
	if !has || !p.mine(cur) || cur.Seq > ev.seq || cur.Seq == ev.seq && !cur.Connected {
		return cur, false // another node's connection, or a later one here
	}
	n := cur
	n.Connected, n.DisconnectedAt, n.DisconnectReason, n.Seq = false, ev.at, ev.reason, ev.seq
	return n, true
}

// stillLocal reports whether this node's connection seq of device id is
// still connected.
func (p *Presence) stillLocal(id device.ID, seq uint64) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	ev, ok := p.local[id]
	return ok && ev.seq == seq
}

// markEarlierIncarnations marks this node's connected records written
// by an earlier incarnation (it stopped or crashed while they were
// connected) disconnected, as single-node mode does at a restart.
func (p *Presence) markEarlierIncarnations(ctx context.Context) {
	p.markLost(ctx, func(r presenceRecord) bool { return r.Node == p.cfg.Node && r.Boot != p.boot }, identity.ReasonServerRestart)
}

// markLost marks every connected record of the view that lost reports
// disconnected now for reason, each with a compare-and-set on the
// revision watched (a conflict means the record changed: left alone).
func (p *Presence) markLost(ctx context.Context, lost func(presenceRecord) bool, reason string) {
	type target struct {
		id device.ID
		e  viewEntry
	}
	var ts []target
	p.mu.Lock()
	for id, e := range p.view {
		if e.rec.Connected && lost(e.rec) {
			ts = append(ts, target{id, e})
		}
	}
	p.mu.Unlock()
	now := time.Now().UTC()
	for _, t := range ts {
		n := t.e.rec
		n.Connected, n.DisconnectedAt, n.DisconnectReason = false, now, reason
		raw, err := json.Marshal(n)
		if err != nil {
			continue
		}
		wctx, cancel := context.WithTimeout(ctx, p.cfg.Timeout)
		_, err = p.b.Apply(wctx, natskv.Op{Key: presenceKey(t.id), Value: raw, Check: true, Expect: t.e.rev})
		cancel()
		switch {
		case err == nil:
			p.lost.Add(1)
		case natskv.IsConflict(err):
		default:
			p.errs.Add(1)
			return // NATS is away: the next sweep tries again
		}
	}
}

// sweepLoop sweeps every SweepInterval; see sweep.
func (p *Presence) sweepLoop(ctx context.Context) {
	t := time.NewTicker(p.cfg.SweepInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		p.sweep(ctx)
	}
}

// sweep marks the connected records of nodes missing from the registry
// (connected more than Grace ago) disconnected with ReasonNodeLost, and
// writes again the connects of devices connected here that the bucket
// does not show as this node's (a partition let other nodes sweep them).
func (p *Presence) sweep(ctx context.Context) {
	lctx, cancel := context.WithTimeout(ctx, p.cfg.Timeout)
	nodes, err := p.cfg.Nodes.Nodes(lctx)
	cancel()
	if err != nil {
		return // NATS is away: nothing can be known
	}
	live := map[string]bool{p.cfg.Node: true}
	for _, n := range nodes {
		live[n.ID] = true
	}
	cutoff := time.Now().Add(-p.cfg.Grace)
	p.markLost(ctx, func(r presenceRecord) bool {
		return !live[r.Node] && r.ConnectedAt.Before(cutoff)
	}, ReasonNodeLost)

	p.mu.Lock()
	var again []presenceEvent
	var ids []device.ID
	for id, ev := range p.local {
		e, ok := p.view[id]
		_, pending := p.pending[id]
		if !pending && (!ok || !e.rec.Connected || !p.mine(e.rec) || e.rec.Seq != ev.seq) {
			again, ids = append(again, ev), append(ids, id)
		}
	}
	p.mu.Unlock()
	for i, id := range ids {
		p.enqueue(id, again[i])
	}
}

// Forget deletes device id's record (the device was removed): every
// node's OnChange gets the zero Presence. A disconnect of the device
// written later is skipped (there is no record of its connection).
func (p *Presence) Forget(ctx context.Context, id device.ID) error {
	p.mu.Lock()
	delete(p.pending, id)
	delete(p.local, id)
	p.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, p.cfg.Timeout)
	defer cancel()
	if _, err := p.b.Apply(ctx, natskv.Op{Key: presenceKey(id), Delete: true}); err != nil {
		return fmt.Errorf("cluster: forget presence of %s: %w", id, err)
	}
	return nil
}

// Get returns device id's presence as the bucket holds it; ok is false if
// it has none.
func (p *Presence) Get(id device.ID) (identity.Presence, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	e, ok := p.view[id]
	return e.rec.Presence, ok
}

// Stats returns the counters.
func (p *Presence) Stats() PresenceStats {
	p.mu.Lock()
	pending := len(p.pending)
	p.mu.Unlock()
	return PresenceStats{Written: p.written.Load(), Stale: p.stale.Load(), Lost: p.lost.Load(), Corrupt: p.corrupt.Load(),
		Errors: p.errs.Load(), Pending: int64(pending), Watching: p.watching.Load()}
}

// Close stops the watch, the writer and the sweep, then writes the events
// still pending once, bounded by ctx. Those that fail (NATS is away) are
// logged and left: the other nodes sweep the node's devices as lost, or
// the node marks them at its next start; Close returns nil. Close it
// after the broker, whose close reports every disconnect. Idempotent.
func (p *Presence) Close(ctx context.Context) error {
	p.once.Do(func() {
		p.cancel()
		p.wg.Wait()
		p.mu.Lock()
		batch := p.pending
		p.pending = map[device.ID]presenceEvent{}
		p.mu.Unlock()
		for id, ev := range batch {
			wctx, cancel := context.WithTimeout(ctx, p.cfg.Timeout)
			werr := p.write(wctx, id, ev, true)
			cancel()
			if werr != nil {
				p.log.Warn("presence not written at close: the other nodes will mark these devices node_lost", "devices", len(batch), "err", werr)
				break
			}
		}
	})
	return nil
}
