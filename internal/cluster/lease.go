package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/umbra-iot/umbra/internal/natskv"
)

// Lease defaults.
const (
	DefaultLeaseBucket = "umbra_lease"
	DefaultLeaseTTL    = 10 * time.Second
	// leaseSchema is the lease bucket's layout version.
	leaseSchema = 1
)

// ErrClosed is returned by calls after Close.
var ErrClosed = errors.New("cluster: closed")

// LeaseConfig configures OpenLease.
type LeaseConfig struct {
	// JetStream is the client; the caller owns its connection. Required.
	JetStream jetstream.JetStream
	// Bucket is the lease bucket. Default DefaultLeaseBucket. Every lease
	// of a bucket has the bucket's TTL.
	Bucket string
	// Name is the lease's key, e.g. "planner". Required.
	Name string
	// Holder names this node (its node ID). Required.
	Holder string
	// TTL is how long a lease lasts after its last renewal; the holder
	// renews it every TTL/3. Default DefaultLeaseTTL. It must equal the
	// TTL of an existing bucket.
	TTL time.Duration
	// Replicas is the bucket's replica count when OpenLease creates it.
	Replicas int
	// Logger receives the lease's gains and losses. Nil discards.
	Logger *slog.Logger
}

// LeaseInfo is a lease's record: who holds it and since when.
type LeaseInfo struct {
	Holder string    `json:"holder"`
	Token  string    `json:"token"` // this holder's incarnation: a restarted node is another
	Since  time.Time `json:"since"`
}

