package identity_test

import (
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/identity"
	"github.com/umbra-iot/umbra/internal/waitfor"
)

var t0 = time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)

func at(sec int) time.Time { return t0.Add(time.Duration(sec) * time.Second) }

// event is a Connected (reason "" and connect true) or Disconnected call.
type event struct {
	connect bool
	seq     uint64
	sec     int
	reason  string
	applied bool
}

func TestPresenceOrdering(t *testing.T) {
	tests := []struct {
		name   string
		events []event
		want   identity.Presence
	}{
		{"connect", []event{{true, 1, 1, "", true}},
			identity.Presence{Connected: true, ConnectedAt: at(1), RemoteAddr: "127.0.0.1:1"}},
		{"connect then disconnect", []event{{true, 1, 1, "", true}, {false, 1, 5, "connection lost", true}},
			identity.Presence{ConnectedAt: at(1), DisconnectedAt: at(5), DisconnectReason: "connection lost", RemoteAddr: "127.0.0.1:1"}},
		{"quick reconnect: old disconnect arrives late", []event{
			{true, 1, 1, "", true}, {true, 2, 2, "", true}, {false, 1, 3, "session taken over", false}},
			identity.Presence{Connected: true, ConnectedAt: at(2), RemoteAddr: "127.0.0.1:2"}},
		{"reconnect after disconnect", []event{
			{true, 1, 1, "", true}, {false, 1, 2, "", true}, {true, 2, 3, "", true}},
			identity.Presence{Connected: true, ConnectedAt: at(3), DisconnectedAt: at(2), RemoteAddr: "127.0.0.1:3"}},
		{"stale connect ignored", []event{{true, 5, 1, "", true}, {true, 4, 2, "", false}},
			identity.Presence{Connected: true, ConnectedAt: at(1), RemoteAddr: "127.0.0.1:1"}},
		{"duplicate disconnect ignored", []event{
			{true, 1, 1, "", true}, {false, 1, 2, "a", true}, {false, 1, 3, "b", false}},
			identity.Presence{ConnectedAt: at(1), DisconnectedAt: at(2), DisconnectReason: "a", RemoteAddr: "127.0.0.1:1"}},
		{"disconnect without connect", []event{{false, 3, 2, "kicked", true}},
			identity.Presence{DisconnectedAt: at(2), DisconnectReason: "kicked"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := mustOpen(t, "", identity.Config{})
			for i, e := range tc.events {
				var applied bool
				if e.connect {
					applied = s.Connected("dev-1", e.seq, at(e.sec), fmt.Sprintf("127.0.0.1:%d", e.sec))
				} else {
					applied = s.Disconnected("dev-1", e.seq, at(e.sec), e.reason)
				}
				if applied != e.applied {
					t.Errorf("event %d %+v: applied %t, want %t", i, e, applied, e.applied)
				}
			}
			got, ok := s.Presence("dev-1")
			if !ok || got != tc.want {
				t.Errorf("Presence: got %+v (ok %t), want %+v", got, ok, tc.want)
			}
		})
	}
}

// TestPresenceConcurrent delivers the connects and disconnects of many
// sessions of one device from many goroutines in arbitrary order: the
// newest session's events always win.
func TestPresenceConcurrent(t *testing.T) {
	s := mustOpen(t, "", identity.Config{})
	const sessions = 200
	var wg sync.WaitGroup
	for seq := uint64(1); seq <= sessions; seq++ {
		wg.Go(func() { s.Connected("dev-1", seq, at(int(seq)), "127.0.0.1:1") })
		if seq < sessions {
			wg.Go(func() { s.Disconnected("dev-1", seq, at(int(seq)+1), "taken over") })
		}
	}
	wg.Wait()
	got, _ := s.Presence("dev-1")
	if !got.Connected || !got.ConnectedAt.Equal(at(sessions)) {
		t.Errorf("Presence: got %+v, want connected at %v", got, at(sessions))
	}
}

