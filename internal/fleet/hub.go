package fleet

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/wire"
)

// Kinds of live event, each from one MQTT topic of the feed.
const (
	KindShadow        = "shadow"         // state/<id>/update/accepted
	KindDelta         = "delta"          // state/<id>/update/delta
	KindDeleted       = "deleted"        // state/<id>/delete/accepted
	KindPresence      = "presence"       // state/<id>/presence
	KindRollout       = "rollout"        // rollouts/<id>/events
	KindRolloutStatus = "rollout-status" // rollouts/<id>/status
)

// EventKinds lists every kind, in the order above.
var EventKinds = []string{KindShadow, KindDelta, KindDeleted, KindPresence, KindRollout, KindRolloutStatus}

// Defaults of HubConfig.
const (
	DefaultMaxConns             = 64
	DefaultMaxConnsPerPrincipal = 8
	DefaultBuffer               = 256
)

// Errors of Subscribe.
var (
	// ErrTooMany: the hub's connection caps are reached; the
	// *LimitError says which.
	ErrTooMany = errors.New("fleet: too many live connections")
	// ErrClosed: the hub is closed.
	ErrClosed = errors.New("fleet: hub closed")
)

// LimitError is the ErrTooMany of one cap.
type LimitError struct {
	// PerPrincipal is true for the per-principal cap, false for the total.
	PerPrincipal bool
	Limit        int
}

func (e *LimitError) Error() string {
	if e.PerPrincipal {
		return fmt.Sprintf("at most %d live connections per token", e.Limit)
	}
	return fmt.Sprintf("at most %d live connections in all", e.Limit)
}

func (e *LimitError) Unwrap() error { return ErrTooMany }

// HubConfig caps a Hub. Zero fields take the defaults.
type HubConfig struct {
	// MaxConns caps the subscriptions (SSE connections) in all.
	MaxConns int
	// MaxConnsPerPrincipal caps the subscriptions of one principal (one
	// token).
	MaxConnsPerPrincipal int
	// Buffer is the events one subscription may have waiting; a
	// subscriber that falls further behind is dropped (Sub.Gone), never
	// waited for.
	Buffer int
}

// Event is one live event.
type Event struct {
	Kind    string
	Device  device.ID // the device, for the shadow and presence kinds
	Rollout string    // the rollout, for the rollout kinds
	Payload json.RawMessage
}

// Filter selects the events of a subscription. Its zero value selects
// every event.
type Filter struct {
	// Kinds: nil for every kind.
	Kinds map[string]bool
	// Devices: nil for every device; device events of other devices are
	// left out (rollout events are not device events).
	Devices map[device.ID]bool
	// Rollout: "" for every rollout; else rollout events of other rollouts
	// are left out.
	Rollout string
}

func (f *Filter) match(e *Event) bool {
	if f.Kinds != nil && !f.Kinds[e.Kind] {
		return false
	}
	if e.Device != "" && f.Devices != nil && !f.Devices[e.Device] {
		return false
	}
	if e.Rollout != "" && f.Rollout != "" && f.Rollout != e.Rollout {
		return false
	}
	return true
}

// Sub is one subscription.
type Sub struct {
	c         chan Event
	gone      chan struct{}
	goneOnce  sync.Once
	principal string
	filter    Filter
}

// C delivers the subscription's events.
func (s *Sub) C() <-chan Event { return s.c }

// Gone is closed when the hub dropped the subscription: it fell more than
// HubConfig.Buffer events behind, or the hub closed.
func (s *Sub) Gone() <-chan struct{} { return s.gone }

func (s *Sub) drop() { s.goneOnce.Do(func() { close(s.gone) }) }

// HubStats are a Hub's counters.
type HubStats struct {
	Conns           int    // subscriptions open
	RefusedTotal    uint64 // refused by MaxConns
	RefusedIdentity uint64 // refused by MaxConnsPerPrincipal
	Dropped         uint64 // dropped for falling behind
	Events          uint64 // events queued to subscriptions
}

// Hub fans the live feed out to subscribers (the SSE connections), never
// blocking the publisher: a subscriber whose buffer is full is dropped.
type Hub struct {
	cfg HubConfig

	mu     sync.RWMutex
	subs   map[*Sub]struct{}
	per    map[string]int
	closed bool

	refusedTotal, refusedIdentity, dropped, events atomic.Uint64
}

