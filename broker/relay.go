package broker

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Relay connects a Server to the brokers of other nodes (cluster mode):
// it carries the messages published here to them, and brings theirs back
// with Server.Deliver. broker/natsbridge implements it over NATS. The
// Server calls it from its connection goroutines, concurrently, so every
// method must be safe for concurrent use; none may call Server methods
// other than Deliver and Release, and only Connecting may wait.
type Relay interface {
	// Published is called for each message published to this node's
	// subscribers: a client's PUBLISH that Auth allowed (with its QoS,
	// retain flag and MQTT 5 properties as the broker keeps them), a
	// will, or a Publish. It is not called for $SYS topics or for
	// messages the Relay delivered (Deliver). It runs on the publisher's
	// goroutine before the local delivery and must not block; m.Payload
	// must not be modified but may be kept. It reports whether the Relay
	// serves the message's shared subscriptions: if so, the broker leaves
	// its own out (the Relay delivers to one member across the nodes with
	// Deliver); if not, the broker picks a local member, as without a
	// Relay.
	Published(m Message) (shared bool)
	// Interest is called when a filter gains its first client
	// subscription on this node (subscribed true) or loses its last
	// (false): a client's SUBSCRIBE or UNSUBSCRIBE, a clean session's
	// end, an expired, evicted or released session, or a restored one.
	// A shared subscription's filter is "$SHARE/<group>/<filter>" (the
	// prefix upper-case, whatever the client sent). In-process
	// subscriptions (Subscribe) are not interest: they serve this node's
	// clients. It is called with the broker's topic index locked, so it
	// must return at once and must not call the Server.
	Interest(filter string, subscribed bool)
	// Connecting is called on the client's goroutine for a client that
	// authenticated, before its session is established here: it returns
	// once another node that held the client ID's session has released
	// it (Release or Handoff there), or when ctx, bounded by
	// Config.ConnectTimeout, is done. Meanwhile the client waits for its
	// CONNACK. It returns the persistent session the other node handed
	// off (Handoff), which this node adopts unless the client starts
	// clean; nil if there is none.
	Connecting(ctx context.Context, clientID string) *SessionState
	// Session is called when this node gains a session of clientID
	// (present true: a client connected) and when it loses it (false: a
	// clean session ended, a persistent one expired, or was evicted or
	// released). Calls for one client ID never overlap and come in order.
	Session(clientID string, present bool)
}

// relayOrigin starts the Origin of a message the Relay delivered: no
// client ID contains NUL, so it names no client. What follows it is the
// shared subscription the message is for, "" for plain subscriptions.
const relayOrigin = "\x00relay"

// maxRelayClients bounds the in-process clients Deliver keeps, one per
// shared subscription filter it delivered to.
const maxRelayClients = 1024

// relayBox holds the Relay, so that it can sit in an atomic.Pointer.
type relayBox struct{ r Relay }

// relays are the in-process clients Deliver publishes from: one per
// shared subscription it delivered to, plus the plain one ("").
type relays struct {
	mu    sync.Mutex              // guards m and local
	m     map[string]*mqtt.Client // by shared subscription filter, "" for plain
	local *mqtt.Client            // PublishLocal's
}

// SetRelay connects the Server to r (nil disconnects it). Interest is
// called at once for every filter that has client subscriptions, and
// Session for every session held (connected or restored from the Store);
// set the Relay before clients connect, so that no connection misses
// Connecting. It returns ErrClosed after Close.
func (s *Server) SetRelay(r Relay) error {
	if s.closed.Load() {
		return ErrClosed
	}
	if r == nil {
		s.relay.Store(nil)
		s.mq.Topics.ObserveFilters(nil)
		return nil
	}
	s.relay.Store(&relayBox{r: r})
	s.mq.Topics.ObserveFilters(r.Interest)
	for _, cl := range s.mq.Clients.GetAll() {
		if !cl.Net.Inline {
			r.Session(cl.ID, true)
		}
	}
	return nil
}

// currentRelay returns the Relay, or nil.
func (s *Server) currentRelay() Relay {
	if b := s.relay.Load(); b != nil {
		return b.r
	}
	return nil
}

