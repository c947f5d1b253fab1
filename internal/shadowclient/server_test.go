package shadowclient_test

import (
	"context"
	"log/slog"
	"net"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/internal/shadowclient"
	"github.com/umbra-iot/umbra/internal/waitfor"
	"github.com/umbra-iot/umbra/shadow"
	"github.com/umbra-iot/umbra/shadow/boltstore"
)

func TestMain(m *testing.M) { waitfor.Main(m) }

// testServer is a broker on 127.0.0.1:0 (TCP and WebSocket) with the shadow
// engine wired to it as `umbra serve` does, unless it was started without
// one.
type testServer struct {
	brk   *broker.Server
	eng   *shadow.Engine // nil without an engine
	url   string         // tcp://127.0.0.1:port
	wsURL string         // ws://127.0.0.1:port/mqtt
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// startServer starts a broker and, if withEngine, a shadow engine in
// t.TempDir(), wired as `umbra serve` wires them. On cleanup the engine
// closes first, so it finishes publishing before the broker goes.
func startServer(t testing.TB, withEngine bool) *testServer {
	t.Helper()
	log := testLogger(t)
	var engine atomic.Pointer[shadow.Engine] // read by the broker's goroutines
	brk, err := broker.Open(t.Context(), broker.Config{
		TCPAddr: "127.0.0.1:0",
		// A different string from TCPAddr: broker.Config.validate rejects
		// two equal addresses, even port 0.
		WSAddr: "localhost:0",
		Logger: log,
		OnSubscribe: func(clientID string, filters []string) {
			if e := engine.Load(); e != nil {
				e.HandleSubscribe(clientID, filters)
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := brk.Close(context.Background()); err != nil {
			t.Errorf("close broker: %v", err)
		}
	})
	s := &testServer{
		brk:   brk,
		url:   "tcp://" + brk.Addr().String(),
		wsURL: "ws://" + brk.WSAddr().String() + "/mqtt",
	}
	if !withEngine {
		return s
	}
	st, err := boltstore.Open(t.Context(), boltstore.Config{Path: filepath.Join(t.TempDir(), "shadow.db")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close(context.Background()) }) // after the engine's Cleanup below
	s.eng, err = shadow.Open(t.Context(), shadow.Config{
		Store:     st,
		Publisher: brk,
		Logger:    log,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.eng.Close(ctx); err != nil {
			t.Errorf("close engine: %v", err)
		}
	})
	engine.Store(s.eng)
	for _, f := range shadow.RequestFilters {
		if err := brk.Subscribe(f, s.eng.HandleRequest); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

// dial connects a client to s, closed on cleanup.
func (s *testServer) dial(t testing.TB, cfg shadowclient.Config) *shadowclient.Client {
	t.Helper()
	if cfg.Server == "" {
		cfg.Server = s.url
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 5 * time.Second
	}
	c, err := shadowclient.Dial(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// waitSubscribed waits until some subscription matches topic. There is no
// event for another client's SUBACK, so it polls.
func (s *testServer) waitSubscribed(t *testing.T, topic string) {
	t.Helper()
	waitfor.Poll(t, 5*time.Second, "a subscriber for "+topic, func() bool { return s.brk.HasSubscribers(topic) })
}

// closedPort returns a loopback address nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// recordRequests returns the topics of the shadow requests (…/update, /get,
// /delete) published on brk from now on, as the broker receives them.
func recordRequests(t testing.TB, brk *broker.Server) <-chan string {
	t.Helper()
	topics := make(chan string, 100)
	err := brk.Subscribe("state/#", func(_, topic string, _ []byte) {
		if _, ok, _ := shadow.ParseRequestTopic(topic); ok {
			select {
			case topics <- topic:
			default: // the test reads only the first
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return topics
}

// firstRequest waits for the first recorded request topic.
func firstRequest(t testing.TB, topics <-chan string) string {
	t.Helper()
	select {
	case topic := <-topics:
		return topic
	case <-time.After(5 * time.Second):
		t.Fatal("no request recorded within 5s")
		return ""
	}
}
