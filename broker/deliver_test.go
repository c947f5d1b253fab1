package broker_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/internal/brokertest"
)

// ordered makes a paho client deliver messages to handlers in order, so a
// message published last is a barrier for the ones before it.
func ordered(o *mqtt.ClientOptions) { o.SetOrderMatters(true) }

// TestPublishToOnlyTheSubscriber: PublishTo reaches the one client named,
// at its subscription's QoS, and neither the other subscribers of the
// topic nor in-process subscribers.
func TestPublishToOnlyTheSubscriber(t *testing.T) {
	b := brokertest.New(t, broker.Config{})
	inproc := make(chan string, 8)
	if err := b.Subscribe("t/x", func(_, _ string, p []byte) { inproc <- string(p) }); err != nil {
		t.Fatal(err)
	}
	a := brokertest.Connect(t, brokertest.URL(b), "a", ordered)
	c := brokertest.Connect(t, brokertest.URL(b), "c", ordered)
	msgsA := brokertest.Subscribe(t, a, "t/x", 0)
	msgsC := brokertest.Subscribe(t, c, "t/+", 1)

	if err := b.PublishTo("a", "t/x", []byte("only a"), 1); err != nil {
		t.Fatalf("PublishTo(a) = %v", err)
	}
	if err := b.PublishTo("c", "t/x", []byte("only c"), 1); err != nil {
		t.Fatalf("PublishTo(c) = %v", err)
	}
	if err := b.Publish("t/x", []byte("everyone"), false, 1); err != nil {
		t.Fatal(err)
	}
	// Each client's messages arrive in order: its own, then the barrier.
	checkMessage(t, brokertest.Next(t, msgsA, wait), "t/x", []byte("only a"), 0, false) // subscribed at QoS 0
	checkMessage(t, brokertest.Next(t, msgsA, wait), "t/x", []byte("everyone"), 0, false)
	checkMessage(t, brokertest.Next(t, msgsC, wait), "t/x", []byte("only c"), 1, false)
	checkMessage(t, brokertest.Next(t, msgsC, wait), "t/x", []byte("everyone"), 1, false)
	if got := recv(t, inproc, "in-process message"); got != "everyone" {
		t.Errorf("in-process subscriber got %q, want only %q", got, "everyone")
	}
	if len(inproc) != 0 {
		t.Errorf("in-process subscriber got %d more messages, want none", len(inproc))
	}
}

func TestPublishToErrors(t *testing.T) {
	b := brokertest.New(t, broker.Config{Auth: allowAuth{deny: map[string]bool{"t/secret": true}}, MaxPacketSize: 1024})
	c := brokertest.Connect(t, brokertest.URL(b), "c", withPassword("x"))
	brokertest.Subscribe(t, c, "t/#", 1)
	tests := []struct {
		name, client, topic string
		payload             []byte
		qos                 byte
		want                error
	}{
		{"unknown client", "nobody", "t/x", nil, 1, broker.ErrNoSubscription},
		{"not subscribed", "c", "u/x", nil, 1, broker.ErrNoSubscription},
		{"read denied", "c", "t/secret", nil, 1, broker.ErrNotDelivered},
		{"wildcard topic", "c", "t/+", nil, 1, broker.ErrInvalidTopic},
		{"empty topic", "c", "", nil, 1, broker.ErrInvalidTopic},
		{"qos 3", "c", "t/x", nil, 3, broker.ErrInvalidQoS},
		{"too large", "c", "t/x", make([]byte, 1025), 1, broker.ErrTooLarge},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := b.PublishTo(tc.client, tc.topic, tc.payload, tc.qos); !errors.Is(err, tc.want) {
				t.Errorf("PublishTo(%q, %q) = %v, want %v", tc.client, tc.topic, err, tc.want)
			}
		})
	}
	if st := b.Stats(); st.MessagesSent != 0 {
		t.Errorf("Stats.MessagesSent = %d after refused PublishTo calls, want 0", st.MessagesSent)
	}
	if err := b.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := b.PublishTo("c", "t/x", nil, 1); !errors.Is(err, broker.ErrClosed) {
		t.Errorf("PublishTo after Close = %v, want ErrClosed", err)
	}
}

