package natsbridge

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/umbra-iot/umbra/broker"
)

// Defaults applied by Open to zero Config fields.
const (
	// DefaultPrefix starts every subject the bridge uses.
	DefaultPrefix = "umbra"
	// DefaultMaxSubscriptions caps the NATS subscriptions a node holds
	// for its clients' filters: about five filters each for 200,000
	// devices.
	DefaultMaxSubscriptions = 1_000_000
	// DefaultOutboundBuffer is how many messages wait for the NATS
	// connection before further ones are dropped: about a second of a
	// busy node's traffic.
	DefaultOutboundBuffer = 65536
	// DefaultInboundBuffer is how many messages from NATS wait for local
	// delivery before NATS drops further ones (a slow consumer).
	DefaultInboundBuffer = 65536
	// DefaultReconnectWait is the pause between reconnection attempts.
	DefaultReconnectWait = 250 * time.Millisecond
	// DefaultWriteTimeout bounds a write to NATS: a link that takes
	// nothing for that long is dropped and redialled.
	DefaultWriteTimeout = 5 * time.Second
	// DefaultTakeoverTimeout bounds how long a connecting client waits for
	// another node to release its session.
	DefaultTakeoverTimeout = 3 * time.Second

	// logKeyComponent is the slog attribute naming the component.
	logKeyComponent = "component"
	// watchInterval is how often the connection state is sampled for the
	// paths that must not wait for nats.go's lock (see up).
	watchInterval = 100 * time.Millisecond
	// maxTakeovers bounds the takeover requests handled at once.
	maxTakeovers = 64
	// maxOrigins bounds the origins whose last sequence number is kept
	// for deduplication (nodes, and their restarts).
	maxOrigins = 4096
)

// ErrInvalidConfig is wrapped by Open when Config is invalid.
var ErrInvalidConfig = errors.New("natsbridge: invalid config")

// nodeIDPattern is what a node ID may hold: it travels in a header and in
// logs.
var nodeIDPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// Config configures a Bridge. Zero fields take the documented defaults.
type Config struct {
	// Broker is the node's broker. Required.
	Broker *broker.Server
	// NodeID names this node; unique in the cluster: 1 to 64 of A-Z, a-z,
	// 0-9, '-' and '_'. Required.
	NodeID string
	// URL lists the NATS servers, comma-separated
	// ("nats://h1:4222,nats://h2:4222"). Required unless Conn is set.
	URL string
	// Conn, if set, is the NATS connection to use instead of dialing URL.
	// The caller owns it (it closes it after Close), should let it
	// reconnect forever (nats.MaxReconnects(-1)), and logs its events:
	// Stats.Reconnects stays 0, and NATS's slow-consumer drops are not in
	// Stats.InDropped.
	Conn *nats.Conn
	// Prefix starts every subject the bridge publishes or subscribes to:
	// <Prefix>.m.<topic levels> for messages, <Prefix>.s.<client ID>
	// for session takeovers. Nodes of one cluster use the same. Default
	// DefaultPrefix.
	Prefix string
	// MaxSubscriptions caps the NATS subscriptions the node holds for its
	// clients' filters (one or two per distinct filter); a filter beyond
	// it is not served from other nodes (Stats.SubscriptionsRefused,
	// logged once per episode). Default DefaultMaxSubscriptions.
	MaxSubscriptions int
	// OutboundBuffer is how many published messages may wait for the NATS
	// connection; beyond it they are dropped (Stats.OutDropped), so that
	// a slow or lost NATS link never slows a local client. Default
	// DefaultOutboundBuffer.
	OutboundBuffer int
	// InboundBuffer is how many messages from NATS may wait for local
	// delivery; beyond it NATS drops them (Stats.InDropped). Default
	// DefaultInboundBuffer.
	InboundBuffer int
	// ReconnectWait is the pause between attempts to reconnect to NATS
	// (with URL; the bridge retries forever). Default
	// DefaultReconnectWait.
	ReconnectWait time.Duration
	// WriteTimeout bounds each write to NATS (with URL): a link that
	// accepts nothing for that long is dropped and redialled, so a stalled
	// link holds the bridge's NATS connection at most that long. Default
	// DefaultWriteTimeout.
	WriteTimeout time.Duration
	// TakeoverTimeout bounds how long a connecting client waits for
	// another node to release its session (at most the broker's
	// ConnectTimeout); then the CONNECT proceeds and the other session
	// may remain. Default DefaultTakeoverTimeout.
	TakeoverTimeout time.Duration
	// JetStream, if set, makes retained messages cluster-wide: they are
	// kept in the RetainedBucket key-value bucket, written by the node
	// where they are published and applied on every node (see the
	// package documentation, "Retained messages"). Nil: each node keeps
	// the retained messages it receives.
	JetStream jetstream.JetStream
	// RetainedBucket is the retained messages' bucket. Default
	// DefaultRetainedBucket.
	RetainedBucket string
	// Replicas is the bucket's replica count when Open creates it.
	// Default 1.
	Replicas int
	// Logger receives the bridge's logs. Nil discards.
	Logger *slog.Logger
}

