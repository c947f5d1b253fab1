package shadow

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/umbra-iot/umbra/device"
)

// Publisher sends a message to MQTT subscribers. *broker.Server satisfies it.
type Publisher interface {
	Publish(topic string, payload []byte, retain bool, qos byte) error
}

// ClientPublisher is optionally implemented by a Publisher: PublishTo
// delivers a message to the one client clientID, and only if that client
// has a subscription matching topic, at that subscription's QoS. The
// engine sends the catch-up delta (see HandleSubscribe) only this way, so
// a subscriber never causes messages to others; with a Publisher that does
// not implement it, no catch-up deltas are sent. *broker.Server satisfies
// it.
type ClientPublisher interface {
	PublishTo(clientID, topic string, payload []byte, qos byte) error
}

// subscriberChecker is optionally implemented by a Publisher; the engine
// then skips building messages nobody is subscribed to (the documents
// message carries two full documents and is the most expensive one).
type subscriberChecker interface {
	HasSubscribers(topic string) bool
}

// Defaults for Config's zero values.
const (
	DefaultMaxDocumentSize = 8 << 10
	DefaultMaxDepth        = 8
	DefaultMaxPayload      = 64 << 10
	DefaultDeviceRate      = 20
	DefaultDeviceBurst     = 40
	DefaultMaxInFlight     = 10
	DefaultDedupeWindow    = time.Minute
	DefaultOpenTimeout     = time.Second
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
	// Path is the bbolt file holding the shadows. Required.
	Path string
	// OpenTimeout bounds the wait for the file lock held by another process.
	OpenTimeout time.Duration
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
	// 200 for accepted) and its latency, and CommitObserved with every
	// commit's duration and batch size. Used for metrics.
	Observe        func(op Op, code int, d time.Duration)
	CommitObserved func(d time.Duration, batch int)
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
	case c.Path == "":
		return errors.New("shadow: Config.Path is required")
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
	if c.OpenTimeout == 0 {
		c.OpenTimeout = DefaultOpenTimeout
	}
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
	store  *store
	pub    Publisher
	subs   subscriberChecker // nil if pub cannot tell
	direct ClientPublisher   // nil if pub cannot deliver to one client

	mu      sync.Mutex // guards devices and closed
	devices map[device.ID]*deviceState
	closed  bool
	active  sync.WaitGroup // requests in progress

	retry *retryCache // nil when DedupeWindow is negative

	quit chan struct{}
	wg   sync.WaitGroup

	stats struct {
		accepted, rejected, published, publishErrors atomic.Uint64
		namedLimited                                 atomic.Uint64 // ErrShadowLimit rejections
		named                                        atomic.Int64  // live named shadows
	}
}

// deviceState serialises one device's requests and carries its limits.
type deviceState struct {
	mu sync.Mutex // serialises read-modify-write of this device's documents (all its shadows)

	// Fields below are guarded by Engine.mu.
	inFlight int
	tokens   float64
	last     time.Time
}

// Open opens (creating if needed) the shadow database at cfg.Path and starts
// the engine. It fails fast with an error naming the lock if another process
// holds the file.
func Open(ctx context.Context, cfg Config) (*Engine, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	st, err := openStore(cfg.Path, cfg.OpenTimeout, cfg.CommitObserved)
	if err != nil {
		return nil, fmt.Errorf("shadow: %w", err)
	}
	e := &Engine{
		cfg:     cfg,
		log:     cfg.Logger.With("component", "shadow"),
		store:   st,
		pub:     cfg.Publisher,
		devices: make(map[device.ID]*deviceState),
		quit:    make(chan struct{}),
	}
	if cfg.DedupeWindow > 0 {
		e.retry = newRetryCache(cfg.DedupeWindow, cfg.DedupeMaxEntries, cfg.DedupeMaxBytes)
	}
	named, err := st.countNamed()
	if err != nil {
		st.close()
		return nil, fmt.Errorf("shadow: count named shadows in %s: %w", cfg.Path, err)
	}
	e.stats.named.Store(named)
	if sc, ok := cfg.Publisher.(subscriberChecker); ok {
		e.subs = sc
	}
	if cp, ok := cfg.Publisher.(ClientPublisher); ok {
		e.direct = cp
	}
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		e.housekeeping()
	}()
	return e, nil
}

