package rolloutfeed

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/umbra-iot/umbra/internal/rolloutwire"
	"github.com/umbra-iot/umbra/rollout"
	"github.com/umbra-iot/umbra/wire"
)

// Errors returned by the Feed.
var (
	ErrClosed  = errors.New("rolloutfeed: closed")  // Sync after Close
	ErrInvalid = errors.New("rolloutfeed: invalid") // bad Config or rollout ID
)

// Defaults of Config.
const (
	DefaultStatusInterval = 500 * time.Millisecond
	DefaultQueueSize      = 4096
	DefaultKeepFinished   = 16
	DefaultStatusTimeout  = 5 * time.Second
)

// Filter matches every topic the feed publishes.
const Filter = "rollouts/#"

// EventsTopic returns the topic of rollout id's events, rollouts/<id>/events.
func EventsTopic(id string) string { return "rollouts/" + id + "/events" }

// StatusTopic returns the topic of rollout id's retained status,
// rollouts/<id>/status.
func StatusTopic(id string) string { return "rollouts/" + id + "/status" }

// Publisher publishes an MQTT message; *broker.Server satisfies it.
type Publisher interface {
	Publish(topic string, payload []byte, retain bool, qos byte) error
}

// Metrics receives the rollout gauges; *metrics.Metrics satisfies it.
type Metrics interface {
	SetRolloutDevices(rollout, state string, n int)
	DeleteRollout(rollout string)
}

// Config configures a Feed.
type Config struct {
	// Publisher publishes the events and statuses. Required.
	Publisher Publisher
	// Status returns a rollout's status, e.g. (*rollout.Planner).Get. It
	// is called from the feed's goroutine, never from OnEvent. Required.
	Status func(ctx context.Context, id string) (rollout.Status, error)
	// Metrics, when set, receives the per-state device counts.
	Metrics Metrics
	// Logger receives the feed's logs; nil discards them.
	Logger *slog.Logger
	// StatusInterval is the least time between two status fetches of one
	// rollout while events keep coming (created and state events fetch at
	// once). Default DefaultStatusInterval.
	StatusInterval time.Duration
	// StatusTimeout bounds one Status call. Default DefaultStatusTimeout.
	StatusTimeout time.Duration
	// QueueSize bounds the events waiting to be published; beyond it
	// OnEvent drops events. Default DefaultQueueSize.
	QueueSize int
	// KeepFinished is how many finished rollouts keep their gauges (the
	// most recently finished ones). 0 means DefaultKeepFinished; negative
	// deletes the gauges of a rollout as soon as it finishes.
	KeepFinished int
}

