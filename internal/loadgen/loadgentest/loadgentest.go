// Package loadgentest starts a bare mochi MQTT broker on 127.0.0.1:0 for
// tests and benchmarks of the load generator and the fleet simulator: no
// persistence, no authentication, an inline client for in-process
// responders (such as loadgen.Echo). It is a test harness, like httptest:
// only _test.go files import it.
//
// It wraps mochi's TCP listener so that shutdown is race-free: mochi adds
// to its client WaitGroup inside each accepted connection's goroutine,
// which the race detector reports against Server.Close's Wait. The wrapper
// waits for its own connection goroutines before mochi waits for them.
package loadgentest

import (
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"runtime"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

// MustBroker starts a broker with an inline client on 127.0.0.1:0 and
// returns it with its URL ("tcp://127.0.0.1:<port>"). It closes on cleanup.
func MustBroker(tb testing.TB) (*mqtt.Server, string) {
	tb.Helper()
	s, url, err := Start()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = s.Close() })
	return s, url
}

// Start is MustBroker for code without a testing.TB, such as a broker
// subprocess that keeps a benchmark's memory figures free of broker
// allocations. The caller closes the server.
func Start() (*mqtt.Server, string, error) {
	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumPacketSize = 1 << 20
	caps.MaximumQos = 1
	s := mqtt.New(&mqtt.Options{InlineClient: true, Capabilities: caps, Logger: slog.New(slog.DiscardHandler)})
	if err := s.AddHook(new(allowAll), nil); err != nil {
		return nil, "", err
	}
	l := &listener{id: "test"}
	if err := s.AddListener(l); err != nil {
		return nil, "", err
	}
	if err := s.Serve(); err != nil {
		_ = s.Close()
		return nil, "", err
	}
	return s, "tcp://" + l.Address(), nil
}

// allowAll lets every client connect, publish and subscribe (mochi's own
// auth.AllowHook would pull in a YAML dependency).
type allowAll struct{ mqtt.HookBase }

func (*allowAll) ID() string { return "allow-all" }

func (*allowAll) Provides(b byte) bool {
	return b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck
}

func (*allowAll) OnConnectAuthenticate(*mqtt.Client, packets.Packet) bool { return true }

func (*allowAll) OnACLCheck(*mqtt.Client, string, bool) bool { return true }

// listener is a TCP listener on 127.0.0.1:0 that owns and waits for its
// connection goroutines.
type listener struct {
	id    string
	ln    net.Listener
	conns sync.WaitGroup // one per accepted connection
	done  sync.WaitGroup // the accept loop
}

func (l *listener) Init(*slog.Logger) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	l.ln = ln
	return err
}

func (l *listener) Serve(establish listeners.EstablishFn) {
	l.done.Add(1)
	defer l.done.Done()
	for {
		conn, err := l.ln.Accept()
		if err != nil {
			return
		}
		l.conns.Go(func() { _ = establish(l.id, conn) })
	}
}

func (l *listener) ID() string       { return l.id }
func (l *listener) Address() string  { return l.ln.Addr().String() }
func (l *listener) Protocol() string { return "tcp" }

// Close stops accepting, disconnects this listener's clients and waits for
// their goroutines, so mochi's own wait that follows never blocks.
func (l *listener) Close(closeClients listeners.CloseFn) {
	_ = l.ln.Close()
	l.done.Wait()
	closeClients(l.id)
	l.conns.Wait()
}

// Handle subscribes h to filter through the broker's inline client. h gets
// the publishing client's ID (mochi's pk.Origin), the topic and the
// payload, like broker.HandlerFunc, and runs on the publisher's goroutine.
func Handle(tb testing.TB, s *mqtt.Server, filter string, h func(clientID, topic string, payload []byte)) {
	tb.Helper()
	if err := s.Subscribe(filter, int(subscriptionIDs.Add(1)), InlineHandler(h)); err != nil {
		tb.Fatalf("subscribe %s: %v", filter, err)
	}
}

// InlineHandler adapts a broker.HandlerFunc-shaped function (such as
// loadgen.Echo) to a mochi inline subscription handler.
func InlineHandler(h func(clientID, topic string, payload []byte)) mqtt.InlineSubFn {
	return func(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
		h(pk.Origin, pk.TopicName, pk.Payload)
	}
}

func fuzzing() bool {
	for _, name := range []string{"test.fuzz", "test.fuzzworker"} {
		if f := flag.Lookup(name); f != nil && f.Value.String() != "" && f.Value.String() != "false" {
			return true
		}
	}
	return false
}

// subscriptionIDs numbers inline subscriptions: mochi keys them by filter
// and ID, so two handlers on one filter need distinct IDs.
var subscriptionIDs atomic.Int32

// RunChecked runs the tests and then fails the run (exit code 1, with a
// goroutine dump) if goroutines started during it are still running 10s
// later: every client, responder and broker must be closed. Use it as
// os.Exit(loadgentest.RunChecked(m)) in TestMain.
func RunChecked(m *testing.M) int {
	base := runtime.NumGoroutine()
	code := m.Run()
	if code != 0 || fuzzing() {
		return code // the fuzzing engine keeps goroutines of its own
	}
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > base && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond) // polling: there is no event for goroutine exit
	}
	if n := runtime.NumGoroutine(); n > base {
		fmt.Fprintf(os.Stderr, "goroutine leak: %d running, %d at start\n", n, base)
		_ = pprof.Lookup("goroutine").WriteTo(os.Stderr, 1)
		return 1
	}
	return 0
}