// Close stops accepting requests, waits for the ones in progress to commit
// and publish, and closes the database. It is idempotent.
func (e *Engine) Close(ctx context.Context) error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed = true
	e.mu.Unlock()
	done := make(chan struct{})
	go func() { e.active.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		e.log.Warn("closing with requests still in progress", "err", ctx.Err())
	}
	close(e.quit)
	e.wg.Wait()
	return e.store.close()
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

// acquire admits one request for id: it applies the in-flight and rate
// limits and registers the request so Close can wait for it. The caller must
// call release.
func (e *Engine) acquire(id device.ID, token string) (*deviceState, *RequestError) {
	now := e.cfg.Now()
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil, &RequestError{Code: 503, Message: "Service unavailable", ClientToken: token, Err: ErrClosed}
	}
	ds := e.devices[id]
	if ds == nil {
		ds = &deviceState{tokens: float64(e.cfg.DeviceBurst), last: now}
		e.devices[id] = ds
	}
	if e.cfg.MaxInFlight > 0 && ds.inFlight >= e.cfg.MaxInFlight {
		return nil, reject(ErrRateLimited, token, "Too many requests: more than %d in flight for this device", e.cfg.MaxInFlight)
	}
	if e.cfg.DeviceRate > 0 {
		ds.tokens += now.Sub(ds.last).Seconds() * e.cfg.DeviceRate
		if ds.tokens > float64(e.cfg.DeviceBurst) {
			ds.tokens = float64(e.cfg.DeviceBurst)
		}
		if ds.tokens < 1 {
			ds.last = now
			return nil, reject(ErrRateLimited, token, "Too many requests: more than %g per second for this device", e.cfg.DeviceRate)
		}
		ds.tokens--
	}
	ds.last = now
	ds.inFlight++
	e.active.Add(1)
	return ds, nil
}

func (e *Engine) release(ds *deviceState) {
	e.mu.Lock()
	ds.inFlight--
	e.mu.Unlock()
	e.active.Done()
}

// load reads r's document. A missing document is returned as a zero
// Document with Deleted set (never existed), so callers treat both alike.
func (e *Engine) load(r ref) (doc Document, err error) {
	raw, err := e.store.get(r)
	if err != nil {
		return Document{}, fmt.Errorf("read %s: %w", r, err)
	}
	if raw == nil {
		return Document{Deleted: true}, nil
	}
	if err := decodeJSON(raw, &doc); err != nil {
		return Document{}, fmt.Errorf("decode %s: %w", r, err)
	}
	return doc, nil
}

// source tells how a request arrived: over MQTT the engine publishes the
// rejection on the rejected topic; over HTTP the caller returns it.
type source int

const (
	fromMQTT source = iota
	fromAPI
)

// HandleRequest is the MQTT entry point: wire it to the broker's in-process
// subscription for each of RequestFilters. clientID is the publisher; topic
// is a request topic of either tree (see ParseRequestTopic). It answers on
// the matching accepted or rejected topic and never returns an error: every
// failure becomes a rejected message (or, for a topic that is not a
// request, is ignored).
//
// Replies about a shadow go to both trees (see Tree): the one the request
// came on, and the other one if it has subscribers. A request that names
// no shadow the engine can serve (an invalid device ID or shadow name, an
// unknown operation on the $aws tree) is answered on its own topic's
// /rejected only.
func (e *Engine) HandleRequest(clientID, topic string, payload []byte) {
	a, ok, err := ParseRequestTopic(topic)
	if !ok {
		return
	}
	if err != nil {
		// The topic is a valid MQTT topic, so its rejected topic is too: tell
		// the client why, and store nothing. The clientToken is echoed when
		// it can be read, as the AWS SDKs match replies by it.
		re := AsRequestError(err, "")
		if len(payload) <= e.cfg.MaxPayload {
			if tok, terr := parseTokenOnly(payload); terr == nil {
				re.ClientToken = tok
			}
		}
		e.publish(topic+"/rejected", re.Payload(e.cfg.Now()))
		op := a.Op
		if !op.valid() {
			op = opUnknown
		}
		e.observe(op, re.Code, 0)
		return
	}
	start := time.Now()
	r := ref{a.Device, a.Name}
	var rerr *RequestError
	switch a.Op {
	case OpUpdate:
		_, rerr = e.update(r, payload, fromMQTT)
	case OpGet:
		_, rerr = e.get(r, payload, fromMQTT)
	case OpDelete:
		_, rerr = e.del(r, payload, fromMQTT)
	}
	code := 200
	if rerr != nil {
		code = rerr.Code
		e.emit(r, string(a.Op)+"/rejected", rerr.Payload(e.cfg.Now()))
	}
	e.observe(a.Op, code, time.Since(start))
}

