package natsbridge_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/broker/natsbridge"
	"github.com/umbra-iot/umbra/internal/brokertest"
	"github.com/umbra-iot/umbra/internal/natstest"
)

// TestOpenErrors: an invalid Config, an unreachable NATS and a closed
// broker are refused with a clear error, and the broker is left as it
// was (no relay: HasSubscribers sees only its own subscribers).
func TestOpenErrors(t *testing.T) {
	ns := natstest.Start(t)
	brk := brokertest.New(t, broker.Config{})
	// A port nothing listens on: bound, then closed.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "nats://" + ln.Addr().String()
	_ = ln.Close()
	cases := []struct {
		name string
		cfg  natsbridge.Config
		want string
	}{
		{"no broker", natsbridge.Config{NodeID: "n1", URL: ns.URL()}, "no Broker"},
		{"no node ID", natsbridge.Config{Broker: brk, URL: ns.URL()}, "NodeID"},
		{"node ID with a space", natsbridge.Config{Broker: brk, NodeID: "n 1", URL: ns.URL()}, "NodeID"},
		{"node ID too long", natsbridge.Config{Broker: brk, NodeID: strings.Repeat("n", 65), URL: ns.URL()}, "NodeID"},
		{"no URL", natsbridge.Config{Broker: brk, NodeID: "n1"}, "no URL"},
		{"prefix with a wildcard", natsbridge.Config{Broker: brk, NodeID: "n1", URL: ns.URL(), Prefix: "umbra.*"}, "Prefix"},
		{"prefix with an empty token", natsbridge.Config{Broker: brk, NodeID: "n1", URL: ns.URL(), Prefix: "a..b"}, "Prefix"},
		{"negative buffer", natsbridge.Config{Broker: brk, NodeID: "n1", URL: ns.URL(), OutboundBuffer: -1}, "negative"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			br, err := natsbridge.Open(t.Context(), c.cfg)
			if err == nil {
				_ = br.Close(t.Context())
				t.Fatal("Open succeeded, want an error")
			}
			if !errors.Is(err, natsbridge.ErrInvalidConfig) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("Open: %v, want ErrInvalidConfig naming %q", err, c.want)
			}
		})
	}
	t.Run("NATS unreachable", func(t *testing.T) {
		_, err := natsbridge.Open(t.Context(), natsbridge.Config{Broker: brk, NodeID: "n1", URL: dead})
		if err == nil || !strings.Contains(err.Error(), dead) {
			t.Fatalf("Open with %s: %v, want an error naming the URL", dead, err)
		}
	})
	if brk.HasSubscribers("any/topic") {
		t.Error("a failed Open left a relay on the broker")
	}
	t.Run("broker closed", func(t *testing.T) {
		closed := brokertest.New(t, broker.Config{})
		if err := closed.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
		_, err := natsbridge.Open(t.Context(), natsbridge.Config{Broker: closed, NodeID: "n1", URL: ns.URL()})
		if !errors.Is(err, broker.ErrClosed) {
			t.Fatalf("Open on a closed broker: %v, want broker.ErrClosed", err)
		}
	})
}

// TestCloseIdempotent: Close detaches the bridge (the broker no longer
// reports other nodes' possible subscribers) and a second Close is a
// no-op.
func TestCloseIdempotent(t *testing.T) {
	ns := natstest.Start(t)
	brk := brokertest.New(t, broker.Config{})
	br, err := natsbridge.Open(t.Context(), natsbridge.Config{Broker: brk, NodeID: "n1", URL: ns.URL()})
	if err != nil {
		t.Fatal(err)
	}
	if !brk.HasSubscribers("any/topic") {
		t.Fatal("with the bridge attached, HasSubscribers = false, want true")
	}
	for i := range 2 {
		if err := br.Close(t.Context()); err != nil {
			t.Fatalf("Close %d: %v", i+1, err)
		}
	}
	if brk.HasSubscribers("any/topic") {
		t.Error("after Close, the broker still has the relay")
	}
}