func (c *Config) setDefaults() error {
	switch {
	case c.Publisher == nil:
		return fmt.Errorf("%w: Config.Publisher is required", ErrInvalid)
	case c.Status == nil:
		return fmt.Errorf("%w: Config.Status is required", ErrInvalid)
	case c.StatusInterval < 0 || c.StatusTimeout < 0 || c.QueueSize < 0:
		return fmt.Errorf("%w: negative Config value", ErrInvalid)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.StatusInterval == 0 {
		c.StatusInterval = DefaultStatusInterval
	}
	if c.StatusTimeout == 0 {
		c.StatusTimeout = DefaultStatusTimeout
	}
	if c.QueueSize == 0 {
		c.QueueSize = DefaultQueueSize
	}
	switch {
	case c.KeepFinished == 0:
		c.KeepFinished = DefaultKeepFinished
	case c.KeepFinished < 0:
		c.KeepFinished = 0
	}
	return nil
}

const (
	logKeyRollout = "rollout"
	logKeyErr     = "err"
	logKeyTopic   = "topic"
)

// deviceStates lists every rollout.DeviceState, in order: those that
// MarshalText accepts.
var deviceStates = func() []rollout.DeviceState {
	var out []rollout.DeviceState
	for s := range rollout.DeviceState(255) {
		if _, err := s.MarshalText(); err != nil {
			break
		}
		out = append(out, s)
	}
	return out
}()

// Feed publishes rollout events and statuses. Create it with Open.
type Feed struct {
	cfg Config
	log *slog.Logger

	events chan item     // queued events, bounded by Config.QueueSize
	wake   chan struct{} // capacity 1: overflow has entries
	syncs  chan syncReq
	quit   chan struct{} // closed by Close

	mu       sync.Mutex          // guards overflow
	overflow map[string]struct{} // rollouts that lost events to a full queue

	dropped   atomic.Uint64
	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error

	ctx    context.Context // the feed's own, cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// Owned by the run goroutine.
	tracks     map[string]*track
	finished   []string // rollouts with final gauges, oldest first
	pubFailing bool     // the last publish failed
	flushCut   bool     // Close's context ended before the flush finished; read after wg.Wait
}

type item struct {
	id string
	ev rollout.Event
}

type syncReq struct {
	ids  []string
	done chan error // capacity 1
}

// track is a rollout whose status needs publishing.
type track struct {
	dirty  bool      // an event arrived since the last fetch
	urgent bool      // fetch without waiting for StatusInterval
	last   time.Time // last fetch
}

// Open validates cfg and starts the feed's goroutine. Errors wrap
// ErrInvalid.
func Open(ctx context.Context, cfg Config) (*Feed, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, fmt.Errorf("open: %w", err)
	}
	f := &Feed{
		cfg:      cfg,
		log:      cfg.Logger.With("component", "rolloutfeed"),
		events:   make(chan item, cfg.QueueSize),
		wake:     make(chan struct{}, 1),
		syncs:    make(chan syncReq),
		quit:     make(chan struct{}),
		overflow: map[string]struct{}{},
		tracks:   map[string]*track{},
	}
	f.ctx, f.cancel = context.WithCancel(context.WithoutCancel(ctx))
	f.wg.Go(f.run)
	return f, nil
}

