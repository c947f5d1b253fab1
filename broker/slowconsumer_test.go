package broker_test

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/internal/brokertest"
)

// engineStub answers every state/<id>/update with a reply of replySize
// bytes on state/<id>/update/accepted, published at QoS 1 from the
// broker's in-process handler, as the shadow engine does (on the
// publishing device's goroutine). The returned channel receives a value
// after each reply, while it has room.
func engineStub(t *testing.T, b *broker.Server, replySize int) <-chan struct{} {
	t.Helper()
	reply := bytes.Repeat([]byte("r"), replySize)
	replied := make(chan struct{}, 16)
	if err := b.Subscribe("state/+/update", func(_, topic string, _ []byte) {
		if err := b.Publish(topic+"/accepted", reply, false, 1); err != nil && !errors.Is(err, broker.ErrClosed) {
			t.Errorf("publish reply: %v", err)
		}
		select {
		case replied <- struct{}{}:
		default:
		}
	}); err != nil {
		t.Fatal(err)
	}
	return replied
}

// checkShed checks that clientID was disconnected as the broker's only
// slow consumer, and logged once.
func checkShed(t *testing.T, b *broker.Server, ev *events, logs *logBuffer, clientID string) {
	t.Helper()
	if err := ev.disconnectOf(t, clientID); !errors.Is(err, broker.ErrSlowConsumer) {
		t.Errorf("OnDisconnect cause of %s: %v, want ErrSlowConsumer", clientID, err)
	}
	if st := b.Stats(); st.SlowConsumers != 1 {
		t.Errorf("Stats.SlowConsumers = %d, want 1", st.SlowConsumers)
	}
	if n := logs.count("slow consumer disconnected"); n != 1 {
		t.Errorf("slow consumer logged %d times, want once", n)
	}
}

// TestHardening05SlowSubscriberIsShed is issue 10's case 5: a subscriber
// that stops reading its socket (an operator on "#", an integrator on
// every device's accepted replies), with keepalive 30 s or 0, must never
// block a publisher. Before the fix the broker's write to the full socket
// held the subscriber's lock, which the reply publish (the engine, on the
// device's goroutine) needs for a packet ID: every device's update went
// unanswered until the slow socket closed. Now the devices' updates are
// answered while the slow subscriber is connected, and once its pending
// bytes exceed the cap it is disconnected as a slow consumer, counted and
// logged once.
func TestHardening05SlowSubscriberIsShed(t *testing.T) {
	tests := []struct {
		name      string
		filter    string
		keepalive uint16
		capBytes  int // ServicePendingBytes; 0: the default (never reached here)
		wantShed  bool
	}{
		{"operator on # keepalive 30", "#", 30, 512 << 10, true},
		{"operator on # keepalive 0", "#", 0, 512 << 10, true},
		{"integrator on accepted keepalive 0", "state/+/update/accepted", 0, 512 << 10, true},
		{"integrator under the cap stays connected", "state/+/update/accepted", 0, 0, false},
	}
	const (
		devices   = 4
		updates   = 100
		replySize = 16 << 10 // 6.4 MiB of replies in all: more than a socket buffer (at most 4 MiB) and the cap
	)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			logs := &logBuffer{}
			cfg := broker.Config{
				Auth:                roleAuth{},
				ServicePendingBytes: tc.capBytes,
				Logger:              slog.New(slog.NewTextHandler(logs, nil)),
			}
			ev := withEvents(&cfg)
			b := brokertest.New(t, cfg)
			engineStub(t, b, replySize)

			brokertest.DialStalled(t, b.Addr().String(), brokertest.StalledOptions{
				ClientID: "slowpoke", Username: "operator", Filter: tc.filter, QoS: 1, Keepalive: tc.keepalive,
			})

			var wg sync.WaitGroup
			errs := make(chan error, devices)
			for i := range devices {
				id := fmt.Sprintf("dev%d", i)
				c := brokertest.Connect(t, brokertest.URL(b), id)
				wg.Go(func() {
					topic := "state/" + id + "/update"
					request := func(int) []byte { return []byte(`{"state":{}}`) }
					if err := brokertest.RequestReplies(c, topic, topic+"/accepted", updates, request, wait); err != nil {
						errs <- err
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}

			st := b.Stats()
			if !tc.wantShed {
				if st.SlowConsumers != 0 {
					t.Errorf("Stats.SlowConsumers = %d, want 0", st.SlowConsumers)
				}
				if st.PendingBytes == 0 {
					t.Errorf("Stats.PendingBytes = 0, want the slow client's backlog")
				}
				return
			}
			checkShed(t, b, ev, logs, "slowpoke")
		})
	}
}

