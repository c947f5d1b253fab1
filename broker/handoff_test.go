package broker_test

import (
	"context"
	"encoding/binary"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/internal/brokertest"
)

// handoffRelay is a Relay whose Connecting hands a session over, as
// another node's Handoff would through broker/natsbridge.
type handoffRelay struct {
	*fakeRelay
	st *broker.SessionState
}

func (r handoffRelay) Connecting(context.Context, string) *broker.SessionState { return r.st }

// connect5 sends an MQTT 5 CONNECT for clientID (user name "operator"
// for the service identity) with clean start off unless clean, a session
// expiry interval of expiry seconds, and returns CONNACK's session
// present flag.
func (rc *rawConn) connect5(clientID string, operator, clean bool, expiry uint32) bool {
	rc.tb.Helper()
	flags := byte(0)
	if clean {
		flags |= 0x02
	}
	if operator {
		flags |= 0x80
	}
	body := appendString(nil, "MQTT")
	body = append(body, v5, flags, 0, 30)
	body = append(body, 5, 0x11) // properties: session expiry interval
	body = binary.BigEndian.AppendUint32(body, expiry)
	body = appendString(body, clientID)
	if operator {
		body = appendString(body, "operator")
	}
	rc.write(frame(typeConnect<<4, body))
	ack := rc.expect(typeConnack)
	if ack.body[1] != 0 {
		rc.tb.Fatalf("CONNACK %v, want accepted", ack)
	}
	return ack.body[0]&1 == 1
}

// TestHandoffMovesMQTT5Session: Handoff ends an MQTT 5 client's session
// on one broker and returns it, with its session expiry, subscription and
// queued message; another broker whose Relay hands it to the connecting
// client adopts it (CONNACK session present 1, the queued message sent
// with its packet identifier), unless the client starts clean or
// authenticates as another identity, which start fresh.
func TestHandoffMovesMQTT5Session(t *testing.T) {
	for _, tc := range []struct {
		name            string
		operator, clean bool
		want            bool // session present and the message delivered
	}{
		{"same identity", true, false, true},
		{"clean start", true, true, false},
		{"another identity", false, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := brokertest.New(t, broker.Config{Auth: roleAuth{}})
			old := dialRaw(t, a.Addr())
			old.connect5("dev5", true, false, 3600)
			old.write(subscribePacket(v5, 1, "cmd/dev5", 1))
			old.expect(typeSuback)
			old.write([]byte{typeDisconn << 4, 0})
			old.expectClosed()
			if err := a.Publish("cmd/dev5", []byte("m1"), false, 1); err != nil {
				t.Fatal(err)
			}
			st, ok := a.Handoff(t.Context(), "dev5")
			if !ok || st == nil {
				t.Fatalf("Handoff = %v, %t; want the session", st, ok)
			}
			if !st.ExpirySet || st.Expiry != time.Hour || st.ProtocolVersion != v5 || len(st.Subscriptions) != 1 || len(st.Queued) != 1 ||
				string(st.Queued[0].Message.Payload) != "m1" || st.Queued[0].PacketID == 0 {
				t.Fatalf("handed-off session %+v, want expiry 1h, MQTT 5, one subscription, m1 queued with its packet ID", st)
			}
			if s := a.Stats(); s.Sessions != 0 || s.Inflight != 0 {
				t.Errorf("after Handoff: %d sessions, %d inflight; want none", s.Sessions, s.Inflight)
			}

			b := brokertest.New(t, broker.Config{Auth: roleAuth{}})
			if err := b.SetRelay(handoffRelay{newFakeRelay(), st}); err != nil {
				t.Fatal(err)
			}
			dev := dialRaw(t, b.Addr())
			if present := dev.connect5("dev5", tc.operator, tc.clean, 3600); present != tc.want {
				t.Fatalf("session present %t, want %t", present, tc.want)
			}
			if !tc.want {
				if s := b.Stats(); s.Inflight != 0 {
					t.Errorf("fresh session: %d inflight, want none adopted", s.Inflight)
				}
				return
			}
			p := dev.expect(typePublish)
			if topic, id, payload := parsePublish(v5, p); topic != "cmd/dev5" || string(payload) != "m1" || id != st.Queued[0].PacketID {
				t.Fatalf("first PUBLISH %s %q id %d, want cmd/dev5 m1 id %d", topic, payload, id, st.Queued[0].PacketID)
			}
			dev.write(pubackPacket(st.Queued[0].PacketID))
			if err := b.Publish("cmd/dev5", []byte("m2"), false, 1); err != nil {
				t.Fatal(err)
			}
			if topic, _, payload := parsePublish(v5, dev.expect(typePublish)); topic != "cmd/dev5" || string(payload) != "m2" {
				t.Fatalf("next PUBLISH %s %q, want cmd/dev5 m2 (the subscription moved)", topic, payload)
			}
		})
	}
}