// relaySelect is OnSelectSubscribers' part for the Relay: it tells the
// Relay of a message published here, and narrows the recipients of a
// message the Relay delivered to those it is for.
func (s *Server) relaySelect(subs *mqtt.Subscribers, pk packets.Packet) {
	if share, ok := strings.CutPrefix(pk.Origin, relayOrigin); ok {
		clear(subs.InlineSubscriptions) // they serve this node's clients only
		if share == "" {
			clear(subs.Shared) // delivered to one member by a Deliver of its own
			return
		}
		clear(subs.Subscriptions)
		for filter := range subs.Shared {
			if shareKey(filter) != share {
				delete(subs.Shared, filter)
			}
		}
		return
	}
	r := s.currentRelay()
	if r == nil || mqtt.IsSysTopic(pk.TopicName) || pk.Origin == localOrigin {
		return
	}
	if r.Published(messageOf(pk)) {
		clear(subs.Shared)
	}
}

// shareKey spells a shared subscription's filter as Relay.Interest
// does: the prefix upper-case.
func shareKey(filter string) string {
	if len(filter) > len(mqtt.SharePrefix) && strings.EqualFold(filter[:len(mqtt.SharePrefix)], mqtt.SharePrefix) {
		return mqtt.SharePrefix + filter[len(mqtt.SharePrefix):]
	}
	return filter
}

// Deliver publishes m, a message another node published (its Relay's
// Published), to this node's clients: with share "", to those whose
// plain subscriptions match m.Topic; with share, a shared subscription
// filter as Relay.Interest names it, to one member of that shared
// subscription only. In-process subscribers (Subscribe) and the Relay do
// not see it. It is delivered as a client's PUBLISH would be, with its
// QoS and MQTT 5 properties (Auth's Allow checked for each recipient,
// queued for offline persistent sessions); m.Retain with share "" also
// makes it the topic's retained message here (an empty payload clears
// it), counted in Stats.Retained and written to Config.Store but never
// refused for MaxRetained: its publisher's node applied the limits.
// Deliver copies nothing: m.Payload must not be modified afterwards.
//
// Deliver returns ErrClosed after Close, and errors wrapping
// ErrInvalidTopic (a malformed topic or a $SYS one), ErrInvalidQoS or
// ErrTooLarge.
func (s *Server) Deliver(m Message, share string) error {
	return s.deliverRelayed(m, share, false)
}

// DeliverLive is Deliver for a message whose retained state reaches this
// node another way (a shared retained store): m.Retain does not make it
// the topic's retained message here, and the retain flag reaches the
// recipients as published, also with share, so that an MQTT 5 subscriber
// with Retain As Published sees it as on the publisher's node (mochi
// patch 19). An empty payload with m.Retain clears nothing.
func (s *Server) DeliverLive(m Message, share string) error {
	return s.deliverRelayed(m, share, true)
}

func (s *Server) deliverRelayed(m Message, share string, live bool) error {
	if s.closed.Load() {
		return ErrClosed
	}
	if err := validTopic(m.Topic, true); err != nil || mqtt.IsSysTopic(m.Topic) {
		return fmt.Errorf("deliver: %q: %w", m.Topic, ErrInvalidTopic)
	}
	if m.QoS > 2 {
		return fmt.Errorf("deliver %s: qos %d: %w", m.Topic, m.QoS, ErrInvalidQoS)
	}
	if uint64(len(m.Payload)) > uint64(s.cfg.MaxPacketSize) {
		return fmt.Errorf("deliver %s: %d-byte payload over %d: %w", m.Topic, len(m.Payload), s.cfg.MaxPacketSize, ErrTooLarge)
	}
	pk := packetOf(m)
	pk.FixedHeader.Retain = m.Retain && (share == "" || live)
	pk.Mods.NotRetained = live
	if pk.FixedHeader.Retain && s.hook.isRequest(m.Topic) {
		pk.FixedHeader.Retain = false // requests are never retained (see retain.go)
	}
	pk.Properties.SubscriptionIdentifier = nil // the recipients' own are added
	pk.Created = 0                             // set when published here
	pk.Expiry = 0
	pk.PacketID = uint16(pk.FixedHeader.Qos) // as mochi's Publish: valid, never used
	if err := s.mq.InjectPacket(s.relayClient(share), pk); err != nil {
		return fmt.Errorf("deliver %s: %w", m.Topic, err)
	}
	return nil
}