// OnEvent queues ev of rollout id for publication and a status refresh.
// It never blocks and never calls the planner, so it may be
// rollout.Config.OnEvent. When the queue is full the event is dropped
// (counted by Dropped) but the status is still refreshed. After Close it
// does nothing.
func (f *Feed) OnEvent(id string, ev rollout.Event) {
	if f.closed.Load() {
		return
	}
	select {
	case f.events <- item{id: id, ev: ev}:
		return
	default:
	}
	if f.dropped.Add(1) == 1 {
		f.log.Warn("event queue full: dropping rollout events, statuses are still refreshed",
			logKeyRollout, id, "queue", f.cfg.QueueSize)
	}
	f.mu.Lock()
	f.overflow[id] = struct{}{}
	f.mu.Unlock()
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

// Dropped returns how many events OnEvent dropped because the queue was
// full.
func (f *Feed) Dropped() uint64 { return f.dropped.Load() }

// Sync fetches and publishes the status (and gauges) of every rollout in
// ids now, in order, and returns when done. Call it at start with every
// rollout's ID, oldest first, so the retained status topics are right
// after a restart. Errors wrap ErrInvalid (a bad ID: nothing is fetched)
// or ErrClosed, or join the errors of the Status calls and status
// publishes; ctx bounds the wait.
func (f *Feed) Sync(ctx context.Context, ids []string) error {
	for _, id := range ids {
		if err := validID(id); err != nil {
			return fmt.Errorf("sync: %w", err)
		}
	}
	if f.closed.Load() {
		return fmt.Errorf("sync: %w", ErrClosed)
	}
	req := syncReq{ids: slices.Clone(ids), done: make(chan error, 1)}
	select {
	case f.syncs <- req:
	case <-f.quit:
		return fmt.Errorf("sync: %w", ErrClosed)
	case <-ctx.Done():
		return fmt.Errorf("sync: %w", ctx.Err())
	}
	select {
	case err := <-req.done:
		if err != nil {
			return fmt.Errorf("sync: %w", err)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("sync: %w", ctx.Err())
	}
}

// Close publishes the events still queued and the pending status
// refreshes, bounded by ctx, then stops the feed's goroutine and waits for
// it (including a Publish or Status call in progress). It returns ctx's
// error if ctx ended before the flush finished. Close is idempotent.
func (f *Feed) Close(ctx context.Context) error {
	f.closeOnce.Do(func() {
		f.closed.Store(true)
		stop := context.AfterFunc(ctx, f.cancel)
		close(f.quit)
		f.wg.Wait()
		stop()
		f.cancel()
		if f.flushCut {
			f.closeErr = fmt.Errorf("close: flush cut short: %w", context.Cause(ctx))
		}
	})
	return f.closeErr
}

// run is the feed's goroutine.
func (f *Feed) run() {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		select {
		case <-f.quit:
			f.flush()
			return
		case it := <-f.events:
			f.handle(it)
			f.drainQueued()
		case <-f.wake:
			f.takeOverflow()
		case req := <-f.syncs:
			req.done <- f.sync(req.ids)
		case <-timer.C:
		}
		if next := f.refresh(false); !next.IsZero() {
			timer.Reset(time.Until(next))
		}
	}
}

// drainQueued handles the events queued now, so that a burst costs one
// status fetch.
func (f *Feed) drainQueued() {
	for n := len(f.events); n > 0; n-- {
		select {
		case it := <-f.events:
			f.handle(it)
		default:
			return
		}
	}
}

// flush publishes what is left when Close is called, unless Close's
// context ends first.
func (f *Feed) flush() {
	for n := len(f.events); n > 0 && f.ctx.Err() == nil; n-- {
		f.handle(<-f.events) // OnEvent no longer sends: the queue only shrinks
	}
	f.takeOverflow()
	if f.ctx.Err() == nil {
		f.refresh(true)
	}
	f.flushCut = f.ctx.Err() != nil
}

// handle publishes one event and marks its rollout for a status refresh.
func (f *Feed) handle(it item) {
	if err := validID(it.id); err != nil {
		f.log.Error("rollout event not published", logKeyErr, err)
		return
	}
	payload, err := wire.Marshal(wire.RolloutEventMessage{Rollout: it.id, RolloutEvent: rolloutwire.Event(it.ev)})
	if err != nil {
		f.log.Error("encode rollout event", logKeyRollout, it.id, logKeyErr, err)
	} else {
		_ = f.publish(EventsTopic(it.id), payload, false) // logged
	}
	f.mark(it.id, it.ev.Kind == rollout.EventCreated || it.ev.Kind == rollout.EventState)
}

// mark records that rollout id needs a status refresh.
func (f *Feed) mark(id string, urgent bool) {
	t := f.tracks[id]
	if t == nil {
		t = &track{}
		f.tracks[id] = t
	}
	t.dirty = true
	t.urgent = t.urgent || urgent
}

// takeOverflow marks the rollouts that lost events for a refresh.
func (f *Feed) takeOverflow() {
	f.mu.Lock()
	lost := f.overflow
	if len(lost) == 0 {
		f.mu.Unlock()
		return
	}
	f.overflow = map[string]struct{}{}
	f.mu.Unlock()
	for id := range lost {
		if validID(id) == nil {
			f.mark(id, false)
		}
	}
}

// refresh fetches the status of every dirty rollout that is due (all of
// them when force is set) and returns when the next one falls due, zero if
// none is waiting.
func (f *Feed) refresh(force bool) time.Time {
	var next time.Time
	now := time.Now()
	ids := make([]string, 0, len(f.tracks))
	for id, t := range f.tracks {
		if t.dirty {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	for _, id := range ids {
		t := f.tracks[id]
		due := t.last.Add(f.cfg.StatusInterval)
		if force || t.urgent || !now.Before(due) {
			_ = f.fetch(id) // logged
			continue
		}
		if next.IsZero() || due.Before(next) {
			next = due
		}
	}
	return next
}

// sync fetches the status of ids now.
func (f *Feed) sync(ids []string) error {
	var errs []error
	for _, id := range ids {
		f.mark(id, true)
		if err := f.fetch(id); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// fetch calls Status for rollout id and publishes its summary and gauges.
func (f *Feed) fetch(id string) error {
	t := f.tracks[id]
	t.dirty, t.urgent, t.last = false, false, time.Now()
	ctx, cancel := context.WithTimeout(f.ctx, f.cfg.StatusTimeout)
	st, err := f.cfg.Status(ctx, id)
	cancel()
	switch {
	case errors.Is(err, rollout.ErrNotFound):
		f.log.Info("rollout gone: clearing its status", logKeyRollout, id)
		_ = f.publish(StatusTopic(id), nil, true) // logged
		f.forget(id)
		delete(f.tracks, id)
		return fmt.Errorf("status %s: %w", id, err)
	case errors.Is(err, rollout.ErrClosed):
		f.log.Debug("rollout status not refreshed: planner closed", logKeyRollout, id)
		return fmt.Errorf("status %s: %w", id, err)
	case err != nil:
		f.log.Warn("rollout status not refreshed", logKeyRollout, id, logKeyErr, err)
		return fmt.Errorf("status %s: %w", id, err)
	}
	payload, err := wire.Marshal(rolloutwire.Summary(st))
	if err != nil {
		f.log.Error("encode rollout status", logKeyRollout, id, logKeyErr, err)
		return fmt.Errorf("status %s: %w", id, err)
	}
	// Gauges first: whoever sees the status message then reads the same
	// figures from /metrics.
	f.setGauges(id, st)
	perr := f.publish(StatusTopic(id), payload, true)
	if !st.State.Active() {
		delete(f.tracks, id) // nothing more to wait for; a later event re-adds it
	}
	return perr
}

// setGauges sets rollout id's gauges from st and applies the retention of
// finished rollouts' gauges.
func (f *Feed) setGauges(id string, st rollout.Status) {
	if f.cfg.Metrics == nil {
		return
	}
	for _, s := range deviceStates {
		f.cfg.Metrics.SetRolloutDevices(id, s.String(), st.Counts[s])
	}
	if st.State.Active() || slices.Contains(f.finished, id) {
		return
	}
	f.finished = append(f.finished, id)
	for len(f.finished) > f.cfg.KeepFinished {
		f.cfg.Metrics.DeleteRollout(f.finished[0])
		f.finished = slices.Delete(f.finished, 0, 1)
	}
}

// forget deletes rollout id's gauges.
func (f *Feed) forget(id string) {
	if f.cfg.Metrics == nil {
		return
	}
	f.cfg.Metrics.DeleteRollout(id)
	if i := slices.Index(f.finished, id); i >= 0 {
		f.finished = slices.Delete(f.finished, i, i+1)
	}
}

// publish publishes at QoS 1, logging the first error of a run of
// failures.
func (f *Feed) publish(topic string, payload []byte, retain bool) error {
	err := f.cfg.Publisher.Publish(topic, payload, retain, 1)
	switch {
	case err != nil && !f.pubFailing:
		f.pubFailing = true
		f.log.Warn("publish rollout progress failed; further failures are not logged until one succeeds",
			logKeyTopic, topic, logKeyErr, err)
	case err == nil && f.pubFailing:
		f.pubFailing = false
		f.log.Info("publishing rollout progress again", logKeyTopic, topic)
	}
	if err != nil {
		return fmt.Errorf("publish %s: %w", topic, err)
	}
	return nil
}

// validID checks that id, a rollout ID, is one (wire.ParseRolloutID) and
// so a single topic level. The error wraps ErrInvalid.
func validID(id string) error {
	if _, err := wire.ParseRolloutID(id); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return nil
}
