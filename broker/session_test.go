package broker_test

import (
	"bytes"
	"testing"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/internal/brokertest"
)

// connectPersistent connects rc as clientID with a persistent session,
// as an operator (service identity) or as the device clientID (roleAuth),
// and returns CONNACK's session-present flag.
func (rc *rawConn) connectPersistent(clientID string, operator bool) bool {
	rc.tb.Helper()
	pk := fullConnectPacket(v311, clientID, "", map[bool]string{true: "operator"}[operator], "")
	pk[9] &^= 0x02 // clear clean session (the flags byte follows "MQTT" and the version)
	rc.write(pk)
	ack := rc.expect(typeConnack)
	if ack.body[1] != 0 {
		rc.tb.Fatalf("CONNACK %v, want accepted", ack)
	}
	return ack.body[0]&1 == 1
}

// TestHardening03SessionBelongsToIdentity is issue 10's case 3: a
// persistent session belongs to the identity that created it. An
// integrator-like service client opens a persistent session as client ID
// devC, subscribed to devB's topics, and goes offline; messages for it are
// queued. When the device devC connects with a persistent session, it
// must start fresh: no session present, no inherited subscription, none
// of the queued messages. Before the fix it inherited both. The same
// identity still gets its session back.
func TestHardening03SessionBelongsToIdentity(t *testing.T) {
	b := brokertest.New(t, broker.Config{Auth: roleAuth{}})

	spy := dialRaw(t, b.Addr())
	spy.connectPersistent("devC", true)
	spy.write(subscribePacket(v311, 1, "state/devB/#", 1))
	spy.expect(typeSuback)
	spy.write([]byte{typeDisconn << 4, 0})
	spy.expectClosed()
	if err := b.Publish("state/devB/update/accepted", []byte("devB's secret"), false, 1); err != nil {
		t.Fatal(err)
	}
	if st := b.Stats(); st.Sessions != 1 || st.Inflight != 1 {
		t.Fatalf("Stats.Sessions %d, Inflight %d; want the offline session with 1 queued message", st.Sessions, st.Inflight)
	}

	dev := dialRaw(t, b.Addr())
	if present := dev.connectPersistent("devC", false); present {
		t.Error("CONNACK session present for devC: it inherited another identity's session")
	}
	if err := b.Publish("state/devB/update/accepted", []byte("more of devB"), false, 1); err != nil {
		t.Fatal(err)
	}
	// A sentinel on devC's own topic: it must be the first PUBLISH devC gets.
	dev.write(subscribePacket(v311, 2, "state/devC/update/delta", 1))
	dev.expect(typeSuback)
	if err := b.Publish("state/devC/update/delta", []byte("sentinel"), false, 1); err != nil {
		t.Fatal(err)
	}
	topic, id, payload := parsePublish(v311, dev.expect(typePublish))
	if topic != "state/devC/update/delta" || !bytes.Equal(payload, []byte("sentinel")) {
		t.Fatalf("devC got %s %q first, want the sentinel: it inherited devB's messages", topic, payload)
	}
	dev.write(pubackPacket(id))
	if st := b.Stats(); st.Subscriptions != 1 {
		t.Errorf("Stats.Subscriptions %d, want 1 (devC's own)", st.Subscriptions)
	}

	// The same identity gets its persistent session back, queued messages
	// included.
	dev.write([]byte{typeDisconn << 4, 0})
	dev.expectClosed()
	if err := b.Publish("state/devC/update/delta", []byte("while offline"), false, 1); err != nil {
		t.Fatal(err)
	}
	again := dialRaw(t, b.Addr())
	if present := again.connectPersistent("devC", false); !present {
		t.Error("CONNACK session not present for devC's own persistent session")
	}
	if topic, _, payload := parsePublish(v311, again.expect(typePublish)); string(payload) != "while offline" {
		t.Errorf("devC got %s %q after reconnecting, want the message queued while offline", topic, payload)
	}
}