func (e *Engine) observe(op Op, code int, d time.Duration) {
	if code == 200 {
		e.stats.accepted.Add(1)
	} else {
		e.stats.rejected.Add(1)
	}
	if e.cfg.Observe != nil {
		e.cfg.Observe(op, code, d)
	}
}

// Update applies an update request (the same JSON as on
// state/<id>/update) to id's classic shadow and returns the accepted
// message. Errors are *RequestError wrapping ErrInvalid,
// ErrVersionConflict, ErrTooLarge, ErrRateLimited, ErrClosed or
// ErrInternal. Accepted, delta and documents messages are also published
// over MQTT, on both trees.
func (e *Engine) Update(ctx context.Context, id device.ID, payload []byte) ([]byte, error) {
	return e.UpdateNamed(ctx, id, "", payload)
}

// Get returns the get-accepted document of id's classic shadow, or a
// *RequestError wrapping ErrNotFound. payload may be empty or
// {"clientToken":"…"}.
func (e *Engine) Get(ctx context.Context, id device.ID, payload []byte) ([]byte, error) {
	return e.GetNamed(ctx, id, "", payload)
}

// Delete deletes id's classic shadow and returns the delete-accepted
// message, or a *RequestError wrapping ErrNotFound. The version is kept: a
// re-created shadow continues from it.
func (e *Engine) Delete(ctx context.Context, id device.ID, payload []byte) ([]byte, error) {
	return e.DeleteNamed(ctx, id, "", payload)
}

// UpdateNamed is Update for the shadow name of device id ("" is the
// classic shadow). Creating a named shadow beyond Config.MaxNamedShadows
// is a *RequestError wrapping ErrShadowLimit; an invalid name one wrapping
// ErrInvalid.
func (e *Engine) UpdateNamed(ctx context.Context, id device.ID, name Name, payload []byte) ([]byte, error) {
	start := time.Now()
	r, rerr := checkRef(id, name)
	var b []byte
	if rerr == nil {
		b, rerr = e.update(r, payload, fromAPI)
	}
	return e.apiResult(OpUpdate, start, b, rerr)
}

// GetNamed is Get for the shadow name of device id ("" is the classic
// shadow).
func (e *Engine) GetNamed(ctx context.Context, id device.ID, name Name, payload []byte) ([]byte, error) {
	start := time.Now()
	r, rerr := checkRef(id, name)
	var b []byte
	if rerr == nil {
		b, rerr = e.get(r, payload, fromAPI)
	}
	return e.apiResult(OpGet, start, b, rerr)
}

// DeleteNamed is Delete for the shadow name of device id ("" is the
// classic shadow). A deleted named shadow no longer counts against
// Config.MaxNamedShadows.
func (e *Engine) DeleteNamed(ctx context.Context, id device.ID, name Name, payload []byte) ([]byte, error) {
	start := time.Now()
	r, rerr := checkRef(id, name)
	var b []byte
	if rerr == nil {
		b, rerr = e.del(r, payload, fromAPI)
	}
	return e.apiResult(OpDelete, start, b, rerr)
}

// checkRef validates an in-process caller's device ID and shadow name (an
// unchecked Name could break the store's key layout).
func checkRef(id device.ID, name Name) (ref, *RequestError) {
	if _, err := device.ParseID(string(id)); err != nil {
		return ref{}, reject(ErrInvalid, "", "Invalid device ID: %v", err)
	}
	if name != "" {
		if _, err := ParseName(string(name)); err != nil {
			return ref{}, AsRequestError(err, "")
		}
	}
	return ref{id, name}, nil
}

// ShadowInfo is one of a device's shadows in a listing (Shadows).
type ShadowInfo struct {
	// Name is "" for the classic shadow.
	Name    Name      `json:"name"`
	Version Version   `json:"version"`
	Updated time.Time `json:"updated"`
}

