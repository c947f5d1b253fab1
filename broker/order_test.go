package broker_test

import (
	"context"
	"log/slog"
	"slices"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/internal/brokertest"
)

// takeoverWarning is what the broker logs when it stops waiting for a
// taken-over connection's handler.
const takeoverWarning = "taking over a connection whose handler is still running"

// onLost makes a client report the loss of its connection on lost.
func onLost(lost chan<- struct{}) func(*mqtt.ClientOptions) {
	return func(o *mqtt.ClientOptions) {
		o.SetConnectionLostHandler(func(mqtt.Client, error) { close(lost) })
	}
}

// await fails the test unless ch is closed within wait.
func await(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(wait):
		t.Fatalf("no %s within %v", what, wait)
	}
}

// TestReconnectKeepsHandlerOrder: a client's messages reach in-process
// subscribers in the order it sent them, also across a reconnect with the
// same client ID. The broker acknowledges a QoS 1 PUBLISH before its
// handlers run, so the client cannot wait for them: a new connection's
// messages must not be handled while the old connection's handler runs.
func TestReconnectKeepsHandlerOrder(t *testing.T) {
	tests := []struct {
		name       string
		disconnect bool // the old connection sends DISCONNECT first (a reboot); else it is taken over
	}{
		{"disconnect then reconnect", true},
		{"takeover", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := brokertest.New(t, broker.Config{})
			handled := make(chan string, 2)
			secondDone := make(chan struct{})
			if err := s.Subscribe("state/+/update", func(_, _ string, payload []byte) {
				if string(payload) == "first" {
					// A slow handler (e.g. a shadow commit). Bounded, so a
					// broker that serialises the two connections finishes.
					select {
					case <-secondDone:
					case <-time.After(2 * time.Second):
					}
				}
				handled <- string(payload)
				if string(payload) == "second" {
					close(secondDone)
				}
			}); err != nil {
				t.Fatal(err)
			}
			url := brokertest.URL(s)
			old := brokertest.Connect(t, url, "dev-1")
			brokertest.Publish(t, old, "state/dev-1/update", 1, []byte("first")) // PUBACK received
			if tc.disconnect {
				old.Disconnect(100)
			}
			cur := brokertest.Connect(t, url, "dev-1")
			brokertest.Publish(t, cur, "state/dev-1/update", 1, []byte("second"))
			var got []string
			for range 2 {
				got = append(got, recv(t, handled, "handled message"))
			}
			if want := []string{"first", "second"}; !slices.Equal(got, want) {
				t.Errorf("handled %q, want %q", got, want)
			}
		})
	}
}

// TestTakeoverHandlerPublishesToClient: the old connection's handler,
// still running when the device reconnects, publishes to the device
// itself (as the shadow engine answers a report). That neither deadlocks
// nor delays the reconnect, and with a persistent session the answer
// reaches the new connection.
func TestTakeoverHandlerPublishesToClient(t *testing.T) {
	logs := &logBuffer{}
	s := brokertest.New(t, broker.Config{Logger: slog.New(slog.NewTextHandler(logs, nil))})
	lost := make(chan struct{})
	handled := make(chan string, 2)
	if err := s.Subscribe("state/+/update", func(_, _ string, payload []byte) {
		if string(payload) == "first" {
			// Runs until the new connection has disconnected the old one,
			// that is while the new connection waits for this handler.
			select {
			case <-lost:
			case <-time.After(wait):
			}
			if err := s.Publish("cmd/dev-1", []byte("answer"), false, 1); err != nil {
				t.Errorf("publish from handler: %v", err)
			}
		}
		handled <- string(payload)
	}); err != nil {
		t.Fatal(err)
	}
	url := brokertest.URL(s)
	old := brokertest.Connect(t, url, "dev-1", persistent, onLost(lost))
	brokertest.Subscribe(t, old, "cmd/dev-1", 1)
	brokertest.Publish(t, old, "state/dev-1/update", 1, []byte("first"))

	received := make(chan string, 4)
	start := time.Now()
	cur := brokertest.Connect(t, url, "dev-1", persistent, func(o *mqtt.ClientOptions) {
		o.SetDefaultPublishHandler(func(_ mqtt.Client, m mqtt.Message) { received <- string(m.Payload()) })
	})
	took := time.Since(start)
	await(t, lost, "loss of the old connection")
	brokertest.Publish(t, cur, "state/dev-1/update", 1, []byte("second"))

	got := []string{recv(t, handled, "handled message"), recv(t, handled, "handled message")}
	if want := []string{"first", "second"}; !slices.Equal(got, want) {
		t.Errorf("handled %q, want %q", got, want)
	}
	if got := recv(t, received, "answer on the new connection"); got != "answer" {
		t.Errorf("new connection received %q, want %q", got, "answer")
	}
	if n := logs.count(takeoverWarning); n != 0 {
		t.Errorf("takeover warnings: got %d, want 0 (reconnect took %v)", n, took)
	}
}

