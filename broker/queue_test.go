package broker_test

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/internal/brokertest"
)

// roleAuth admits everyone to every topic: user name "operator" is a
// service identity (no Device), any other client is the device named by
// its client ID.
type roleAuth struct{}

func (roleAuth) Authenticate(_ context.Context, c broker.Credentials) (broker.Identity, error) {
	if c.Username == "operator" {
		return broker.Identity{Name: "operator:" + c.ClientID}, nil
	}
	return broker.Identity{Name: c.ClientID, Device: device.ID(c.ClientID)}, nil
}

func (roleAuth) Allow(broker.Identity, string, bool) bool { return true }

func asOperator(o *mqtt.ClientOptions) { o.SetUsername("operator") }

func persistent(o *mqtt.ClientOptions) { o.SetCleanSession(false) }

// TestOutboundQueueSize checks which clients get the service queue: only
// identities without a device, and only with Auth.
func TestOutboundQueueSize(t *testing.T) {
	tests := []struct {
		name     string
		cfg      broker.Config
		operator bool
		want     int
	}{
		{"device", broker.Config{Auth: roleAuth{}}, false, int(broker.DefaultClientWritesPending)},
		{"operator", broker.Config{Auth: roleAuth{}}, true, int(broker.DefaultServiceWritesPending)},
		{"operator configured", broker.Config{Auth: roleAuth{}, ServiceWritesPending: 1000}, true, 1000},
		{"operator below device size", broker.Config{Auth: roleAuth{}, ClientWritesPending: 100, ServiceWritesPending: 10},
			true, 100},
		{"device configured", broker.Config{Auth: roleAuth{}, ClientWritesPending: 32}, false, 32},
		{"no auth", broker.Config{}, true, int(broker.DefaultClientWritesPending)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := brokertest.New(t, tc.cfg)
			var opts []func(*mqtt.ClientOptions)
			if tc.operator {
				opts = append(opts, asOperator)
			}
			c := brokertest.Connect(t, brokertest.URL(b), "client-1", opts...)
			// The queue still works after the replacement.
			msgs := brokertest.Subscribe(t, c, "t/#", 1)
			if err := b.Publish("t/1", []byte("x"), false, 1); err != nil {
				t.Fatal(err)
			}
			if m := brokertest.Next(t, msgs, wait); m.Topic != "t/1" {
				t.Errorf("message: got %v, want one on t/1", m)
			}
			got, ok := broker.OutboundCap(b, "client-1")
			if !ok {
				t.Fatal("client-1 unknown to the broker")
			}
			if got != tc.want {
				t.Errorf("outbound queue: got %d, want %d", got, tc.want)
			}
		})
	}
}

// TestServiceClientReceivesBurst is the operator watching the fleet: a
// burst of QoS 1 messages published as fast as possible, far beyond a
// device's queue and inflight store, reaches it complete.
func TestServiceClientReceivesBurst(t *testing.T) {
	const n = 5000
	b := brokertest.New(t, broker.Config{Auth: roleAuth{}})
	c := brokertest.Connect(t, brokertest.URL(b), "watcher", asOperator)

	var (
		mu   sync.Mutex // guards seen
		seen = make(map[string]bool, n)
	)
	all := make(chan struct{})
	tok := c.Subscribe("state/+/update/accepted", 1, func(_ mqtt.Client, m mqtt.Message) {
		mu.Lock()
		defer mu.Unlock()
		seen[string(m.Payload())] = true
		if len(seen) == n {
			close(all)
		}
	})
	if !tok.WaitTimeout(wait) || tok.Error() != nil {
		t.Fatalf("subscribe: got %v, want SUBACK within %v", tok.Error(), wait)
	}

	start := time.Now()
	for i := range n {
		topic := fmt.Sprintf("state/dev-%d/update/accepted", i%1000)
		if err := b.Publish(topic, []byte(strconv.Itoa(i)), false, 1); err != nil {
			t.Fatalf("Publish %d: %v", i, err)
		}
	}
	published := time.Since(start)
	select {
	case <-all:
	case <-time.After(30 * time.Second):
		mu.Lock()
		got := len(seen)
		mu.Unlock()
		t.Fatalf("received %d of %d messages (stats %+v)", got, n, b.Stats())
	}
	st := b.Stats()
	if st.MessagesDropped != 0 || st.InflightDropped != 0 {
		t.Errorf("Stats: got MessagesDropped %d InflightDropped %d, want 0 and 0", st.MessagesDropped, st.InflightDropped)
	}
	t.Logf("%d QoS 1 messages published in %v, all received after %v", n, published, time.Since(start))
}

