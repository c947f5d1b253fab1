package rolloutfeed_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/internal/brokertest"
	"github.com/umbra-iot/umbra/internal/rolloutfeed"
	"github.com/umbra-iot/umbra/internal/rolloutwire"
	"github.com/umbra-iot/umbra/rollout"
	"github.com/umbra-iot/umbra/wire"
)

// events returns n events of a rollout: created, running, then batch and
// device events, with sequence numbers from 1.
func events(n int) []rollout.Event {
	out := make([]rollout.Event, n)
	for i := range out {
		ev := rollout.Event{Seq: uint64(i + 1), Time: t0.Add(time.Duration(i) * time.Second)}
		switch i {
		case 0:
			ev.Kind, ev.State, ev.Reason = rollout.EventCreated, rollout.StateCreated, "4 targets in 2 batches"
		case 1:
			ev.Kind, ev.State = rollout.EventState, rollout.StateRunning
		default:
			switch i % 3 {
			case 0:
				ev.Kind, ev.Batch = rollout.EventBatchStarted, i
			case 1:
				ev.Kind, ev.Device, ev.Reason = rollout.EventDeviceFailed, "dev-1", "sha256 mismatch"
			case 2:
				ev.Kind, ev.Device = rollout.EventRetry, "dev-2"
			}
		}
		out[i] = ev
	}
	return out
}

func TestEventsInOrderOverMQTT(t *testing.T) {
	b := brokertest.New(t, broker.Config{})
	// Ordered delivery to the handler, so that the channel sees the
	// broker's order; the handler never blocks.
	sub := brokertest.Connect(t, brokertest.URL(b), "integrator", func(o *mqtt.ClientOptions) { o.SetOrderMatters(true) })
	msgs := brokertest.Subscribe(t, sub, rolloutfeed.Filter, 1)
	st := newStatuses()
	st.set(status("r1", rollout.StateRunning, map[rollout.DeviceState]int{rollout.DevicePending: 4}))
	f := mustOpen(t, rolloutfeed.Config{Publisher: b, Status: st.Status, StatusInterval: time.Hour})

	evs := events(40) // below the subscriber's broker queue (broker.DefaultClientWritesPending)
	for _, ev := range evs {
		f.OnEvent("r1", ev)
	}
	for i, want := range evs {
		m := nextOn(t, msgs, "rollouts/r1/events")
		var got wire.RolloutEventMessage
		if err := json.Unmarshal(m.Payload, &got); err != nil {
			t.Fatalf("event %d: %v in %s", i, err, m.Payload)
		}
		if got.Rollout != "r1" || !reflect.DeepEqual(got.RolloutEvent, rolloutwire.Event(want)) {
			t.Fatalf("event %d = %+v, want rollout r1 and %+v", i, got, want)
		}
		if m.Retained || m.QoS != 1 {
			t.Errorf("event %d: retained %t, QoS %d; want false, 1", i, m.Retained, m.QoS)
		}
	}
	if d := f.Dropped(); d != 0 {
		t.Errorf("Dropped() = %d, want 0", d)
	}
}

func TestRetainedStatusForLateSubscriber(t *testing.T) {
	b := brokertest.New(t, broker.Config{})
	st := newStatuses()
	f := mustOpen(t, rolloutfeed.Config{Publisher: b, Status: st.Status})

	steps := []struct {
		name   string
		status rollout.Status
		event  rollout.Event
	}{
		{"created", status("r7", rollout.StateCreated, map[rollout.DeviceState]int{rollout.DevicePending: 4}),
			rollout.Event{Seq: 1, Kind: rollout.EventCreated, State: rollout.StateCreated}},
		{"running", status("r7", rollout.StateRunning, map[rollout.DeviceState]int{rollout.DevicePending: 2, rollout.DeviceInstalling: 2}),
			rollout.Event{Seq: 2, Kind: rollout.EventState, State: rollout.StateRunning}},
		{"succeeded", status("r7", rollout.StateSucceeded, map[rollout.DeviceState]int{rollout.DeviceSucceeded: 3, rollout.DeviceAlreadyInstalled: 1}),
			rollout.Event{Seq: 3, Kind: rollout.EventState, State: rollout.StateSucceeded}},
	}
	for _, step := range steps {
		t.Run(step.name, func(t *testing.T) {
			st.set(step.status)
			f.OnEvent("r7", step.event)
			// Sync returns once the status it fetched is published.
			if err := f.Sync(t.Context(), []string{"r7"}); err != nil {
				t.Fatalf("Sync: %v", err)
			}
			late := brokertest.Connect(t, brokertest.URL(b), "late-"+step.name)
			m := brokertest.Next(t, brokertest.Subscribe(t, late, "rollouts/+/status", 1), wait)
			if m.Topic != "rollouts/r7/status" || !m.Retained {
				t.Fatalf("got %v, want a retained message on rollouts/r7/status", m)
			}
			var got wire.RolloutSummary
			if err := json.Unmarshal(m.Payload, &got); err != nil {
				t.Fatalf("%v in %s", err, m.Payload)
			}
			if want := rolloutwire.Summary(step.status); !reflect.DeepEqual(got, want) {
				t.Errorf("status = %+v, want %+v", got, want)
			}
		})
	}
}

