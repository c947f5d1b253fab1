package rolloutfeed_test

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/internal/brokertest"
	"github.com/umbra-iot/umbra/internal/rolloutfeed"
	"github.com/umbra-iot/umbra/rollout"
)

func TestMain(m *testing.M) { brokertest.Main(m) }

// wait bounds every wait for an event in these tests.
const wait = 5 * time.Second

// t0 is the fixed time of the test events and statuses.
var t0 = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)

// mustOpen opens a feed logging to the test output and closes it in
// t.Cleanup.
func mustOpen(tb testing.TB, cfg rolloutfeed.Config) *rolloutfeed.Feed {
	tb.Helper()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(tb.Output(), nil))
	}
	f, err := rolloutfeed.Open(tb.Context(), cfg)
	if err != nil {
		tb.Fatalf("Open: %v", err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		if err := f.Close(ctx); err != nil {
			tb.Errorf("Close: %v", err)
		}
	})
	return f
}

// statuses is a fake Status source: rollouts by ID, and a channel that
// receives the ID of every call.
type statuses struct {
	mu    sync.Mutex // guards st and calls
	st    map[string]rollout.Status
	calls map[string]int

	called chan call // buffered; never blocks the feed
}

type call struct {
	id string
	at time.Time
}

func newStatuses() *statuses {
	return &statuses{st: map[string]rollout.Status{}, calls: map[string]int{}, called: make(chan call, 4096)}
}

func (s *statuses) set(st rollout.Status) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.st[st.ID] = st
}

func (s *statuses) remove(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.st, id)
}

func (s *statuses) count(id string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[id]
}

// Status is the rolloutfeed.Config.Status function.
func (s *statuses) Status(_ context.Context, id string) (rollout.Status, error) {
	s.mu.Lock()
	st, ok := s.st[id]
	s.calls[id]++
	s.mu.Unlock()
	select {
	case s.called <- call{id, time.Now()}:
	default:
	}
	if !ok {
		return rollout.Status{}, fmt.Errorf("fake %s: %w", id, rollout.ErrNotFound)
	}
	return st, nil
}

// next waits for the next Status call for id, skipping calls for others.
func (s *statuses) next(tb testing.TB, id string) call {
	tb.Helper()
	deadline := time.After(wait)
	for {
		select {
		case c := <-s.called:
			if c.id == id {
				return c
			}
		case <-deadline:
			tb.Fatalf("no Status(%s) call within %v", id, wait)
		}
	}
}

// status returns a Status of rollout id in state with counts.
func status(id string, state rollout.State, counts map[rollout.DeviceState]int) rollout.Status {
	n := 0
	for _, c := range counts {
		n += c
	}
	return rollout.Status{
		Rollout: rollout.Rollout{ID: id, Firmware: "2.0.0", State: state, Reason: "test", Targets: n,
			Batches: []rollout.Batch{{Start: 0, Size: n / 2}, {Start: n / 2, Size: n - n/2}}, Started: 1,
			Created: t0, Updated: t0.Add(time.Minute)},
		Counts: counts,
	}
}

// capture is a Publisher that records every message.
type capture struct {
	mu   sync.Mutex // guards msgs
	msgs []brokertest.Message
	ch   chan brokertest.Message
}

func newCapture() *capture { return &capture{ch: make(chan brokertest.Message, 8192)} }

// Publish records the message.
func (c *capture) Publish(topic string, payload []byte, retain bool, qos byte) error {
	m := brokertest.Message{Topic: topic, Payload: append([]byte(nil), payload...), Retained: retain, QoS: qos}
	c.mu.Lock()
	c.msgs = append(c.msgs, m)
	c.mu.Unlock()
	select {
	case c.ch <- m:
	default:
	}
	return nil
}

// all returns the messages recorded so far.
func (c *capture) all() []brokertest.Message {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]brokertest.Message(nil), c.msgs...)
}

// nextOn waits for the next message on topic, skipping others.
func nextOn(tb testing.TB, ch <-chan brokertest.Message, topic string) brokertest.Message {
	tb.Helper()
	deadline := time.After(wait)
	for {
		select {
		case m := <-ch:
			if m.Topic == topic {
				return m
			}
		case <-deadline:
			tb.Fatalf("no message on %s within %v", topic, wait)
		}
	}
}
