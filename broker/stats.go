package broker

import (
	"sync/atomic"
	"time"
)

// Stats is a snapshot of the broker's counters. Counters marked "since
// Open" only grow; the others are current values.
type Stats struct {
	ClientsConnected int64 // clients connected now
	Sessions         int64 // sessions known now: connected clients plus offline persistent sessions
	Subscriptions    int64 // client subscriptions now
	Retained         int64 // retained messages now, not counting the broker's $SYS topics
	Inflight         int64 // unacknowledged or queued QoS 1 and 2 messages now

	MessagesReceived int64 // PUBLISHes received from clients or Publish, since Open
	MessagesSent     int64 // PUBLISHes written to clients, since Open
	PacketsReceived  int64 // packets of any type received, since Open
	PacketsSent      int64 // packets of any type written, since Open
	BytesReceived    int64 // bytes received, since Open
	BytesSent        int64 // bytes written, since Open

	// PacketsDropped is MessagesDropped + InflightDropped + PublishesDenied + RateLimited.
	PacketsDropped      int64
	MessagesDropped     int64 // messages dropped because a client's outbound queue was full, since Open
	InflightDropped     int64 // QoS 1 and 2 messages dropped because a session's inflight store was full, since Open
	PublishesDenied     int64 // PUBLISHes refused by Authenticator.Allow or sent to $SYS, since Open
	ConnectsRejected    int64 // CONNECTs refused for an invalid client ID or failed authentication, since Open
	ClientIDsRefused    int64 // CONNECTs refused for an over-long or reserved client ID (also in ConnectsRejected), since Open
	TLSHandshakesFailed int64 // TLS connections closed because the handshake failed or timed out, since Open
	HandlerPanics       int64 // panics recovered from Subscribe handlers, since Open

	SlowConsumers int64 // connections closed because they did not read what they were sent, since Open
	PendingBytes  int64 // bytes written to connections that their sockets have not taken yet, now

	LoopConns    int64 // connections a read loop serves now (see the package documentation)
	LoopHandoffs int64 // packet handlers that blocked a read loop, which another goroutine took over, since Open

	SubscriptionsRefused int64 // SUBSCRIBE filters refused for a session's subscription cap, since Open
	SubscriptionsDenied  int64 // SUBSCRIBE filters refused by Authenticator.Allow, since Open
	RetainIgnored        int64 // retain flags dropped from PUBLISHes and wills on request topics, since Open

	RetainedBytes      int64 // payload bytes of the retained messages clients hold now (Config.MaxRetainedBytes)
	RetainedRefused    int64 // new retained topics refused for Config.MaxRetained or MaxRetainedBytes, since Open
	PersistentSessions int64 // persistent sessions now, connected or not
	SessionsRefused    int64 // CONNECTs refused for Config.MaxSessionsPerIdentity, since Open
	QueuedBytes        int64 // payload bytes held for persistent sessions now (queued or unacknowledged)
	QueueBytesDropped  int64 // messages not delivered because a session held Config.MaxQueuedBytes, since Open

	StoreCommits int64         // commits to Config.Store, since Open
	StoreOps     int64         // ops in those commits, since Open
	StoreErrors  int64         // failed commits, since Open
	StoreTime    time.Duration // total time spent in commits, since Open
	RateLimited  int64         // PUBLISHes refused because the client exceeded its message rate, since Open

	IdentityConnsRefused int64 // CONNECTs refused for MaxConnsPerIdentity (also in ConnectsRejected), since Open
	PacketsTooLarge      int64 // clients disconnected for a packet over MaxPacketSize, since Open
}

// Stats returns a snapshot of the broker's counters. It is cheap enough to
// call from a metrics scrape.
func (s *Server) Stats() Stats {
	info := s.mq.Info
	st := Stats{
		ClientsConnected: atomic.LoadInt64(&info.ClientsConnected),
		Sessions:         int64(s.mq.Clients.Len()) - 1, // minus the inline client
		Subscriptions:    atomic.LoadInt64(&info.Subscriptions),
		Retained:         int64(s.mq.Topics.Retained.Len() - s.sysRetained),
		Inflight:         atomic.LoadInt64(&info.Inflight),
		MessagesReceived: atomic.LoadInt64(&info.MessagesReceived),
		MessagesSent:     atomic.LoadInt64(&info.MessagesSent),
		PacketsReceived:  atomic.LoadInt64(&info.PacketsReceived),
		PacketsSent:      atomic.LoadInt64(&info.PacketsSent),
		BytesReceived:    atomic.LoadInt64(&info.BytesReceived),
		BytesSent:        atomic.LoadInt64(&info.BytesSent),
		MessagesDropped:  atomic.LoadInt64(&info.MessagesDropped),
		InflightDropped:  atomic.LoadInt64(&info.InflightDropped),
		PublishesDenied:  s.hook.publishesDenied.Load(),
		ConnectsRejected: s.hook.connectsRejected.Load(),
		ClientIDsRefused: s.hook.clientIDsRefused.Load(),
		HandlerPanics:    s.hook.handlerPanics.Load(),
		SlowConsumers:    s.out.shed.Load(),
		PendingBytes:     s.out.pending.Load(),
		LoopConns:        s.out.loops.servedNow(),
		LoopHandoffs:     s.out.loops.handoffsSoFar(),

		SubscriptionsRefused: s.hook.subscriptionsRefused.Load(),
		SubscriptionsDenied:  s.hook.subscriptionsDenied.Load(),
		RetainIgnored:        s.hook.retainIgnored.Load(),

		QueuedBytes:       s.ledger.queuedBytes.Load(),
		RetainedRefused:   s.ledger.retainedRefused.Load(),
		SessionsRefused:   s.ledger.sessionsRefused.Load(),
		QueueBytesDropped: s.ledger.queueBytesDropped.Load(),
		StoreCommits:      s.ledger.commits.Load(),
		StoreOps:          s.ledger.commitOps.Load(),
		StoreErrors:       s.ledger.commitErrors.Load(),
		StoreTime:         time.Duration(s.ledger.commitNanos.Load()),
		RateLimited:       s.hook.rateLimited.Load(),

		IdentityConnsRefused: s.hook.identityConnsRefused.Load(),
		PacketsTooLarge:      s.hook.packetsTooLarge.Load(),
	}
	s.ledger.mu.Lock()
	st.RetainedBytes = s.ledger.retainedBytes
	st.PersistentSessions = int64(len(s.ledger.sessions))
	s.ledger.mu.Unlock()
	if s.tls != nil {
		st.TLSHandshakesFailed = s.tls.tlsFailures.Load()
	}
	st.PacketsDropped = st.MessagesDropped + st.InflightDropped + st.PublishesDenied + st.RateLimited
	return st
}