// TestPublishToInflightFull: a client that does not acknowledge gets no
// more than its inflight store holds; the drop is counted, and an
// acknowledgement makes room again.
func TestPublishToInflightFull(t *testing.T) {
	b := brokertest.New(t, broker.Config{MaxInflight: 2})
	rc := dialRaw(t, b.Addr())
	if code := rc.connect(v311, "slow", true); code != 0 {
		t.Fatalf("CONNACK %#x", code)
	}
	rc.write(subscribePacket(v311, 1, "t/x", 1))
	rc.expect(typeSuback)
	var ids []uint16
	for i := range 2 {
		if err := b.PublishTo("slow", "t/x", []byte{byte('0' + i)}, 1); err != nil {
			t.Fatalf("PublishTo #%d = %v", i, err)
		}
		_, id, _ := parsePublish(v311, rc.expect(typePublish))
		ids = append(ids, id)
	}
	if err := b.PublishTo("slow", "t/x", []byte("2"), 1); !errors.Is(err, broker.ErrNotDelivered) {
		t.Fatalf("PublishTo with a full inflight store = %v, want ErrNotDelivered", err)
	}
	if st := b.Stats(); st.InflightDropped != 1 || st.Inflight != 2 {
		t.Errorf("Stats: InflightDropped %d Inflight %d, want 1 and 2", st.InflightDropped, st.Inflight)
	}
	rc.write(pubackPacket(ids[0]))
	if !eventually(func() bool { return b.Stats().Inflight == 1 }) {
		t.Fatalf("Stats.Inflight = %d after PUBACK, want 1", b.Stats().Inflight)
	}
	if err := b.PublishTo("slow", "t/x", []byte("3"), 1); err != nil {
		t.Fatalf("PublishTo after PUBACK = %v", err)
	}
	if _, _, p := parsePublish(v311, rc.expect(typePublish)); string(p) != "3" {
		t.Errorf("got payload %q, want 3", p)
	}
}

// TestPublishToMQTT5: an MQTT 5 client gets the subscription identifier of
// its matching subscription, and no more unacknowledged QoS 1 messages
// than its Receive Maximum: the next one waits for a PUBACK.
func TestPublishToMQTT5(t *testing.T) {
	b := brokertest.New(t, broker.Config{})
	rc := dialRaw(t, b.Addr())
	// CONNECT with Receive Maximum (0x21) 1.
	body := appendString(nil, "MQTT")
	body = append(body, v5, 0x02, 0, 30, 3, 0x21, 0, 1)
	body = appendString(body, "v5")
	rc.write(frame(typeConnect<<4, body))
	if ack := rc.expect(typeConnack); ack.body[1] != 0 {
		t.Fatalf("CONNACK %#x", ack.body[1])
	}
	// SUBSCRIBE with Subscription Identifier (0x0b) 7.
	sub := binary.BigEndian.AppendUint16(nil, 1)
	sub = append(sub, 2, 0x0b, 7)
	sub = appendString(sub, "t/#")
	sub = append(sub, 1)
	rc.write(frame(typeSubscribe<<4|0x02, sub))
	rc.expect(typeSuback)

	for _, p := range []string{"first", "second"} {
		if err := b.PublishTo("v5", "t/x", []byte(p), 1); err != nil {
			t.Fatalf("PublishTo(%s) = %v", p, err)
		}
	}
	first := rc.expect(typePublish)
	_, id, payload := parsePublish(v5, first)
	if string(payload) != "first" || !bytes.Contains(first.body, []byte{0x0b, 7}) {
		t.Fatalf("first PUBLISH %v: want payload first with subscription identifier 7", first)
	}
	// The second is held back: the ping is answered before it arrives.
	rc.write([]byte{0xc0, 0}) // PINGREQ
	if p := rc.expect(13); len(p.body) != 0 {
		t.Fatalf("PINGRESP %v", p)
	}
	rc.write(pubackPacket(id))
	if _, _, payload := parsePublish(v5, rc.expect(typePublish)); string(payload) != "second" {
		t.Errorf("after PUBACK got %q, want second", payload)
	}
}

