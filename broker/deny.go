package broker

import (
	"strings"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Denied operations never end a connection.
//
// A PUBLISH that Config.Auth denies, or one to $SYS (only the broker
// publishes there), is dropped: a QoS 0 one silently (MQTT cannot answer
// it), a QoS 1 or 2 one of an MQTT 5 client with PUBACK or PUBREC 0x87
// "not authorized", and one of an MQTT 3.1.1 client, which cannot be told,
// with the usual PUBACK or PUBREC (PUBREL is answered with PUBCOMP), as
// mosquitto does ([MQTT-3.3.5-2] allows it; mochi would disconnect, and a
// device SDK would reconnect and resend the same PUBLISH forever: mochi
// patches 2 and 3). A denied SUBSCRIBE filter gets SUBACK 0x87 (MQTT 5) or
// 0x80 (MQTT 3.1.1) and the other filters of the packet are granted as
// usual.
//
// Every denial is counted (Stats.PublishesDenied, Stats.
// SubscriptionsDenied) and logged at warning level the first time per
// connection and topic or filter, for up to maxLoggedDenials distinct ones
// per connection; a connection that reaches that bound says so once and
// its later denials are only counted. The record lives on the connection
// and is only touched by the client's own goroutine, which handles its
// PUBLISH and SUBSCRIBE packets.

// maxLoggedDenials bounds how many distinct denied topics and filters are
// remembered (and logged) per connection.
const maxLoggedDenials = 16

// denials records which denials of one connection were logged.
type denials struct {
	logged map[string]struct{} // keyed by operation and topic
	full   bool                // maxLoggedDenials reached, and said so
}

// note reports whether the denial of op on topic is to be logged (the
// first time, while fewer than maxLoggedDenials are remembered), and
// whether the bound has just been reached.
func (d *denials) note(op, topic string) (log, bound bool) {
	key := op + " " + topic
	if _, seen := d.logged[key]; seen || d.full {
		return false, false
	}
	if len(d.logged) == maxLoggedDenials {
		d.full = true
		return false, true
	}
	if d.logged == nil {
		d.logged = make(map[string]struct{})
	}
	d.logged[key] = struct{}{}
	return true, false
}

// logDenied logs the denial of op ("publish" or "subscribe") on topic by
// cl per the rules above.
func (h *hook) logDenied(cl *mqtt.Client, op, topic string) {
	c := connOf(cl)
	if c == nil {
		return
	}
	switch log, bound := c.denials.note(op, topic); {
	case log:
		h.s.log.Warn(op+" denied; not logged again for this client and topic", "client", clip(cl.ID),
			"identity", c.identity.Name, "topic", clip(topic))
	case bound:
		h.s.log.Warn("further denials of this client are counted, not logged", "client", clip(cl.ID),
			"identity", c.identity.Name, "logged", maxLoggedDenials)
	}
}

// publishDenied counts and logs a denied PUBLISH of cl.
func (h *hook) publishDenied(cl *mqtt.Client, topic string) {
	h.publishesDenied.Add(1)
	h.logDenied(cl, "publish", topic)
}

// sysPublish counts and logs pk, a PUBLISH of cl, if it is one to $SYS,
// which mochi refuses before any ACL check (patch 3), and reports whether
// it was. A topic with wildcards is a protocol error, not a denial.
func (h *hook) sysPublish(cl *mqtt.Client, pk *packets.Packet) bool {
	if cl.Net.Inline || !mqtt.IsSysTopic(pk.TopicName) || strings.ContainsAny(pk.TopicName, "+#") {
		return false
	}
	h.publishDenied(cl, pk.TopicName)
	return true
}

// noteDeniedFilters reports, per filter of pk (a SUBSCRIBE of cl), whether
// OnACLCheck will allow it, and remembers the valid filters it will deny
// in c for reportDeniedFilters.
func (h *hook) noteDeniedFilters(cl *mqtt.Client, c *conn, pk packets.Packet) []bool {
	c.deniedFilters = c.deniedFilters[:0]
	allowed := make([]bool, len(pk.Filters))
	for i, sub := range pk.Filters {
		if !mqtt.IsValidFilter(sub.Filter, false) {
			continue
		}
		if allowed[i] = h.filterAllowed(cl, sub.Filter); !allowed[i] {
			c.deniedFilters = append(c.deniedFilters, sub.Filter)
		}
	}
	return allowed
}

// reportDeniedFilters counts and logs the filters noteDeniedFilters found
// denied.
func (h *hook) reportDeniedFilters(cl *mqtt.Client, c *conn) {
	h.subscriptionsDenied.Add(int64(len(c.deniedFilters)))
	for _, f := range c.deniedFilters {
		h.logDenied(cl, "subscribe", f)
	}
	c.deniedFilters = c.deniedFilters[:0]
}

// filterAllowed reports whether OnACLCheck will allow cl the filter.
func (h *hook) filterAllowed(cl *mqtt.Client, filter string) bool {
	if len(filter) > h.s.cfg.MaxTopicLength {
		return false
	}
	_, ok := h.authAllows(cl, shareFilter(filter), false)
	return ok
}

// shareFilter returns the filter a shared subscription filter
// "$share/<group>/<filter>" stands for, which the ACL checks; other filters
// are returned unchanged.
func shareFilter(filter string) string {
	if !mqtt.IsSharedFilter(filter) {
		return filter
	}
	_, rest, _ := strings.Cut(filter, "/")
	if _, inner, ok := strings.Cut(rest, "/"); ok {
		return inner
	}
	return filter // no filter after the group: mochi refuses it as invalid
}