// Shadows lists the shadows device id has: its classic shadow first (if it
// exists), then its named shadows in name order; deleted ones are left
// out. A device without any gets an empty list, not an error. Errors are
// *RequestError wrapping ErrInvalid (a bad ID), ErrClosed or ErrInternal.
func (e *Engine) Shadows(ctx context.Context, id device.ID) ([]ShadowInfo, error) {
	if _, err := device.ParseID(string(id)); err != nil {
		return nil, reject(ErrInvalid, "", "Invalid device ID: %v", err)
	}
	e.mu.Lock()
	closed := e.closed
	e.mu.Unlock()
	if closed {
		return nil, AsRequestError(ErrClosed, "")
	}
	out := []ShadowInfo{}
	doc, err := e.load(ref{id: id})
	if err != nil {
		e.log.Error("load shadow", "device", id, "err", err)
		return nil, AsRequestError(err, "")
	}
	if !doc.Deleted {
		out = append(out, ShadowInfo{Version: doc.Version, Updated: time.UnixMilli(doc.Updated).UTC()})
	}
	named, err := e.store.named(id)
	if err != nil {
		e.log.Error("list named shadows", "device", id, "err", err)
		return nil, AsRequestError(err, "")
	}
	for _, n := range named {
		if !n.Deleted {
			out = append(out, ShadowInfo{Name: n.name, Version: n.Version, Updated: time.UnixMilli(n.Updated).UTC()})
		}
	}
	return out, nil
}

func (e *Engine) apiResult(op Op, start time.Time, b []byte, rerr *RequestError) ([]byte, error) {
	if rerr != nil {
		e.observe(op, rerr.Code, time.Since(start))
		return nil, rerr
	}
	e.observe(op, 200, time.Since(start))
	return b, nil
}

// Read returns id's current document for in-process consumers such as the
// rollout planner: no rate limit, nothing published. It returns a
// *RequestError wrapping ErrNotFound if the shadow does not exist.
func (e *Engine) Read(ctx context.Context, id device.ID) (Document, error) {
	e.mu.Lock()
	closed := e.closed
	e.mu.Unlock()
	if closed {
		return Document{}, AsRequestError(ErrClosed, "")
	}
	doc, rerr := e.loadExisting(ref{id: id}, "")
	if rerr != nil {
		return Document{}, rerr
	}
	return doc, nil
}

// List returns up to limit shadows (1..1000, default 100) with IDs after the
// cursor, and the cursor of the next page ("" when there is none).
func (e *Engine) List(ctx context.Context, cursor string, limit int) ([]Summary, string, error) {
	if limit <= 0 {
		limit = 100
	}
	if limit > 1000 {
		limit = 1000
	}
	if cursor != "" {
		if _, err := device.ParseID(cursor); err != nil {
			return nil, "", reject(ErrInvalid, "", "Invalid cursor")
		}
	}
	return e.store.list(cursor, limit)
}

// Stats is a snapshot of the engine's counters.
type Stats struct {
	Accepted, Rejected        uint64
	Published, PublishErrors  uint64
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
		Accepted:         e.stats.accepted.Load(),
		Rejected:         e.stats.rejected.Load(),
		Published:        e.stats.published.Load(),
		PublishErrors:    e.stats.publishErrors.Load(),
		Commits:          e.store.commits.Load(),
		DocumentsWritten: e.store.committed.Load(),
		CommitTime:       time.Duration(e.store.commitNano.Load()),

		NamedShadows:       e.stats.named.Load(),
		NamedLimitRejected: e.stats.namedLimited.Load(),
	}
	if e.retry != nil {
		st.RetryCache = e.retry.stats()
	}
	return st
}

func (e *Engine) publish(topic string, payload []byte) {
	if e.pub == nil {
		return
	}
	if err := e.pub.Publish(topic, payload, false, 1); err != nil {
		e.stats.publishErrors.Add(1)
		e.log.Warn("publish failed", "topic", topic, "err", err)
		return
	}
	e.stats.published.Add(1)
}

func (e *Engine) wanted(topic string) bool {
	if e.pub == nil {
		return false
	}
	return e.subs == nil || e.subs.HasSubscribers(topic)
}

// emit publishes a message about shadow r on both trees: on the state tree
// always (as Umbra always has), on the $aws tree only if a client is
// subscribed to its topic there, so a fleet that never subscribes on $aws
// pays one subscription lookup per message and nothing else.
func (e *Engine) emit(r ref, suffix string, payload []byte) {
	if e.pub == nil {
		return
	}
	e.publish(TreeState.Topic(r.id, r.name, suffix), payload)
	if t := TreeAWS.Topic(r.id, r.name, suffix); e.wanted(t) {
		e.publish(t, payload)
	}
}

// acceptedMessage is published on update/accepted.
type acceptedMessage struct {
	State       json.RawMessage `json:"state"`
	Metadata    json.RawMessage `json:"metadata,omitempty"`
	Version     Version         `json:"version"`
	Timestamp   int64           `json:"timestamp"`
	ClientToken string          `json:"clientToken,omitempty"`
}

