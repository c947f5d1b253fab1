package natsbridge_test

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"reflect"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/internal/brokertest"
	"github.com/umbra-iot/umbra/internal/natstest"
)

// v5Conn is a raw MQTT 5 client: enough to see the properties of a
// PUBLISH, which paho's MQTT 3.1.1 client cannot.
type v5Conn struct {
	net.Conn
	r *bufio.Reader
}

func dialV5(t *testing.T, addr net.Addr, clientID string) *v5Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(2 * wait))
	v := &v5Conn{Conn: c, r: bufio.NewReader(c)}
	body := append([]byte{0, 4, 'M', 'Q', 'T', 'T', 5, 0x02, 0, 60, 0}, str5(clientID)...)
	v.send(t, 0x10, body)
	if typ, ack := readPacket(t, v.r); typ != 0x20 || len(ack) < 2 || ack[1] != 0 {
		t.Fatalf("CONNACK: type %#x body % x", typ, ack)
	}
	return v
}

func str5(s string) []byte { return append([]byte{byte(len(s) >> 8), byte(len(s))}, s...) }

func (v *v5Conn) send(t *testing.T, header byte, body []byte) {
	t.Helper()
	pkt := []byte{header}
	n := len(body)
	for {
		b := byte(n & 0x7F)
		if n >>= 7; n > 0 {
			b |= 0x80
		}
		pkt = append(pkt, b)
		if n == 0 {
			break
		}
	}
	if _, err := v.Write(append(pkt, body...)); err != nil {
		t.Fatal(err)
	}
}

// props5 are the properties the test sends and expects back.
type props5 struct {
	Format      byte
	Expiry      uint32
	ContentType string
	Response    string
	Correlation []byte
	User        [][2]string
}

func (p props5) encode() []byte {
	var b []byte
	b = append(b, 0x01, p.Format)
	b = append(b, 0x02, byte(p.Expiry>>24), byte(p.Expiry>>16), byte(p.Expiry>>8), byte(p.Expiry))
	b = append(append(b, 0x03), str5(p.ContentType)...)
	b = append(append(b, 0x08), str5(p.Response)...)
	b = append(append(b, 0x09), str5(string(p.Correlation))...)
	for _, u := range p.User {
		b = append(append(append(b, 0x26), str5(u[0])...), str5(u[1])...)
	}
	return b
}

// decodeProps5 parses the properties a PUBLISH carries, ignoring the
// subscription identifier.
func decodeProps5(t *testing.T, b []byte) props5 {
	t.Helper()
	var p props5
	str := func() string {
		n := int(b[0])<<8 | int(b[1])
		s := string(b[2 : 2+n])
		b = b[2+n:]
		return s
	}
	for len(b) > 0 {
		id := b[0]
		b = b[1:]
		switch id {
		case 0x01:
			p.Format, b = b[0], b[1:]
		case 0x02:
			p.Expiry, b = uint32(b[0])<<24|uint32(b[1])<<16|uint32(b[2])<<8|uint32(b[3]), b[4:]
		case 0x03:
			p.ContentType = str()
		case 0x08:
			p.Response = str()
		case 0x09:
			p.Correlation = []byte(str())
		case 0x26:
			k := str()
			p.User = append(p.User, [2]string{k, str()})
		case 0x0B:
			for b[0]&0x80 != 0 {
				b = b[1:]
			}
			b = b[1:]
		default:
			t.Fatalf("unexpected property %#x", id)
		}
	}
	return p
}

