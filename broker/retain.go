package broker

import (
	"strings"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Requests are never retained.
//
// A retained message is state for later subscribers. A PUBLISH on a
// request topic (Config.RequestFilters: the shadow's state/<id>/update,
// /get and /delete) is a command to an in-process subscriber, and
// replaying it to whoever subscribes later would apply it again. The
// broker therefore drops the retain flag of a PUBLISH (a client's or
// Publish's) and of a will on a request topic: the request is delivered and handled as usual, but never
// stored, and an empty one does not clear anything. It is not refused:
// an MQTT 3.1.1 client could not be told why its request had no effect.

// isRequest reports whether topic matches one of Config.RequestFilters.
func (h *hook) isRequest(topic string) bool {
	for _, f := range h.s.cfg.RequestFilters {
		if matchFilter(f, topic) {
			return true
		}
	}
	return false
}

// dropRequestRetain drops the retain flag of pk, a PUBLISH a client sent,
// on a request topic. OnPacketRead calls it (a hook mochi calls for every
// packet anyway: an OnPublish hook would cost every publish two more
// copies of the packet); Publish checks its own messages.
func (h *hook) dropRequestRetain(cl *mqtt.Client, pk *packets.Packet) {
	if pk.FixedHeader.Retain && h.isRequest(pk.TopicName) {
		pk.FixedHeader.Retain = false
		h.retainIgnored.Add(1)
		h.s.log.Debug("retain flag of a request ignored", "client", cl.ID, "topic", clip(pk.TopicName))
	}
}

// OnWill drops the retain flag of a will on a request topic.
func (h *hook) OnWill(cl *mqtt.Client, will mqtt.Will) (mqtt.Will, error) {
	if will.Retain && h.isRequest(will.TopicName) {
		will.Retain = false
		h.retainIgnored.Add(1)
	}
	return will, nil
}

// matchFilter reports whether topic matches the MQTT filter (both valid).
// As in MQTT, a filter starting with a wildcard does not match a topic
// starting with "$".
func matchFilter(filter, topic string) bool {
	if strings.HasPrefix(topic, "$") && (strings.HasPrefix(filter, "+") || strings.HasPrefix(filter, "#")) {
		return false
	}
	for {
		f, frest, fmore := strings.Cut(filter, "/")
		if f == "#" {
			return true
		}
		t, trest, tmore := strings.Cut(topic, "/")
		if f != "+" && f != t {
			return false
		}
		switch {
		case fmore && tmore:
			filter, topic = frest, trest
		case !fmore && !tmore:
			return true
		case fmore:
			return frest == "#" // "a/#" matches "a"
		default:
			return false
		}
	}
}
