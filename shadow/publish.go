package shadow

import (
	"encoding/json"
)

// Publisher sends a message to MQTT subscribers. *broker.Server satisfies it.
type Publisher interface {
	Publish(topic string, payload []byte, retain bool, qos byte) error
}

// ClientPublisher is optionally implemented by a Publisher: PublishTo
// delivers a message to the one client clientID, and only if that client
// has a subscription matching topic, at that subscription's QoS. The
// engine sends the catch-up delta (see HandleSubscribe) only this way, so
// a subscriber never causes messages to others; with a Publisher that does
// not implement it, no catch-up deltas are sent. *broker.Server satisfies
// it.
type ClientPublisher interface {
	PublishTo(clientID, topic string, payload []byte, qos byte) error
}

// subscriberChecker is optionally implemented by a Publisher; the engine
// then skips building messages nobody is subscribed to (the documents
// message carries two full documents and is the most expensive one).
type subscriberChecker interface {
	HasSubscribers(topic string) bool
}

func (e *Engine) publish(topic string, payload []byte) {
	if e.pub == nil {
		return
	}
	if err := e.pub.Publish(topic, payload, false, 1); err != nil {
		e.stats.publishErrors.Add(1)
		e.log.Warn("publish failed", "topic", topic, "err", err)
		return
	}
	e.stats.published.Add(1)
}

func (e *Engine) wanted(topic string) bool {
	if e.pub == nil {
		return false
	}
	return e.subs == nil || e.subs.HasSubscribers(topic)
}

// emit publishes a message about shadow r on both trees: on the state tree
// always (as Umbra always has), on the $aws tree only if a client is
// subscribed to its topic there, so a fleet that never subscribes on $aws
// pays one subscription lookup per message and nothing else.
func (e *Engine) emit(r Key, suffix string, payload []byte) {
	if e.pub == nil {
		return
	}
	e.publish(TreeState.Topic(r.Device, r.Name, suffix), payload)
	if t := TreeAWS.Topic(r.Device, r.Name, suffix); e.wanted(t) {
		e.publish(t, payload)
	}
}

// acceptedMessage is published on update/accepted.
type acceptedMessage struct {
	State       json.RawMessage `json:"state"`
	Metadata    json.RawMessage `json:"metadata,omitempty"`
	Version     Version         `json:"version"`
	Timestamp   int64           `json:"timestamp"`
	ClientToken string          `json:"clientToken,omitempty"`
}

// shortAcceptedMessage is published on update/accepted instead of
// acceptedMessage when that would be larger than Config.MaxReply.
type shortAcceptedMessage struct {
	Version      Version `json:"version"`
	Timestamp    int64   `json:"timestamp"`
	ClientToken  string  `json:"clientToken,omitempty"`
	StateOmitted bool    `json:"stateOmitted"`
}

// deltaMessage is published on update/delta.
type deltaMessage struct {
	State       map[string]any `json:"state"`
	Metadata    map[string]any `json:"metadata"`
	Version     Version        `json:"version"`
	Timestamp   int64          `json:"timestamp"`
	ClientToken string         `json:"clientToken,omitempty"`
}

type docSnapshot struct {
	State    State   `json:"state"`
	Metadata State   `json:"metadata"`
	Version  Version `json:"version"`
}

type documentsMessage struct {
	Previous    *docSnapshot `json:"previous"`
	Current     docSnapshot  `json:"current"`
	Timestamp   int64        `json:"timestamp"`
	ClientToken string       `json:"clientToken,omitempty"`
}

// getMessage is published on get/accepted.
type getMessage struct {
	State struct {
		Desired  map[string]any `json:"desired,omitempty"`
		Reported map[string]any `json:"reported,omitempty"`
		Delta    map[string]any `json:"delta,omitempty"`
	} `json:"state"`
	Metadata    State   `json:"metadata"`
	Version     Version `json:"version"`
	Timestamp   int64   `json:"timestamp"`
	ClientToken string  `json:"clientToken,omitempty"`
}

type deleteMessage struct {
	Version     Version `json:"version"`
	Timestamp   int64   `json:"timestamp"`
	ClientToken string  `json:"clientToken,omitempty"`
}

func (e *Engine) deltaPayload(d, desiredMeta map[string]any, v Version, ts int64, tok string) []byte {
	if d == nil {
		d = map[string]any{}
	}
	b, _ := json.Marshal(deltaMessage{State: d, Metadata: project(d, desiredMeta), Version: v, Timestamp: ts, ClientToken: tok})
	return b
}

func (e *Engine) acceptedPayload(req updateRequest, v Version, ts int64) []byte {
	var state, meta []byte
	if req.clearState {
		state = []byte("null")
	} else {
		s := make(map[string]any, 2)
		m := make(map[string]any, 2)
		if req.hasDesired {
			s["desired"] = req.desired
			m["desired"] = metaOrLeaf(req.desired, ts)
		}
		if req.hasReported {
			s["reported"] = req.reported
			m["reported"] = metaOrLeaf(req.reported, ts)
		}
		state, _ = json.Marshal(s)
		meta, _ = json.Marshal(m)
	}
	if meta == nil {
		meta, _ = json.Marshal(map[string]any{"timestamp": ts})
	}
	b, _ := json.Marshal(acceptedMessage{State: state, Metadata: meta, Version: v, Timestamp: ts, ClientToken: req.clientToken})
	if len(b) > e.cfg.MaxReply {
		// Too large to be delivered: answer with the short form, so the
		// request still gets exactly one reply.
		b, _ = json.Marshal(shortAcceptedMessage{Version: v, Timestamp: ts, ClientToken: req.clientToken, StateOmitted: true})
	}
	return b
}

// metaOrLeaf gives a request section its metadata; a removed section (nil)
// gets a single timestamp.
func metaOrLeaf(sec map[string]any, ts int64) any {
	if sec == nil {
		return leafMeta(ts)
	}
	return metaFor(sec, ts)
}
