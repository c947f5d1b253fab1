package natsbridge

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go"

	"github.com/umbra-iot/umbra/broker"
)

// The headers of a message on NATS (see the package documentation).
const (
	// hdrMsg is "<version> <origin> <seq> <qos> <retain 0|1> <shared 0|1>".
	hdrMsg = "Umbra-Msg"
	// hdrProps holds the MQTT 5 properties, base64url(JSON), when there
	// are any.
	hdrProps = "Umbra-Props"
	// wireVersion is the version of this format; a node drops messages of
	// another version (Stats.InDropped) and logs it once.
	wireVersion = "1"
)

// relay is the Bridge as the broker's broker.Relay; its methods run on
// the broker's goroutines.
type relay Bridge

var _ broker.Relay = (*relay)(nil)

// Published queues m for NATS, or drops it if the outbound buffer is
// full. While NATS is connected, shared subscriptions are served through
// it (NATS queue groups pick one member across the nodes); otherwise the
// broker serves its own, and the message tells the queue subscriptions to
// skip it when NATS delivers it later from the client's reconnect buffer.
func (r *relay) Published(m broker.Message) bool {
	b := (*Bridge)(r)
	if m.Retain && b.ret != nil && !b.closed.Load() {
		b.queueRetained(m)
	}
	shared := !b.closed.Load() && b.up.Load()
	select {
	case b.out <- outbound{m: m, shared: shared}:
		if b.dropping.Load() {
			b.dropping.Store(false)
		}
		return shared
	default:
		b.outDropped.Add(1)
		if !b.dropping.Swap(true) {
			b.log.Warn("messages to other nodes dropped: the NATS link is behind", "buffer", b.cfg.OutboundBuffer)
		}
		return false // served here
	}
}

// outbound is a message queued for NATS.
type outbound struct {
	m      broker.Message
	shared bool // shared subscriptions get it through NATS, not locally
}

// Interest records that filter gained or lost its local subscribers; the
// interest loop makes the NATS subscriptions.
func (r *relay) Interest(filter string, subscribed bool) {
	(*Bridge)(r).interest.want(filter, subscribed)
}

// Session records that this node gained or lost clientID's session; the
// sessions loop subscribes to or unsubscribes from its takeover subject.
func (r *relay) Session(clientID string, present bool) {
	(*Bridge)(r).sessions.want(clientID, present)
}

// Connecting asks the nodes that hold clientID's session, if others do,
// to release it, and waits for the first answer; NATS answers at once
// when nobody subscribes to the client's takeover subject, and this node
// answers its own request at once (its broker takes a session it holds
// over itself).
func (r *relay) Connecting(ctx context.Context, clientID string) *broker.SessionState {
	b := (*Bridge)(r)
	if b.closed.Load() {
		return nil
	}
	if !b.up.Load() {
		b.log.Warn("client connected while NATS is down: a session it has on another node stays there", "client", clip(clientID))
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, b.cfg.TakeoverTimeout)
	defer cancel()
	reply, err := b.ctl.RequestWithContext(ctx, b.sesPfx+token(clientID), []byte(b.origin))
	switch {
	case err == nil:
		if string(reply.Data) == b.origin {
			return nil // this node's own answer
		}
		b.takeoversSent.Add(1)
		return b.handedOff(ctx, clientID, reply)
	case errors.Is(err, nats.ErrNoResponders):
	default:
		b.takeoverTimeouts.Add(1)
		b.log.Warn("session takeover unanswered: the client's session on another node may remain", "client", clip(clientID), "error", err)
	}
	return nil
}

// outboundLoop publishes the queued messages to NATS in order, numbering
// them.
func (b *Bridge) outboundLoop() {
	for {
		select {
		case <-b.ctx.Done():
			return
		case o := <-b.out:
			b.seq++
			msg, err := b.encode(o.m, o.shared, b.seq)
			if err == nil {
				err = b.nc.PublishMsg(msg)
			}
			if err != nil {
				b.outDropped.Add(1)
				continue
			}
			b.outMessages.Add(1)
		}
	}
}

// props are the MQTT 5 properties a message keeps across nodes.
type props struct {
	Format      *byte       `json:"f,omitempty"`
	ContentType string      `json:"ct,omitempty"`
	Response    string      `json:"rt,omitempty"`
	Correlation []byte      `json:"cd,omitempty"`
	User        [][2]string `json:"u,omitempty"`
	Expiry      *uint32     `json:"e,omitempty"` // seconds, as published
}

// encode makes the NATS message of m, numbered seq.
func (b *Bridge) encode(m broker.Message, shared bool, seq uint64) (*nats.Msg, error) {
	msg := &nats.Msg{Subject: subjectOf(b.msgPfx, m.Topic), Data: m.Payload, Header: make(nats.Header, 2)}
	msg.Header[hdrMsg] = []string{wireVersion + " " + b.origin + " " + strconv.FormatUint(seq, 10) + " " +
		strconv.Itoa(int(m.QoS)) + " " + flag(m.Retain) + " " + flag(shared)}
	p := m.Properties
	if p.PayloadFormatSet || p.ContentType != "" || p.ResponseTopic != "" || len(p.CorrelationData) > 0 ||
		len(p.User) > 0 || p.MessageExpirySet {
		pp := props{ContentType: p.ContentType, Response: p.ResponseTopic, Correlation: p.CorrelationData}
		if p.PayloadFormatSet {
			pp.Format = &p.PayloadFormat
		}
		if p.MessageExpirySet {
			pp.Expiry = &p.MessageExpiry
		}
		for _, u := range p.User {
			pp.User = append(pp.User, [2]string{u.Key, u.Value})
		}
		j, err := json.Marshal(pp)
		if err != nil {
			return nil, fmt.Errorf("encode properties of %s: %w", m.Topic, err)
		}
		msg.Header[hdrProps] = []string{base64.RawURLEncoding.EncodeToString(j)}
	}
	return msg, nil
}