// shortAcceptedMessage is published on update/accepted instead of
// acceptedMessage when that would be larger than Config.MaxReply.
type shortAcceptedMessage struct {
	Version      Version `json:"version"`
	Timestamp    int64   `json:"timestamp"`
	ClientToken  string  `json:"clientToken,omitempty"`
	StateOmitted bool    `json:"stateOmitted"`
}

// deltaMessage is published on update/delta.
type deltaMessage struct {
	State       map[string]any `json:"state"`
	Metadata    map[string]any `json:"metadata"`
	Version     Version        `json:"version"`
	Timestamp   int64          `json:"timestamp"`
	ClientToken string         `json:"clientToken,omitempty"`
}

type docSnapshot struct {
	State    State   `json:"state"`
	Metadata State   `json:"metadata"`
	Version  Version `json:"version"`
}

type documentsMessage struct {
	Previous    *docSnapshot `json:"previous"`
	Current     docSnapshot  `json:"current"`
	Timestamp   int64        `json:"timestamp"`
	ClientToken string       `json:"clientToken,omitempty"`
}

func (e *Engine) update(r ref, payload []byte, src source) ([]byte, *RequestError) {
	if len(payload) > e.cfg.MaxPayload {
		return nil, reject(ErrTooLarge, "", "The payload exceeds the maximum size allowed (%d bytes)", e.cfg.MaxPayload)
	}
	req, rerr := parseUpdate(payload, e.cfg.MaxDepth)
	if rerr != nil {
		return nil, rerr
	}
	tok := req.clientToken
	ds, rerr := e.acquire(r.id, tok)
	if rerr != nil {
		return nil, rerr
	}
	defer e.release(ds)
	ds.mu.Lock()
	defer ds.mu.Unlock()

	doc, err := e.load(r)
	if err != nil {
		e.log.Error("load shadow", "shadow", r, "err", err)
		return nil, AsRequestError(err, tok)
	}
	current := doc.Version

	remember := tok != "" && e.retry != nil
	var sum [sha256.Size]byte
	if remember {
		sum = sha256.Sum256(payload)
	}
	if remember && !doc.Deleted {
		if ts, ok := e.retry.lookup(r, tok, sum, current, e.cfg.Now()); ok {
			// A retry of the last update: the same bytes, so the same
			// accepted message as before.
			accepted := e.acceptedPayload(req, current, ts)
			if src == fromMQTT {
				e.emit(r, "update/accepted", accepted)
			}
			return accepted, nil
		}
	}
	if req.hasVersion && req.version != current {
		return nil, reject(ErrVersionConflict, tok, "Version conflict: expected version %d, current version is %d", req.version, current)
	}
	// Creating a named shadow: within the device's cap, and dropping
	// tombstones of other names that would exceed it.
	var displaced []op
	creating := doc.Deleted && r.name != ""
	if creating {
		if displaced, rerr = e.makeRoom(r, tok); rerr != nil {
			return nil, rerr
		}
	}
	// The documents message carries the previous document: copy it only if
	// somebody listens (on either tree), as the merge below changes doc in
	// place.
	stateDocs := e.wanted(TreeState.Topic(r.id, r.name, "update/documents"))
	awsDocs := e.wanted(TreeAWS.Topic(r.id, r.name, "update/documents"))
	var prev *docSnapshot
	if !doc.Deleted && (stateDocs || awsDocs) {
		prev = &docSnapshot{State: cloneState(doc.State), Metadata: cloneState(doc.Metadata), Version: doc.Version}
	}
	var prevDelta map[string]any
	if req.hasDesired || req.clearState {
		prevDelta = doc.Delta()
	}

	now := e.cfg.Now()
	ts := now.Unix()
	if doc.Deleted {
		doc.State, doc.Metadata = State{}, State{}
	}
	if req.clearState {
		doc.State, doc.Metadata = State{}, State{}
	} else {
		doc.State.Desired, doc.Metadata.Desired = applySection(doc.State.Desired, doc.Metadata.Desired, req.desired, req.hasDesired, ts)
		doc.State.Reported, doc.Metadata.Reported = applySection(doc.State.Reported, doc.Metadata.Reported, req.reported, req.hasReported, ts)
	}
	size, err := sectionSize(doc.State)
	if err != nil {
		return nil, AsRequestError(fmt.Errorf("size %s: %w", r, err), tok)
	}
	if size > e.cfg.MaxDocumentSize {
		return nil, reject(ErrTooLarge, tok, "The payload exceeds the maximum size allowed: the merged state would be %d bytes, the limit is %d", size, e.cfg.MaxDocumentSize)
	}
	doc.Version = current + 1
	doc.Updated = now.UnixMilli()
	doc.Deleted = false
	raw, err := json.Marshal(&doc)
	if err != nil {
		return nil, AsRequestError(fmt.Errorf("encode %s: %w", r, err), tok)
	}
	if err := e.store.put(append(displaced, op{r, raw})...); err != nil {
		if errors.Is(err, ErrClosed) {
			return nil, AsRequestError(err, tok)
		}
		e.log.Error("commit shadow", "shadow", r, "err", err)
		return nil, AsRequestError(fmt.Errorf("commit %s: %w", r, err), tok)
	}
	if creating {
		e.stats.named.Add(1)
	}

	// Committed: from here on the update is durable; publish its messages.
	accepted := e.acceptedPayload(req, doc.Version, ts)
	if remember {
		e.retry.put(r, tok, sum, doc.Version, ts, now)
	} else if e.retry != nil {
		e.retry.drop(r) // its entry no longer answers a retry
	}
	e.emit(r, "update/accepted", accepted)
	newDelta := doc.Delta()
	// Beyond AWS: a desired-side change that withdraws keys from a
	// non-empty delta is announced too (AWS stays silent, so a device never
	// learns that a command was cancelled).
	if newDelta != nil || (prevDelta != nil && !equal(prevDelta, newDelta)) {
		e.emit(r, "update/delta", e.deltaPayload(newDelta, doc.Metadata.Desired, doc.Version, ts, tok))
	}
	if stateDocs || awsDocs {
		b, _ := json.Marshal(documentsMessage{
			Previous:    prev,
			Current:     docSnapshot{State: doc.State, Metadata: doc.Metadata, Version: doc.Version},
			Timestamp:   ts,
			ClientToken: tok,
		})
		if stateDocs {
			e.publish(TreeState.Topic(r.id, r.name, "update/documents"), b)
		}
		if awsDocs {
			e.publish(TreeAWS.Topic(r.id, r.name, "update/documents"), b)
		}
	}
	if e.cfg.OnChange != nil && r.name == "" {
		e.cfg.OnChange(r.id, doc.Version)
	}
	return accepted, nil
}

