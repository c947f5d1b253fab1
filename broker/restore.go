package broker

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Restoring the stored state.
//
// Open loads Config.Store and rebuilds mochi's state with mochi's public
// API (Clients, Topics, Inflight) before the listeners accept anything. It
// does not use mochi's storage-hook load path (the Stored* hooks, which
// mochi's own storage hooks feed): that path leaves the counters behind
// Stats (subscriptions, inflight, retained) at zero, restarts every
// session's expiry at the restart, and has no place for the identity that
// owns a session. Here:
//
//   - a restored session is an offline mochi client (stopped, so nothing is
//     written to it) whose connection is a placeholder conn carrying the
//     session's Identity: the main hook then treats it like any offline
//     session (ownership, Evict, ACL checks of messages queued for it);
//   - its expiry runs from its stored disconnect time (the restart, for a
//     session whose client was connected when the broker stopped), set with
//     Client.SetStopTime (mochi patch 14);
//   - its queued messages get their stored packet identifiers back, so a
//     QoS 2 receiver recognises a message sent again; messages never sent
//     get free ones;
//   - sessions and messages that expired while the broker was down are
//     dropped, and deleted from the store by the first commit.

// restoreCounts summarises a restore for the log.
type restoreCounts struct {
	retained, sessions, subscriptions, queued                   int
	expiredRetained, expiredSessions, expiredQueued, renumbered int
}

// restore loads the stored state into mochi and the ledger. It runs in
// Open after the hooks are added and before the listeners serve, so no
// client sees a partial state; an error makes Open fail.
func (s *Server) restore(ctx context.Context) error {
	st, err := s.cfg.Store.Load(ctx)
	if err != nil {
		return fmt.Errorf("broker: load stored state: %w", err)
	}
	now := time.Now()
	l := s.ledger
	var n restoreCounts
	var owners []*session
	l.mu.Lock()
	for _, m := range st.Retained {
		if err := validTopic(m.Topic, true); err != nil {
			l.mu.Unlock()
			return fmt.Errorf("broker: stored retained message: %w", err)
		}
		if !m.Expiry.IsZero() && m.Expiry.Before(now) {
			l.markRetained(m.Topic)
			n.expiredRetained++
			continue
		}
		m.Retain = true
		s.mq.Topics.RetainMessage(packetOf(m))
		l.retained[m.Topic] = m
		l.retainedBytes += int64(len(m.Payload))
		n.retained++
	}
	atomic.StoreInt64(&s.mq.Info.Retained, int64(s.mq.Topics.Retained.Len()))
	for _, ss := range st.Sessions {
		sess, err := s.restoreSession(ss, now, &n)
		if err != nil {
			l.mu.Unlock()
			return err
		}
		if sess != nil {
			owners = append(owners, sess)
		}
	}
	dirty := !l.dirty.empty()
	l.mu.Unlock()
	if s.cfg.Auth != nil {
		// The main hook authorises deliveries by the session's identity.
		s.hook.mu.Lock()
		for _, sess := range owners {
			s.hook.sessions[sess.cl.ID] = sess
		}
		s.hook.mu.Unlock()
	}
	if dirty {
		l.wake()
	}
	s.log.Info("broker state restored", "retained", n.retained, "sessions", n.sessions,
		"subscriptions", n.subscriptions, "queued", n.queued, "expired_sessions", n.expiredSessions,
		"expired_retained", n.expiredRetained, "expired_queued", n.expiredQueued, "renumbered", n.renumbered)
	return nil
}