func (c *Config) setDefaults() {
	if c.Prefix == "" {
		c.Prefix = DefaultPrefix
	}
	if c.MaxSubscriptions == 0 {
		c.MaxSubscriptions = DefaultMaxSubscriptions
	}
	if c.OutboundBuffer == 0 {
		c.OutboundBuffer = DefaultOutboundBuffer
	}
	if c.InboundBuffer == 0 {
		c.InboundBuffer = DefaultInboundBuffer
	}
	if c.ReconnectWait == 0 {
		c.ReconnectWait = DefaultReconnectWait
	}
	if c.WriteTimeout == 0 {
		c.WriteTimeout = DefaultWriteTimeout
	}
	if c.TakeoverTimeout == 0 {
		c.TakeoverTimeout = DefaultTakeoverTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.RetainedBucket == "" {
		c.RetainedBucket = DefaultRetainedBucket
	}
}

var prefixPattern = regexp.MustCompile(`^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$`)

func (c *Config) validate() error {
	switch {
	case c.Broker == nil:
		return fmt.Errorf("%w: no Broker", ErrInvalidConfig)
	case !nodeIDPattern.MatchString(c.NodeID):
		return fmt.Errorf("%w: NodeID %q: want 1 to 64 of A-Z a-z 0-9 - _", ErrInvalidConfig, c.NodeID)
	case c.Conn == nil && strings.TrimSpace(c.URL) == "":
		return fmt.Errorf("%w: no URL", ErrInvalidConfig)
	case !prefixPattern.MatchString(c.Prefix):
		return fmt.Errorf("%w: Prefix %q: want dot-separated tokens of A-Z a-z 0-9 - _", ErrInvalidConfig, c.Prefix)
	case c.MaxSubscriptions < 0 || c.OutboundBuffer < 0 || c.InboundBuffer < 0 || c.ReconnectWait < 0 ||
		c.WriteTimeout < 0 || c.TakeoverTimeout < 0:
		return fmt.Errorf("%w: negative MaxSubscriptions, OutboundBuffer, InboundBuffer, ReconnectWait, WriteTimeout or TakeoverTimeout",
			ErrInvalidConfig)
	}
	return nil
}

// Stats are a Bridge's counters. Counters marked "since Open" only grow.
type Stats struct {
	Connected            bool  // connected to NATS now
	OutMessages          int64 // messages published to NATS, since Open
	OutDropped           int64 // messages not published: outbound buffer full or NATS refused them, since Open
	InMessages           int64 // messages from other nodes delivered to local clients, since Open
	InDropped            int64 // messages from NATS dropped: inbound buffer full (NATS slow consumer), undecodable or refused by the broker, since Open
	Duplicates           int64 // copies of one message received through overlapping subscriptions and dropped, since Open
	Subscriptions        int64 // NATS subscriptions held for local clients' filters, now
	SubscriptionsRefused int64 // NATS subscriptions not made for MaxSubscriptions, since Open
	Sessions             int64 // client sessions this node holds, each with its takeover subscription, now
	TakeoversSent        int64 // connects that asked another node to release the client's session and got an answer, since Open
	TakeoversReleased    int64 // sessions released here because the client connected to another node, since Open
	Reconnects           int64 // reconnections to NATS, since Open (with Config.URL; a Config.Conn's are its owner's)
	RetainedStored       int64 // retained publishes of this node written to the shared bucket, since Open (Config.JetStream)
	RetainedFailed       int64 // retained publishes of this node not written: queue full (the bucket is behind), since Open
	RetainedApplied      int64 // retained messages (and clearings) applied here from the shared bucket, since Open
	RetainedCorrupt      int64 // records of the shared bucket that could not be decoded or applied: skipped, since Open
	HandoffsSent         int64 // persistent sessions handed to the node their client connected to, since Open
	HandoffsReceived     int64 // persistent sessions handed here by another node, since Open
	HandoffRefused       int64 // handed-off sessions that could not be decoded: the client started fresh, since Open
	HandoffDropped       int64 // queued messages of handed-off sessions left out: over NATS's maximum payload, since Open
	HandoffObjects       int64 // handed-off sessions over NATS's maximum payload sent through the handoff bucket, since Open
	TakeoverTimeouts     int64 // session takeover requests of connecting clients that got no answer within TakeoverTimeout, since Open
}

// Bridge carries one node's MQTT traffic to the other nodes over NATS and
// theirs to it. Create it with Open.
type Bridge struct {
	cfg    Config
	log    *slog.Logger
	brk    *broker.Server
	nc     *nats.Conn  // messages: publishes, interest and queue subscriptions
	ctl    *nats.Conn  // sessions: takeover requests, subscriptions and replies (nc with Config.Conn)
	ownNC  bool        // the bridge dialed nc and ctl and closes them
	up     atomic.Bool // nc is connected, sampled: nats.go answers under the lock a blocked write holds
	origin string      // NodeID/boot: tells this incarnation's messages apart
	msgPfx string      // cfg.Prefix + ".m"
	sesPfx string      // cfg.Prefix + ".s."

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	out   chan outbound  // published here, for NATS
	in    chan *nats.Msg // from plain subscriptions
	share chan *nats.Msg // from queue subscriptions
	takes chan *nats.Msg // takeover requests

	ret      *retained // shared retained messages; nil without Config.JetStream
	interest interest  // the filters' NATS subscriptions
	sessions sessions  // the takeover subscriptions
	seq      uint64    // last sequence number published; owned by the outbound loop

	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error

	outMessages, outDropped, inMessages, inDropped, duplicates     atomic.Int64
	refused, takeoversSent, released, reconnects                   atomic.Int64
	handoffsSent, handoffsReceived, handoffRefused, handoffDropped atomic.Int64
	handoffObjects                                                 atomic.Int64 // sessions sent through the handoff bucket
	takeoverTimeouts                                               atomic.Int64 // takeover requests without an answer
	handoffs                                                       handoffStore
	dropping                                                       atomic.Bool // an outbound drop episode was logged

	slowMu   sync.Mutex                      // guards slow and slowGone
	slow     map[*nats.Subscription]struct{} // subscriptions that were slow consumers
	slowGone int64                           // drops of those since unsubscribed
}

// Open connects to NATS (with Config.URL, failing at once if no server is
// reachable; afterwards it reconnects by itself) and attaches the bridge to
// the broker with broker.Server.SetRelay. Call it right after broker.Open,
// before clients connect.
func Open(ctx context.Context, cfg Config) (*Bridge, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("natsbridge: open: %w", err)
	}
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	var boot [4]byte
	_, _ = rand.Read(boot[:])
	b := &Bridge{
		cfg:    cfg,
		log:    cfg.Logger.With(logKeyComponent, "natsbridge", "node", cfg.NodeID),
		brk:    cfg.Broker,
		origin: cfg.NodeID + "/" + hex.EncodeToString(boot[:]),
		msgPfx: cfg.Prefix + ".m",
		sesPfx: cfg.Prefix + ".s.",
		out:    make(chan outbound, cfg.OutboundBuffer),
		in:     make(chan *nats.Msg, cfg.InboundBuffer),
		share:  make(chan *nats.Msg, cfg.InboundBuffer),
		takes:  make(chan *nats.Msg, maxTakeovers),
	}
	b.interest.init(b)
	b.sessions.init()
	b.sessions.m = make(map[string]*nats.Subscription)
	b.slow = make(map[*nats.Subscription]struct{})
	b.ctx, b.cancel = context.WithCancel(context.WithoutCancel(ctx))
	if cfg.Conn != nil {
		b.nc, b.ctl = cfg.Conn, cfg.Conn
	} else {
		// Two connections: a data link backed up by a burst never delays
		// the session takeovers that connecting clients wait for.
		var err error
		if b.nc, err = b.dial("messages", true); err != nil {
			b.cancel()
			return nil, err
		}
		if b.ctl, err = b.dial("sessions", false); err != nil {
			b.nc.Close()
			b.cancel()
			return nil, err
		}
		b.ownNC = true
	}
	b.up.Store(b.nc.IsConnected())
	if cfg.JetStream != nil {
		feed, err := b.openRetained(ctx)
		if err != nil {
			if b.ownNC {
				b.nc.Close()
				b.ctl.Close()
			}
			b.cancel()
			return nil, err
		}
		b.wg.Add(2)
		go func() {
			defer b.wg.Done()
			feed.Follow(b.ctx, func(e jetstream.KeyValueEntry) { b.applyRetained(e) }, nil)
		}()
		go func() { defer b.wg.Done(); b.retainedWriteLoop() }()
	}
	b.wg.Add(7)
	go func() { defer b.wg.Done(); b.watch() }()
	go func() { defer b.wg.Done(); b.outboundLoop() }()
	go func() { defer b.wg.Done(); b.inboundLoop(b.in, "") }()
	go func() { defer b.wg.Done(); b.inboundLoop(b.share, "share") }()
	go func() { defer b.wg.Done(); b.interest.loop() }()
	go func() { defer b.wg.Done(); b.sessions.loop(b) }()
	go func() { defer b.wg.Done(); b.takeoverLoop() }()
	if err := b.brk.SetRelay((*relay)(b)); err != nil {
		_ = b.Close(ctx)
		return nil, fmt.Errorf("natsbridge: attach: %w", err)
	}
	b.log.Info("cluster bridge connected", "nats", b.nc.ConnectedUrlRedacted(), "origin", b.origin)
	return b, nil
}

