package broker_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"log/slog"
	"strconv"
	"testing"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/internal/brokertest"
)

// expectAckOf reads the next packet and fails the test unless it is an
// acknowledgement of type typ for id with reason code want.
func (rc *rawConn) expectAckOf(typ byte, id uint16, want byte) {
	rc.tb.Helper()
	p := rc.expect(typ)
	if len(p.body) < 2 || binary.BigEndian.Uint16(p.body) != id || ackCode(p) != want {
		rc.tb.Fatalf("got %v, want type %d for packet id %d with reason %#x", p, typ, id, want)
	}
}

// expectRefused reads the answer to a refused QoS qos PUBLISH with packet
// id: nothing for QoS 0; for MQTT 5 PUBACK or PUBREC (which ends the
// exchange) with code; for MQTT 3.1.1 the usual PUBACK, or PUBREC, and
// PUBCOMP for the PUBREL it sends.
func (rc *rawConn) expectRefused(version, qos byte, id uint16, code byte) {
	rc.tb.Helper()
	switch {
	case qos == 1 && version == v5:
		rc.expectAckOf(typePuback, id, code)
	case qos == 1:
		rc.expectAckOf(typePuback, id, 0)
	case qos == 2 && version == v5:
		rc.expectAckOf(typePubrec, id, code)
	case qos == 2:
		rc.expectAckOf(typePubrec, id, 0)
		rc.write(ackPacket(typePubrel, id))
		rc.expectAck(typePubcomp, id)
	}
}

// deniedLogLines counts the log lines about op ("publish", "subscribe")
// denials of clientID.
func deniedLogLines(logs *logBuffer, op, clientID string) int {
	return logs.count(op + ` denied; not logged again for this client and topic" component=broker client=` + clientID + " ")
}

// TestDeniedPublishNeverDisconnects: a PUBLISH that Auth denies is dropped
// (not delivered, not retained) and the client stays connected. MQTT 5
// gets PUBACK or PUBREC 0x87; MQTT 3.1.1 the usual PUBACK, or PUBREC and
// PUBCOMP, as mosquitto does (unpatched mochi disconnected a 3.1.1 client
// for QoS 1 and 2: third_party/mochi/PATCHES.md, patch 2). Each denial is
// counted, and logged once per client and topic.
func TestDeniedPublishNeverDisconnects(t *testing.T) {
	logs := &logBuffer{}
	b := brokertest.New(t, broker.Config{
		Auth:   allowAuth{deny: map[string]bool{"secret/x": true}},
		Logger: slog.New(slog.NewTextHandler(logs, nil)),
	})
	got := make(chan string, 16)
	if err := b.Subscribe("#", func(_, topic string, _ []byte) { got <- topic }); err != nil {
		t.Fatal(err)
	}
	for _, version := range []byte{v311, v5} {
		for qos := range byte(3) {
			id := fmt.Sprintf("pub-v%d-qos%d", version, qos)
			t.Run(id, func(t *testing.T) {
				before := b.Stats()
				rc := dialRaw(t, b.Addr())
				rc.write(fullConnectPacket(version, id, "", "", ""))
				if code := rc.expect(typeConnack).body[1]; code != 0 {
					t.Fatalf("CONNACK code %#x", code)
				}
				for range 2 {
					rc.write(retainedPublish(version, "secret/x", qos, 7, []byte("forged")))
					rc.expectRefused(version, qos, 7, 0x87)
				}
				// Still connected, and the denied messages were not
				// delivered: a client's messages are handled in order.
				rc.write(publishPacket(version, "open/"+id, 1, 8, []byte("ok")))
				rc.expectAck(typePuback, 8)
				if topic := recv(t, got, "delivery"); topic != "open/"+id {
					t.Fatalf("delivered %q first, want open/%s", topic, id)
				}
				after := b.Stats()
				if n := after.PublishesDenied - before.PublishesDenied; n != 2 {
					t.Errorf("PublishesDenied: got +%d, want +2", n)
				}
				if after.Retained != before.Retained {
					t.Errorf("Retained: got %d, want %d (a denied PUBLISH is not retained)", after.Retained, before.Retained)
				}
				if n := deniedLogLines(logs, "publish", id); n != 1 {
					t.Errorf("log lines for the denials: got %d, want 1", n)
				}
			})
		}
	}
}