// Lease campaigns for one key of a lease bucket and renews it while held.
//
// Safety: the holder believes it holds the lease only until TTL −
// TTL/10 after it sent its last successful renewal (or acquisition). The
// server expires the key TTL after it stored that write, which is later
// than the send, so the holder's belief ends before anyone else can
// acquire the key (up to a clock-rate drift of 10%). Every renewal is a
// compare-and-set on the key's revision: a holder whose key was taken
// never renews someone else's lease.
//
// Liveness: when the holder stops renewing (it crashed, lost NATS, or
// closed without releasing), the server expires the key TTL after its
// last renewal and writes a delete marker; the other candidates watch
// the key, see the marker and acquire. Takeover happens within TTL plus
// the server's expiry tick and one round trip, TakeoverBound. Close
// releases a held lease at once (a CAS delete, bounded by ctx and TTL/3),
// so a clean shutdown hands over without waiting for the TTL; Release does
// the same while the node keeps running, and keeps it out of the campaign
// for a while (a holder that cannot do the lease's work hands it over).
type Lease struct {
	b     *natskv.Bucket
	cfg   LeaseConfig
	log   *slog.Logger
	token string

	mu          sync.Mutex // guards the fields below
	held        bool
	rev         uint64    // the key's revision we wrote last, while held
	validUntil  time.Time // held is believed until then
	since       time.Time
	subscribers []chan bool
	closed      bool
	outUntil    time.Time // after Release: no acquisition before then

	// writeMu serialises the key's writes (acquire, renew, Release), so a
	// release never races a renewal of the revision it deletes.
	writeMu sync.Mutex

	poke   chan struct{} // a watch event: try to acquire now
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// TakeoverBound returns the longest a lease stays unheld after its holder
// stopped renewing, for a lease of ttl: the TTL itself, the server's
// expiry tick (at most a second) and one acquisition, with a second's
// margin for a loaded machine.
func TakeoverBound(ttl time.Duration) time.Duration { return ttl + 2*time.Second }

// OpenLease opens (creating it if missing) the lease bucket and starts
// campaigning for cfg.Name. It returns at once; Held and Changes tell
// when the lease is gained or lost.
func OpenLease(ctx context.Context, cfg LeaseConfig) (*Lease, error) {
	if cfg.JetStream == nil || cfg.Name == "" || cfg.Holder == "" {
		return nil, errors.New("cluster: OpenLease: JetStream, Name and Holder are required")
	}
	if cfg.Bucket == "" {
		cfg.Bucket = DefaultLeaseBucket
	}
	if cfg.TTL == 0 {
		cfg.TTL = DefaultLeaseTTL
	}
	if cfg.TTL < time.Second {
		return nil, fmt.Errorf("cluster: OpenLease: TTL %v is below the server's one-second resolution", cfg.TTL)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	b, err := natskv.Open(ctx, cfg.JetStream, natskv.BucketConfig{Name: cfg.Bucket, Replicas: cfg.Replicas,
		TTL: cfg.TTL, LimitMarkerTTL: cfg.TTL, Schema: natskv.Schema{Kind: "lease", Version: leaseSchema}})
	if err != nil {
		return nil, fmt.Errorf("cluster: lease: %w", err)
	}
	st, err := b.KV.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("cluster: lease: %w", err)
	}
	if st.TTL() != cfg.TTL {
		return nil, fmt.Errorf("cluster: lease bucket %s has TTL %v, this node is configured with %v: give every node the same lease TTL",
			cfg.Bucket, st.TTL(), cfg.TTL)
	}
	tok := make([]byte, 8)
	_, _ = rand.Read(tok)
	l := &Lease{b: b, cfg: cfg, token: hex.EncodeToString(tok), poke: make(chan struct{}, 1),
		log: cfg.Logger.With("component", "lease", "lease", cfg.Name, "node", cfg.Holder)}
	w, err := b.KV.Watch(ctx, cfg.Name, jetstream.UpdatesOnly(), jetstream.MetaOnly())
	if err != nil {
		return nil, fmt.Errorf("cluster: lease: watch %s: %w", cfg.Name, err)
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	l.cancel = cancel
	l.wg.Go(func() { l.watch(runCtx, w) })
	l.wg.Go(func() { l.run(runCtx) })
	return l, nil
}

// Held reports whether this node holds the lease now.
func (l *Lease) Held() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.held && time.Now().Before(l.validUntil)
}

// Changes returns a channel that receives true when the lease is gained
// and false when it is lost (buffered; a slow reader misses nothing but
// intermediate flips, and Held is always current).
func (l *Lease) Changes() <-chan bool {
	ch := make(chan bool, 16)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.subscribers = append(l.subscribers, ch)
	return ch
}

// Info returns the lease's current record: its holder, or false when no
// one holds it.
func (l *Lease) Info(ctx context.Context) (LeaseInfo, bool, error) {
	e, err := l.b.Read(ctx, l.cfg.Name)
	if err != nil || e.Rev == 0 {
		return LeaseInfo{}, false, err
	}
	var info LeaseInfo
	if err := json.Unmarshal(e.Value, &info); err != nil {
		return LeaseInfo{}, false, fmt.Errorf("cluster: lease %s: %w", l.cfg.Name, err)
	}
	return info, true, nil
}

// watch pokes the campaign when the key changes (a release or an expiry
// marker), so a candidate acquires at once instead of at its next try.
func (l *Lease) watch(ctx context.Context, w jetstream.KeyWatcher) {
	defer natskv.StopWatch(w)
	for {
		select {
		case <-ctx.Done():
			return
		case e, ok := <-w.Updates():
			if !ok {
				return
			}
			if e != nil && e.Operation() != jetstream.KeyValuePut {
				select {
				case l.poke <- struct{}{}:
				default:
				}
			}
		}
	}
}

// run is the campaign: acquire when free, renew every TTL/3 while held.
func (l *Lease) run(ctx context.Context) {
	interval := l.cfg.TTL / 3
	for {
		wait := interval
		l.writeMu.Lock()
		if l.Held() {
			l.renew(ctx)
		} else if out := l.stayingOut(); out > 0 {
			wait = min(out, interval)
		} else {
			l.acquire(ctx)
		}
		l.writeMu.Unlock()
		l.expireBelief()
		select {
		case <-ctx.Done():
			return
		case <-l.poke:
		case <-time.After(wait):
		}
	}
}

// stayingOut is how long this node still stays out of the campaign after
// a Release (0: it campaigns).
func (l *Lease) stayingOut() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	return time.Until(l.outUntil)
}

// acquire takes the key if no one holds it.
func (l *Lease) acquire(ctx context.Context) bool {
	actx, cancel := context.WithTimeout(ctx, l.cfg.TTL/3)
	defer cancel()
	e, err := l.b.Read(actx, l.cfg.Name)
	if err != nil || e.Rev != 0 {
		return false
	}
	now := time.Now()
	raw, _ := json.Marshal(LeaseInfo{Holder: l.cfg.Holder, Token: l.token, Since: now.UTC()})
	rev, err := l.b.Apply(actx, natskv.Op{Key: l.cfg.Name, Value: raw, Check: true, Expect: e.Last})
	if err != nil {
		return false
	}
	l.set(true, rev, now, now)
	return true
}