// TestMQTT5PropertiesAcrossNodes: an MQTT 5 PUBLISH's properties reach an
// MQTT 5 subscriber on another node as published.
func TestMQTT5PropertiesAcrossNodes(t *testing.T) {
	nodes, _ := startNodes(t, 2)
	a, b := nodes[0], nodes[1]
	sub := dialV5(t, b.brk.Addr(), "sub5")
	sub.send(t, 0x82, append([]byte{0, 1, 0}, append(str5("p/+"), 1)...)) // SUBSCRIBE id 1, no properties, QoS 1
	if typ, _ := readPacket(t, sub.r); typ != 0x90 {
		t.Fatalf("got packet %#x, want SUBACK", typ)
	}
	settle(t, a, b)

	want := props5{Format: 1, Expiry: 3600, ContentType: "application/json", Response: "p/reply",
		Correlation: []byte{0, 1, 0xFF}, User: [][2]string{{"k", "v1"}, {"k", "v2"}, {"trace", "a b\nc"}}}
	pub := dialV5(t, a.brk.Addr(), "pub5")
	pp := want.encode()
	body := append(str5("p/t"), 0, 7)  // topic, packet id 7 (QoS 1)
	body = append(body, byte(len(pp))) // properties length (< 128)
	body = append(append(body, pp...), "payload"...)
	pub.send(t, 0x32, body) // PUBLISH QoS 1
	if typ, _ := readPacket(t, pub.r); typ != 0x40 {
		t.Fatalf("publisher got packet %#x, want PUBACK", typ)
	}

	typ, got := readPacket(t, sub.r)
	if typ&0xF0 != 0x30 {
		t.Fatalf("subscriber got packet %#x, want PUBLISH", typ)
	}
	n := int(got[0])<<8 | int(got[1])
	if topic := string(got[2 : 2+n]); topic != "p/t" {
		t.Fatalf("topic %q, want p/t", topic)
	}
	rest := got[2+n:]
	if typ&0x06 != 0 {
		rest = rest[2:] // packet identifier
	}
	plen := int(rest[0]) // < 128 here
	props := decodeProps5(t, rest[1:1+plen])
	if payload := rest[1+plen:]; !bytes.Equal(payload, []byte("payload")) {
		t.Errorf("payload %q, want payload", payload)
	}
	if !reflect.DeepEqual(props, want) {
		t.Errorf("properties on node 2:\n got %+v\nwant %+v", props, want)
	}
}

// TestMQTT5RetainAsPublishedAcrossNodes: with the shared retained bucket,
// a retained message published on one node reaches a live MQTT 5
// subscriber on another node with its retain flag when the subscription
// has Retain As Published, and without it otherwise, as on one node
// (mochi patch 19); the delivery does not store it a second time: the
// node holds the one retained message the bucket gave it.
func TestMQTT5RetainAsPublishedAcrossNodes(t *testing.T) {
	ns := natstest.Start(t)
	a := startNode(t, ns.URL(), "n1", broker.Config{}, sharedRetained(t, ns.URLs()))
	b := startNode(t, ns.URL(), "n2", broker.Config{}, sharedRetained(t, ns.URLs()))
	subs := []struct {
		id         string
		options    byte // SUBSCRIBE options: QoS 1, and Retain As Published (0x08) or not
		wantRetain bool
	}{
		{"rap", 0x09, true},
		{"plain", 0x01, false},
	}
	conns := make([]*v5Conn, len(subs))
	for i, s := range subs {
		conns[i] = dialV5(t, b.brk.Addr(), s.id)
		conns[i].send(t, 0x82, append([]byte{0, 1, 0}, append(str5("rap/+"), s.options)...))
		if typ, _ := readPacket(t, conns[i].r); typ != 0x90 {
			t.Fatalf("%s got packet %#x, want SUBACK", s.id, typ)
		}
	}
	settle(t, a, b)
	brokertest.PublishRetained(t, brokertest.Connect(t, a.url, "pub-rap"), "rap/t", 1, []byte("kept"))
	for i, s := range subs {
		typ, body := readPacket(t, conns[i].r)
		if typ&0xF0 != 0x30 {
			t.Fatalf("%s got packet %#x, want PUBLISH", s.id, typ)
		}
		if got := typ&0x01 != 0; got != s.wantRetain {
			t.Errorf("%s: retain flag %t, want %t (PUBLISH % x)", s.id, got, s.wantRetain, body)
		}
	}
	awaitRetained(t, b, 1)
	if got := lateRetained(t, b, "late-rap", "rap/#", 1); fmt.Sprint(got) != "[kept]" {
		t.Errorf("node 2 retained %q, want [kept]", got)
	}
}