func TestStatusCoalesced(t *testing.T) {
	pub := newCapture()
	st := newStatuses()
	st.set(status("r1", rollout.StateRunning, map[rollout.DeviceState]int{rollout.DeviceNotified: 8}))
	f := mustOpen(t, rolloutfeed.Config{Publisher: pub, Status: st.Status, StatusInterval: time.Hour})

	// A burst of device events: the first is fetched at once, the rest
	// wait for StatusInterval.
	const burst = 200
	for i := range burst {
		f.OnEvent("r1", rollout.Event{Seq: uint64(i + 1), Kind: rollout.EventRetry, Device: "dev-1"})
	}
	count := func(events, statuses int) {
		t.Helper()
		for events > 0 || statuses > 0 {
			select {
			case m := <-pub.ch:
				switch m.Topic {
				case "rollouts/r1/events":
					events--
				case "rollouts/r1/status":
					statuses--
				}
			case <-time.After(wait):
				t.Fatalf("missing %d events and %d statuses after %v", events, statuses, wait)
			}
		}
	}
	count(burst, 1)
	// A state event is fetched at once, whatever the interval.
	f.OnEvent("r1", rollout.Event{Seq: burst + 1, Kind: rollout.EventState, State: rollout.StatePaused})
	count(1, 1)
	if got := st.count("r1"); got != 2 {
		t.Errorf("Status calls after %d device events and a state event = %d, want 2", burst, got)
	}
	nStatus := 0
	for _, m := range pub.all() {
		if m.Topic == "rollouts/r1/status" {
			nStatus++
		}
	}
	if nStatus != 2 {
		t.Errorf("status messages = %d, want 2", nStatus)
	}
}

func TestStatusAtMostEveryInterval(t *testing.T) {
	const interval = 50 * time.Millisecond
	st := newStatuses()
	st.set(status("r2", rollout.StateRunning, map[rollout.DeviceState]int{rollout.DeviceNotified: 8}))
	f := mustOpen(t, rolloutfeed.Config{Publisher: newCapture(), Status: st.Status, StatusInterval: interval})

	f.OnEvent("r2", rollout.Event{Seq: 1, Kind: rollout.EventRetry, Device: "dev-1"})
	first := st.next(t, "r2")
	// An event right after a fetch is covered by a trailing fetch one
	// interval later, without any further event.
	f.OnEvent("r2", rollout.Event{Seq: 2, Kind: rollout.EventRetry, Device: "dev-2"})
	second := st.next(t, "r2")
	if gap := second.at.Sub(first.at); gap < interval {
		t.Errorf("fetches %v apart, want at least %v", gap, interval)
	}
}

// blockingPublisher stands for a broker that does not return until
// released.
type blockingPublisher struct {
	entered chan struct{} // capacity 1
	release chan struct{}
}

func (p *blockingPublisher) Publish(string, []byte, bool, byte) error {
	select {
	case p.entered <- struct{}{}:
	default:
	}
	<-p.release
	return nil
}