// makeRoom checks that device r.id may create the named shadow r (new, or
// over its own tombstone) without exceeding MaxNamedShadows, and
// returns the deletions of other names' tombstones needed to keep the
// device's stored named shadows within the cap, oldest first. The caller
// holds the device's lock.
func (e *Engine) makeRoom(r ref, tok string) ([]op, *RequestError) {
	limit := max(e.cfg.MaxNamedShadows, 0)
	entries, err := e.store.named(r.id)
	if err != nil {
		e.log.Error("list named shadows", "device", r.id, "err", err)
		return nil, AsRequestError(err, tok)
	}
	live := 0
	var tombs []namedEntry
	for _, n := range entries {
		switch {
		case n.name == r.name:
		case n.Deleted:
			tombs = append(tombs, n)
		default:
			live++
		}
	}
	if live >= limit {
		e.stats.namedLimited.Add(1)
		return nil, reject(ErrShadowLimit, tok, "Too many named shadows: device %s has %d, the limit is %d; delete one first", r.id, live, limit)
	}
	excess := live + len(tombs) + 1 - limit // r itself counts once, tombstone or not
	if excess <= 0 {
		return nil, nil
	}
	slices.SortFunc(tombs, func(a, b namedEntry) int { return cmp.Compare(a.Updated, b.Updated) })
	ops := make([]op, 0, excess)
	for _, t := range tombs[:excess] {
		ops = append(ops, op{r: ref{r.id, t.name}}) // nil val: delete
	}
	return ops, nil
}

func (e *Engine) deltaPayload(d, desiredMeta map[string]any, v Version, ts int64, tok string) []byte {
	if d == nil {
		d = map[string]any{}
	}
	b, _ := json.Marshal(deltaMessage{State: d, Metadata: project(d, desiredMeta), Version: v, Timestamp: ts, ClientToken: tok})
	return b
}

