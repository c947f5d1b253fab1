package natsbridge

import (
	"log/slog"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/internal/natstest"
)

// TestPublishedNeverBlocks: with the outbound buffer full (the NATS link
// behind), Published returns at once, drops the message and counts it,
// and tells the broker to serve shared subscriptions itself.
func TestPublishedNeverBlocks(t *testing.T) {
	ns := natstest.Start(t)
	nc := natstest.Connect(t, ns.URLs())
	b := &Bridge{nc: nc, out: make(chan outbound, 1), log: slog.New(slog.DiscardHandler), cfg: Config{OutboundBuffer: 1}}
	r := (*relay)(b)
	m := broker.Message{Topic: "t", Payload: []byte("x")}
	if !r.Published(m) {
		t.Error("first Published while connected = false, want true (shared subscriptions through NATS)")
	}
	done := make(chan bool)
	go func() { done <- r.Published(m) }()
	select {
	case shared := <-done:
		if shared {
			t.Error("dropped Published = true, want false: the broker serves shared subscriptions of a dropped message")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Published blocked on a full outbound buffer")
	}
	if got := b.Stats().OutDropped; got != 1 {
		t.Errorf("OutDropped = %d, want 1", got)
	}
}