// Close detaches the bridge from the broker, stops its goroutines and
// removes its NATS subscriptions (closing the connection it dialed). It is
// idempotent; ctx bounds the wait for the NATS connection to flush.
func (b *Bridge) Close(ctx context.Context) error {
	b.closeOnce.Do(func() {
		b.closed.Store(true)
		if err := b.brk.SetRelay(nil); err != nil && !errors.Is(err, broker.ErrClosed) {
			b.closeErr = fmt.Errorf("natsbridge: detach: %w", err)
		}
		b.cancel()
		b.wg.Wait()
		b.interest.unsubscribeAll()
		b.sessions.unsubscribeAll()
		if b.ownNC {
			flushCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
			if ctx.Err() == nil {
				_ = b.nc.FlushWithContext(flushCtx)
			}
			cancel()
			b.nc.Close()
			b.ctl.Close()
		}
	})
	return b.closeErr
}

// Stats returns a snapshot of the bridge's counters; cheap enough for a
// metrics scrape.
func (b *Bridge) Stats() Stats {
	st := Stats{
		Connected:            b.up.Load(),
		OutMessages:          b.outMessages.Load(),
		OutDropped:           b.outDropped.Load(),
		InMessages:           b.inMessages.Load(),
		InDropped:            b.inDropped.Load() + b.natsDropped(),
		Duplicates:           b.duplicates.Load(),
		Subscriptions:        b.interest.held.Load(),
		SubscriptionsRefused: b.refused.Load(),
		Sessions:             b.sessions.n.Load(),
		TakeoversSent:        b.takeoversSent.Load(),
		TakeoversReleased:    b.released.Load(),
		Reconnects:           b.reconnects.Load(),
		HandoffsSent:         b.handoffsSent.Load(),
		HandoffsReceived:     b.handoffsReceived.Load(),
		HandoffRefused:       b.handoffRefused.Load(),
		HandoffDropped:       b.handoffDropped.Load(),
		HandoffObjects:       b.handoffObjects.Load(),
		TakeoverTimeouts:     b.takeoverTimeouts.Load(),
	}
	if r := b.ret; r != nil {
		st.RetainedStored, st.RetainedFailed = r.stored.Load(), r.failed.Load()
		st.RetainedApplied, st.RetainedCorrupt = r.applied.Load(), r.corrupt.Load()
	}
	return st
}