func (e *Engine) acceptedPayload(req updateRequest, v Version, ts int64) []byte {
	var state, meta []byte
	if req.clearState {
		state = []byte("null")
	} else {
		s := make(map[string]any, 2)
		m := make(map[string]any, 2)
		if req.hasDesired {
			s["desired"] = req.desired
			m["desired"] = metaOrLeaf(req.desired, ts)
		}
		if req.hasReported {
			s["reported"] = req.reported
			m["reported"] = metaOrLeaf(req.reported, ts)
		}
		state, _ = json.Marshal(s)
		meta, _ = json.Marshal(m)
	}
	if meta == nil {
		meta, _ = json.Marshal(map[string]any{"timestamp": ts})
	}
	b, _ := json.Marshal(acceptedMessage{State: state, Metadata: meta, Version: v, Timestamp: ts, ClientToken: req.clientToken})
	if len(b) > e.cfg.MaxReply {
		// Too large to be delivered: answer with the short form, so the
		// request still gets exactly one reply.
		b, _ = json.Marshal(shortAcceptedMessage{Version: v, Timestamp: ts, ClientToken: req.clientToken, StateOmitted: true})
	}
	return b
}

// metaOrLeaf gives a request section its metadata; a removed section (nil)
// gets a single timestamp.
func metaOrLeaf(sec map[string]any, ts int64) any {
	if sec == nil {
		return leafMeta(ts)
	}
	return metaFor(sec, ts)
}

// getMessage is published on get/accepted.
type getMessage struct {
	State struct {
		Desired  map[string]any `json:"desired,omitempty"`
		Reported map[string]any `json:"reported,omitempty"`
		Delta    map[string]any `json:"delta,omitempty"`
	} `json:"state"`
	Metadata    State   `json:"metadata"`
	Version     Version `json:"version"`
	Timestamp   int64   `json:"timestamp"`
	ClientToken string  `json:"clientToken,omitempty"`
}

// loadExisting reads r's document and turns a missing or deleted one into
// a 404 for the request with clientToken tok.
func (e *Engine) loadExisting(r ref, tok string) (Document, *RequestError) {
	doc, err := e.load(r)
	if err != nil {
		e.log.Error("load shadow", "shadow", r, "err", err)
		return Document{}, AsRequestError(err, tok)
	}
	if doc.Deleted {
		if r.name != "" {
			return Document{}, reject(ErrNotFound, tok, "No shadow exists with name: %s (device %s)", r.name, r.id)
		}
		return Document{}, reject(ErrNotFound, tok, "No shadow exists for device: %s", r.id)
	}
	return doc, nil
}

func (e *Engine) get(r ref, payload []byte, src source) ([]byte, *RequestError) {
	tok, rerr := parseTokenOnly(payload)
	if rerr != nil {
		return nil, rerr
	}
	ds, rerr := e.acquire(r.id, tok)
	if rerr != nil {
		return nil, rerr
	}
	defer e.release(ds)
	doc, rerr := e.loadExisting(r, tok)
	if rerr != nil {
		return nil, rerr
	}
	var m getMessage
	m.State.Desired, m.State.Reported, m.State.Delta = doc.State.Desired, doc.State.Reported, doc.Delta()
	m.Metadata, m.Version, m.Timestamp, m.ClientToken = doc.Metadata, doc.Version, e.cfg.Now().Unix(), tok
	b, _ := json.Marshal(&m)
	if src == fromMQTT {
		if len(b) > e.cfg.MaxReply {
			return nil, reject(ErrTooLarge, tok, "The shadow document is too large to send in one MQTT message (%d bytes, the limit is %d); read it over HTTP", len(b), e.cfg.MaxReply)
		}
		e.emit(r, "get/accepted", b)
	}
	return b, nil
}

type deleteMessage struct {
	Version     Version `json:"version"`
	Timestamp   int64   `json:"timestamp"`
	ClientToken string  `json:"clientToken,omitempty"`
}