// TestTakeoverWaitBounded: a handler of the old connection that outlasts
// ConnectTimeout does not keep the device from reconnecting; the broker
// logs a warning and registers the new connection, whose keepalive
// deadline starts after the wait.
func TestTakeoverWaitBounded(t *testing.T) {
	tests := []struct {
		name           string
		connectTimeout time.Duration
		keepAlive      time.Duration // of the new connection
	}{
		{"wait shorter than keepalive", 500 * time.Millisecond, 30 * time.Second},
		// mochi's deadline of 1.5s would expire during the wait.
		{"wait longer than keepalive", 2 * time.Second, time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			logs := &logBuffer{}
			s := brokertest.New(t, broker.Config{
				ConnectTimeout: tc.connectTimeout,
				Logger:         slog.New(slog.NewTextHandler(logs, nil)),
			})
			release := make(chan struct{})
			defer close(release) // before Close (a cleanup), which waits for handlers
			started, returned := make(chan struct{}), make(chan struct{})
			handled := make(chan string, 2)
			if err := s.Subscribe("state/+/update", func(_, _ string, payload []byte) {
				if string(payload) == "stuck" {
					close(started)
					<-release
					defer close(returned)
				}
				handled <- string(payload)
			}); err != nil {
				t.Fatal(err)
			}
			url := brokertest.URL(s)
			old := brokertest.Connect(t, url, "dev-1")
			brokertest.Publish(t, old, "state/dev-1/update", 1, []byte("stuck"))
			await(t, started, "handler start")

			start := time.Now()
			cur := brokertest.Connect(t, url, "dev-1", func(o *mqtt.ClientOptions) {
				// A fixed version: paho would retry a failed MQTT 3.1.1
				// connect as MQTT 3.1 on a new connection, hiding the failure.
				o.SetKeepAlive(tc.keepAlive).SetProtocolVersion(4)
			})
			took := time.Since(start)
			select {
			case <-returned:
				t.Fatal("handler returned before release")
			default:
			}
			if took < tc.connectTimeout {
				t.Errorf("reconnect took %v, want at least the %v wait", took, tc.connectTimeout)
			}
			if n := logs.count(takeoverWarning); n != 1 {
				t.Errorf("takeover warnings: got %d, want 1", n)
			}
			brokertest.Publish(t, cur, "state/dev-1/update", 1, []byte("after"))
			if got := recv(t, handled, "handled message"); got != "after" {
				t.Errorf("handled %q while the old handler is stuck, want %q", got, "after")
			}
		})
	}
}

// TestCloseDuringTakeoverWait: Close while a new connection waits for the
// old connection's handler neither deadlocks nor waits for ConnectTimeout.
func TestCloseDuringTakeoverWait(t *testing.T) {
	s := brokertest.New(t, broker.Config{ConnectTimeout: time.Minute})
	release := make(chan struct{})
	lost := make(chan struct{})
	if err := s.Subscribe("state/+/update", func(_, _ string, _ []byte) { <-release }); err != nil {
		t.Fatal(err)
	}
	url := brokertest.URL(s)
	old := brokertest.Connect(t, url, "dev-1", onLost(lost))
	brokertest.Publish(t, old, "state/dev-1/update", 1, []byte("stuck"))

	connected := make(chan error, 1)
	go func() {
		_, err := brokertest.TryConnect(t, url, "dev-1")
		connected <- err
	}()
	await(t, lost, "loss of the old connection") // the new connection is waiting
	closed := make(chan error, 1)
	go func() { closed <- s.Close(context.Background()) }()
	close(release)
	select {
	case err := <-closed:
		if err != nil {
			t.Errorf("Close: got %v, want nil", err)
		}
	case <-time.After(wait):
		t.Fatalf("Close did not return within %v", wait)
	}
	// The waiting connection may or may not get its CONNACK out before
	// Close cuts it; either way its connect must end.
	recv(t, connected, "end of the waiting connect")
}
