package rollout

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/firmware"
)

// Shadows is the planner's access to device shadows (the lead adapts
// *shadow.Engine to it).
type Shadows interface {
	// SetDesiredFirmware sets desired.firmware of id to cmd, the JSON
	// object of a firmware.Command (firmware.Command.Desired()["firmware"]);
	// nil clears it. token is a stable idempotency token (the job, or
	// "<rollout>/cancel", "<rollout>/rollback"): the same (id, cmd, token)
	// written twice has the effect of one write.
	SetDesiredFirmware(ctx context.Context, id device.ID, cmd map[string]any, token string) error
	// ReportedFirmware returns reported.firmware of id; false when the
	// device has none (or no shadow).
	ReportedFirmware(ctx context.Context, id device.ID) (firmware.Report, bool, error)
}

// Firmware is the planner's access to the firmware store (*firmware.Store
// satisfies it).
type Firmware interface {
	Get(ctx context.Context, v firmware.Version) (firmware.Image, error)
	Command(img firmware.Image, id device.ID, ttl time.Duration, job string) firmware.Command
}

// Defaults of Config.
const (
	DefaultTick          = time.Second
	DefaultMaxDirty      = 1 << 16
	DefaultNotifyPerPass = 1024
	// DefaultWriteConcurrency is how many shadow writes a pass runs at
	// once: enough for the shadow engine to group them into few commits.
	DefaultWriteConcurrency = 64
	DefaultRescan           = time.Minute
	MaxFailingListed        = 100
)

// Config configures a Planner. Zero values mean the documented defaults.
type Config struct {
	// Store keeps the rollouts (rollout/boltstore on rollout.db). Required.
	// The caller opened it and closes it after the planner.
	Store Store
	// Shadows and Firmware are required.
	Shadows  Shadows
	Firmware Firmware
	// Inventory lets Create choose targets by label selector or all, and
	// check their hardware models against the image's; nil refuses a
	// selector or all, and takes every target. internal/server adapts the
	// identity store and the shadow engine.
	Inventory Inventory
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Logger receives the planner's logs; nil discards them.
	Logger *slog.Logger
	// Tick is the period of the planner's pass (timeouts, retries, gates).
	// Default 1s. Notify triggers a pass sooner.
	Tick time.Duration
	// MaxDirty bounds the set of devices Notify remembers between passes;
	// beyond it the next pass rescans every in-flight device. Default 65536.
	MaxDirty int
	// NotifyPerPass bounds the shadow writes of one pass. Default 1024.
	NotifyPerPass int
	// WriteConcurrency bounds the shadow writes a pass runs at once.
	// Default DefaultWriteConcurrency; 1 writes one at a time.
	WriteConcurrency int
	// OnEvent, when set, receives every event after it is committed (the
	// feed for rollouts/<id>/events and status topics). It is called with
	// the planner's lock held: it must not block or call the Planner.
	OnEvent func(rolloutID string, ev Event)
	// OnExecution, when set, is called after a commit that added a pending
	// Jobs execution to device id (it was notified through Jobs) or ended
	// one (succeeded, failed, rejected, timed out or canceled): the feed for
	// the Jobs notify and notify-next topics. It is called with the
	// planner's lock held: it must not block or call the Planner.
	OnExecution func(id device.ID)
	// Rescan is how often every in-flight device's report is re-read,
	// whatever Notify said, so that a lost hint costs latency only.
	// Default 1m.
	Rescan time.Duration
	// Start, when set, holds the planner's passes until it is closed:
	// internal/server closes it when every component is open, so that no
	// pass calls OnEvent, OnExecution or a shadow write (and its change
	// callback) before their receivers exist. Calls (Create, Notify, …)
	// work before it. Nil starts the passes at once.
	Start <-chan struct{}
}