func (e *Engine) del(r ref, payload []byte, src source) ([]byte, *RequestError) {
	tok, rerr := parseTokenOnly(payload)
	if rerr != nil {
		return nil, rerr
	}
	ds, rerr := e.acquire(r.id, tok)
	if rerr != nil {
		return nil, rerr
	}
	defer e.release(ds)
	ds.mu.Lock()
	defer ds.mu.Unlock()
	doc, rerr := e.loadExisting(r, tok)
	if rerr != nil {
		return nil, rerr
	}
	now := e.cfg.Now()
	tomb := Document{Version: doc.Version, Updated: now.UnixMilli(), Deleted: true}
	raw, _ := json.Marshal(&tomb)
	if err := e.store.put(op{r, raw}); err != nil {
		if errors.Is(err, ErrClosed) {
			return nil, AsRequestError(err, tok)
		}
		e.log.Error("commit shadow delete", "shadow", r, "err", err)
		return nil, AsRequestError(fmt.Errorf("commit %s: %w", r, err), tok)
	}
	if r.name != "" {
		e.stats.named.Add(-1)
	}
	if e.retry != nil {
		e.retry.drop(r) // a retry of the update before the delete is a new request
	}
	b, _ := json.Marshal(deleteMessage{Version: doc.Version, Timestamp: now.Unix(), ClientToken: tok})
	e.emit(r, "delete/accepted", b)
	if e.cfg.OnChange != nil && r.name == "" {
		e.cfg.OnChange(r.id, doc.Version)
	}
	return b, nil
}

// HandleSubscribe is called by the broker when a client's SUBSCRIBE was
// processed, with the filters it granted. For every shadow whose delta
// topic one of the filters matches, on either tree, with the device ID
// spelled out (the exact delta topic, or a wildcard form such as
// state/<id>/update/+, state/<id>/#, $aws/things/<id>/shadow/update/#,
// $aws/things/<id>/shadow/#, state/<id>/shadow/+/update/delta), the engine
// sends that shadow's current delta, if it is not empty, on that tree's
// delta topic to the subscribing client only, so a device that was offline
// while its desired state changed catches up without a get. It sends at
// most one delta per shadow, tree and call (one SUBSCRIBE packet), however
// many of its filters match the topic, and only through a ClientPublisher
// (see Publisher): other subscribers of the delta topic receive nothing.
func (e *Engine) HandleSubscribe(clientID string, filters []string) {
	if e.direct == nil {
		return
	}
	type target struct {
		tree Tree
		r    ref
	}
	var seen map[target]bool
	var payloads map[ref][]byte // the catch-up delta of each shadow (nil: none)
	for _, f := range filters {
		m, ok := parseDeltaFilter(f)
		if !ok {
			continue
		}
		var refs []ref
		if m.classic {
			refs = append(refs, ref{id: m.id})
		}
		if m.name != "" {
			refs = append(refs, ref{m.id, m.name})
		}
		if m.allNamed {
			named, err := e.store.named(m.id)
			if err != nil {
				e.log.Warn("list named shadows for catch-up deltas", "device", m.id, "err", err)
			}
			for _, n := range named {
				if !n.Deleted {
					refs = append(refs, ref{m.id, n.name})
				}
			}
		}
		for _, r := range refs {
			t := target{m.tree, r}
			if seen[t] {
				continue
			}
			if seen == nil {
				seen, payloads = make(map[target]bool), make(map[ref][]byte)
			}
			seen[t] = true
			b, loaded := payloads[r]
			if !loaded {
				b = e.catchUpDelta(r)
				payloads[r] = b
			}
			if b == nil {
				continue
			}
			if err := e.direct.PublishTo(clientID, m.tree.Topic(r.id, r.name, "update/delta"), b, 1); err != nil {
				// Benign: the client left or unsubscribed meanwhile, or its
				// queue is full (the broker counts that); it can still get.
				e.log.Debug("catch-up delta not delivered", "client", clientID, "shadow", r, "err", err)
				continue
			}
			e.stats.published.Add(1)
		}
	}
}

// catchUpDelta returns the delta message HandleSubscribe sends for r, nil
// if r has no delta (or cannot be read).
func (e *Engine) catchUpDelta(r ref) []byte {
	doc, err := e.load(r)
	if err != nil {
		e.log.Warn("load shadow for catch-up delta", "shadow", r, "err", err)
		return nil
	}
	if doc.Deleted {
		return nil
	}
	d := doc.Delta()
	if d == nil {
		return nil
	}
	return e.deltaPayload(d, doc.Metadata.Desired, doc.Version, e.cfg.Now().Unix(), "")
}

func cloneState(s State) State {
	return State{Desired: cloneMap(s.Desired), Reported: cloneMap(s.Reported)}
}

func cloneMap(m map[string]any) map[string]any {
	if m == nil {
		return nil
	}
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = cloneValue(v)
	}
	return out
}

func cloneValue(v any) any {
	switch x := v.(type) {
	case map[string]any:
		return cloneMap(x)
	case []any:
		out := make([]any, len(x))
		for i, c := range x {
			out[i] = cloneValue(c)
		}
		return out
	}
	return v
}
