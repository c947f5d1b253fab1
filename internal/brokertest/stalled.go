package brokertest

import (
	"bufio"
	"encoding/binary"
	"io"
	"net"
	"syscall"
	"testing"
	"time"
)

// StalledOptions configure DialStalled.
type StalledOptions struct {
	ClientID string
	Username string // "" sends none
	Password string // "" sends none
	// Filter is subscribed to with QoS before the client stops reading;
	// "" subscribes to nothing.
	Filter string
	QoS    byte
	// Keepalive is the CONNECT keepalive in seconds; 0 turns it off, so the
	// broker never times the client out.
	Keepalive uint16
}

// Stalled is a raw MQTT 3.1.1 client that stops reading its socket: the
// slow consumer of issue 10. It connects with a receive buffer as small as
// the kernel allows, subscribes, and then never reads again. It can still
// publish.
type Stalled struct {
	tb   testing.TB
	conn net.Conn
	id   uint16 // last packet ID used
}

// DialStalled connects a Stalled client to addr (host:port) and waits for
// CONNACK (which must accept it) and SUBACK (which must grant the filter).
// The connection is closed in tb.Cleanup.
func DialStalled(tb testing.TB, addr string, o StalledOptions) *Stalled {
	tb.Helper()
	d := net.Dialer{Timeout: Timeout, Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		if err := rc.Control(func(fd uintptr) {
			serr = smallReceiveBuffer(fd)
		}); err != nil {
			return err
		}
		return serr
	}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		tb.Fatalf("brokertest: dial %s: %v", addr, err)
	}
	tb.Cleanup(func() { c.Close() })
	s := &Stalled{tb: tb, conn: c}
	r := bufio.NewReader(c)
	s.write(connectPacket(o))
	if typ, body := s.read(r); typ != 2 || len(body) != 2 || body[1] != 0 {
		tb.Fatalf("brokertest: %s: got packet type %d % x, want CONNACK accepted", o.ClientID, typ, body)
	}
	if o.Filter == "" {
		return s
	}
	s.id++
	body := binary.BigEndian.AppendUint16(nil, s.id)
	body = appendString(body, o.Filter)
	s.write(frame(8<<4|2, append(body, o.QoS)))
	if typ, body := s.read(r); typ != 9 || len(body) != 3 || body[2] >= 0x80 {
		tb.Fatalf("brokertest: %s: got packet type %d % x, want SUBACK granting %s", o.ClientID, typ, body, o.Filter)
	}
	return s
}

// Publish sends a PUBLISH (QoS 0 or 1; a QoS 1 PUBACK is never read),
// waiting at most Timeout for the socket to take it.
func (s *Stalled) Publish(topic string, qos byte, payload []byte) error {
	body := appendString(nil, topic)
	if qos > 0 {
		s.id++
		body = binary.BigEndian.AppendUint16(body, s.id)
	}
	_ = s.conn.SetWriteDeadline(time.Now().Add(Timeout))
	_, err := s.conn.Write(frame(3<<4|qos<<1, append(body, payload...)))
	return err
}

func (s *Stalled) write(b []byte) {
	s.tb.Helper()
	_ = s.conn.SetWriteDeadline(time.Now().Add(Timeout))
	if _, err := s.conn.Write(b); err != nil {
		s.tb.Fatalf("brokertest: write: %v", err)
	}
}

// read reads one packet, waiting at most Timeout.
func (s *Stalled) read(r *bufio.Reader) (typ byte, body []byte) {
	s.tb.Helper()
	_ = s.conn.SetReadDeadline(time.Now().Add(Timeout))
	first, err := r.ReadByte()
	if err == nil {
		var n uint64
		if n, err = binary.ReadUvarint(r); err == nil { // MQTT's remaining length is a base-128 varint
			body = make([]byte, n)
			_, err = io.ReadFull(r, body)
		}
	}
	if err != nil {
		s.tb.Fatalf("brokertest: read: %v", err)
	}
	return first >> 4, body
}

// connectPacket encodes an MQTT 3.1.1 clean-session CONNECT.
func connectPacket(o StalledOptions) []byte {
	flags := byte(0x02)
	if o.Username != "" {
		flags |= 0x80
	}
	if o.Password != "" {
		flags |= 0x40
	}
	body := appendString(nil, "MQTT")
	body = append(body, 4, flags)
	body = binary.BigEndian.AppendUint16(body, o.Keepalive)
	body = appendString(body, o.ClientID)
	for _, s := range []string{o.Username, o.Password} {
		if s != "" {
			body = appendString(body, s)
		}
	}
	return frame(1<<4, body)
}

// frame prefixes body with the fixed header.
func frame(first byte, body []byte) []byte {
	out := binary.AppendUvarint([]byte{first}, uint64(len(body)))
	return append(out, body...)
}

func appendString(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}