func (c *Config) setDefaults() error {
	switch {
	case c.Store == nil:
		return fmt.Errorf("%w: Config.Store is required", ErrInvalid)
	case c.Shadows == nil || c.Firmware == nil:
		return fmt.Errorf("%w: Config.Shadows and Config.Firmware are required", ErrInvalid)
	case c.Tick < 0 || c.MaxDirty < 0 || c.NotifyPerPass < 0 || c.WriteConcurrency < 0 || c.Rescan < 0:
		return fmt.Errorf("%w: negative Config value", ErrInvalid)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Tick == 0 {
		c.Tick = DefaultTick
	}
	if c.MaxDirty == 0 {
		c.MaxDirty = DefaultMaxDirty
	}
	if c.NotifyPerPass == 0 {
		c.NotifyPerPass = DefaultNotifyPerPass
	}
	if c.WriteConcurrency == 0 {
		c.WriteConcurrency = DefaultWriteConcurrency
	}
	if c.Rescan == 0 {
		c.Rescan = DefaultRescan
	}
	return nil
}

const (
	logKeyRollout = "rollout"
	logKeyDevice  = "device"
	logKeyErr     = "err"
	logKeyState   = "state"
	logKeyReason  = "reason"
)

// run is an unsettled rollout held in memory.
type run struct {
	r       Rollout
	targets []device.ID
	devs    []Device
	// undelivered holds the commands recorded as intents and not yet
	// written to the shadow, by target index.
	undelivered map[int][]byte
	recovered   map[int]bool    // undelivered intents loaded by Open
	img         *firmware.Image // cached target image
	// jobs holds the targets driven through the AWS IoT Jobs API (they
	// have an execution record; see MarkJobs).
	jobs map[device.ID]jobRef
	// halted is set when a control action left the rollout not running
	// (paused, aborted), cleared when one resumed it: the pass reads it
	// without mu between the shadow writes of new notifications.
	halted atomic.Bool
}

type ref struct {
	run *run
	i   int
}

// Planner runs rollouts. It is safe for concurrent use.
type Planner struct {
	cfg    Config
	log    *slog.Logger
	store  Store
	ctx    context.Context // the loop's: cancelled by Close
	cancel context.CancelFunc
	done   chan struct{} // closed when the loop returned
	wake   chan struct{}
	once   sync.Once
	closed atomic.Bool // set by Close; API calls then fail with ErrClosed

	dirtyMu  sync.Mutex // guards dirty and overflow; never held with mu
	dirty    map[device.ID]struct{}
	overflow bool

	// mu guards runs (each run's fields), inflight and marked, and orders
	// the commits: every Store.Create and Store.Commit runs under it,
	// built from memory as it is then. The pass holds it only for its
	// in-memory steps and its commits, never across shadow I/O (see
	// pass.go), so an API call waits at most for one of those; Close does
	// not take it (it cancels the pass, which stops between writes).
	mu       sync.Mutex
	runs     map[string]*run
	inflight map[device.ID]ref
	// marked are the devices marked as Jobs devices (MarkJobs) since the
	// pass last took mu: the pass may have read their mark before.
	marked map[device.ID]struct{}
}

// Open reloads every unsettled rollout from cfg.Store and starts the
// planner's goroutine, which resumes them: undelivered notifications are
// re-issued with their recorded command and job, and every in-flight
// device's report is re-read.
func Open(ctx context.Context, cfg Config) (*Planner, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	p := &Planner{
		cfg: cfg, log: cfg.Logger.With("component", "rollout"), store: cfg.Store,
		done: make(chan struct{}), wake: make(chan struct{}, 1), dirty: map[device.ID]struct{}{}, overflow: true,
		runs: map[string]*run{}, inflight: map[device.ID]ref{},
	}
	if err := p.load(ctx); err != nil {
		return nil, fmt.Errorf("rollout: load: %w", err)
	}
	p.ctx, p.cancel = context.WithCancel(context.WithoutCancel(ctx))
	go func() {
		defer close(p.done)
		p.loop()
	}()
	return p, nil
}

// load adopts every unsettled rollout of the store.
func (p *Planner) load(ctx context.Context) error {
	rs, err := p.store.Rollouts(ctx)
	if err != nil {
		return err
	}
	for _, r := range rs {
		if r.Settled {
			continue
		}
		ru, err := p.loadRun(ctx, r.ID)
		if err != nil {
			return err
		}
		ru.recovered = map[int]bool{}
		for i := range ru.undelivered {
			ru.recovered[i] = true
		}
		p.adopt(ru)
	}
	return nil
}

// loadRun reads rollout id whole from the store, as a run not (yet)
// adopted.
func (p *Planner) loadRun(ctx context.Context, id string) (*run, error) {
	st, err := p.store.Load(ctx, id)
	if err != nil {
		return nil, err
	}
	if len(st.Targets) != st.Rollout.Targets || len(st.Devices) != len(st.Targets) {
		return nil, fmt.Errorf("rollout %s: corrupt target list: %d targets and %d records, want %d",
			id, len(st.Targets), len(st.Devices), st.Rollout.Targets)
	}
	ru := &run{r: st.Rollout, targets: st.Targets, devs: st.Devices, undelivered: st.Intents,
		jobs: make(map[device.ID]jobRef, len(st.Executions))}
	if ru.undelivered == nil {
		ru.undelivered = map[int][]byte{}
	}
	for dev, rec := range st.Executions {
		ru.jobs[dev] = jobRef{i: rec.Index, shadow: rec.Shadow}
	}
	return ru, nil
}

// adopt makes ru a live run. Caller holds mu (or is Open).
func (p *Planner) adopt(ru *run) {
	p.runs[ru.r.ID] = ru
	for i, d := range ru.devs {
		if d.State.InFlight() {
			p.inflight[ru.targets[i]] = ref{ru, i}
		}
	}
}

// Close stops the planner: it cancels the pass in progress, which stops
// before its next shadow write (a shadow write that honours its ctx stops
// at once), and waits for the planner's goroutine until ctx is done. Then
// it returns an error wrapping ctx's; the goroutine ends once the shadow
// write in progress returns, and a later Close waits for it again. What a
// stopped pass decided and did not deliver is re-issued when a planner
// opens the store again. Close is idempotent; once it was called, the other
// methods return ErrClosed. It does not close Config.Store: close it after
// Close returned (when Close gave up on its ctx, the stopped pass's last
// commit may then fail; what it delivered is re-issued, idempotently, on
// the next start).
func (p *Planner) Close(ctx context.Context) error {
	p.once.Do(func() {
		p.closed.Store(true)
		p.cancel()
	})
	select {
	case <-p.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("rollout: close: the pass in progress did not stop: %w", ctx.Err())
	}
}

// begin locks mu for an API call; the error wraps ErrClosed.
func (p *Planner) begin() error {
	p.mu.Lock()
	if p.closed.Load() {
		p.mu.Unlock()
		return ErrClosed
	}
	return nil
}

// Notify tells the planner that device id's shadow changed. It never
// blocks: ids are collected in a bounded set, and on overflow the next pass
// rescans every in-flight device. Wire shadow.Config.OnChange to it.
func (p *Planner) Notify(id device.ID) {
	p.dirtyMu.Lock()
	if len(p.dirty) < p.cfg.MaxDirty {
		p.dirty[id] = struct{}{}
	} else {
		p.overflow = true
	}
	p.dirtyMu.Unlock()
	p.poke()
}

func (p *Planner) poke() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

func (p *Planner) takeDirty() ([]device.ID, bool) {
	p.dirtyMu.Lock()
	defer p.dirtyMu.Unlock()
	ids := make([]device.ID, 0, len(p.dirty))
	for id := range p.dirty {
		ids = append(ids, id)
	}
	clear(p.dirty)
	o := p.overflow
	p.overflow = false
	return ids, o
}

func (p *Planner) loop() {
	if p.cfg.Start != nil {
		select {
		case <-p.ctx.Done():
			return
		case <-p.cfg.Start:
		}
	}
	t := time.NewTicker(p.cfg.Tick)
	defer t.Stop()
	rescan := time.NewTicker(p.cfg.Rescan)
	defer rescan.Stop()
	for {
		more := p.pass(p.ctx)
		if p.ctx.Err() != nil {
			return
		}
		if more {
			continue
		}
		select {
		case <-p.ctx.Done():
			return
		case <-t.C:
		case <-p.wake:
		case <-rescan.C:
			p.dirtyMu.Lock()
			p.overflow = true
			p.dirtyMu.Unlock()
		}
	}
}
