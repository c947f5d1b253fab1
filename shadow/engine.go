package shadow

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/umbra-iot/umbra/device"
)

// Defaults for Config's zero values.
const (
	DefaultMaxDocumentSize = 8 << 10
	DefaultMaxDepth        = 8
	DefaultMaxPayload      = 64 << 10
	DefaultDeviceRate      = 20
	DefaultDeviceBurst     = 40
	DefaultMaxInFlight     = 10
	DefaultDedupeWindow    = time.Minute
	// DefaultMaxNamedShadows is how many named shadows one device may
	// have by default.
	DefaultMaxNamedShadows = 10
	// DefaultDedupeMaxEntries and DefaultDedupeMaxBytes bound the retry
	// cache. An entry costs 192 bytes plus its device ID and clientToken
	// (at most 384 bytes), so with short IDs and tokens the entry cap
	// binds first and the byte cap only with long ones.
	DefaultDedupeMaxEntries       = 100_000
	DefaultDedupeMaxBytes   int64 = 32 << 20
	// DefaultMaxReply is the broker's default packet limit (128 KiB) less
	// room for the topic and the packet's headers.
	DefaultMaxReply = 128<<10 - 512
	// MinMaxReply is the smallest Config.MaxReply: the short form of an
	// accepted message always fits.
	MinMaxReply = 512
)

// Config configures an Engine. Zero values mean the documented defaults.
type Config struct {
	// Store holds the shadows (see Store; shadow/boltstore opens the
	// bbolt file). Required. The engine never closes it: whoever opened
	// it closes it after Close (or after an Open that failed).
	Store Store
	// Publisher receives every response, delta and documents message. Nil
	// means responses are only returned to in-process callers.
	Publisher Publisher
	// MaxDocumentSize caps the compact JSON size of desired plus reported
	// after a merge (413 beyond it).
	MaxDocumentSize int
	// MaxDepth caps nesting inside desired and reported (400 beyond it).
	MaxDepth int
	// MaxPayload caps a request body (413 beyond it).
	MaxPayload int
	// DeviceRate and DeviceBurst configure a per-device token bucket over all
	// requests (429 beyond it). A negative DeviceRate disables the limit.
	DeviceRate  float64
	DeviceBurst int
	// MaxInFlight caps the requests one device may have in progress at once
	// (429 beyond it). Negative disables the limit.
	MaxInFlight int
	// MaxNamedShadows caps the named shadows one device may have (besides
	// its classic shadow): an update that would create one more is
	// rejected with 400 (ErrShadowLimit) and changes nothing. A deleted
	// named shadow no longer counts; its tombstone (which keeps its
	// version, see Delete) is dropped when the device creates another
	// named shadow and would otherwise hold more than MaxNamedShadows
	// documents, so a device never stores more than 1 + MaxNamedShadows.
	// The size, depth and payload limits apply to each shadow, and
	// DeviceRate, DeviceBurst and MaxInFlight to all of a device's shadows
	// together. Default DefaultMaxNamedShadows; negative allows none.
	MaxNamedShadows int
	// DedupeWindow is how long the result of an update is remembered by
	// (device, clientToken, payload): a retry within the window gets the
	// original answer instead of being applied twice, as long as the
	// shadow is still at the version that update produced. Negative
	// disables.
	DedupeWindow time.Duration
	// DedupeMaxEntries and DedupeMaxBytes bound the retry cache behind
	// DedupeWindow: at most one entry per device (its last update), at
	// most DedupeMaxEntries entries and DedupeMaxBytes estimated heap
	// bytes in all; beyond either, the oldest entries are evicted (a
	// retry of an evicted update is applied again). Defaults
	// DefaultDedupeMaxEntries and DefaultDedupeMaxBytes; DedupeMaxBytes
	// must be at least 1 KiB.
	DedupeMaxEntries int
	DedupeMaxBytes   int64
	// MaxReply is the largest accepted message the engine publishes for an
	// update or a get, in bytes; it must fit in the broker's packet limit
	// (with room for the topic). An update whose accepted message would be
	// larger is still applied and is answered with the short form
	// (version, timestamp, clientToken and "stateOmitted":true); a get over
	// MQTT whose document would be larger is rejected with 413. Default
	// DefaultMaxReply; at least MinMaxReply.
	MaxReply int
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Logger receives the engine's logs; nil discards them.
	Logger *slog.Logger
	// Observe, when set, is called with the outcome of every request (code
	// 200 for accepted) and its latency. Used for metrics. (Commits are
	// observed by the Store: see shadow/boltstore.Config.CommitObserved.)
	Observe func(op Op, code int, d time.Duration)
	// OnChange, when set, is called after every committed change of a
	// device's classic shadow (update or delete), after its messages were
	// published, with the device and the new version; named shadows do not
	// call it (the rollout planner reads and writes only the classic
	// shadow). It runs on the request's goroutine and must not block:
	// consumers such as the rollout planner treat it as a hint and re-read
	// the document.
	OnChange func(id device.ID, v Version)
}