// relayClient returns the in-process client Deliver publishes from for
// share, made on first use.
func (s *Server) relayClient(share string) *mqtt.Client {
	s.relays.mu.Lock()
	defer s.relays.mu.Unlock()
	if s.relays.m == nil {
		s.relays.m = make(map[string]*mqtt.Client)
	}
	cl := s.relays.m[share]
	if cl == nil {
		if len(s.relays.m) >= maxRelayClients {
			clear(s.relays.m) // shared filters come and go: keep the cache bounded
		}
		cl = s.mq.NewClient(nil, "relay", relayOrigin+share, true)
		cl.Properties.ProtocolVersion = 5
		s.relays.m[share] = cl
	}
	return cl
}

// Release ends clientID's session on this node because the client
// connected to another node. A connected client gets DISCONNECT with
// reason code 0x8E "session taken over" (MQTT 5; an MQTT 3.1.1 client's
// connection is closed), its will is discarded, and Config.OnDisconnect
// reports ErrTakenOver. The session's subscriptions and queued messages
// are dropped: they do not move with the client. Release waits, up to
// ConnectTimeout or until ctx is done, for the connection to end (a
// subscription handler still running for it finishes first), like Evict.
// It reports whether this node had a session of clientID. After Close it
// returns false.
func (s *Server) Release(ctx context.Context, clientID string) bool {
	cl, ok := s.releaseConn(ctx, clientID)
	if ok {
		s.awaitDrop(ctx, cl)
	}
	return ok
}

// releaseConn ends the connection of clientID's session for Release and
// Handoff, and returns the session's client; false if there is none.
func (s *Server) releaseConn(ctx context.Context, clientID string) (*mqtt.Client, bool) {
	if s.closed.Load() {
		return nil, false
	}
	cl, ok := s.mq.Clients.Get(clientID)
	if !ok || cl.Net.Inline {
		return nil, false
	}
	if c := connOf(cl); c != nil && !c.ended() {
		if !cl.Closed() {
			atomic.StoreUint32(&cl.Properties.Will.Flag, 0) // alive elsewhere
		}
		_ = s.mq.DisconnectClient(cl, packets.ErrSessionTakenOver)
		cl.Stop(packets.ErrSessionTakenOver)
		timer := time.NewTimer(s.cfg.ConnectTimeout)
		select {
		case <-c.done:
		case <-timer.C:
			s.log.Warn("releasing a client whose connection has not ended yet", "client", clip(clientID),
				"waited", s.cfg.ConnectTimeout)
		case <-ctx.Done():
		case <-s.ctx.Done():
		}
		timer.Stop()
	}
	return cl, true
}

// awaitDrop drops the session of cl, released, and waits for the Store,
// bounded like the connection's end.
func (s *Server) awaitDrop(ctx context.Context, cl *mqtt.Client) {
	stored := s.dropSession(cl)
	s.log.Info("session released: the client connected to another node", "client", clip(cl.ID), "remote", cl.Net.Remote)
	select { // bounded like the wait above; the commit completes anyway
	case <-stored.done:
	case <-ctx.Done():
	case <-s.ctx.Done():
	}
}

// relaySession tells the Relay that this node gained or lost clientID's
// session.
func (s *Server) relaySession(clientID string, present bool) {
	if r := s.currentRelay(); r != nil {
		r.Session(clientID, present)
	}
}

// relayConnecting runs Relay.Connecting for cl, whose connection is c,
// before its session is established.
func (s *Server) relayConnecting(cl *mqtt.Client, c *conn) {
	r := s.currentRelay()
	if r == nil {
		return
	}
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.ConnectTimeout)
	defer cancel()
	st := r.Connecting(ctx, cl.ID)
	refreshDeadline(cl, c)
	s.adoptSession(cl, st)
}

// localOrigin is the Origin of a message published with PublishLocal:
// no client ID contains NUL, so it names no client.
const localOrigin = "\x00local"

// ownOrigin reports whether origin is the broker's own (Publish or
// PublishLocal), whose retained messages its publisher restores.
func ownOrigin(origin string) bool {
	return origin == mqtt.InlineClientId || origin == localOrigin
}