// TestInflightLimitByRole queues QoS 1 messages for offline persistent
// sessions: a device's store stops at MaxInflight, a service client's
// holds them all and delivers them when it comes back.
func TestInflightLimitByRole(t *testing.T) {
	const n = 300 // over DefaultMaxInflight
	b := brokertest.New(t, broker.Config{Auth: roleAuth{}})
	url := brokertest.URL(b)
	for _, sub := range []struct {
		id   string
		opts []func(*mqtt.ClientOptions)
	}{
		{"dev-1", []func(*mqtt.ClientOptions){persistent}},
		{"watcher", []func(*mqtt.ClientOptions){persistent, asOperator}},
	} {
		c := brokertest.Connect(t, url, sub.id, sub.opts...)
		brokertest.Subscribe(t, c, "state/dev-1/delta", 1)
		c.Disconnect(100)
	}
	if !eventually(func() bool { return b.Stats().ClientsConnected == 0 }) {
		t.Fatalf("ClientsConnected: got %d, want 0", b.Stats().ClientsConnected)
	}
	for i := range n {
		if err := b.Publish("state/dev-1/delta", []byte(strconv.Itoa(i)), false, 1); err != nil {
			t.Fatal(err)
		}
	}
	st := b.Stats()
	if want := int64(broker.DefaultMaxInflight) + n; st.Inflight != want {
		t.Errorf("Stats.Inflight: got %d, want %d (device %d + service %d)", st.Inflight, want, broker.DefaultMaxInflight, n)
	}
	if want := int64(n - int(broker.DefaultMaxInflight)); st.InflightDropped != want {
		t.Errorf("Stats.InflightDropped: got %d, want %d", st.InflightDropped, want)
	}

	got := make(chan string, n)
	brokertest.Connect(t, url, "watcher", persistent, asOperator, func(o *mqtt.ClientOptions) {
		o.SetDefaultPublishHandler(func(_ mqtt.Client, m mqtt.Message) { got <- string(m.Payload()) })
	})
	seen := make(map[string]bool, n)
	for len(seen) < n {
		seen[recv(t, got, fmt.Sprintf("queued message %d of %d", len(seen)+1, n))] = true
	}
}

// TestDeviceInflightFull: a connected device that does not acknowledge
// stops receiving at MaxInflight, can still subscribe, and receives again
// once it acknowledges.
func TestDeviceInflightFull(t *testing.T) {
	const max = 8
	b := brokertest.New(t, broker.Config{Auth: roleAuth{}, MaxInflight: max})
	rc := dialRaw(t, b.Addr())
	if code := rc.connect(v311, "dev-2", true); code != 0 {
		t.Fatalf("CONNACK: got code %#x, want 0", code)
	}
	rc.write(subscribePacket(v311, 1, "d/2", 1))
	rc.expect(typeSuback)
	for i := range max + 3 {
		if err := b.Publish("d/2", []byte(strconv.Itoa(i)), false, 1); err != nil {
			t.Fatal(err)
		}
	}
	if st := b.Stats(); st.Inflight != max || st.InflightDropped != 3 {
		t.Errorf("Stats: got Inflight %d InflightDropped %d, want %d and 3", st.Inflight, st.InflightDropped, max)
	}

	// mochi refuses a SUBSCRIBE whose packet ID is in use by an outbound
	// message (0x91), so pick one far from those handed out.
	rc.write(subscribePacket(v311, 1000, "d/other", 1))
	var ids []uint16
	for {
		p, err := rc.read()
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		if p.typ == typePublish {
			_, id, _ := parsePublish(v311, p)
			ids = append(ids, id)
			continue
		}
		if p.typ != typeSuback {
			t.Fatalf("got packet %v, want PUBLISH or SUBACK", p)
		}
		if got := p.body[len(p.body)-1]; got != 1 {
			t.Errorf("SUBACK for d/other with a full inflight store: got code %#x, want 1", got)
		}
		break
	}
	for len(ids) < max {
		_, id, _ := parsePublish(v311, rc.expect(typePublish))
		ids = append(ids, id)
	}
	if len(ids) != max {
		t.Fatalf("PUBLISHes: got %d, want %d", len(ids), max)
	}

	rc.write(pubackPacket(ids[0]))
	if !eventually(func() bool { return b.Stats().Inflight == max-1 }) {
		t.Fatalf("Stats.Inflight after PUBACK: got %d, want %d", b.Stats().Inflight, max-1)
	}
	if err := b.Publish("d/2", []byte("after ack"), false, 1); err != nil {
		t.Fatal(err)
	}
	if topic, _, payload := parsePublish(v311, rc.expect(typePublish)); topic != "d/2" || string(payload) != "after ack" {
		t.Errorf("after PUBACK: got %s %q, want d/2 %q", topic, payload, "after ack")
	}
	if st := b.Stats(); st.InflightDropped != 3 {
		t.Errorf("Stats.InflightDropped: got %d, want 3", st.InflightDropped)
	}
}