// restoreSession rebuilds one stored session as an offline mochi client
// and its ledger entry, and returns the main hook's record of it; nil if
// the session has expired. s.ledger.mu is held.
func (s *Server) restoreSession(ss SessionState, now time.Time, n *restoreCounts) (*session, error) {
	l := s.ledger
	if ss.ClientID == "" || ss.ClientID == mqtt.InlineClientId {
		return nil, fmt.Errorf("broker: stored session with client ID %q", ss.ClientID)
	}
	expiry := s.cfg.SessionExpiry // as mochi's CONNACK caps a session's own expiry
	if ss.ExpirySet && ss.Expiry < expiry {
		expiry = ss.Expiry
	}
	wasConnected := ss.Disconnected.IsZero()
	if wasConnected {
		ss.Disconnected = now
	}
	if ss.Disconnected.Add(expiry).Before(now) {
		l.markSession(ss.ClientID) // deletes it with its parts
		n.expiredSessions++
		return nil, nil
	}
	ss.Identity.ClientID = ss.ClientID

	cl := s.mq.NewClient(nil, "restored", ss.ClientID, false)
	cl.Properties.ProtocolVersion = ss.ProtocolVersion
	cl.Properties.Clean = false
	if ss.ExpirySet {
		cl.Properties.Props.SessionExpiryInterval = uint32(expiry / time.Second)
		cl.Properties.Props.SessionExpiryIntervalFlag = true
	}
	cl.Stop(packets.ErrServerShuttingDown) // offline: nothing is written to it
	cl.SetStopTime(ss.Disconnected.Unix()) // mochi patch 14
	service := s.cfg.Auth != nil && ss.Identity.Device == ""
	cl.Net.Conn = &conn{identity: ss.Identity, service: service} // ended: no done channel

	se := newSessionEntry(ss.Session)
	se.service.Store(service)
	for _, sub := range ss.Subscriptions {
		if err := validTopic(sub.Filter, false); err != nil {
			return nil, fmt.Errorf("broker: stored subscription of %q: %w", ss.ClientID, err)
		}
		psub := packetSubscription(sub)
		if s.mq.Topics.Subscribe(cl.ID, psub) {
			atomic.AddInt64(&s.mq.Info.Subscriptions, 1)
		}
		cl.State.Subscriptions.Add(sub.Filter, psub)
		se.subs[sub.Filter] = sub
		if sub.QoS > 0 {
			l.durableSubs.Add(1)
		}
		n.subscriptions++
	}

	// Messages keep their packet identifiers; duplicates (which a lost
	// write could leave) and never-sent messages get free ones afterwards.
	var later []QueuedMessage
	order := map[uint64]int64{} // position in Seq order; see restoreQueued
	for i, q := range ss.Queued {
		order[q.Seq] = int64(i + 1)
	}
	for _, q := range ss.Queued {
		l.seq = max(l.seq, q.Seq)
		expired := !q.Message.Expiry.IsZero() && q.Message.Expiry.Before(now)
		if expired || q.Message.QoS == 0 || q.Message.Topic == "" {
			l.markRecord(&record{client: ss.ClientID, seq: q.Seq, written: true, gone: true})
			n.expiredQueued++
			continue
		}
		if q.PacketID == 0 || se.bound[q.PacketID] != nil {
			later = append(later, q)
			continue
		}
		s.restoreQueued(cl, se, q, q.PacketID, order[q.Seq])
	}
	for _, q := range later {
		id, err := cl.NextPacketID()
		if err != nil { // 65,535 messages already: over any inflight limit
			l.markRecord(&record{client: ss.ClientID, seq: q.Seq, written: true, gone: true})
			n.expiredQueued++
			continue
		}
		l.markRecord(s.restoreQueued(cl, se, q, uint16(id), order[q.Seq]))
		n.renumbered++
	}
	n.queued += len(se.records)

	s.mq.Clients.Add(cl)
	l.sessions[ss.ClientID] = se
	l.index.Store(ss.ClientID, se)
	l.perIdentity[ss.Identity.Name]++
	if wasConnected {
		l.markSession(ss.ClientID) // its disconnect time is the restart
	}
	n.sessions++
	return &session{cl: cl, id: ss.Identity}, nil
}

// restoreQueued puts q into cl's inflight store under packet ID pid and
// returns its record. s.ledger.mu is held.
//
// mochi resends a session's messages sorted by the low 16 bits of their
// Created time (unix seconds), so messages of the same second would come
// out in map order; Created has no other use here (it is not sent, and
// expiry uses Expiry), so a restored message's Created is its position
// (1, 2, …) in Seq order, and the restored messages are resent in the
// order they were queued. The record keeps the real time.
func (s *Server) restoreQueued(cl *mqtt.Client, se *sessionEntry, q QueuedMessage, pid uint16, position int64) *record {
	pk := packetOf(q.Message)
	pk.PacketID = pid
	pk.Created = position
	if q.Released {
		pk = packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrel, Qos: 1}, PacketID: pid, Created: position}
	}
	if cl.State.Inflight.Set(pk) {
		atomic.AddInt64(&s.mq.Info.Inflight, 1)
	}
	r := &record{client: se.ClientID, seq: q.Seq, msg: q.Message, pid: pid, released: q.Released, written: true}
	se.records[r.seq] = r
	se.bound[pid] = r
	se.bytes.Add(int64(len(r.msg.Payload)))
	s.ledger.queuedBytes.Add(int64(len(r.msg.Payload)))
	return r
}
