package broker_test

// A hand-written minimal MQTT client for the tests that paho cannot write:
// MQTT 5, malformed or oversized packets, and connections that cost the
// client side nothing (BenchmarkIdleConnections).

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"
)

// MQTT control packet types (high nibble of the first byte).
const (
	typeConnect   = 1
	typeConnack   = 2
	typePublish   = 3
	typePuback    = 4
	typeSubscribe = 8
	typeSuback    = 9
	typeDisconn   = 14
)

const (
	v311 byte = 4
	v5   byte = 5
)

// rawConn is a raw MQTT connection.
type rawConn struct {
	tb testing.TB
	c  net.Conn
	r  *bufio.Reader
}

// dialRaw opens a TCP connection to addr, closed in tb.Cleanup.
func dialRaw(tb testing.TB, addr net.Addr) *rawConn {
	tb.Helper()
	c, err := net.DialTimeout("tcp", addr.String(), 5*time.Second)
	if err != nil {
		tb.Fatalf("dial %s: %v", addr, err)
	}
	tb.Cleanup(func() { c.Close() })
	return &rawConn{tb: tb, c: c, r: bufio.NewReader(c)}
}

// packet is one decoded MQTT packet.
type packet struct {
	typ   byte // high nibble of the first byte
	flags byte // low nibble
	body  []byte
}

func (p packet) String() string {
	return fmt.Sprintf("{type %d flags %#x body % x}", p.typ, p.flags, p.body)
}

// write sends b, failing the test on error.
func (rc *rawConn) write(b []byte) {
	rc.tb.Helper()
	_ = rc.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := rc.c.Write(b); err != nil {
		rc.tb.Fatalf("write: %v", err)
	}
}

// read reads the next packet, waiting at most 5s.
func (rc *rawConn) read() (packet, error) {
	_ = rc.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	return readPacket(rc.r)
}

// expect reads the next packet and fails the test unless it has type typ.
func (rc *rawConn) expect(typ byte) packet {
	rc.tb.Helper()
	p, err := rc.read()
	if err != nil {
		rc.tb.Fatalf("read packet type %d: %v", typ, err)
	}
	if p.typ != typ {
		rc.tb.Fatalf("got packet %v, want type %d", p, typ)
	}
	return p
}

// expectClosed fails the test unless the broker closes the connection
// (possibly after sending DISCONNECT) within 5s.
func (rc *rawConn) expectClosed() {
	rc.tb.Helper()
	for {
		p, err := rc.read()
		var ne net.Error
		switch {
		case errors.As(err, &ne) && ne.Timeout():
			rc.tb.Fatalf("connection still open after 5s")
		case err != nil:
			return // EOF or reset: closed
		case p.typ == typeDisconn:
			continue
		default:
			rc.tb.Fatalf("got packet %v, want connection closed", p)
		}
	}
}

// expectClosedAfterData fails the test unless the broker closes the
// connection within 5s; it skips whatever the broker sent before.
func (rc *rawConn) expectClosedAfterData() {
	rc.tb.Helper()
	_ = rc.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := io.Copy(io.Discard, rc.r)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		rc.tb.Fatalf("connection still open after 5s")
	}
}

// connect sends CONNECT and returns the CONNACK return/reason code.
func (rc *rawConn) connect(version byte, clientID string, clean bool) byte {
	rc.tb.Helper()
	rc.write(connectPacket(version, clientID, clean, 30))
	ack := rc.expect(typeConnack)
	if len(ack.body) < 2 {
		rc.tb.Fatalf("short CONNACK %v", ack)
	}
	return ack.body[1]
}

func readPacket(r *bufio.Reader) (packet, error) {
	b, err := r.ReadByte()
	if err != nil {
		return packet{}, err
	}
	n, err := binary.ReadUvarint(r) // MQTT's remaining length is a base-128 varint
	if err != nil {
		return packet{}, err
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return packet{}, err
	}
	return packet{typ: b >> 4, flags: b & 0x0f, body: body}, nil
}

// frame prefixes body with the fixed header.
func frame(first byte, body []byte) []byte {
	out := []byte{first}
	out = binary.AppendUvarint(out, uint64(len(body)))
	return append(out, body...)
}

func appendString(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

// connectPacket encodes CONNECT for MQTT 3.1.1 (version 4) or 5.
func connectPacket(version byte, clientID string, clean bool, keepalive uint16) []byte {
	var flags byte
	if clean {
		flags |= 0x02
	}
	body := appendString(nil, "MQTT")
	body = append(body, version, flags)
	body = binary.BigEndian.AppendUint16(body, keepalive)
	if version == v5 {
		body = append(body, 0) // no properties
	}
	body = appendString(body, clientID)
	return frame(typeConnect<<4, body)
}

// subscribePacket encodes SUBSCRIBE for one filter.
func subscribePacket(version byte, id uint16, filter string, qos byte) []byte {
	body := binary.BigEndian.AppendUint16(nil, id)
	if version == v5 {
		body = append(body, 0)
	}
	body = appendString(body, filter)
	body = append(body, qos)
	return frame(typeSubscribe<<4|0x02, body)
}

// publishPacket encodes PUBLISH; id is used only for qos > 0.
func publishPacket(version byte, topic string, qos byte, id uint16, payload []byte) []byte {
	body := appendString(nil, topic)
	if qos > 0 {
		body = binary.BigEndian.AppendUint16(body, id)
	}
	if version == v5 {
		body = append(body, 0)
	}
	body = append(body, payload...)
	return frame(typePublish<<4|qos<<1, body)
}

// parsePublish decodes a PUBLISH body.
func parsePublish(version byte, p packet) (topic string, id uint16, payload []byte) {
	n := int(binary.BigEndian.Uint16(p.body))
	topic = string(p.body[2 : 2+n])
	rest := p.body[2+n:]
	if qos := (p.flags >> 1) & 3; qos > 0 {
		id = binary.BigEndian.Uint16(rest)
		rest = rest[2:]
	}
	if version == v5 {
		plen, k := binary.Uvarint(rest)
		rest = rest[k+int(plen):]
	}
	return topic, id, bytes.Clone(rest)
}

// pubackPacket encodes PUBACK.
func pubackPacket(id uint16) []byte {
	return frame(typePuback<<4, binary.BigEndian.AppendUint16(nil, id))
}

// fullConnectPacket encodes a clean-session CONNECT with an optional QoS 0
// will (payload "gone"), user name and password.
func fullConnectPacket(version byte, clientID, willTopic, username, password string) []byte {
	flags := byte(0x02) // clean session
	if willTopic != "" {
		flags |= 0x04
	}
	if username != "" {
		flags |= 0x80
	}
	if password != "" {
		flags |= 0x40
	}
	body := appendString(nil, "MQTT")
	body = append(body, version, flags, 0, 30)
	if version == v5 {
		body = append(body, 0)
	}
	body = appendString(body, clientID)
	if willTopic != "" {
		if version == v5 {
			body = append(body, 0) // will properties
		}
		body = appendString(body, willTopic)
		body = appendString(body, "gone")
	}
	if username != "" {
		body = appendString(body, username)
	}
	if password != "" {
		body = appendString(body, password)
	}
	return frame(typeConnect<<4, body)
}