// NewHub returns a hub with cfg's caps.
func NewHub(cfg HubConfig) *Hub {
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = DefaultMaxConns
	}
	if cfg.MaxConnsPerPrincipal <= 0 {
		cfg.MaxConnsPerPrincipal = DefaultMaxConnsPerPrincipal
	}
	if cfg.Buffer <= 0 {
		cfg.Buffer = DefaultBuffer
	}
	return &Hub{cfg: cfg, subs: map[*Sub]struct{}{}, per: map[string]int{}}
}

// Subscribe opens a subscription for principal (its caps count per
// principal). It fails with a *LimitError (ErrTooMany) beyond a cap and
// ErrClosed after Close.
func (h *Hub) Subscribe(principal string, f Filter) (*Sub, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case h.closed:
		return nil, ErrClosed
	case len(h.subs) >= h.cfg.MaxConns:
		h.refusedTotal.Add(1)
		return nil, &LimitError{Limit: h.cfg.MaxConns}
	case h.per[principal] >= h.cfg.MaxConnsPerPrincipal:
		h.refusedIdentity.Add(1)
		return nil, &LimitError{PerPrincipal: true, Limit: h.cfg.MaxConnsPerPrincipal}
	}
	s := &Sub{c: make(chan Event, h.cfg.Buffer), gone: make(chan struct{}), principal: principal, filter: f}
	h.subs[s] = struct{}{}
	h.per[principal]++
	return s, nil
}

// Unsubscribe ends s. It is idempotent.
func (h *Hub) Unsubscribe(s *Sub) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.subs[s]; !ok {
		return
	}
	delete(h.subs, s)
	if h.per[s.principal]--; h.per[s.principal] <= 0 {
		delete(h.per, s.principal)
	}
	s.drop()
}

// Close drops every subscription; later Subscribes fail with ErrClosed.
func (h *Hub) Close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closed = true
	for s := range h.subs {
		s.drop()
	}
}

// Stats returns the hub's counters.
func (h *Hub) Stats() HubStats {
	h.mu.RLock()
	n := len(h.subs)
	h.mu.RUnlock()
	return HubStats{Conns: n, RefusedTotal: h.refusedTotal.Load(), RefusedIdentity: h.refusedIdentity.Load(),
		Dropped: h.dropped.Load(), Events: h.events.Load()}
}

// Publish hands the message of a feed topic (one of the kinds' topics) to the
// subscribers whose filter takes it; other topics are ignored. It never
// blocks. The payload is copied if anyone takes it.
func (h *Hub) Publish(topic string, payload []byte) {
	e, ok := ParseTopic(topic)
	if !ok {
		return
	}
	h.mu.RLock()
	defer h.mu.RUnlock()
	for s := range h.subs {
		if !s.filter.match(&e) {
			continue
		}
		if e.Payload == nil {
			e.Payload = compactPayload(payload)
		}
		select {
		case <-s.gone:
		case s.c <- e:
			h.events.Add(1)
		default:
			h.dropped.Add(1)
			s.drop()
		}
	}
}

// compactPayload copies payload as one line of JSON (an SSE data line);
// a payload that is not JSON becomes a JSON string.
func compactPayload(p []byte) json.RawMessage {
	if !json.Valid(p) {
		b, _ := json.Marshal(string(p))
		return b
	}
	if !bytes.ContainsAny(p, "\r\n") {
		return bytes.Clone(p)
	}
	var buf bytes.Buffer
	_ = json.Compact(&buf, p)
	return buf.Bytes()
}

// ParseTopic returns the event of a feed topic (without its payload).
func ParseTopic(topic string) (Event, bool) {
	parts := strings.Split(topic, "/")
	switch {
	case len(parts) == 3 && parts[0] == "rollouts" && (parts[2] == "events" || parts[2] == "status"):
		// Rollout and device IDs are checked: they are written into the
		// stream's JSON unquoted.
		id, err := wire.ParseRolloutID(parts[1])
		if err != nil {
			return Event{}, false
		}
		if parts[2] == "events" {
			return Event{Kind: KindRollout, Rollout: id}, true
		}
		return Event{Kind: KindRolloutStatus, Rollout: id}, true
	case len(parts) < 3 || parts[0] != "state":
		return Event{}, false
	}
	id, err := device.ParseID(parts[1])
	if err != nil {
		return Event{}, false
	}
	switch strings.Join(parts[2:], "/") {
	case "update/accepted":
		return Event{Kind: KindShadow, Device: id}, true
	case "update/delta":
		return Event{Kind: KindDelta, Device: id}, true
	case "delete/accepted":
		return Event{Kind: KindDeleted, Device: id}, true
	case "presence":
		return Event{Kind: KindPresence, Device: id}, true
	}
	return Event{}, false
}
