package natsbridge

import (
	"log/slog"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/internal/natstest"
)

// TestPublishedNeverBlocks: with the outbound buffer full (the NATS link
// behind), Published returns at once, drops the message and counts it,
// and tells the broker to serve shared subscriptions itself.
func TestPublishedNeverBlocks(t *testing.T) {
	ns := natstest.Start(t)
	nc := natstest.Connect(t, ns.URLs())
	b := &Bridge{nc: nc, out: make(chan outbound, 1), log: slog.New(slog.DiscardHandler), cfg: Config{OutboundBuffer: 1}}
	b.up.Store(true)
	r := (*relay)(b)
	m := broker.Message{Topic: "t", Payload: []byte("x")}
	if !r.Published(m) {
		t.Error("first Published while connected = false, want true (shared subscriptions through NATS)")
	}
	done := make(chan bool)
	go func() { done <- r.Published(m) }()
	select {
	case shared := <-done:
		if shared {
			t.Error("dropped Published = true, want false: the broker serves shared subscriptions of a dropped message")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Published blocked on a full outbound buffer")
	}
	if got := b.Stats().OutDropped; got != 1 {
		t.Errorf("OutDropped = %d, want 1", got)
	}
}

// TestCodecRoundTrip: a message keeps its QoS, retain flag and MQTT 5
// properties across NATS.
func TestCodecRoundTrip(t *testing.T) {
	b := &Bridge{origin: "n1/abcd", msgPfx: "umbra.m"}
	m := broker.Message{Topic: "a.b/c d//é", Payload: []byte("p"), QoS: 1, Retain: true,
		Properties: broker.MessageProperties{PayloadFormat: 1, PayloadFormatSet: true, ContentType: "text/plain\r\nX: y",
			ResponseTopic: "reply/to", CorrelationData: []byte{0, 1, 2}, MessageExpiry: 30, MessageExpirySet: true,
			User: []broker.UserProperty{{Key: "k\n", Value: "v=1"}, {Key: "k\n", Value: "v=2"}}}}
	msg, err := b.encode(m, true, 42)
	if err != nil {
		t.Fatal(err)
	}
	for k, vs := range msg.Header {
		for _, v := range vs {
			if strings.ContainsAny(v, "\r\n") {
				t.Errorf("header %s = %q: a NATS header value cannot hold CR or LF", k, v)
			}
		}
	}
	got, h, err := b.decode(msg)
	if err != nil {
		t.Fatal(err)
	}
	if h.origin != "n1/abcd" || h.seq != 42 || !h.shared {
		t.Errorf("header: %+v, want origin n1/abcd, seq 42, shared", h)
	}
	if !reflect.DeepEqual(got, m) {
		t.Errorf("decode(encode(m)) = %+v, want %+v", got, m)
	}
}

// TestDecodeRefuses: what other software (or another version) publishes
// under the prefix is refused with a reason.
func TestDecodeRefuses(t *testing.T) {
	b := &Bridge{origin: "n1/abcd", msgPfx: "umbra.m"}
	good, err := b.encode(broker.Message{Topic: "t", Payload: []byte("p")}, true, 1)
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string]func(*nats.Msg){
		"no header":     func(m *nats.Msg) { m.Header = nil },
		"version 2":     func(m *nats.Msg) { m.Header.Set(hdrMsg, "2 n1/abcd 1 0 0 1") },
		"bad sequence":  func(m *nats.Msg) { m.Header.Set(hdrMsg, "1 n1/abcd x 0 0 1") },
		"qos 3":         func(m *nats.Msg) { m.Header.Set(hdrMsg, "1 n1/abcd 1 3 0 1") },
		"bad flag":      func(m *nats.Msg) { m.Header.Set(hdrMsg, "1 n1/abcd 1 0 2 1") },
		"bad subject":   func(m *nats.Msg) { m.Subject = "umbra.m.%zz" },
		"bad base64":    func(m *nats.Msg) { m.Header.Set(hdrProps, "!!") },
		"bad json":      func(m *nats.Msg) { m.Header.Set(hdrProps, "e30x") },
		"short header":  func(m *nats.Msg) { m.Header.Set(hdrMsg, "1 n1/abcd 1") },
		"other subject": func(m *nats.Msg) { m.Subject = "other.t" },
	}
	for name, spoil := range cases {
		t.Run(name, func(t *testing.T) {
			msg := &nats.Msg{Subject: good.Subject, Data: good.Data, Header: nats.Header{}}
			for k, v := range good.Header {
				msg.Header[k] = append([]string(nil), v...)
			}
			spoil(msg)
			if m, _, err := b.decode(msg); err == nil {
				t.Errorf("decode accepted %+v", m)
			}
		})
	}
}