// renew rewrites the key with a compare-and-set on our last revision.
func (l *Lease) renew(ctx context.Context) {
	l.mu.Lock()
	rev, since := l.rev, l.since
	l.mu.Unlock()
	actx, cancel := context.WithTimeout(ctx, l.cfg.TTL/3)
	defer cancel()
	sent := time.Now()
	raw, _ := json.Marshal(LeaseInfo{Holder: l.cfg.Holder, Token: l.token, Since: since.UTC()})
	next, err := l.b.Apply(actx, natskv.Op{Key: l.cfg.Name, Value: raw, Check: true, Expect: rev})
	switch {
	case err == nil:
		l.set(true, next, sent, since)
	case errors.Is(err, natskv.ErrConflict):
		l.log.Warn("lease lost: the key changed", "err", err)
		l.set(false, 0, time.Time{}, time.Time{})
	default:
		// Not renewed; the belief ends by itself at validUntil.
		l.log.Warn("lease renewal failed", "err", err)
	}
}

// set records the lease's state after a write sent at sent, and tells the
// subscribers of a change.
func (l *Lease) set(held bool, rev uint64, sent, since time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	was := l.held && time.Now().Before(l.validUntil)
	l.held, l.rev, l.since = held, rev, since
	if held {
		l.validUntil = sent.Add(l.cfg.TTL - l.cfg.TTL/10)
	} else {
		l.validUntil = time.Time{}
	}
	if now := held && time.Now().Before(l.validUntil); now != was {
		if now {
			l.log.Info("lease gained")
		} else {
			l.log.Info("lease lost")
		}
		l.notify(now)
	}
}

// expireBelief ends a belief that passed validUntil without renewal.
func (l *Lease) expireBelief() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.held && !time.Now().Before(l.validUntil) {
		l.held = false
		l.log.Warn("lease lost: not renewed in time")
		l.notify(false)
	}
}

// notify sends v to every subscriber without blocking. The caller holds mu.
func (l *Lease) notify(v bool) {
	for _, ch := range l.subscribers {
		select {
		case ch <- v:
		default:
		}
	}
}

// Release gives the lease up at once if this node holds it (a
// compare-and-set delete of the key, so the other candidates, watching it,
// acquire without waiting for the TTL) and keeps this node out of the
// campaign for stayOut, from the call: a holder that cannot do the lease's
// work hands it to a node that may do better, and campaigns again later.
// Held is false when Release returns, whatever the error. ctx bounds the
// delete (and at most TTL/3); when it fails the key expires by itself
// after the TTL. It reports whether the lease was held.
func (l *Lease) Release(ctx context.Context, stayOut time.Duration) (bool, error) {
	l.writeMu.Lock()
	defer l.writeMu.Unlock()
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return false, ErrClosed
	}
	held, rev := l.held, l.rev
	l.outUntil = time.Now().Add(stayOut)
	l.mu.Unlock()
	if !held {
		return false, nil
	}
	l.set(false, 0, time.Time{}, time.Time{})
	l.log.Info("lease released", "stay_out", stayOut)
	ctx, cancel := context.WithTimeout(ctx, l.cfg.TTL/3)
	defer cancel()
	if _, err := l.b.Apply(ctx, natskv.Op{Key: l.cfg.Name, Delete: true, Check: true, Expect: rev}); err != nil && !errors.Is(err, natskv.ErrConflict) {
		return true, fmt.Errorf("cluster: release lease %s: %w", l.cfg.Name, err)
	}
	return true, nil
}

// Close stops campaigning and, if the lease is held, releases it (a
// compare-and-set delete), so another node takes over at once. ctx bounds
// the release. It is idempotent.
func (l *Lease) Close(ctx context.Context) error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	l.mu.Unlock()
	l.cancel()
	l.wg.Wait()
	l.mu.Lock()
	held, rev := l.held, l.rev
	l.held, l.validUntil = false, time.Time{}
	if held {
		l.notify(false)
	}
	l.mu.Unlock()
	if !held {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, l.cfg.TTL/3) // NATS may be gone: the key then expires by itself
	defer cancel()
	if _, err := l.b.Apply(ctx, natskv.Op{Key: l.cfg.Name, Delete: true, Check: true, Expect: rev}); err != nil && !errors.Is(err, natskv.ErrConflict) {
		return fmt.Errorf("cluster: release lease %s: %w", l.cfg.Name, err)
	}
	return nil
}