// validate reports the first invalid field of a defaulted Config.
func (c *Config) validate() error {
	switch {
	case c.Store == nil:
		return errors.New("shadow: Config.Store is required")
	case c.DedupeMaxEntries < 1:
		return fmt.Errorf("shadow: Config.DedupeMaxEntries %d: must be positive", c.DedupeMaxEntries)
	case c.DedupeMaxBytes < 1<<10:
		return fmt.Errorf("shadow: Config.DedupeMaxBytes %d: must be at least 1024", c.DedupeMaxBytes)
	case c.MaxReply < MinMaxReply:
		return fmt.Errorf("shadow: Config.MaxReply %d: must be at least %d", c.MaxReply, MinMaxReply)
	}
	return nil
}

func (c *Config) setDefaults() {
	if c.MaxDocumentSize == 0 {
		c.MaxDocumentSize = DefaultMaxDocumentSize
	}
	if c.MaxDepth == 0 {
		c.MaxDepth = DefaultMaxDepth
	}
	if c.MaxPayload == 0 {
		c.MaxPayload = DefaultMaxPayload
	}
	if c.DeviceRate == 0 {
		c.DeviceRate = DefaultDeviceRate
	}
	if c.DeviceBurst == 0 {
		c.DeviceBurst = DefaultDeviceBurst
	}
	if c.MaxInFlight == 0 {
		c.MaxInFlight = DefaultMaxInFlight
	}
	if c.MaxNamedShadows == 0 {
		c.MaxNamedShadows = DefaultMaxNamedShadows
	}
	if c.DedupeWindow == 0 {
		c.DedupeWindow = DefaultDedupeWindow
	}
	if c.DedupeMaxEntries == 0 {
		c.DedupeMaxEntries = DefaultDedupeMaxEntries
	}
	if c.DedupeMaxBytes == 0 {
		c.DedupeMaxBytes = DefaultDedupeMaxBytes
	}
	if c.MaxReply == 0 {
		c.MaxReply = DefaultMaxReply
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Engine is the device shadow engine. It is safe for concurrent use.
type Engine struct {
	cfg    Config
	log    *slog.Logger
	store  Store
	pub    Publisher
	subs   subscriberChecker // nil if pub cannot tell
	direct ClientPublisher   // nil if pub cannot deliver to one client

	mu      sync.Mutex // guards devices and closed
	devices map[device.ID]*deviceState
	closed  bool
	active  sync.WaitGroup // requests in progress

	retry *retryCache // nil when DedupeWindow is negative

	// ctx is the context of requests that bring none (MQTT requests and
	// subscriptions); Close cancels it when its own ctx ends first, so
	// they give up instead of waiting.
	ctx    context.Context
	cancel context.CancelFunc

	quit chan struct{}
	wg   sync.WaitGroup

	closeOnce sync.Once
	closeErr  error

	stats struct {
		accepted, rejected, published, publishErrors atomic.Uint64
		namedLimited                                 atomic.Uint64 // ErrShadowLimit rejections
		named                                        atomic.Int64  // live named shadows
	}
}

// Open starts an engine on cfg.Store, which stays the caller's to close.
// It reads the store once, to count the named shadows, and returns ctx's
// error (wrapped) if ctx ends first.
func Open(ctx context.Context, cfg Config) (*Engine, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	e := &Engine{
		cfg:     cfg,
		log:     cfg.Logger.With("component", "shadow"),
		store:   cfg.Store,
		pub:     cfg.Publisher,
		devices: make(map[device.ID]*deviceState),
		quit:    make(chan struct{}),
	}
	if cfg.DedupeWindow > 0 {
		e.retry = newRetryCache(cfg.DedupeWindow, cfg.DedupeMaxEntries, cfg.DedupeMaxBytes)
	}
	named, err := e.countNamed(ctx)
	if err != nil {
		return nil, fmt.Errorf("shadow: count named shadows: %w", err)
	}
	e.stats.named.Store(named)
	if sc, ok := cfg.Publisher.(subscriberChecker); ok {
		e.subs = sc
	}
	if cp, ok := cfg.Publisher.(ClientPublisher); ok {
		e.direct = cp
	}
	e.ctx, e.cancel = context.WithCancel(context.WithoutCancel(ctx))
	e.wg.Go(e.housekeeping)
	return e, nil
}

// Close stops accepting requests (they are rejected with 503, ErrClosed)
// and waits for the ones in progress to commit and publish. It is bounded
// by ctx: when ctx ends first, requests still in progress give up (503)
// unless their commit is already in flight, and Close returns an error
// wrapping ctx's error; the caller then closes the store with a done ctx,
// which refuses the writes it has not started to commit (see Store). A
// close that leaves nothing behind returns nil even with ctx done. It is
// idempotent; later calls return the first call's result. It does not
// close the store.
func (e *Engine) Close(ctx context.Context) error {
	e.closeOnce.Do(func() {
		e.mu.Lock()
		e.closed = true
		e.mu.Unlock()
		var waitErr error
		if !waitCtx(ctx, &e.active) {
			waitErr = fmt.Errorf("shadow: close: requests still in progress: %w", ctx.Err())
			e.log.Warn("closing with requests still in progress", "err", ctx.Err())
			e.cancel()
		}
		close(e.quit)
		e.wg.Wait()
		e.cancel()
		e.closeErr = waitErr
	})
	return e.closeErr
}

// waitCtx waits for wg until ctx ends and reports whether wg finished; a
// wg that is already done counts as finished even if ctx is too.
func waitCtx(ctx context.Context, wg *sync.WaitGroup) bool {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
		return true
	default:
	}
	select {
	case <-done:
		return true
	case <-ctx.Done():
		return false
	}
}

// housekeeping prunes idle per-device state and expired retry-cache entries.
func (e *Engine) housekeeping() {
	t := time.NewTicker(30 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-e.quit:
			return
		case <-t.C:
			now := e.cfg.Now()
			e.mu.Lock()
			for id, ds := range e.devices {
				if ds.inFlight == 0 && now.Sub(ds.last) > time.Minute {
					delete(e.devices, id)
				}
			}
			e.mu.Unlock()
			if e.retry != nil {
				e.retry.prune(now)
			}
		}
	}
}

