package broker

import (
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Message rate.
//
// Each connection has a token bucket: it holds up to Config.MaxMessageBurst
// tokens (ServiceMessageBurst for service clients), starts full and gains
// Config.MaxMessageRate (ServiceMessageRate) tokens a second. Every PUBLISH
// the client sends takes one; a PUBLISH that finds the bucket empty is
// refused:
//
//   - QoS 0: dropped;
//   - MQTT 5, QoS 1 or 2: PUBACK or PUBREC 0x96 "message rate too high"
//     (the client may send it again later);
//   - MQTT 3.1.1, QoS 1 or 2: acknowledged as usual and dropped. 3.1.1 has
//     no negative acknowledgement; the alternative, a disconnect, makes a
//     device reconnect (a TLS handshake, its subscriptions restored) and
//     resend the same message at once, which costs the broker more than
//     the message and goes on for as long as the device sends too fast.
//
// A refused message is not delivered, not retained and not queued, and is
// counted in Stats.RateLimited. The first refusal of an episode is logged
// at warning level; the episode ends when the client has sent slowly
// enough for its bucket to fill up again, so a client that stays just
// above its rate logs one line, not one per message.
//
// Requests to in-process services (Config.RequestFilters: Umbra wires the
// shadow engine's and the AWS IoT Jobs API's) take a token when there is
// one but are never refused: each service limits them itself with an
// answer the client can read (the shadow engine's per-device request rate
// answers 429 on …/rejected, the Jobs API RequestThrottled), so a request
// never meets two limits with different answers.

// bucket is a connection's token bucket; only the client's goroutine uses
// it (mochi calls OnPacketRead there).
type bucket struct {
	tokens  float64
	last    time.Time // of the last refill; zero before the first PUBLISH
	limited bool      // in an episode: a message was refused since the bucket was last full
}

// take refills the bucket for the time since the last call and takes a
// token if there is one. It ends an episode when the bucket is full again.
func (b *bucket) take(now time.Time, rate float64, burst int) bool {
	if b.last.IsZero() {
		b.tokens = float64(burst)
	} else {
		b.tokens = min(float64(burst), b.tokens+now.Sub(b.last).Seconds()*rate)
	}
	b.last = now
	if b.tokens >= float64(burst) {
		b.limited = false
	}
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// messageRate returns the rate and burst of c's client; a negative rate
// means no limit.
func (h *hook) messageRate(c *conn) (float64, int) {
	if c.service {
		return h.s.cfg.ServiceMessageRate, h.s.cfg.ServiceMessageBurst
	}
	return h.s.cfg.MaxMessageRate, h.s.cfg.MaxMessageBurst
}

// overRate reports whether pk, a PUBLISH of cl read just now, is over
// cl's message rate and is to be refused, and counts and logs it. It runs
// in OnPacketRead, on the client's goroutine (see refusal below).
func (h *hook) overRate(cl *mqtt.Client, c *conn, pk *packets.Packet) bool {
	rate, burst := h.messageRate(c)
	if rate < 0 || c.rate.take(time.Now(), rate, burst) || h.isRequest(pk.TopicName) {
		return false
	}
	h.rateLimited.Add(1)
	if !c.rate.limited {
		c.rate.limited = true
		h.s.log.Warn("message rate exceeded: messages are refused until the client slows down (MQTT 5: 0x96 message rate too high; MQTT 3.1.1: acknowledged and dropped); not logged again until it does",
			"client", clip(cl.ID), "identity", c.identity.Name, "rate", rate, "burst", burst, "topic", clip(pk.TopicName))
	}
	return true
}

// How a PUBLISH over the rate is refused. An OnPublish hook could refuse
// it, but each OnPublish hook costs every PUBLISH two copies of the packet
// and deeper frames, which regrow the reader goroutine's stack after each
// garbage collection: measurable in BenchmarkTelemetryFanIn (the ledger's
// OnPublish, with a Store, pays that already). So
// OnPacketRead marks the connection (conn.rateRefused) for the PUBLISH it
// has just read, OnACLCheck, which mochi calls next for that PUBLISH on
// the same goroutine, refuses it without counting a denial, and mochi
// refuses it as it refuses a denied one (dropped; QoS 1 and 2 of MQTT 3.1.1
// acknowledged, patch 2); fixAck turns the MQTT 5 reason code of that
// refusal, 0x87, into 0x96. The mark is cleared when the next packet is
// read.
