package brokertest

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/internal/testbin"
	"github.com/umbra-iot/umbra/internal/waitfor"
)

// Timeout bounds every wait in this package that takes no explicit timeout.
const Timeout = 5 * time.Second

// bufferSize is the capacity of the channels returned by Subscribe.
const bufferSize = 1024

// New opens a broker for the test and closes it in tb.Cleanup. Empty
// TCPAddr and WSAddr default to "127.0.0.1:0", as does an empty TLSAddr
// when TLSConfig is set (see CA.ServerConfig), and a nil Logger logs to
// the test's output.
func New(tb testing.TB, cfg broker.Config) *broker.Server {
	tb.Helper()
	if cfg.TCPAddr == "" {
		cfg.TCPAddr = "127.0.0.1:0"
	}
	if cfg.WSAddr == "" {
		cfg.WSAddr = "127.0.0.1:0"
	}
	if cfg.TLSConfig != nil && cfg.TLSAddr == "" {
		cfg.TLSAddr = "127.0.0.1:0"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(tb.Output(), nil))
	}
	s, err := broker.Open(tb.Context(), cfg)
	if err != nil {
		tb.Fatalf("brokertest: open broker: %v", err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), Timeout)
		defer cancel()
		if err := s.Close(ctx); err != nil {
			tb.Errorf("brokertest: close broker: %v", err)
		}
	})
	return s
}

// URL returns the broker's TCP URL, "tcp://127.0.0.1:port".
func URL(s *broker.Server) string {
	return "tcp://" + s.Addr().String()
}

// WSURL returns the broker's WebSocket URL, "ws://127.0.0.1:port/mqtt".
func WSURL(s *broker.Server) string {
	return "ws://" + s.WSAddr().String() + "/mqtt"
}

// TLSURL returns the broker's TLS URL, "tls://127.0.0.1:port".
func TLSURL(s *broker.Server) string {
	return "tls://" + s.TLSAddr().String()
}

// WithTLS is a Connect option that sets the client's TLS configuration
// (see CA.ClientConfig).
func WithTLS(cfg *tls.Config) func(*mqtt.ClientOptions) {
	return func(o *mqtt.ClientOptions) { o.SetTLSConfig(cfg) }
}

// Connect connects a paho client (MQTT 3.1.1, clean session, no automatic
// reconnect, SetOrderMatters(false)) to url as clientID, after applying
// opts, and disconnects it in tb.Cleanup. It fails the test if the
// connection is not established within Timeout.
func Connect(tb testing.TB, url, clientID string, opts ...func(*mqtt.ClientOptions)) mqtt.Client {
	tb.Helper()
	c, err := TryConnect(tb, url, clientID, opts...)
	if err != nil {
		tb.Fatalf("brokertest: %v", err)
	}
	return c
}

// TryConnect is Connect for connections that may be refused: it returns
// the error (including a missing CONNACK after Timeout) instead of
// failing the test.
func TryConnect(tb testing.TB, url, clientID string, opts ...func(*mqtt.ClientOptions)) (mqtt.Client, error) {
	tb.Helper()
	o := mqtt.NewClientOptions().
		AddBroker(url).
		SetClientID(clientID).
		SetOrderMatters(false).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetConnectTimeout(Timeout).
		SetKeepAlive(30 * time.Second)
	for _, opt := range opts {
		opt(o)
	}
	c := mqtt.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(Timeout) {
		return nil, fmt.Errorf("connect %s to %s: no CONNACK within %v", clientID, url, Timeout)
	}
	if err := tok.Error(); err != nil {
		return nil, fmt.Errorf("connect %s to %s: %w", clientID, url, err)
	}
	tb.Cleanup(func() { c.Disconnect(100) })
	return c, nil
}

// Message is a message received by a client.
type Message struct {
	Topic    string
	Payload  []byte
	Retained bool
	QoS      byte
}

// String formats m for test failures.
func (m Message) String() string {
	return fmt.Sprintf("{%s %q retained=%t qos=%d}", m.Topic, m.Payload, m.Retained, m.QoS)
}

// Subscribe subscribes c to filter and returns a buffered channel of the
// messages it receives. The paho handler never blocks: messages that do
// not fit in the buffer are dropped, which fails the test at cleanup. It
// fails the test if SUBACK does not arrive within Timeout or the broker
// refuses the filter.
func Subscribe(tb testing.TB, c mqtt.Client, filter string, qos byte) <-chan Message {
	tb.Helper()
	ch := make(chan Message, bufferSize)
	var dropped atomic.Int64
	tok := c.Subscribe(filter, qos, func(_ mqtt.Client, m mqtt.Message) {
		msg := Message{Topic: m.Topic(), Payload: append([]byte(nil), m.Payload()...), Retained: m.Retained(), QoS: m.Qos()}
		select {
		case ch <- msg:
		default:
			dropped.Add(1)
		}
	})
	if !tok.WaitTimeout(Timeout) {
		tb.Fatalf("brokertest: subscribe %s: no SUBACK within %v", filter, Timeout)
	}
	if err := tok.Error(); err != nil {
		tb.Fatalf("brokertest: subscribe %s: %v", filter, err)
	}
	if st, ok := tok.(*mqtt.SubscribeToken); ok {
		if code := st.Result()[filter]; code >= 0x80 {
			tb.Fatalf("brokertest: subscribe %s: refused with code %#x", filter, code)
		}
	}
	tb.Cleanup(func() {
		if n := dropped.Load(); n > 0 {
			tb.Errorf("brokertest: %d messages on %s dropped: channel buffer (%d) full", n, filter, bufferSize)
		}
	})
	return ch
}

