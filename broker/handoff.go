package broker

import (
	"cmp"
	"context"
	"slices"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Persistent sessions that move between nodes (cluster mode).
//
// When a client connects to another node, this node's Relay asks it to
// Handoff the client's session: the connection here ends (as Release),
// the session is exported, as the Store would hold it (its subscriptions
// and the QoS 1 and 2 messages of its inflight store: sent and not yet
// acknowledged, or queued while it was offline, with their packet
// identifiers) and dropped here. The Relay hands the export to the
// connecting node, whose Relay.Connecting returns it: that broker adopts
// it as a restored session (see restore.go) just before mochi establishes
// the connection, which then inherits it as after a restart: CONNACK
// session present 1, the subscriptions, and the messages sent again with
// their packet identifiers (a QoS 2 receiver recognises a message sent
// again; a QoS 1 one may get it twice, as QoS 1 allows).

// placeholderReleased is the topic of an exported QoS 2 message whose
// PUBREC was received but whose original message the ledger no longer
// has: only its packet identifier matters (PUBREL is sent again).
const placeholderReleased = "$umbra/released"

// Handoff ends clientID's session on this node because the client
// connected to another node, as Release does, and returns the session,
// for that node to adopt, if it was persistent; nil for a clean session.
// ok reports whether this node had a session of clientID.
func (s *Server) Handoff(ctx context.Context, clientID string) (st *SessionState, ok bool) {
	cl, ok := s.releaseConn(ctx, clientID)
	if !ok {
		return nil, false
	}
	st = s.exportSession(cl)
	s.awaitDrop(ctx, cl)
	return st, true
}

// exportSession returns the persistent session of cl, an ended client,
// as its Store would hold it; nil if cl has no persistent session.
func (s *Server) exportSession(cl *mqtt.Client) *SessionState {
	unlock := s.hook.gates.lock(cl.ID)
	defer unlock()
	if cur, ok := s.mq.Clients.Get(cl.ID); !ok || cur != cl {
		return nil // taken over meanwhile
	}
	l := s.ledger
	l.mu.Lock()
	se := l.sessions[cl.ID]
	if se == nil {
		l.mu.Unlock()
		return nil
	}
	st := &SessionState{Session: se.Session}
	released := map[uint16]Message{}
	for pid, r := range se.bound {
		if r.released {
			released[pid] = r.msg
		}
	}
	l.mu.Unlock()
	st.Disconnected = time.Time{}
	for _, sub := range cl.State.Subscriptions.GetAll() {
		st.Subscriptions = append(st.Subscriptions, subscriptionOf(sub))
	}
	slices.SortFunc(st.Subscriptions, func(a, b Subscription) int { return cmp.Compare(a.Filter, b.Filter) })
	pks := cl.State.Inflight.GetAll(false)
	slices.SortFunc(pks, func(a, b packets.Packet) int {
		return cmp.Or(cmp.Compare(a.Created, b.Created), cmp.Compare(a.PacketID, b.PacketID))
	})
	for _, pk := range pks {
		q := QueuedMessage{Seq: uint64(len(st.Queued) + 1), PacketID: pk.PacketID}
		switch pk.FixedHeader.Type {
		case packets.Publish:
			if pk.FixedHeader.Qos == 0 {
				continue
			}
			q.Message = messageOf(pk)
		case packets.Pubrel:
			q.Released = true
			if q.Message = released[pk.PacketID]; q.Message.Topic == "" {
				q.Message = Message{Topic: placeholderReleased, QoS: 2}
			}
		default:
			continue
		}
		st.Queued = append(st.Queued, q)
	}
	return st
}

// adoptSession makes st, a persistent session another node handed off,
// this node's, as a restored session that the connecting client cl then
// inherits; it is written to the Store by the next commit. A session this
// node holds under the client ID wins (nothing is adopted), as does a
// clean start.
func (s *Server) adoptSession(cl *mqtt.Client, st *SessionState) {
	if st == nil || cl.Properties.Clean || st.ClientID != cl.ID {
		return
	}
	l := s.ledger
	l.mu.Lock()
	if _, held := s.mq.Clients.Get(cl.ID); held || l.sessions[cl.ID] != nil {
		l.mu.Unlock()
		return
	}
	for i := range st.Queued { // sequence numbers are per node
		st.Queued[i].Seq = l.seq + uint64(i) + 1
	}
	var n restoreCounts
	sess, err := s.restoreSession(*st, time.Now(), &n)
	if err != nil || sess == nil {
		l.mu.Unlock()
		s.log.Warn("session handed off by another node not adopted", "client", clip(cl.ID), "error", err)
		return
	}
	se := l.sessions[cl.ID]
	se.fresh = true // replaces whatever an earlier ownership left in the Store
	l.markSession(cl.ID)
	for f := range se.subs {
		l.markSub(cl.ID, f)
	}
	for _, r := range se.records {
		r.written = false
		l.markRecord(r)
	}
	l.mu.Unlock()
	// Unlike a restore, the main hook's record of the client ID's session
	// is left to cl, which authenticated before: the adopted client only
	// waits, offline, for cl to inherit it.
	l.wake()
	s.log.Info("session adopted from another node", "client", clip(cl.ID), "subscriptions", len(st.Subscriptions), "queued", n.queued)
}
