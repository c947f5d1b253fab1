package brokertest_test

import (
	"context"
	"fmt"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/internal/brokertest"
)

func TestMain(m *testing.M) { brokertest.Main(m) }

func TestRoundTrip(t *testing.T) {
	ca := brokertest.NewCA(t, "round trip CA")
	client := ca.Issue(t, brokertest.CertOptions{CommonName: "rt-tls"})
	b := brokertest.New(t, broker.Config{TLSConfig: ca.ServerConfig(t, true)})
	tests := []struct {
		name, url, prefix string
		opts              []func(*mqtt.ClientOptions)
	}{
		{"tcp", brokertest.URL(b), "tcp://127.0.0.1:", nil},
		{"ws", brokertest.WSURL(b), "ws://127.0.0.1:", nil},
		{"tls", brokertest.TLSURL(b), "tls://127.0.0.1:", []func(*mqtt.ClientOptions){brokertest.WithTLS(ca.ClientConfig(client))}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if !strings.HasPrefix(tc.url, tc.prefix) {
				t.Errorf("URL: got %q, want prefix %q", tc.url, tc.prefix)
			}
			c := brokertest.Connect(t, tc.url, "rt-"+tc.name, tc.opts...)
			msgs := brokertest.Subscribe(t, c, "rt/"+tc.name+"/#", 1)
			brokertest.Publish(t, c, "rt/"+tc.name+"/a", 1, []byte("one"))
			brokertest.PublishRetained(t, c, "rt/"+tc.name+"/b", 0, []byte("two"))
			want := map[string]brokertest.Message{
				"rt/" + tc.name + "/a": {Topic: "rt/" + tc.name + "/a", Payload: []byte("one"), QoS: 1},
				"rt/" + tc.name + "/b": {Topic: "rt/" + tc.name + "/b", Payload: []byte("two"), QoS: 0},
			}
			for range want { // SetOrderMatters(false): any order
				got := brokertest.Next(t, msgs, brokertest.Timeout)
				if w := want[got.Topic]; got.String() != w.String() {
					t.Errorf("Next: got %v, want %v", got, w)
				}
			}
		})
	}
	if got := b.Stats().Retained; got != 3 {
		t.Errorf("Stats.Retained: got %d, want 3", got)
	}
}

// TestTryConnect: a refused connection is an error, not a test failure.
func TestTryConnect(t *testing.T) {
	ca := brokertest.NewCA(t, "try CA")
	b := brokertest.New(t, broker.Config{TLSConfig: ca.ServerConfig(t, true)})
	tests := []struct {
		name    string
		opts    []func(*mqtt.ClientOptions)
		wantErr bool
	}{
		{"valid certificate", []func(*mqtt.ClientOptions){brokertest.WithTLS(ca.ClientConfig(ca.Issue(t, brokertest.CertOptions{CommonName: "try"})))}, false},
		{"no certificate", []func(*mqtt.ClientOptions){brokertest.WithTLS(ca.ClientConfig())}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := brokertest.TryConnect(t, brokertest.TLSURL(b), "try", tc.opts...)
			if gotErr := err != nil; gotErr != tc.wantErr {
				t.Fatalf("TryConnect: got error %v, want error %t", err, tc.wantErr)
			}
			if err == nil && !c.IsConnected() {
				t.Errorf("TryConnect: got a client not connected, want connected")
			}
		})
	}
}

// fakeTB records failures instead of failing the real test. Fatal stops
// the calling goroutine, as testing does.
type fakeTB struct {
	testing.TB
	mu       sync.Mutex // guards msgs and cleanups
	msgs     []string
	cleanups []func()
}

func (f *fakeTB) Errorf(format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.msgs = append(f.msgs, fmt.Sprintf(format, args...))
}

func (f *fakeTB) Fatalf(format string, args ...any) {
	f.Errorf(format, args...)
	runtime.Goexit()
}

func (f *fakeTB) Cleanup(fn func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cleanups = append(f.cleanups, fn)
}

// run calls fn with f on a new goroutine, so that Fatalf can stop it, then
// runs the registered cleanups and returns the recorded failures.
func (f *fakeTB) run(fn func(tb testing.TB)) string {
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(f)
	}()
	<-done
	for i := len(f.cleanups) - 1; i >= 0; i-- {
		f.cleanups[i]()
	}
	return strings.Join(f.msgs, "; ")
}

func TestHelpersFail(t *testing.T) {
	b := brokertest.New(t, broker.Config{Auth: denyAuth{}, ClientWritesPending: 2048})
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadURL := "tcp://" + closed.Addr().String()
	closed.Close()

	tests := []struct {
		name string
		fn   func(tb testing.TB)
		want string
	}{
		{"next times out", func(tb testing.TB) {
			brokertest.Next(tb, make(chan brokertest.Message), 10*time.Millisecond)
		}, "no message within 10ms"},
		{"connect refused", func(tb testing.TB) {
			brokertest.Connect(tb, deadURL, "nobody")
		}, "connect nobody to " + deadURL},
		{"subscribe refused", func(tb testing.TB) {
			c := brokertest.Connect(tb, brokertest.URL(b), "denied")
			brokertest.Subscribe(tb, c, "forbidden", 0)
		}, "subscribe forbidden: refused with code 0x80"},
		{"dropped messages reported", func(tb testing.TB) {
			// Ordered handlers: the end marker's handler runs after the others.
			c := brokertest.Connect(tb, brokertest.URL(b), "flooded", func(o *mqtt.ClientOptions) { o.SetOrderMatters(true) })
			brokertest.Subscribe(tb, c, "flood", 0)
			for i := range 1100 { // more than the channel holds, never read
				if err := b.Publish("flood", fmt.Append(nil, i), false, 0); err != nil {
					tb.Fatalf("publish: %v", err)
				}
			}
			// The drop count is read at cleanup: wait until paho has handled
			// every message.
			done := make(chan struct{})
			c.Subscribe("flood/end", 0, func(mqtt.Client, mqtt.Message) { close(done) }).WaitTimeout(brokertest.Timeout)
			if err := b.Publish("flood/end", nil, false, 0); err != nil {
				tb.Fatalf("publish: %v", err)
			}
			select {
			case <-done:
			case <-time.After(brokertest.Timeout):
				tb.Fatalf("end marker not received")
			}
		}, "messages on flood dropped"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := (&fakeTB{TB: t}).run(tc.fn)
			if !strings.Contains(got, tc.want) {
				t.Errorf("failures: got %q, want one containing %q", got, tc.want)
			}
		})
	}
}

// denyAuth admits everyone and denies subscribing to "forbidden".
type denyAuth struct{}

func (denyAuth) Authenticate(context.Context, broker.Credentials) (broker.Identity, error) {
	return broker.Identity{}, nil
}

func (denyAuth) Allow(_ broker.Identity, topic string, _ bool) bool { return topic != "forbidden" }
