package natsbridge

import (
	"encoding/json"
	"fmt"

	"github.com/nats-io/nats.go"

	"github.com/umbra-iot/umbra/broker"
)

// Persistent sessions move with their client (see the package
// documentation, "Session takeover"): the node that releases a
// persistent session answers the takeover request with the session, as
// broker.Server.Handoff exports it, in a message with the header
// Umbra-Session: 1 and the JSON of the broker.SessionState as its data;
// the connecting node's broker adopts it.

// hdrSession marks a takeover reply that carries a session; its value is
// the format's version.
const hdrSession = "Umbra-Session"

// handoffReply is the answer to a takeover request whose reply subject is
// to: the session st, if the released session was persistent, else this
// node's origin. A session whose JSON is over the NATS connection's
// maximum payload is carried with its oldest queued messages only
// (Stats.HandoffDropped counts the others).
func (b *Bridge) handoffReply(to string, st *broker.SessionState) *nats.Msg {
	msg := &nats.Msg{Subject: to, Data: []byte(b.origin)}
	if st == nil {
		return msg
	}
	limit := int(b.ctl.MaxPayload()) - 1024 // headers
	for {
		data, err := json.Marshal(st)
		if err != nil {
			b.log.Warn("session not handed off: cannot encode it", "client", clip(st.ClientID), "error", err)
			return msg
		}
		if len(data) <= limit || len(st.Queued) == 0 {
			msg.Data = data
			break
		}
		drop := max(1, len(st.Queued)/10)
		st.Queued = st.Queued[:len(st.Queued)-drop]
		b.handoffDropped.Add(int64(drop))
	}
	msg.Header = nats.Header{hdrSession: []string{"1"}}
	b.handoffsSent.Add(1)
	return msg
}

// handedOff returns the session a takeover reply carries, nil if it
// carries none or one that cannot be decoded (the client then starts a
// fresh session here; Stats.HandoffRefused).
func (b *Bridge) handedOff(clientID string, reply *nats.Msg) *broker.SessionState {
	v := reply.Header.Get(hdrSession)
	if v == "" {
		return nil
	}
	st, err := decodeSession(v, clientID, reply.Data)
	if err != nil {
		b.handoffRefused.Add(1)
		b.log.Warn("session handed off by another node refused: the client starts a fresh session", "client", clip(clientID), "error", err)
		return nil
	}
	b.handoffsReceived.Add(1)
	return st
}

// decodeSession decodes a handed-off session of clientID in format
// version v.
func decodeSession(v, clientID string, data []byte) (*broker.SessionState, error) {
	if v != "1" {
		return nil, fmt.Errorf("session format %q, want 1", v)
	}
	var st broker.SessionState
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("decode session: %w", err)
	}
	if st.ClientID != clientID {
		return nil, fmt.Errorf("session of client %q, want %q", clip(st.ClientID), clip(clientID))
	}
	return &st, nil
}
