package broker

import (
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Authorization of PUBLISHes, deliveries and SUBSCRIBE filters.

// OnACLCheck runs Config.Auth's Allow for the client's identity.
func (h *hook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	if cl.Net.Inline {
		return true
	}
	if c := connOf(cl); write && c != nil && c.rateRefused {
		return false // over the message rate: not a denial (see ratelimit.go)
	}
	if len(topic) > h.s.cfg.MaxTopicLength {
		if write {
			h.publishDenied(cl, topic)
		}
		return false
	}
	if !write && (!h.deliveryAllowed(cl) || (!subscribing(cl) && !h.s.ledger.queueRoom(cl))) {
		return false
	}
	if !write {
		topic = shareFilter(topic) // a $share/<group>/<filter> SUBSCRIBE is checked as <filter>
		_, allowed := h.authAllows(cl, topic, false)
		return allowed
	}
	return h.publishAllowed(cl, topic)
}

// allowEpocher is an Authenticator with AllowEpoch (see Authenticator).
type allowEpocher interface {
	AllowEpoch() uint64
}

// publishAllowed runs Config.Auth's Allow for a PUBLISH of cl to topic,
// and counts and logs a denial. With an Authenticator that has
// AllowEpoch, a connection's last allowed topic is remembered: a device
// publishing its telemetry asks again only when the epoch moved (a
// revocation, a new policy) or its session was replaced or ended, so that
// the common PUBLISH does not look up the session and the credential
// (memory no other message touches).
func (h *hook) publishAllowed(cl *mqtt.Client, topic string) bool {
	c := connOf(cl)
	memo := h.epoch != nil && c != nil
	var epoch uint64
	if memo {
		epoch = h.epoch.AllowEpoch() // before Allow reads what the epoch covers
		if c.allowedTopic != "" && c.allowedTopic == topic && c.allowedEpoch == epoch && c.sess.Load() != nil {
			return true
		}
	}
	_, allowed := h.authAllows(cl, topic, true)
	if !allowed {
		h.publishDenied(cl, topic)
		return false
	}
	if memo {
		c.allowedTopic, c.allowedEpoch = topic, epoch
	}
	return true
}

// authAllows runs Config.Auth's Allow for the identity of cl's session,
// which it returns (nil without Auth, or if cl has none); without Auth
// everything is allowed.
func (h *hook) authAllows(cl *mqtt.Client, topic string, write bool) (*session, bool) {
	auth := h.s.cfg.Auth
	if auth == nil {
		return nil, true
	}
	var sess *session
	if c := connOf(cl); c != nil {
		sess = c.sess.Load() // what h.sessions holds for cl, without its lock
	} else {
		h.mu.RLock()
		sess = h.sessions[cl.ID]
		h.mu.RUnlock()
	}
	return sess, sess != nil && sess.cl == cl && auth.Allow(sess.id, topic, write)
}

// deliveryAllowed enforces Config.MaxInflight for a device client when
// mochi's server-wide limit is the larger ServiceInflight: mochi checks
// ACL read access right before it takes a place in the client's inflight
// store, so a device whose store is full gets no further messages (QoS 0
// ones included: it is far behind). The drops are counted with mochi's
// own in Stats.InflightDropped. The read check mochi makes for the
// filters of a SUBSCRIBE (bracketed by OnSubscribe and OnSubscribed) is
// not a delivery and passes; deliveries racing it in that moment are
// bounded by mochi's limit.
func (h *hook) deliveryAllowed(cl *mqtt.Client) bool {
	max := int(h.s.cfg.MaxInflight)
	if max >= int(h.s.cfg.serverInflight()) {
		return true // mochi enforces it
	}
	c := connOf(cl)
	if c == nil || c.service || c.subscribing.Load() || cl.State.Inflight.Len() < max {
		return true
	}
	atomic.AddInt64(&h.s.mq.Info.InflightDropped, 1)
	h.s.log.Debug("device inflight store full: message dropped", "client", cl.ID, "max", max)
	return false
}

// OnSubscribe marks the start of a SUBSCRIBE's ACL checks for
// deliveryAllowed, notes the filters Config.Auth denies (see deny.go) and
// refuses the filters over the client's subscription cap (see subcap.go).
func (h *hook) OnSubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	c := connOf(cl)
	if c == nil {
		return pk
	}
	c.subscribing.Store(true)
	allowed := h.noteDeniedFilters(cl, c, pk)
	return h.capSubscriptions(cl, c, pk, allowed)
}

// OnSubscribed calls Config.OnSubscribe with the granted filters.
func (h *hook) OnSubscribed(cl *mqtt.Client, pk packets.Packet, reasonCodes []byte) {
	if c := connOf(cl); c != nil {
		c.subscribing.Store(false)
		h.reportRefused(cl, c, pk, reasonCodes)
		h.reportDeniedFilters(cl, c)
	}
	cb := h.s.cfg.OnSubscribe
	if cb == nil || cl.Net.Inline {
		return
	}
	granted := make([]string, 0, len(pk.Filters))
	for i, f := range pk.Filters {
		if i < len(reasonCodes) && reasonCodes[i] < packets.ErrUnspecifiedError.Code {
			granted = append(granted, f.Filter)
		}
	}
	if len(granted) > 0 {
		cb(cl.ID, granted)
	}
}