func TestPresenceJSON(t *testing.T) {
	s := mustOpen(t, "", identity.Config{})
	tests := []struct {
		name string
		do   func()
		want string
	}{
		{"never seen", func() {}, `{"connected":false}`},
		{"connected", func() { s.Connected("dev-1", 1, at(1), "10.0.0.1:5") },
			`{"connected":true,"connectedAt":"2026-11-23T10:00:01Z"}`},
		{"disconnected", func() { s.Disconnected("dev-1", 1, at(2), "connection lost") },
			`{"connected":false,"connectedAt":"2026-11-23T10:00:01Z","disconnectedAt":"2026-11-23T10:00:02Z","disconnectReason":"connection lost"}`},
	}
	for _, tc := range tests {
		tc.do()
		got := s.PresenceJSON("dev-1")
		if string(got) != tc.want {
			t.Errorf("%s: PresenceJSON = %s, want %s", tc.name, got, tc.want)
		}
		if !json.Valid(got) {
			t.Errorf("%s: PresenceJSON not valid JSON", tc.name)
		}
	}
}

func TestPresencePersistence(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	now := at(100)
	cfg := identity.Config{Now: func() time.Time { return now }}
	s := mustOpen(t, dir, cfg)
	for _, id := range []device.ID{"on", "off", "gone"} {
		if _, err := s.AddDevice(ctx, id, nil); err != nil {
			t.Fatal(err)
		}
	}
	s.Connected("on", 1, at(1), "127.0.0.1:1")
	s.Connected("off", 2, at(2), "127.0.0.1:2")
	s.Disconnected("off", 2, at(3), "")
	s.Connected("gone", 3, at(4), "127.0.0.1:4")
	s.Connected("stranger", 4, at(5), "127.0.0.1:5") // not enrolled: not persisted
	if err := s.RemoveDevice(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.Presence("gone"); ok {
		t.Errorf("Presence(gone) after RemoveDevice: still known")
	}
	list, err := s.ListDevices(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].ID != "off" || list[0].Presence.Connected || list[1].ID != "on" || !list[1].Presence.Connected {
		t.Errorf("ListDevices: got %+v, want off (offline), on (online)", list)
	}
	mustClose(t, s)

	now = at(200)
	s = mustOpen(t, dir, cfg)
	tests := []struct {
		id   device.ID
		want identity.Presence
		ok   bool
	}{
		{"on", identity.Presence{ConnectedAt: at(1), DisconnectedAt: at(200), DisconnectReason: identity.ReasonServerRestart, RemoteAddr: "127.0.0.1:1"}, true},
		{"off", identity.Presence{ConnectedAt: at(2), DisconnectedAt: at(3), RemoteAddr: "127.0.0.1:2"}, true},
		{"gone", identity.Presence{}, false},
		{"stranger", identity.Presence{}, false},
	}
	for _, tc := range tests {
		got, ok := s.Presence(tc.id)
		if ok != tc.ok || got != tc.want {
			t.Errorf("Presence(%s) after reopen: got %+v (ok %t), want %+v (ok %t)", tc.id, got, ok, tc.want, tc.ok)
		}
	}
	d, err := s.GetDevice(ctx, "on")
	if err != nil || d.Presence != tests[0].want {
		t.Errorf("GetDevice(on).Presence = %+v, %v; want %+v", d.Presence, err, tests[0].want)
	}
}

// TestPresenceFlushLoop checks that presence is written without Close,
// within the flush interval.
func TestPresenceFlushLoop(t *testing.T) {
	s := mustOpen(t, "", identity.Config{PresenceFlushInterval: 10 * time.Millisecond})
	s.Connected("dev-1", 1, at(1), "127.0.0.1:1")
	if n := identity.DirtyPresence(s); n != 1 {
		t.Fatalf("DirtyPresence after Connected: got %d, want 1", n)
	}
	// No event marks a flush; poll.
	waitfor.Poll(t, 5*time.Second, "presence flushed", func() bool { return identity.DirtyPresence(s) == 0 })
}