func flag(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

// header is a message's Umbra-Msg header, decoded.
type header struct {
	origin string
	seq    uint64
	qos    byte
	retain bool
	shared bool // shared subscriptions get it from NATS
}

// decode returns the broker message of msg, with its header.
func (b *Bridge) decode(msg *nats.Msg) (broker.Message, header, error) {
	var h header
	f := strings.Fields(msg.Header.Get(hdrMsg))
	if len(f) != 6 || f[0] != wireVersion {
		return broker.Message{}, h, fmt.Errorf("header %s %q: not version %s", hdrMsg, msg.Header.Get(hdrMsg), wireVersion)
	}
	var err error
	h.origin = f[1]
	if h.seq, err = strconv.ParseUint(f[2], 10, 64); err != nil {
		return broker.Message{}, h, fmt.Errorf("header %s: sequence: %w", hdrMsg, err)
	}
	switch f[3] {
	case "0", "1", "2":
		h.qos = f[3][0] - '0'
	default:
		return broker.Message{}, h, fmt.Errorf("header %s: qos %q", hdrMsg, f[3])
	}
	for i, dst := range []*bool{&h.retain, &h.shared} {
		switch v := f[4+i]; v {
		case "0", "1":
			*dst = v == "1"
		default:
			return broker.Message{}, h, fmt.Errorf("header %s: flag %q", hdrMsg, v)
		}
	}
	topic, err := topicOf(b.msgPfx, msg.Subject)
	if err != nil {
		return broker.Message{}, h, err
	}
	m := broker.Message{Topic: topic, Payload: msg.Data, QoS: h.qos, Retain: h.retain}
	if enc := msg.Header.Get(hdrProps); enc != "" {
		j, err := base64.RawURLEncoding.DecodeString(enc)
		if err != nil {
			return broker.Message{}, h, fmt.Errorf("header %s: %w", hdrProps, err)
		}
		var pp props
		if err := json.Unmarshal(j, &pp); err != nil {
			return broker.Message{}, h, fmt.Errorf("header %s: %w", hdrProps, err)
		}
		p := &m.Properties
		p.ContentType, p.ResponseTopic, p.CorrelationData = pp.ContentType, pp.Response, pp.Correlation
		if pp.Format != nil {
			p.PayloadFormat, p.PayloadFormatSet = *pp.Format, true
		}
		if pp.Expiry != nil {
			p.MessageExpiry, p.MessageExpirySet = *pp.Expiry, true
		}
		for _, u := range pp.User {
			p.User = append(p.User, broker.UserProperty{Key: u[0], Value: u[1]})
		}
	}
	return m, h, nil
}

// inboundLoop delivers the messages of ch to local clients: from plain
// subscriptions (kind ""), dropping this node's own messages and the
// copies of one message that overlapping subscriptions received, or from
// queue subscriptions ("share"), to one member of the shared subscription
// the queue serves (this node's own messages included: NATS picked this
// node's member).
func (b *Bridge) inboundLoop(ch chan *nats.Msg, kind string) {
	last := make(map[string]uint64) // origin → last sequence delivered
	badLogged := false
	for {
		var msg *nats.Msg
		select {
		case <-b.ctx.Done():
			return
		case msg = <-ch:
		}
		m, h, err := b.decode(msg)
		if err != nil {
			b.inDropped.Add(1)
			if !badLogged {
				badLogged = true
				b.log.Warn("message from NATS dropped: not from an Umbra node of this version", "subject", msg.Subject, "error", err)
			}
			continue
		}
		share := ""
		if kind == "share" {
			if !h.shared {
				continue // its node served its shared subscriptions while NATS was down
			}
			if share = b.interest.shareOf(msg.Sub); share == "" {
				continue // unsubscribed meanwhile
			}
		} else {
			if h.origin == b.origin {
				continue // delivered here when it was published
			}
			if h.seq <= last[h.origin] {
				b.duplicates.Add(1)
				continue
			}
			if len(last) >= maxOrigins {
				clear(last)
			}
			last[h.origin] = h.seq
		}
		deliver := b.brk.Deliver
		if b.ret != nil {
			// The retained state comes from the shared bucket, in its
			// order; the flag still reaches Retain As Published.
			deliver = b.brk.DeliverLive
		}
		if err := deliver(m, share); err != nil {
			b.inDropped.Add(1)
			continue
		}
		b.inMessages.Add(1)
	}
}

// clip shortens client-controlled strings for logging.
func clip(s string) string {
	const n = 128
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