func TestOnEventNeverBlocks(t *testing.T) {
	t.Run("slow broker", func(t *testing.T) {
		pub := &blockingPublisher{entered: make(chan struct{}, 1), release: make(chan struct{})}
		st := newStatuses()
		const queue, n = 8, 1000
		f := mustOpen(t, rolloutfeed.Config{Publisher: pub, Status: st.Status, QueueSize: queue, StatusInterval: time.Millisecond})
		f.OnEvent("r1", rollout.Event{Seq: 1, Kind: rollout.EventRetry})
		select {
		case <-pub.entered: // the feed's goroutine is stuck in Publish
		case <-time.After(wait):
			t.Fatal("feed never published")
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			for i := range n {
				f.OnEvent("r1", rollout.Event{Seq: uint64(i + 2), Kind: rollout.EventRetry})
			}
		}()
		select {
		case <-done:
		case <-time.After(wait):
			t.Fatalf("%d OnEvent calls with a stuck broker did not return within %v", n, wait)
		}
		if got, want := f.Dropped(), uint64(n-queue); got != want {
			t.Errorf("Dropped() = %d, want %d", got, want)
		}
		// Once the broker moves again, the status is still refreshed.
		st.set(status("r1", rollout.StateRunning, map[rollout.DeviceState]int{rollout.DeviceNotified: 1}))
		close(pub.release)
		st.next(t, "r1")
	})
	t.Run("closed broker", func(t *testing.T) {
		b := brokertest.New(t, broker.Config{})
		st := newStatuses()
		st.set(status("r1", rollout.StateRunning, map[rollout.DeviceState]int{rollout.DeviceNotified: 1}))
		f := mustOpen(t, rolloutfeed.Config{Publisher: b, Status: st.Status, QueueSize: 8})
		if err := b.Close(t.Context()); err != nil {
			t.Fatalf("close broker: %v", err)
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			for i := range 1000 {
				f.OnEvent("r1", rollout.Event{Seq: uint64(i + 1), Kind: rollout.EventRetry})
			}
		}()
		select {
		case <-done:
		case <-time.After(wait):
			t.Fatalf("OnEvent with a closed broker did not return within %v", wait)
		}
		if err := f.Sync(t.Context(), []string{"r1"}); !errors.Is(err, broker.ErrClosed) {
			t.Errorf("Sync with a closed broker = %v, want an error wrapping broker.ErrClosed", err)
		}
	})
}

func TestCloseWaitsForGoroutine(t *testing.T) {
	started := make(chan struct{}, 1)
	statusFn := func(ctx context.Context, id string) (rollout.Status, error) {
		select {
		case started <- struct{}{}:
		default:
		}
		<-ctx.Done() // a Status that only returns when cancelled
		return rollout.Status{}, ctx.Err()
	}
	f, err := rolloutfeed.Open(t.Context(), rolloutfeed.Config{Publisher: newCapture(), Status: statusFn})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	f.OnEvent("r1", rollout.Event{Seq: 1, Kind: rollout.EventState, State: rollout.StateRunning})
	select {
	case <-started:
	case <-time.After(wait):
		t.Fatal("Status never called")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if err := f.Close(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Close with a stuck Status = %v, want an error wrapping context.DeadlineExceeded", err)
	}
	if g := feedGoroutines(); g != "" {
		t.Errorf("feed goroutine still running after Close:\n%s", g)
	}
	if err := f.Close(t.Context()); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("second Close = %v, want the first Close's error", err)
	}
	f.OnEvent("r1", rollout.Event{Seq: 2, Kind: rollout.EventRetry}) // does nothing
	if d := f.Dropped(); d != 0 {
		t.Errorf("Dropped() after Close = %d, want 0", d)
	}
	if err := f.Sync(t.Context(), []string{"r1"}); !errors.Is(err, rolloutfeed.ErrClosed) {
		t.Errorf("Sync after Close = %v, want ErrClosed", err)
	}
}

// feedGoroutines returns the stacks of goroutines running the feed's loop.
func feedGoroutines() string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for g := range strings.SplitSeq(string(buf), "\n\n") {
		if strings.Contains(g, "rolloutfeed.(*Feed).run(") {
			out = append(out, g)
		}
	}
	return strings.Join(out, "\n\n")
}

