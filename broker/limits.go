package broker

import (
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// The ledger's limits: retained messages, queued bytes per session and
// persistent sessions per identity. Each logs one line when it is reached
// (again only after it was below), is counted in Stats, and refuses with
// a reason code the client can read.

// admitRetained reports whether a client may retain size bytes on topic:
// clearing (size 0) and replacing a retained message always may; a new
// topic may while the retained messages stay within Config.MaxRetained
// and Config.MaxRetainedBytes. With reserve, an admitted new topic is
// reserved until OnRetainMessage stores it, so concurrent publishers
// cannot overshoot; a will is not reserved (a delayed will may never be
// published), so simultaneous wills may.
func (l *ledger) admitRetained(clientID, topic string, size int, reserve bool) bool {
	cfg := &l.s.cfg
	if size == 0 || (cfg.MaxRetained < 0 && cfg.MaxRetainedBytes < 0) {
		return true
	}
	if _, ok := l.s.mq.Topics.Retained.Get(topic); ok {
		return true // replacing, also the broker's own message
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.retained[topic]; ok {
		return true
	}
	if _, ok := l.reserved[topic]; ok {
		return true
	}
	if !l.retainedOver(size) {
		if reserve {
			l.reserved[topic] = size
			l.reservedBytes += int64(size)
		}
		return true
	}
	l.retainedRefused.Add(1)
	if !l.retainedFull {
		l.retainedFull = true
		l.log.Warn("retained message limit reached: new retained topics are refused until some are cleared (MQTT 5: PUBACK 0x97 quota exceeded; MQTT 3.1.1: delivered, not retained)",
			"client", clientID, "topic", clip(topic), "retained", len(l.retained)+len(l.reserved),
			"bytes", l.retainedBytes+l.reservedBytes, "max", cfg.MaxRetained, "max_bytes", cfg.MaxRetainedBytes)
	}
	return false
}

// retainedOver reports whether a new retained message of size bytes would
// exceed the limits. l.mu is held.
func (l *ledger) retainedOver(size int) bool {
	cfg := &l.s.cfg
	n := len(l.retained) + len(l.reserved)
	b := l.retainedBytes + l.reservedBytes
	return (cfg.MaxRetained >= 0 && n >= cfg.MaxRetained) ||
		(cfg.MaxRetainedBytes >= 0 && b+int64(size) > cfg.MaxRetainedBytes)
}

// unreserve releases topic's reservation. l.mu is held.
func (l *ledger) unreserve(topic string) {
	if n, ok := l.reserved[topic]; ok {
		delete(l.reserved, topic)
		l.reservedBytes -= int64(n)
	}
}

// queueRoom reports whether a message may be delivered to cl: false when
// cl's persistent session holds its queued-bytes limit (Config.
// MaxQueuedBytes, ServiceQueuedBytes) of unacknowledged messages. Like
// the inflight limit, it then refuses QoS 0 messages too: the client is
// far behind. The main hook calls it for every delivery (OnACLCheck), so
// clients without a persistent session cost one map lookup.
func (l *ledger) queueRoom(cl *mqtt.Client) bool {
	v, ok := l.index.Load(cl.ID)
	if !ok || cl.Net.Inline {
		return true
	}
	se := v.(*sessionEntry)
	limit := l.s.cfg.MaxQueuedBytes
	if se.service.Load() {
		limit = l.s.cfg.ServiceQueuedBytes
	}
	if limit < 0 || se.bytes.Load() < limit {
		if se.full.Load() {
			se.full.Store(false)
		}
		return true
	}
	l.queueBytesDropped.Add(1)
	if se.full.CompareAndSwap(false, true) {
		l.mu.Lock()
		name := se.Identity.Name
		l.mu.Unlock()
		l.log.Warn("session's queued bytes limit reached: messages to it are dropped until it acknowledges some",
			"client", cl.ID, "identity", name, "bytes", se.bytes.Load(), "max_bytes", limit)
	}
	return false
}

// admitSession reports whether cl, authenticated as id, may have its
// session: always unless it asks for a persistent session that would be
// a new one of id, which already has Config.MaxSessionsPerIdentity. It
// runs on cl's goroutine, under the main hook's mu (lock order: hook.mu,
// then ledger.mu).
func (l *ledger) admitSession(cl *mqtt.Client, id Identity) bool {
	limit := l.s.cfg.MaxSessionsPerIdentity
	if limit < 0 || l.s.cfg.Auth == nil || !persistent(cl) {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if se := l.sessions[cl.ID]; se != nil && se.Identity.Name == id.Name {
		return true // resumes or replaces its own
	}
	if l.perIdentity[id.Name] < limit {
		return true
	}
	l.sessionsRefused.Add(1)
	if !l.capLogged[id.Name] {
		l.capLogged[id.Name] = true
		l.log.Warn("persistent session limit of an identity reached: new persistent sessions are refused (CONNACK quota exceeded) until one ends",
			"client", cl.ID, "identity", id.Name, "sessions", l.perIdentity[id.Name], "max", limit)
	}
	return false
}

// refuseSession answers the CONNECT that admitSession refused: MQTT 5
// CONNACK 0x97 quota exceeded, MQTT 3.1.1 return code 3 server
// unavailable. Stopping the client keeps mochi from sending its own
// "bad user name or password" CONNACK after it.
func (l *ledger) refuseSession(cl *mqtt.Client) {
	code := packets.ErrQuotaExceeded
	if cl.Properties.ProtocolVersion < 5 {
		code = packets.ErrServerUnavailable
	}
	_ = l.s.mq.SendConnack(cl, code, false, nil)
	cl.Stop(code)
}

// subscribing reports whether cl's SUBSCRIBE is being checked: the read
// checks mochi makes for its filters are not deliveries.
func subscribing(cl *mqtt.Client) bool {
	c := connOf(cl)
	return c != nil && c.subscribing.Load()
}

// OnSubscribe marks the start of a SUBSCRIBE's filter checks (the main
// hook's OnSubscribed ends it), so that queueRoom does not refuse a
// filter of a session at its queued-bytes limit.
func (l *ledger) OnSubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if c := connOf(cl); c != nil {
		c.subscribing.Store(true)
	}
	return pk
}