// TestHardening06SlowDeviceDoesNotBlockPublisher is the broker half of
// issue 10's case 6: a device subscribed to its own topics with a tiny
// receive buffer that never reads, and reports large states, fills its
// socket (the kernel's send buffer, up to 4 MiB on Linux) before its
// inflight cap trips. A publish to it (the rollout planner's, in-process)
// must still return at once. Before the fix the planner's publish after
// the socket filled waited for the device's lock, held by the blocked
// socket write, until the device disconnected.
func TestHardening06SlowDeviceDoesNotBlockPublisher(t *testing.T) {
	logs := &logBuffer{}
	cfg := broker.Config{Auth: roleAuth{}, Logger: slog.New(slog.NewTextHandler(logs, nil))}
	ev := withEvents(&cfg)
	b := brokertest.New(t, cfg)
	replied := engineStub(t, b, 100<<10)

	dev := brokertest.DialStalled(t, b.Addr().String(), brokertest.StalledOptions{
		ClientID: "devslow", Filter: "state/devslow/#", QoS: 1,
	})
	// 6 MB of reports at QoS 0, each answered with a 100 KiB reply; the
	// device never reads. Its writes stall once the broker stops reading
	// it, so they run in the background, each bounded by
	// brokertest.Timeout.
	report := bytes.Repeat([]byte("x"), 100<<10)
	reported := make(chan struct{})
	go func() {
		defer close(reported)
		for range 60 {
			if err := dev.Publish("state/devslow/update", 0, report); err != nil {
				return
			}
		}
	}()

	// The planner notifies the device after every reply, and once more
	// when the reports are all sent (or stalled).
	planner := make(chan error, 1)
	go func() {
		for i := 0; ; i++ {
			select {
			case <-replied:
			case <-reported:
				// Once more, now that the socket is surely full (or
				// the device shed).
				planner <- b.Publish("state/devslow/update/delta", []byte(`{"state":{"firmware":"2.0.0"}}`), false, 1)
				return
			}
			if err := b.Publish("state/devslow/update/delta", []byte(`{"state":{"firmware":"2.0.0"}}`), false, 1); err != nil {
				planner <- fmt.Errorf("publish %d: %w", i, err)
				return
			}
		}
	}()
	<-reported
	if err := recv(t, planner, "the planner's publish to the slow device to return"); err != nil {
		t.Fatal(err)
	}
	checkShed(t, b, ev, logs, "devslow")
}

// TestBacklogOverEveryTransport sends a burst far larger than the socket
// buffers to a subscriber over TCP, TLS and WebSocket, so that most of it
// goes through the connections' pending bytes and writer (TLS records and
// WebSocket frames are written through them): every message must arrive
// intact.
func TestBacklogOverEveryTransport(t *testing.T) {
	ca := brokertest.NewCA(t, "backlog CA")
	b := brokertest.New(t, broker.Config{
		TLSConfig:           ca.ServerConfig(t, false),
		MaxPendingBytes:     64 << 20,
		ClientWritesPending: 1024,
	})
	urls := map[string]string{"tcp": brokertest.URL(b), "tls": brokertest.TLSURL(b), "ws": brokertest.WSURL(b)}
	const (
		messages = 200
		size     = 64 << 10
	)
	for name, url := range urls {
		t.Run(name, func(t *testing.T) {
			c := brokertest.Connect(t, url, "burst-"+name, brokertest.WithTLS(ca.ClientConfig()))
			topic := "burst/" + name
			msgs := brokertest.Subscribe(t, c, topic, 1)
			for i := range messages {
				payload := bytes.Repeat([]byte{byte(i)}, size)
				if err := b.Publish(topic, payload, false, 1); err != nil {
					t.Fatalf("Publish %d: %v", i, err)
				}
			}
			seen := make(map[byte]bool)
			for range messages {
				m := brokertest.Next(t, msgs, 30*time.Second)
				i := m.Payload[0]
				if len(m.Payload) != size || !bytes.Equal(m.Payload, bytes.Repeat([]byte{i}, size)) || seen[i] {
					t.Fatalf("message %d: %d bytes, corrupt or repeated", i, len(m.Payload))
				}
				seen[i] = true
			}
			if st := b.Stats(); st.SlowConsumers != 0 || st.MessagesDropped != 0 || st.InflightDropped != 0 {
				t.Errorf("Stats %+v, want no slow consumer and nothing dropped", st)
			}
		})
	}
}
