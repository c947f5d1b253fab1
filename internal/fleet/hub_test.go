package fleet_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/internal/fleet"
)

func TestParseTopic(t *testing.T) {
	cases := []struct {
		topic string
		want  fleet.Event
		ok    bool
	}{
		{"state/d1/update/accepted", fleet.Event{Kind: fleet.KindShadow, Device: "d1"}, true},
		{"state/d1/update/delta", fleet.Event{Kind: fleet.KindDelta, Device: "d1"}, true},
		{"state/d1/delete/accepted", fleet.Event{Kind: fleet.KindDeleted, Device: "d1"}, true},
		{"state/d1/presence", fleet.Event{Kind: fleet.KindPresence, Device: "d1"}, true},
		{"rollouts/r3/events", fleet.Event{Kind: fleet.KindRollout, Rollout: "r3"}, true},
		{"rollouts/r3/status", fleet.Event{Kind: fleet.KindRolloutStatus, Rollout: "r3"}, true},
		{"state/d1/shadow/cfg/update/accepted", fleet.Event{}, false},
		{`state/d"1/presence`, fleet.Event{}, false},
		{`rollouts/r"3/events`, fleet.Event{}, false},
		{"state/d1/update/rejected", fleet.Event{}, false},
		{"other/d1/presence", fleet.Event{}, false},
	}
	for _, c := range cases {
		got, ok := fleet.ParseTopic(c.topic)
		if ok != c.ok || got.Kind != c.want.Kind || got.Device != c.want.Device || got.Rollout != c.want.Rollout {
			t.Errorf("ParseTopic(%q) = %+v, %v; want %+v, %v", c.topic, got, ok, c.want, c.ok)
		}
	}
}

// TestHubDropsASlowSubscriberOnly: a subscriber that stops reading is
// dropped when its buffer is full; the publisher never blocks and the
// others get every event.
func TestHubDropsASlowSubscriberOnly(t *testing.T) {
	h := fleet.NewHub(fleet.HubConfig{Buffer: 4})
	slow, err := h.Subscribe("a", fleet.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	fast, err := h.Subscribe("b", fleet.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	got := 0
	for i := range 20 {
		h.Publish(fmt.Sprintf("state/d%d/update/accepted", i), []byte(`{"version":1}`))
		<-fast.C()
		got++
	}
	select {
	case <-slow.Gone():
	default:
		t.Fatal("the slow subscriber was not dropped")
	}
	select {
	case <-fast.Gone():
		t.Fatal("the fast subscriber was dropped")
	default:
	}
	if st := h.Stats(); st.Dropped != 1 || st.Events != 24 || got != 20 {
		t.Errorf("stats %+v, fast got %d; want 1 dropped, 24 events queued, 20", st, got)
	}
	h.Unsubscribe(slow)
	h.Unsubscribe(slow) // idempotent
	if st := h.Stats(); st.Conns != 1 {
		t.Errorf("%d connections after unsubscribing, want 1", st.Conns)
	}
}

func TestHubCaps(t *testing.T) {
	h := fleet.NewHub(fleet.HubConfig{MaxConns: 3, MaxConnsPerPrincipal: 2})
	a1, _ := h.Subscribe("a", fleet.Filter{})
	if _, err := h.Subscribe("a", fleet.Filter{}); err != nil {
		t.Fatal(err)
	}
	var le *fleet.LimitError
	if _, err := h.Subscribe("a", fleet.Filter{}); !errors.As(err, &le) || !le.PerPrincipal || !errors.Is(err, fleet.ErrTooMany) {
		t.Errorf("third of a: %v, want the per-principal cap", err)
	}
	if _, err := h.Subscribe("b", fleet.Filter{}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Subscribe("c", fleet.Filter{}); !errors.As(err, &le) || le.PerPrincipal {
		t.Errorf("fourth in all: %v, want the total cap", err)
	}
	h.Unsubscribe(a1)
	if _, err := h.Subscribe("c", fleet.Filter{}); err != nil {
		t.Errorf("after one left: %v", err)
	}
	if st := h.Stats(); st.RefusedIdentity != 1 || st.RefusedTotal != 1 || st.Conns != 3 {
		t.Errorf("stats %+v", st)
	}
	h.Close()
	if _, err := h.Subscribe("d", fleet.Filter{}); !errors.Is(err, fleet.ErrClosed) {
		t.Errorf("after Close: %v", err)
	}
}

func TestHubFilters(t *testing.T) {
	h := fleet.NewHub(fleet.HubConfig{})
	s, _ := h.Subscribe("a", fleet.Filter{Kinds: map[string]bool{fleet.KindShadow: true, fleet.KindRollout: true},
		Devices: map[device.ID]bool{"d1": true}, Rollout: "r2"})
	for _, topic := range []string{"state/d2/update/accepted", "state/d1/presence", "rollouts/r1/events",
		"state/d1/update/accepted", "rollouts/r2/events"} {
		h.Publish(topic, []byte("{\n\"x\": 1}"))
	}
	for _, want := range []fleet.Event{{Kind: fleet.KindShadow, Device: "d1"}, {Kind: fleet.KindRollout, Rollout: "r2"}} {
		e := <-s.C()
		if e.Kind != want.Kind || e.Device != want.Device || e.Rollout != want.Rollout || string(e.Payload) != `{"x":1}` {
			t.Errorf("event %+v %s, want %+v with the payload on one line", e, e.Payload, want)
		}
	}
	if n := len(s.C()); n != 0 {
		t.Errorf("%d more events, want none", n)
	}
}