func TestCloseFlushes(t *testing.T) {
	pub := newCapture()
	st := newStatuses()
	st.set(status("r1", rollout.StateRunning, map[rollout.DeviceState]int{rollout.DeviceNotified: 1}))
	f, err := rolloutfeed.Open(t.Context(), rolloutfeed.Config{Publisher: pub, Status: st.Status, StatusInterval: time.Hour})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	const n = 100
	for i := range n {
		f.OnEvent("r1", rollout.Event{Seq: uint64(i + 1), Kind: rollout.EventRetry})
	}
	if err := f.Close(t.Context()); err != nil {
		t.Fatalf("Close: %v", err)
	}
	var nEvents int
	var last brokertest.Message
	for _, m := range pub.all() {
		switch m.Topic {
		case "rollouts/r1/events":
			nEvents++
		case "rollouts/r1/status":
			last = m
		}
	}
	if nEvents != n {
		t.Errorf("events published by Close = %d, want %d", nEvents, n)
	}
	// However the burst was split, the last event was followed by a fetch.
	if last.Topic == "" || !last.Retained {
		t.Errorf("last status = %v, want a retained status", last)
	}
}

func TestOpenInvalid(t *testing.T) {
	pub, st := newCapture(), newStatuses()
	tests := []struct {
		name string
		cfg  rolloutfeed.Config
	}{
		{"no publisher", rolloutfeed.Config{Status: st.Status}},
		{"no status", rolloutfeed.Config{Publisher: pub}},
		{"negative interval", rolloutfeed.Config{Publisher: pub, Status: st.Status, StatusInterval: -1}},
		{"negative timeout", rolloutfeed.Config{Publisher: pub, Status: st.Status, StatusTimeout: -1}},
		{"negative queue", rolloutfeed.Config{Publisher: pub, Status: st.Status, QueueSize: -1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, err := rolloutfeed.Open(t.Context(), tc.cfg)
			if !errors.Is(err, rolloutfeed.ErrInvalid) {
				t.Errorf("Open = %v, want ErrInvalid", err)
			}
			if f != nil {
				t.Errorf("Open returned a feed with error %v", err)
			}
		})
	}
}

func TestInvalidRolloutID(t *testing.T) {
	pub, st := newCapture(), newStatuses()
	st.set(status("r1", rollout.StateRunning, map[rollout.DeviceState]int{rollout.DeviceNotified: 1}))
	f := mustOpen(t, rolloutfeed.Config{Publisher: pub, Status: st.Status})
	bad := []string{"", "a/b", "r+", "r#", "a b", strings.Repeat("r", 129), "r\x00"}
	for _, id := range bad {
		t.Run(fmt.Sprintf("%q", clip(id)), func(t *testing.T) {
			if err := f.Sync(t.Context(), []string{"r1", id}); !errors.Is(err, rolloutfeed.ErrInvalid) {
				t.Errorf("Sync(%q) = %v, want ErrInvalid", clip(id), err)
			}
			f.OnEvent(id, rollout.Event{Seq: 1, Kind: rollout.EventRetry})
		})
	}
	// Events are handled in order: once r1's event is out, the bad ones
	// before it were handled, and none may have been published.
	f.OnEvent("r1", rollout.Event{Seq: 1, Kind: rollout.EventRetry})
	nextOn(t, pub.ch, "rollouts/r1/events")
	st.next(t, "r1")
	for _, m := range pub.all() {
		if !strings.HasPrefix(m.Topic, "rollouts/r1/") {
			t.Errorf("published on %q, want only rollouts/r1/...", m.Topic)
		}
	}
	if got := st.count("r1"); got != 1 {
		t.Errorf("Status(r1) calls = %d, want 1 (rejected Syncs fetch nothing)", got)
	}
}

func clip(s string) string {
	if len(s) > 10 {
		return s[:10] + "…"
	}
	return s
}

func TestSyncNotFoundClearsStatus(t *testing.T) {
	pub, st := newCapture(), newStatuses()
	f := mustOpen(t, rolloutfeed.Config{Publisher: pub, Status: st.Status})
	st.set(status("r3", rollout.StateRunning, map[rollout.DeviceState]int{rollout.DeviceNotified: 1}))
	if err := f.Sync(t.Context(), []string{"r3"}); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	st.remove("r3")
	if err := f.Sync(t.Context(), []string{"r3"}); !errors.Is(err, rollout.ErrNotFound) {
		t.Fatalf("Sync of a removed rollout = %v, want an error wrapping rollout.ErrNotFound", err)
	}
	msgs := pub.all()
	last := msgs[len(msgs)-1]
	if last.Topic != "rollouts/r3/status" || !last.Retained || len(last.Payload) != 0 {
		t.Errorf("last message = %v, want an empty retained message on rollouts/r3/status", last)
	}
}