// Settle makes a round trip on c's connection (an UNSUBSCRIBE of a filter
// c never subscribed to, which changes nothing) and returns once it is
// acknowledged. The broker reads a connection's packets in order, so every
// packet c sent before has been processed by then: in particular, the
// retained messages of a SUBSCRIBE, which mochi looks up after it has sent
// the SUBACK, are queued. A test that publishes right after Subscribe, and
// must not see a retained copy of its own publish as well as the live
// message, settles first.
func Settle(tb testing.TB, c mqtt.Client) {
	tb.Helper()
	tok := c.Unsubscribe("brokertest/settle/never-subscribed")
	if !tok.WaitTimeout(Timeout) {
		tb.Fatalf("brokertest: settle: no UNSUBACK within %v", Timeout)
	}
	if err := tok.Error(); err != nil {
		tb.Fatalf("brokertest: settle: %v", err)
	}
}

// Next returns the next message from ch, failing the test if none arrives
// within timeout.
func Next(tb testing.TB, ch <-chan Message, timeout time.Duration) Message {
	tb.Helper()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case m := <-ch:
		return m
	case <-t.C:
		tb.Fatalf("brokertest: no message within %v", timeout)
		return Message{}
	}
}

// Publish publishes payload to topic from c and, for QoS 1, waits for
// PUBACK. It fails the test on error or after Timeout.
func Publish(tb testing.TB, c mqtt.Client, topic string, qos byte, payload []byte) {
	tb.Helper()
	publish(tb, c, topic, qos, false, payload)
}

// PublishRetained is Publish with the retain flag set.
func PublishRetained(tb testing.TB, c mqtt.Client, topic string, qos byte, payload []byte) {
	tb.Helper()
	publish(tb, c, topic, qos, true, payload)
}

func publish(tb testing.TB, c mqtt.Client, topic string, qos byte, retain bool, payload []byte) {
	tb.Helper()
	tok := c.Publish(topic, qos, retain, payload)
	if !tok.WaitTimeout(Timeout) {
		tb.Fatalf("brokertest: publish %s: not completed within %v", topic, Timeout)
	}
	if err := tok.Error(); err != nil {
		tb.Fatalf("brokertest: publish %s: %v", topic, err)
	}
}

// leakMarkers identify goroutines that must not outlive a package's tests.
var leakMarkers = []string{
	"github.com/umbra-iot/umbra/broker.",
	"github.com/umbra-iot/umbra/broker/natsbridge.",
	"github.com/nats-io/nats.go",
	"github.com/mochi-mqtt/server",
	"github.com/eclipse/paho.mqtt.golang",
}

// Main runs the tests of m and then fails the binary if goroutines of the
// broker, the cluster bridge, mochi, paho or nats.go are still running
// after a grace period. Use it as
// TestMain: func TestMain(m *testing.M) { brokertest.Main(m) }.
func Main(m *testing.M) { waitfor.Main(m, leakMarkers...) }

// leakedGoroutines polls until no goroutine matches leakMarkers or grace
// passes, and returns the stacks of the goroutines still matching.
// Polling is needed: mochi and paho do not let callers wait for some of
// their goroutines (writers, event loops) to return after Close.
func leakedGoroutines(grace time.Duration) string {
	return waitfor.Leaked(grace, nil, leakMarkers...)
}

// Mosquitto runs a mosquitto client tool (mosquitto_pub, mosquitto_sub)
// against the broker at addr ("host:port") with args and returns its
// standard output. A failure, or a tool missing from PATH, fails the test:
// the interop is part of the suite, not optional.
func Mosquitto(tb testing.TB, addr, tool string, args ...string) string {
	tb.Helper()
	path := testbin.Need(tb, tool, "mosquitto-clients")
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		tb.Fatalf("brokertest: %s: address %q: %v", tool, addr, err)
	}
	cmd := exec.CommandContext(tb.Context(), path, append([]string{"-h", host, "-p", port}, args...)...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		tb.Fatalf("brokertest: %s %v: %v (stderr %q, stdout %q)", tool, args, err, stderr.String(), stdout.String())
	}
	return stdout.String()
}