// TestDeniedPublishLogBounded: a client denied on many topics is logged
// for the first maxLoggedDenials (16) of them and says once that it stops
// logging; every denial is counted.
func TestDeniedPublishLogBounded(t *testing.T) {
	logs := &logBuffer{}
	deny := map[string]bool{}
	for i := range 40 {
		deny["secret/"+strconv.Itoa(i)] = true
	}
	b := brokertest.New(t, broker.Config{Auth: allowAuth{deny: deny}, Logger: slog.New(slog.NewTextHandler(logs, nil))})
	rc := dialRaw(t, b.Addr())
	rc.write(fullConnectPacket(v311, "noisy", "", "", ""))
	rc.expect(typeConnack)
	for i := range 40 {
		rc.write(publishPacket(v311, "secret/"+strconv.Itoa(i), 1, uint16(i+1), nil))
		rc.expectAck(typePuback, uint16(i+1))
	}
	if n := deniedLogLines(logs, "publish", "noisy"); n != 16 {
		t.Errorf("denial log lines: got %d, want 16", n)
	}
	if n := logs.count("further denials of this client are counted, not logged"); n != 1 {
		t.Errorf("bound log lines: got %d, want 1", n)
	}
	if n := b.Stats().PublishesDenied; n != 40 {
		t.Errorf("PublishesDenied: got %d, want 40", n)
	}
}

// TestDeniedSubscribe: a denied filter gets SUBACK 0x87 (MQTT 5) or 0x80
// (MQTT 3.1.1), the other filters of the SUBSCRIBE are granted, the client
// stays connected, and each denial is counted and logged once per client
// and filter. A shared subscription is checked by its filter.
func TestDeniedSubscribe(t *testing.T) {
	logs := &logBuffer{}
	b := brokertest.New(t, broker.Config{
		Auth:   allowAuth{deny: map[string]bool{"secret/#": true}},
		Logger: slog.New(slog.NewTextHandler(logs, nil)),
	})
	for _, version := range []byte{v311, v5} {
		id := fmt.Sprintf("sub-v%d", version)
		t.Run(id, func(t *testing.T) {
			before := b.Stats().SubscriptionsDenied
			rc := dialRaw(t, b.Addr())
			rc.write(fullConnectPacket(version, id, "", "", ""))
			rc.expect(typeConnack)
			want := byte(0x80)
			if version == v5 {
				want = 0x87
			}
			for i, filter := range []string{"secret/#", "$share/g/secret/#", "secret/#"} {
				if codes := rc.subscribeCodes(version, uint16(i+1), "open/#", filter, "open/+"); !bytes.Equal(codes, []byte{1, want, 1}) {
					t.Fatalf("SUBACK for open/#, %s, open/+: got % x, want 01 %02x 01", filter, codes, want)
				}
			}
			rc.write(publishPacket(version, "open/x", 1, 9, []byte("still here")))
			rc.expectAck(typePuback, 9)
			if topic, _, _ := parsePublish(version, rc.expect(typePublish)); topic != "open/x" {
				t.Errorf("delivered %q, want open/x", topic)
			}
			if n := b.Stats().SubscriptionsDenied - before; n != 3 {
				t.Errorf("SubscriptionsDenied: got +%d, want +3", n)
			}
			if n := deniedLogLines(logs, "subscribe", id); n != 2 {
				t.Errorf("log lines: got %d, want 2 (secret/# and its shared form, once each)", n)
			}
		})
	}
}

// TestWillTopicDenied: a CONNECT whose will topic the client may not
// publish to is refused with "not authorized": CONNACK 5 for MQTT 3.1.1,
// 0x87 (not 0x86 "bad user name or password") for MQTT 5.
func TestWillTopicDenied(t *testing.T) {
	b := brokertest.New(t, broker.Config{Auth: allowAuth{deny: map[string]bool{"secret/will": true}}})
	for _, tc := range []struct {
		version byte
		will    string
		want    byte
	}{
		{v311, "secret/will", 0x05},
		{v5, "secret/will", 0x87},
		{v311, "open/will", 0},
		{v5, "open/will", 0},
	} {
		t.Run(fmt.Sprintf("v%d %s", tc.version, tc.will), func(t *testing.T) {
			rc := dialRaw(t, b.Addr())
			rc.write(fullConnectPacket(tc.version, "willer", tc.will, "", ""))
			if code := rc.expect(typeConnack).body[1]; code != tc.want {
				t.Errorf("CONNACK code: got %#x, want %#x", code, tc.want)
			}
		})
	}
}
