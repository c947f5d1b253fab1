package broker

import (
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Subscription caps.
//
// A client's session holds at most Config.MaxSubscriptions filters
// (Config.ServiceSubscriptions for service clients); a persistent session
// keeps them while offline, so the cap bounds offline sessions too. mochi
// has no quota hook, so OnSubscribe decides which new filters of a
// SUBSCRIBE are over the cap, in packet order, and replaces each with
// refusedFilter, which mochi refuses as an invalid filter without
// subscribing; OnSubscribed, which mochi calls with the very reason-code
// slice it then sends in SUBACK, puts the filter back and sets its code to
// "quota exceeded" (0x97) for MQTT 5 (MQTT 3.1.1 has only 0x80, which
// mochi already set). A filter the client already has is replaced, not
// added, and takes no new place; invalid and denied filters take none.

// refusedFilter is a filter mochi refuses as invalid ("#" must be last).
const refusedFilter = "#/quota"

// subscriptionCap returns the subscription cap of c's client, and false
// when it has none.
func (h *hook) subscriptionCap(c *conn) (int, bool) {
	limit := h.s.cfg.MaxSubscriptions
	if c.service {
		limit = h.s.cfg.ServiceSubscriptions
	}
	return limit, limit >= 0
}

// capSubscriptions replaces the filters of pk, a SUBSCRIBE of cl, that
// would take cl over its cap with refusedFilter and remembers them in c.
// allowed tells, per filter, whether it is valid and OnACLCheck will allow
// it.
func (h *hook) capSubscriptions(cl *mqtt.Client, c *conn, pk packets.Packet, allowed []bool) packets.Packet {
	c.refused = c.refused[:0]
	limit, ok := h.subscriptionCap(c)
	if !ok {
		return pk
	}
	n := cl.State.Subscriptions.Len()
	var added map[string]bool // new filters granted a place in this packet
	for i, sub := range pk.Filters {
		if _, had := cl.State.Subscriptions.Get(sub.Filter); had || added[sub.Filter] || !allowed[i] {
			continue
		}
		if n < limit {
			n++
			if added == nil {
				added = make(map[string]bool)
			}
			added[sub.Filter] = true
			continue
		}
		if len(c.refused) == 0 {
			pk.Filters = append(packets.Subscriptions(nil), pk.Filters...) // do not write into mochi's copy
		}
		c.refused = append(c.refused, refusal{index: i, filter: sub.Filter})
		pk.Filters[i].Filter = refusedFilter
	}
	return pk
}

// refusal is a filter of the SUBSCRIBE being handled that was over the
// cap.
type refusal struct {
	index  int
	filter string
}

// reportRefused restores the filters capSubscriptions replaced in pk, sets
// their SUBACK codes (reasonCodes is the slice mochi sends), counts and,
// once per connection, logs them.
func (h *hook) reportRefused(cl *mqtt.Client, c *conn, pk packets.Packet, reasonCodes []byte) {
	if len(c.refused) == 0 {
		return
	}
	for _, r := range c.refused {
		if r.index < len(pk.Filters) {
			pk.Filters[r.index].Filter = r.filter
		}
		if r.index < len(reasonCodes) && cl.Properties.ProtocolVersion == 5 {
			reasonCodes[r.index] = packets.ErrQuotaExceeded.Code
		}
	}
	h.subscriptionsRefused.Add(int64(len(c.refused)))
	if !c.refusedLogged {
		c.refusedLogged = true
		limit, _ := h.subscriptionCap(c)
		h.s.log.Warn("subscriptions refused: the client has reached its cap; not logged again for this connection",
			"client", cl.ID, "identity", c.identity.Name, "max", limit, "refused", len(c.refused), "filter", clip(c.refused[0].filter))
	}
	c.refused = c.refused[:0]
}