// PublishLocal publishes a message from the broker itself, as Publish
// does, but to this node only: the Relay does not see it, so it does not
// reach other nodes. Cluster mode uses it for what every node publishes
// for itself from shared state, such as device presence, which each node
// reads from the cluster's presence bucket: publishing it on every node
// and relaying it too would deliver it twice, out of the bucket's order.
// Without a Relay it is Publish. It returns the errors of Publish.
func (s *Server) PublishLocal(topic string, payload []byte, retain bool, qos byte) error {
	retain, err := s.checkPublish(topic, payload, retain, qos)
	if err != nil {
		return err
	}
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos, Retain: retain},
		TopicName:   topic,
		Payload:     bytes.Clone(payload),
		PacketID:    uint16(qos), // as mochi's Publish: valid, never used
	}
	if err := s.mq.InjectPacket(s.localClient(), pk); err != nil {
		return fmt.Errorf("publish %s: %w", topic, err)
	}
	return nil
}

// localClient returns the in-process client PublishLocal publishes from,
// made on first use.
func (s *Server) localClient() *mqtt.Client {
	s.relays.mu.Lock()
	defer s.relays.mu.Unlock()
	if s.relays.local == nil {
		s.relays.local = s.mq.NewClient(nil, "local", localOrigin, true)
		s.relays.local.Properties.ProtocolVersion = 5
	}
	return s.relays.local
}

// Retain makes m the retained message of m.Topic on this node, as a
// shared retained store reports it (cluster mode: the message was
// published on some node and stored in the cluster's retained bucket);
// an empty payload clears the topic's retained message. Nobody receives
// m now: later subscribers get it as retained. Unless m.Origin is the
// broker's own ("inline": a Publish on its node), it counts, like a
// retained message Deliver brings, toward MaxRetained and
// MaxRetainedBytes and in Stats.RetainedBytes (so the retained limits,
// checked where a message is published, hold for the cluster's retained
// messages) and is written to Config.Store; it is never refused for
// those limits: its publisher's node applied them. Stats.Retained counts
// it in any case. An
// m.Expiry in the past clears the topic. Retain copies nothing: m.Payload
// must not be modified afterwards.
//
// Retain returns ErrClosed after Close, and errors wrapping
// ErrInvalidTopic (a malformed topic or a $SYS one) or ErrTooLarge.
func (s *Server) Retain(m Message) error {
	if s.closed.Load() {
		return ErrClosed
	}
	if err := validTopic(m.Topic, true); err != nil || mqtt.IsSysTopic(m.Topic) {
		return fmt.Errorf("retain: %q: %w", m.Topic, ErrInvalidTopic)
	}
	if uint64(len(m.Payload)) > uint64(s.cfg.MaxPacketSize) {
		return fmt.Errorf("retain %s: %d-byte payload over %d: %w", m.Topic, len(m.Payload), s.cfg.MaxPacketSize, ErrTooLarge)
	}
	if !m.Expiry.IsZero() && m.Expiry.Before(time.Now()) {
		m.Payload = nil
	}
	m.QoS = min(m.QoS, 2)
	pk := packetOf(m)
	pk.FixedHeader.Retain = true
	pk.Origin = relayOrigin
	if ownOrigin(m.Origin) {
		// The broker's own on its node (Publish), where it is neither
		// counted nor stored: its publisher restores it.
		pk.Origin = localOrigin
	}
	pk.Properties.SubscriptionIdentifier = nil
	cl := s.relayClient("")
	n := s.mq.Topics.RetainMessage(pk)
	s.ledger.OnRetainMessage(cl, pk, n)
	atomic.StoreInt64(&s.mq.Info.Retained, int64(s.mq.Topics.Retained.Len()))
	return nil
}

// RetainedTopics returns the topics of the retained messages this node
// holds for clients and other nodes (not the broker's own, from Publish
// and PublishLocal), in no order: what a shared retained store compares
// with its own when it starts.
func (s *Server) RetainedTopics() []string {
	l := s.ledger
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]string, 0, len(l.retained))
	for t := range l.retained {
		out = append(out, t)
	}
	return out
}

// RetainedMessages returns the retained messages this node holds for
// clients and other nodes (those of RetainedTopics), in no order: what a
// shared retained store takes in when the node joins it with retained
// messages of its own, such as those of a broker.db written before the
// node ran in a cluster.
func (s *Server) RetainedMessages() []Message {
	l := s.ledger
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]Message, 0, len(l.retained))
	for _, m := range l.retained {
		out = append(out, m)
	}
	return out
}
