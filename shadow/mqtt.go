package shadow

import (
	"time"
)

// source tells how a request arrived: over MQTT the engine publishes the
// rejection on the rejected topic; over HTTP the caller returns it.
type source int

const (
	fromMQTT source = iota
	fromAPI
)

// HandleRequest is the MQTT entry point: wire it to the broker's in-process
// subscription for each of RequestFilters. clientID is the publisher; topic
// is a request topic of either tree (see ParseRequestTopic). It answers on
// the matching accepted or rejected topic and never returns an error: every
// failure becomes a rejected message (or, for a topic that is not a
// request, is ignored).
//
// Replies about a shadow go to both trees (see Tree): the one the request
// came on, and the other one if it has subscribers. A request that names
// no shadow the engine can serve (an invalid device ID or shadow name, an
// unknown operation on the $aws tree) is answered on its own topic's
// /rejected only.
func (e *Engine) HandleRequest(clientID, topic string, payload []byte) {
	a, ok, err := ParseRequestTopic(topic)
	if !ok {
		return
	}
	if err != nil {
		// The topic is a valid MQTT topic, so its rejected topic is too: tell
		// the client why, and store nothing. The clientToken is echoed when
		// it can be read, as the AWS SDKs match replies by it.
		re := AsRequestError(err, "")
		if len(payload) <= e.cfg.MaxPayload {
			if tok, terr := parseTokenOnly(payload); terr == nil {
				re.ClientToken = tok
			}
		}
		e.publish(topic+"/rejected", re.Payload(e.cfg.Now()))
		op := a.Op
		if !op.valid() {
			op = opUnknown
		}
		e.observe(op, re.Code, 0)
		return
	}
	start := time.Now()
	r := Key{a.Device, a.Name}
	var rerr *RequestError
	switch a.Op {
	case OpUpdate:
		_, rerr = e.update(e.ctx, r, payload, fromMQTT)
	case OpGet:
		_, rerr = e.get(e.ctx, r, payload, fromMQTT)
	case OpDelete:
		_, rerr = e.del(e.ctx, r, payload, fromMQTT)
	}
	code := 200
	if rerr != nil {
		code = rerr.Code
		e.emit(r, string(a.Op)+"/rejected", rerr.Payload(e.cfg.Now()))
	}
	e.observe(a.Op, code, time.Since(start))
}

func (e *Engine) observe(op Op, code int, d time.Duration) {
	if code == 200 {
		e.stats.accepted.Add(1)
	} else {
		e.stats.rejected.Add(1)
	}
	if e.cfg.Observe != nil {
		e.cfg.Observe(op, code, d)
	}
}