// Stats is a snapshot of the engine's counters.
type Stats struct {
	Accepted, Rejected       uint64
	Published, PublishErrors uint64
	// Commits, DocumentsWritten and CommitTime are the Store's commit
	// counters (CommitStats: transactions, updates and deletes written,
	// time spent); zero with a Store that does not report them.
	Commits, DocumentsWritten uint64
	CommitTime                time.Duration
	RetryCache                RetryCacheStats
	// NamedShadows is how many named shadows exist now (deleted ones not
	// counted), and NamedLimitRejected how many updates were refused
	// since Open because they would have created a device's
	// Config.MaxNamedShadows + 1st.
	NamedShadows       int64
	NamedLimitRejected uint64
}

// Stats returns the engine's counters.
func (e *Engine) Stats() Stats {
	st := Stats{
		Accepted:           e.stats.accepted.Load(),
		Rejected:           e.stats.rejected.Load(),
		Published:          e.stats.published.Load(),
		PublishErrors:      e.stats.publishErrors.Load(),
		NamedShadows:       e.stats.named.Load(),
		NamedLimitRejected: e.stats.namedLimited.Load(),
	}
	if e.retry != nil {
		st.RetryCache = e.retry.stats()
	}
	if cs, ok := e.store.(commitStatter); ok {
		c := cs.CommitStats()
		st.Commits, st.DocumentsWritten, st.CommitTime = c.Commits, c.Writes, c.Time
	}
	return st
}
