package natsbridge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

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

// hdrSessionObject, in a reply with hdrSession, names the object of the
// handoff bucket that holds the session's JSON, for a session over the
// NATS connection's maximum payload (Config.JetStream set); the reply's
// data is then empty.
const hdrSessionObject = "Umbra-Session-Object"

// Handoff bucket: a JetStream object store for sessions too large for
// one NATS message.
const (
	// DefaultHandoffBucket is the object store of large handed-off
	// sessions.
	DefaultHandoffBucket = "umbra_handoff"
	// handoffObjectTTL bounds how long an object not fetched (its
	// receiver died) stays in the bucket.
	handoffObjectTTL = 10 * time.Minute
	// handoffObjectTimeout bounds the holder's write of one object.
	handoffObjectTimeout = 10 * time.Second
)

// handoffStore is the handoff bucket, opened on first use.
type handoffStore struct {
	mu    sync.Mutex
	store jetstream.ObjectStore
}

// open returns the handoff bucket, creating it if need be.
func (h *handoffStore) open(ctx context.Context, b *Bridge) (jetstream.ObjectStore, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.store != nil {
		return h.store, nil
	}
	store, err := b.cfg.JetStream.CreateOrUpdateObjectStore(ctx, jetstream.ObjectStoreConfig{
		Bucket:      DefaultHandoffBucket,
		Description: "Umbra: persistent sessions moving between nodes, too large for one NATS message",
		TTL:         handoffObjectTTL,
		Replicas:    b.cfg.Replicas,
		Storage:     jetstream.FileStorage,
	})
	if err != nil {
		return nil, err
	}
	h.store = store
	return store, nil
}

// handoffReply is the answer to a takeover request whose reply subject is
// to: the session st, if the released session was persistent, else this
// node's origin. A session whose JSON is over the NATS connection's
// maximum payload goes through the handoff bucket (Config.JetStream set:
// the reply names its object); without JetStream, or if the bucket
// cannot take it, it is carried with its oldest queued messages only
// (Stats.HandoffDropped counts the others).
func (b *Bridge) handoffReply(to string, st *broker.SessionState) *nats.Msg {
	msg := &nats.Msg{Subject: to, Data: []byte(b.origin)}
	if st == nil {
		return msg
	}
	limit := int(b.ctl.MaxPayload()) - 1024 // headers
	data, err := json.Marshal(st)
	if err == nil && len(data) > limit && b.cfg.JetStream != nil {
		name, perr := b.putHandoff(data)
		if perr == nil {
			msg.Data = nil
			msg.Header = nats.Header{hdrSession: []string{"1"}, hdrSessionObject: []string{name}}
			b.handoffsSent.Add(1)
			b.handoffObjects.Add(1)
			return msg
		}
		b.log.Warn("large session not stored for its handoff: its newest queued messages are left out", "client", clip(st.ClientID), "bytes", len(data), "error", perr)
	}
	for err == nil && len(data) > limit && len(st.Queued) > 0 {
		drop := max(1, len(st.Queued)/10)
		st.Queued = st.Queued[:len(st.Queued)-drop]
		b.handoffDropped.Add(int64(drop))
		data, err = json.Marshal(st)
	}
	if err != nil {
		b.log.Warn("session not handed off: cannot encode it", "client", clip(st.ClientID), "error", err)
		return msg
	}
	msg.Data = data
	msg.Header = nats.Header{hdrSession: []string{"1"}}
	b.handoffsSent.Add(1)
	return msg
}

// putHandoff writes data, a session's JSON, to a new object of the
// handoff bucket and returns its name.
func (b *Bridge) putHandoff(data []byte) (string, error) {
	ctx, cancel := context.WithTimeout(b.ctx, handoffObjectTimeout)
	defer cancel()
	store, err := b.handoffs.open(ctx, b)
	if err != nil {
		return "", fmt.Errorf("open %s: %w", DefaultHandoffBucket, err)
	}
	name := nuid.Next()
	if _, err := store.PutBytes(ctx, name, data); err != nil {
		return "", fmt.Errorf("put %s: %w", name, err)
	}
	return name, nil
}

// getHandoff reads and deletes the object name of the handoff bucket.
func (b *Bridge) getHandoff(ctx context.Context, name string) ([]byte, error) {
	if b.cfg.JetStream == nil {
		return nil, errors.New("the session is in the handoff bucket, and this node has no JetStream")
	}
	store, err := b.handoffs.open(ctx, b)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", DefaultHandoffBucket, err)
	}
	data, err := store.GetBytes(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", name, err)
	}
	if err := store.Delete(ctx, name); err != nil {
		b.log.Debug("handed-off session object not deleted: it expires", "object", name, "error", err)
	}
	return data, nil
}

// handedOff returns the session a takeover reply carries, nil if it
// carries none or one that cannot be fetched or decoded (the client then
// starts a fresh session here; Stats.HandoffRefused).
func (b *Bridge) handedOff(ctx context.Context, clientID string, reply *nats.Msg) *broker.SessionState {
	v := reply.Header.Get(hdrSession)
	if v == "" {
		return nil
	}
	data := reply.Data
	if name := reply.Header.Get(hdrSessionObject); name != "" {
		var err error
		if data, err = b.getHandoff(ctx, name); err != nil {
			b.handoffRefused.Add(1)
			b.log.Warn("session handed off by another node not fetched: the client starts a fresh session", "client", clip(clientID), "error", err)
			return nil
		}
	}
	st, err := decodeSession(v, clientID, data)
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
