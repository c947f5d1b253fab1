package broker_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"os/exec"
	"strconv"
	"testing"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/internal/brokertest"
)

// QoS 2 packet types.
const (
	typePubrec  = 5
	typePubrel  = 6
	typePubcomp = 7
)

// ackPacket encodes PUBREC, PUBREL (flags 0x2) or PUBCOMP for id.
func ackPacket(typ byte, id uint16) []byte {
	first := typ << 4
	if typ == typePubrel {
		first |= 0x02
	}
	return frame(first, binary.BigEndian.AppendUint16(nil, id))
}

// expectAck reads the next packet and fails the test unless it is an
// acknowledgement of type typ for id with a success reason (MQTT 5 may
// leave the reason out).
func (rc *rawConn) expectAck(typ byte, id uint16) {
	rc.tb.Helper()
	p := rc.expect(typ)
	if len(p.body) < 2 || binary.BigEndian.Uint16(p.body) != id || len(p.body) > 2 && p.body[2] >= 0x80 {
		rc.tb.Fatalf("got %v, want type %d for packet id %d, success", p, typ, id)
	}
}

// TestHardening16QoS2 is issue 10's case 16: a QoS 2 PUBLISH got PUBACK
// instead of PUBREC, a protocol error for the client. The broker now does
// real QoS 2 in both directions, for MQTT 3.1.1 and 5: PUBREC, PUBREL,
// PUBCOMP; a PUBLISH resent before PUBREL is acknowledged again and not
// delivered twice; in-process handlers still run once per message.
func TestHardening16QoS2(t *testing.T) {
	for _, version := range []byte{v311, v5} {
		t.Run("MQTT "+strconv.Itoa(int(version)), func(t *testing.T) {
			b := brokertest.New(t, broker.Config{})
			handled := make(chan string, 8)
			if err := b.Subscribe("q2/#", func(_, _ string, payload []byte) { handled <- string(payload) }); err != nil {
				t.Fatal(err)
			}
			sub := dialRaw(t, b.Addr())
			sub.connect(version, "q2-sub", true)
			sub.write(subscribePacket(version, 1, "q2/#", 2))
			if ack := sub.expect(typeSuback); ack.body[len(ack.body)-1] != 2 {
				t.Fatalf("SUBACK %v, want QoS 2 granted", ack)
			}

			// Inbound: PUBLISH, PUBREC, (duplicate PUBLISH, PUBREC), PUBREL, PUBCOMP.
			pub := dialRaw(t, b.Addr())
			pub.connect(version, "q2-pub", true)
			msg := publishPacket(version, "q2/in", 2, 9, []byte("exactly once"))
			pub.write(msg)
			pub.expectAck(typePubrec, 9)
			if got := recv(t, handled, "in-process delivery"); got != "exactly once" {
				t.Fatalf("handler got %q", got)
			}
			dup := bytes.Clone(msg)
			dup[0] |= 0x08 // DUP
			pub.write(dup)
			pub.expectAck(typePubrec, 9)
			pub.write(ackPacket(typePubrel, 9))
			pub.expectAck(typePubcomp, 9)

			// Outbound to the QoS 2 subscriber: PUBLISH, PUBREC, PUBREL, PUBCOMP.
			p := sub.expect(typePublish)
			topic, id, payload := parsePublish(version, p)
			if topic != "q2/in" || string(payload) != "exactly once" || (p.flags>>1)&3 != 2 {
				t.Fatalf("subscriber got %v, want q2/in at QoS 2", p)
			}
			sub.write(ackPacket(typePubrec, id))
			sub.expectAck(typePubrel, id)
			sub.write(ackPacket(typePubcomp, id))

			// The duplicate was delivered to nobody.
			pub.write(publishPacket(version, "q2/in", 0, 0, []byte("next")))
			if got := recv(t, handled, "in-process delivery"); got != "next" {
				t.Errorf("handler got %q, want next (the duplicate must not be handled)", got)
			}
			if p := sub.expect(typePublish); (p.flags>>1)&3 != 0 {
				t.Errorf("subscriber got %v, want the QoS 0 message (not the duplicate)", p)
			}
			if !eventually(func() bool { return b.Stats().Inflight == 0 }) {
				t.Errorf("Stats.Inflight %d after both flows completed, want 0", b.Stats().Inflight)
			}
		})
	}
}

// TestHardening16MosquittoQoS2 runs QoS 2 with Debian's mosquitto_pub
// and mosquitto_sub, which check the flow strictly.
func TestHardening16MosquittoQoS2(t *testing.T) {
	pubBin, err := exec.LookPath("mosquitto_pub")
	if err != nil {
		t.Fatalf("mosquitto_pub not found (%v): run make deps (Debian package mosquitto-clients)", err)
	}
	subBin, err := exec.LookPath("mosquitto_sub")
	if err != nil {
		t.Fatalf("mosquitto_sub not found (%v): run make deps (Debian package mosquitto-clients)", err)
	}
	var cfg broker.Config
	ev := withEvents(&cfg)
	b := brokertest.New(t, cfg)
	ctx, cancel := context.WithTimeout(t.Context(), 4*wait)
	defer cancel()
	for _, version := range []string{"mqttv311", "mqttv5"} {
		t.Run(version, func(t *testing.T) {
			sub := exec.CommandContext(ctx, subBin, "-h", "127.0.0.1", "-p", portOf(b), "-V", version, "-q", "2",
				"-i", "msub-"+version[4:], "-t", "mq2/"+version, "-C", "1", "-W", "20")
			var out bytes.Buffer
			sub.Stdout, sub.Stderr = &out, &out
			if err := sub.Start(); err != nil {
				t.Fatal(err)
			}
			recv(t, ev.subscribes, "mosquitto_sub's subscription")
			pubOut, err := exec.CommandContext(ctx, pubBin, "-h", "127.0.0.1", "-p", portOf(b), "-V", version, "-q", "2",
				"-i", "mpub-"+version[4:], "-t", "mq2/"+version, "-m", "qos2 via mosquitto").CombinedOutput()
			if err != nil {
				t.Errorf("mosquitto_pub -q 2: %v: %s", err, pubOut)
			}
			if err := sub.Wait(); err != nil {
				t.Fatalf("mosquitto_sub -q 2: %v: %s", err, out.String())
			}
			if got := out.String(); got != "qos2 via mosquitto\n" {
				t.Errorf("mosquitto_sub printed %q, want the message", got)
			}
		})
	}
}

// portOf is the port of b's TCP listener.
func portOf(b *broker.Server) string { return strconv.Itoa(b.Addr().(*net.TCPAddr).Port) }