// TestPublishToAfterDisconnect: PublishTo to a client that has gone away
// is refused and leaves nothing in flight.
func TestPublishToAfterDisconnect(t *testing.T) {
	var cfg broker.Config
	ev := withEvents(&cfg)
	b := brokertest.New(t, cfg)
	c := brokertest.Connect(t, brokertest.URL(b), "gone")
	brokertest.Subscribe(t, c, "t/x", 1)
	recv(t, ev.subscribes, "subscribe")
	c.Disconnect(100)
	if err := ev.disconnectOf(t, "gone"); err != nil {
		t.Fatalf("disconnect: %v", err)
	}
	err := b.PublishTo("gone", "t/x", []byte("late"), 1)
	if !errors.Is(err, broker.ErrNoSubscription) || !strings.Contains(err.Error(), "gone") {
		t.Errorf("PublishTo to a disconnected client = %v, want ErrNoSubscription naming it", err)
	}
	if st := b.Stats(); st.Inflight != 0 {
		t.Errorf("Stats.Inflight = %d, want 0", st.Inflight)
	}
}

// TestSendToWithoutSubscription: SendTo reaches the one client named even
// without a matching subscription (at QoS min(qos, 1)), at its
// subscription's QoS when it has one, and never another client or an
// in-process subscriber; a topic the client may not read is refused.
func TestSendToWithoutSubscription(t *testing.T) {
	b := brokertest.New(t, broker.Config{Auth: allowAuth{deny: map[string]bool{"r/secret": true}}})
	inproc := make(chan string, 8)
	if err := b.Subscribe("r/#", func(_, _ string, p []byte) { inproc <- string(p) }); err != nil {
		t.Fatal(err)
	}
	rc := dialRaw(t, b.Addr())
	if code := rc.connect(v311, "req", true); code != 0 {
		t.Fatalf("CONNACK %#x", code)
	}
	other := brokertest.Connect(t, brokertest.URL(b), "other", withPassword("x"))
	otherMsgs := brokertest.Subscribe(t, other, "r/#", 1)

	if err := b.SendTo("req", "r/x/accepted", []byte("reply"), 1); err != nil {
		t.Fatalf("SendTo without a subscription = %v", err)
	}
	pk := rc.expect(typePublish)
	topic, id, payload := parsePublish(v311, pk)
	if qos := (pk.flags >> 1) & 3; qos != 1 || topic != "r/x/accepted" || string(payload) != "reply" {
		t.Errorf("got %s QoS %d payload %q, want r/x/accepted QoS 1 %q", topic, qos, payload, "reply")
	}
	rc.write(pubackPacket(id))

	rc.write(subscribePacket(v311, 2, "r/+/accepted", 0))
	rc.expect(typeSuback)
	if err := b.SendTo("req", "r/y/accepted", []byte("subscribed"), 1); err != nil {
		t.Fatalf("SendTo with a QoS 0 subscription = %v", err)
	}
	pk = rc.expect(typePublish)
	if _, _, payload := parsePublish(v311, pk); (pk.flags>>1)&3 != 0 || string(payload) != "subscribed" {
		t.Errorf("got QoS %d payload %q, want QoS 0 %q (the subscription's)", (pk.flags>>1)&3, payload, "subscribed")
	}

	for _, tc := range []struct {
		name, client, topic string
		want                error
	}{
		{"not connected", "nobody", "r/x", broker.ErrNoSubscription},
		{"read denied", "req", "r/secret", broker.ErrNotDelivered},
		{"wildcard", "req", "r/+", broker.ErrInvalidTopic},
	} {
		if err := b.SendTo(tc.client, tc.topic, nil, 1); !errors.Is(err, tc.want) {
			t.Errorf("SendTo(%s) = %v, want %v", tc.name, err, tc.want)
		}
	}
	// A barrier: the other client and the in-process subscriber see only
	// a real publish.
	if err := b.Publish("r/barrier", []byte("everyone"), false, 1); err != nil {
		t.Fatal(err)
	}
	if m := brokertest.Next(t, otherMsgs, wait); m.Topic != "r/barrier" {
		t.Errorf("the other client got %v, want only the barrier", m)
	}
	if got := recv(t, inproc, "in-process message"); got != "everyone" {
		t.Errorf("in-process subscriber got %q, want only %q", got, "everyone")
	}
}
