package shadowclient

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/shadow"
)

// The kinds of message Watch can follow, the last level of
// state/<id>/update/<kind> (and state/<id>/shadow/<name>/update/<kind>).
const (
	KindAccepted  = "accepted"
	KindDelta     = "delta"
	KindDocuments = "documents"
)

// Kinds lists every kind Watch accepts; it is the default.
var Kinds = []string{KindAccepted, KindDelta, KindDocuments}

// MaxQueuedEvents is how many events a Watch holds while its callback is
// busy; beyond that, events are dropped (and logged) rather than stalling
// the Client's other traffic.
const MaxQueuedEvents = 4096

// AllNamed, as the name of WatchNamed, follows every named shadow.
const AllNamed = "+"

// Event is one message seen by Watch.
type Event struct {
	Device device.ID `json:"device"`
	// Name is the named shadow the message is about; "" (left out of the
	// JSON) for the classic shadow.
	Name    shadow.Name     `json:"name,omitempty"`
	Kind    string          `json:"kind"` // KindAccepted, KindDelta or KindDocuments
	Topic   string          `json:"topic"`
	Payload json.RawMessage `json:"payload"`
}

// watcher queues the events of one Watch call.
type watcher struct {
	ids   map[device.ID]bool // nil: every device
	name  string             // "" the classic shadow, AllNamed every named one, or one name
	kinds map[string]bool

	mu      sync.Mutex // guards queue and dropped
	queue   []Event
	dropped int
	signal  chan struct{} // capacity 1: the queue is not empty
}

// offer queues e if the watcher wants it. It never blocks.
func (w *watcher) offer(e Event) {
	if !w.kinds[e.Kind] || (w.ids != nil && !w.ids[e.Device]) {
		return
	}
	if w.name == AllNamed && e.Name == "" || w.name != AllNamed && string(e.Name) != w.name {
		return
	}
	w.mu.Lock()
	if len(w.queue) >= MaxQueuedEvents {
		w.dropped++
	} else {
		w.queue = append(w.queue, e)
	}
	w.mu.Unlock()
	select {
	case w.signal <- struct{}{}:
	default:
	}
}

// take returns the queued events and how many were dropped since the last
// call.
func (w *watcher) take() ([]Event, int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	q, d := w.queue, w.dropped
	w.queue, w.dropped = nil, 0
	return q, d
}

// Watch subscribes to the update messages of the given kinds (default
// Kinds) of the classic shadows of the devices ids (every device when ids
// is empty) and calls fn
// with each, in arrival order, on the calling goroutine, until ctx ends
// (then it returns nil), the Client is closed (ErrClosed) or the connection
// drops (ErrConnectionLost). An unknown kind or invalid ID is an error
// wrapping ErrInvalidRequest. Messages published after the subscriptions
// are granted (within Config.Timeout) are delivered; Watch gives no signal
// of that moment, so a caller that must not miss an event learns it from the
// server side (e.g. broker.Server.HasSubscribers).
func (c *Client) Watch(ctx context.Context, ids []device.ID, kinds []string, fn func(Event)) error {
	return c.WatchNamed(ctx, ids, "", kinds, fn)
}

// WatchNamed is Watch for the named shadow name of the devices ("" is the
// classic shadow, as Watch; AllNamed is every named shadow). An invalid
// name is an error wrapping ErrInvalidRequest.
func (c *Client) WatchNamed(ctx context.Context, ids []device.ID, name string, kinds []string, fn func(Event)) error {
	if len(kinds) == 0 {
		kinds = Kinds
	}
	if name != "" && name != AllNamed {
		if _, err := shadow.ParseName(name); err != nil {
			return fmt.Errorf("watch: %w: %w", ErrInvalidRequest, err)
		}
	}
	w := &watcher{name: name, kinds: map[string]bool{}, signal: make(chan struct{}, 1)}
	for _, k := range kinds {
		if !slices.Contains(Kinds, k) {
			return fmt.Errorf("watch: %w: kind %q: want one of %v", ErrInvalidRequest, k, Kinds)
		}
		w.kinds[k] = true
	}
	levels := []string{"+"}
	if len(ids) > 0 {
		w.ids = map[device.ID]bool{}
		levels = levels[:0]
		for _, id := range ids {
			if _, err := device.ParseID(string(id)); err != nil {
				return fmt.Errorf("watch: %w: %w", ErrInvalidRequest, err)
			}
			if !w.ids[id] {
				w.ids[id] = true
				levels = append(levels, string(id))
			}
		}
	}
	var filters []string
	for _, l := range levels {
		for k := range w.kinds {
			// A wildcard device (+) or name (+) makes a filter, not a topic;
			// shadow.Tree.Topic only joins the levels.
			filters = append(filters, shadow.TreeState.Topic(device.ID(l), shadow.Name(name), string(shadow.OpUpdate)+"/"+k))
		}
	}

	// Registered before subscribing, so nothing after the SUBACK is missed.
	c.mu.Lock()
	c.watchers[w] = struct{}{}
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.watchers, w)
		c.mu.Unlock()
	}()
	subCtx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	holds, err := c.subscribe(subCtx, filters...)
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("watch: %w", err)
	}
	defer c.release(holds)
	c.log.Debug("watching", "filters", filters)

	for {
		select {
		case <-w.signal:
			events, dropped := w.take()
			if dropped > 0 {
				c.log.Warn("watch fell behind; events dropped", "dropped", dropped)
			}
			for _, e := range events {
				if ctx.Err() != nil {
					return nil
				}
				fn(e)
			}
		case <-ctx.Done():
			return nil
		case <-c.dead:
			return fmt.Errorf("watch: %w", c.err())
		}
	}
}