// dial opens one of the bridge's NATS connections; the messages one
// (data) reports its state changes.
func (b *Bridge) dial(name string, data bool) (*nats.Conn, error) {
	opts := []nats.Option{
		nats.Name("umbra " + b.cfg.NodeID + " " + name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(b.cfg.ReconnectWait),
		nats.ReconnectJitter(b.cfg.ReconnectWait/5, b.cfg.ReconnectWait/5),
		nats.PingInterval(5 * time.Second),
		nats.FlusherTimeout(b.cfg.WriteTimeout),
		nats.ErrorHandler(b.asyncError),
	}
	if data {
		opts = append(opts, nats.DisconnectErrHandler(b.disconnected), nats.ReconnectHandler(b.reconnected))
	}
	nc, err := nats.Connect(b.cfg.URL, opts...)
	if err != nil {
		return nil, fmt.Errorf("natsbridge: connect %s: %w", b.cfg.URL, err)
	}
	return nc, nil
}

// watch samples whether the messages connection is up, for Published
// and Connecting, which must not wait for nats.go's lock: a write blocked
// on a stalled link holds it for up to WriteTimeout.
func (b *Bridge) watch() {
	t := time.NewTicker(watchInterval)
	defer t.Stop()
	for {
		select {
		case <-b.ctx.Done():
			return
		case <-t.C:
			b.up.Store(b.nc.IsConnected())
		}
	}
}

func (b *Bridge) disconnected(_ *nats.Conn, err error) {
	b.up.Store(false)
	if b.closed.Load() {
		return
	}
	b.log.Warn("NATS connection lost: messages to and from other nodes are dropped until it returns", "error", err)
}

func (b *Bridge) reconnected(nc *nats.Conn) {
	b.up.Store(true)
	b.reconnects.Add(1)
	b.log.Info("NATS connection back", "nats", nc.ConnectedUrlRedacted())
}

func (b *Bridge) asyncError(_ *nats.Conn, sub *nats.Subscription, err error) {
	if errors.Is(err, nats.ErrSlowConsumer) && sub != nil {
		// An inbound channel was full: NATS dropped messages for sub,
		// counted in its Dropped, which Stats adds up.
		b.slowMu.Lock()
		b.slow[sub] = struct{}{}
		b.slowMu.Unlock()
		b.log.Warn("messages from other nodes dropped: local delivery is behind", "subject", sub.Subject)
		return
	}
	b.log.Warn("NATS error", "error", err)
}

// natsDropped returns the messages NATS dropped for the bridge's
// subscriptions that were slow consumers.
func (b *Bridge) natsDropped() int64 {
	b.slowMu.Lock()
	defer b.slowMu.Unlock()
	var n int64
	for sub := range b.slow {
		if d, err := sub.Dropped(); err == nil {
			n += int64(d)
		}
	}
	return n + b.slowGone
}
