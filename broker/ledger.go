package broker

import (
	"bytes"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// The ledger is the broker's account of its durable state: the retained
// messages clients published and the persistent sessions with their
// subscriptions and queued messages. It is a mochi hook of its own (added
// after the main hook, so it sees the main hook's decisions), it serves
// the limits on retained messages, queued bytes and sessions per identity,
// and, with Config.Store, it is what the committer writes (commit.go).
//
// Changes mark keys dirty; the committer turns the dirty keys into store
// ops from the ledger's state at commit time, so a message acknowledged
// before the next commit is never written at all. A caller that promises
// durability (a PUBACK, a SUBACK) waits for the commit that includes its
// change; everything else is written by the next commit without waiting.
//
// Queued messages are records keyed by a sequence number. A client's QoS
// ≥ 1 PUBLISH that matches persistent sessions is written before its
// PUBACK, one record per matching session, "unbound" (mochi assigns packet
// identifiers only while delivering, after the PUBACK); the delivery
// (OnQosPublish) binds the record to its packet identifier, and records
// the delivery did not bind (denied, dropped, NoLocal, another member of a
// shared group) are removed when the PUBLISH has been handled. Messages
// that do not come from a client's PUBLISH (the broker's own Publish,
// wills, retained messages sent on subscribe) are recorded when they are
// delivered, and written by the next commit.

// ledger is the broker's durable-state hook; see above.
type ledger struct {
	mqtt.HookBase
	s     *Server
	store Store // nil: nothing is written; the ledger serves the limits only
	log   *slog.Logger

	mu            sync.Mutex                     // guards every field up to index
	retained      map[string]Message             // client-published retained messages, by topic
	retainedBytes int64                          // their payload bytes
	reserved      map[string]int                 // new retained topics admitted, not yet stored: payload bytes
	reservedBytes int64                          // their sum
	retainedFull  bool                           // the retained limit was logged since it was last below
	sessions      map[string]*sessionEntry       // persistent sessions by client ID
	perIdentity   map[string]int                 // persistent sessions by Identity.Name
	capLogged     map[string]bool                // identities whose session cap was logged since last below
	pending       map[*mqtt.Client]*publishBatch // client PUBLISHes being delivered
	seq           uint64                         // last record sequence number
	dirty         dirtySet                       // keys changed since the last commit
	rewrite       bool                           // the next commit rewrites everything (after a failed one)
	next          *commitWait                    // the commit that will include changes made now
	urgent        bool                           // someone waits for next: commit without delay
	stopped       bool                           // the committer has made its last commit

	// index mirrors sessions (written under mu) for the lookups on the
	// delivery path, which must not take mu for clients without a
	// persistent session.
	index       sync.Map     // client ID → *sessionEntry
	durableSubs atomic.Int64 // QoS ≥ 1 subscriptions of persistent sessions; written under mu
	pendingN    atomic.Int64 // len(pending); written under mu
	queuedBytes atomic.Int64 // payload bytes of bound records, all sessions

	kick    chan struct{} // wakes the committer; capacity 1
	stop    chan struct{} // closed by close
	done    chan struct{} // closed when the committer has returned
	lastErr error         // the last commit's error; read after done

	retainedRefused   atomic.Int64
	sessionsRefused   atomic.Int64
	queueBytesDropped atomic.Int64
	commits           atomic.Int64
	commitOps         atomic.Int64
	commitErrors      atomic.Int64
	commitNanos       atomic.Int64
}

// sessionEntry is a persistent session in the ledger.
type sessionEntry struct {
	Session
	// fresh is set for a session not yet written since it was created
	// (or replaced by a new one with the same client ID): its commit
	// deletes whatever is stored under the client ID first.
	fresh   bool
	subs    map[string]Subscription // by filter
	records map[uint64]*record      // queued messages by sequence number
	bound   map[uint16]*record      // records delivered (or restored) by packet ID
	unbound []*record               // records written at a PUBLISH, awaiting delivery, oldest first

	// Read on the delivery path without mu.
	bytes   atomic.Int64 // payload bytes of bound records; written under mu
	full    atomic.Bool  // the queued-bytes limit was logged since it was last below
	service atomic.Bool  // the session's limits are the service ones
}

// record is a queued message of a session.
type record struct {
	client   string
	seq      uint64
	msg      Message
	pid      uint16 // 0 until bound
	released bool   // QoS 2: PUBREC received
	written  bool   // a commit has put it; later changes are OpSetQueuedState
	gone     bool   // removed from its session
	batch    *publishBatch
}

// publishBatch is the records a client's PUBLISH wrote before its
// delivery.
type publishBatch struct {
	records []*record
}

// commitWait is one commit that callers can wait for.
type commitWait struct {
	done chan struct{}
	err  error // set before done is closed
}

func newCommitWait() *commitWait { return &commitWait{done: make(chan struct{})} }

// doneWait is a commit wait that has completed: used when nothing is
// written.
var doneWait = func() *commitWait { w := newCommitWait(); close(w.done); return w }()

// closedWait is returned after the committer's last commit.
var closedWait = func() *commitWait { w := newCommitWait(); w.err = ErrClosed; close(w.done); return w }()

type subKey struct{ client, filter string }

type queueKey struct {
	client string
	seq    uint64
}

// dirtySet is the keys changed since the last commit.
type dirtySet struct {
	retained map[string]struct{}
	sessions map[string]struct{}
	subs     map[subKey]struct{}
	queued   map[queueKey]bool // true: a removed record that had been written
}

func newDirtySet() dirtySet {
	return dirtySet{
		retained: map[string]struct{}{},
		sessions: map[string]struct{}{},
		subs:     map[subKey]struct{}{},
		queued:   map[queueKey]bool{},
	}
}

func (d *dirtySet) empty() bool {
	return len(d.retained)+len(d.sessions)+len(d.subs)+len(d.queued) == 0
}

func newLedger(s *Server) *ledger {
	l := &ledger{
		s:           s,
		store:       s.cfg.Store,
		log:         s.log,
		retained:    map[string]Message{},
		reserved:    map[string]int{},
		sessions:    map[string]*sessionEntry{},
		perIdentity: map[string]int{},
		capLogged:   map[string]bool{},
		pending:     map[*mqtt.Client]*publishBatch{},
		dirty:       newDirtySet(),
		next:        newCommitWait(),
		kick:        make(chan struct{}, 1),
		stop:        make(chan struct{}),
		done:        make(chan struct{}),
	}
	if l.store == nil {
		l.next = doneWait
	}
	return l
}

// ID implements mqtt.Hook.
func (l *ledger) ID() string { return "umbra-ledger" }

// Provides implements mqtt.Hook.
func (l *ledger) Provides(b byte) bool {
	switch b {
	case mqtt.OnSessionEstablish, mqtt.OnSessionEstablished, mqtt.OnDisconnect, mqtt.OnClientExpired,
		mqtt.OnSubscribe, mqtt.OnSubscribed, mqtt.OnUnsubscribed, mqtt.OnPublish, mqtt.OnPublished, mqtt.OnRetainMessage,
		mqtt.OnWill, mqtt.OnQosPublish, mqtt.OnQosDropped, mqtt.OnPacketRead:
		return true
	}
	return false
}

// WantsPacket implements mochi's PacketFilter (mochi patch 18): the
// ledger follows acknowledgements (OnPacketRead) and handles a PUBLISH
// (OnPublish) only when it is retained or may have to be written for a
// persistent session; a QoS 0 message, or any while no persistent session
// subscribes, passes without a hook call and its copies of the packet.
func (l *ledger) WantsPacket(event byte, cl *mqtt.Client, fh packets.FixedHeader, _ byte) bool {
	switch event {
	case mqtt.OnPacketRead:
		return fh.Type == packets.Puback || fh.Type == packets.Pubcomp || fh.Type == packets.Pubrec
	case mqtt.OnPublish:
		return !cl.Net.Inline && (fh.Retain || (l.store != nil && fh.Qos > 0 && l.durableSubs.Load() > 0))
	}
	return true
}

// persistent reports whether cl's session outlives its connection.
func persistent(cl *mqtt.Client) bool {
	if cl.Net.Inline {
		return false
	}
	if cl.Properties.ProtocolVersion == 5 {
		return cl.Properties.Props.SessionExpiryInterval > 0
	}
	return !cl.Properties.Clean
}

// identityOf returns the identity cl authenticated as.
func identityOf(cl *mqtt.Client) Identity {
	if c := connOf(cl); c != nil && c.identity.ClientID != "" {
		return c.identity
	}
	return Identity{ClientID: cl.ID}
}

// sessionOf describes cl's session as it is now.
func sessionOf(cl *mqtt.Client) Session {
	s := Session{ClientID: cl.ID, Identity: identityOf(cl), ProtocolVersion: cl.Properties.ProtocolVersion}
	if s.ProtocolVersion == 5 && cl.Properties.Props.SessionExpiryIntervalFlag {
		s.Expiry, s.ExpirySet = time.Duration(cl.Properties.Props.SessionExpiryInterval)*time.Second, true
	}
	return s
}

// Marking. Every mark* and the mutations below run with l.mu held.

func (l *ledger) markSession(id string) {
	if l.store != nil {
		l.dirty.sessions[id] = struct{}{}
	}
}

func (l *ledger) markSub(id, filter string) {
	if l.store != nil {
		l.dirty.subs[subKey{id, filter}] = struct{}{}
	}
}

func (l *ledger) markRecord(r *record) {
	if l.store != nil {
		k := queueKey{r.client, r.seq}
		l.dirty.queued[k] = l.dirty.queued[k] || (r.gone && r.written)
	}
}

func (l *ledger) markRetained(topic string) {
	if l.store != nil {
		l.dirty.retained[topic] = struct{}{}
	}
}

// wake asks the committer for a commit; called after l.mu is released.
func (l *ledger) wake() {
	if l.store == nil {
		return
	}
	select {
	case l.kick <- struct{}{}:
	default:
	}
}

// pendingWait returns the commit that will include the changes made so
// far, for a caller that waits for it: the committer commits at once
// instead of after lazyCommitDelay.
func (l *ledger) pendingWait() *commitWait {
	if l.stopped {
		return closedWait
	}
	l.urgent = l.store != nil
	return l.next
}

// indexed reports, without taking mu, whether cl's client ID has a
// persistent session.
func (l *ledger) indexed(cl *mqtt.Client) bool {
	if cl.Net.Inline {
		return false
	}
	_, ok := l.index.Load(cl.ID)
	return ok
}

// unpend removes cl's pending batch.
func (l *ledger) unpend(cl *mqtt.Client) {
	delete(l.pending, cl)
	l.pendingN.Add(-1)
}

// await waits for w's commit and returns its error.
func await(w *commitWait) error {
	<-w.done
	return w.err
}

// awaitFor is await for the handling of a packet of cl (and of origin's,
// the client whose PUBLISH is being delivered, if not ""): a read loop
// handling it is handed off before the wait (see releaseLoop), so that
// other clients' packets go on and can share the commit.
func (l *ledger) awaitFor(w *commitWait, cl *mqtt.Client, origin string) error {
	select {
	case <-w.done:
		return w.err
	default:
	}
	releaseLoopOf(cl)
	if origin != "" && (cl == nil || origin != cl.ID) && !ownOrigin(origin) {
		if o, ok := l.s.mq.Clients.Get(origin); ok {
			releaseLoopOf(o)
		}
	}
	return await(w)
}

// addSession adds se, replacing nothing: the caller removed any previous
// entry.
func (l *ledger) addSession(se *sessionEntry) {
	l.sessions[se.ClientID] = se
	l.index.Store(se.ClientID, se)
	l.perIdentity[se.Identity.Name]++
	l.markSession(se.ClientID)
}

// removeSession removes se with its subscriptions and records.
func (l *ledger) removeSession(se *sessionEntry) {
	if l.sessions[se.ClientID] != se {
		return
	}
	delete(l.sessions, se.ClientID)
	l.index.Delete(se.ClientID)
	if l.perIdentity[se.Identity.Name]--; l.perIdentity[se.Identity.Name] <= 0 {
		delete(l.perIdentity, se.Identity.Name)
	}
	delete(l.capLogged, se.Identity.Name)
	for _, sub := range se.subs {
		if sub.QoS > 0 {
			l.durableSubs.Add(-1)
		}
	}
	for _, r := range se.records {
		r.gone = true
	}
	l.queuedBytes.Add(-se.bytes.Load())
	l.markSession(se.ClientID)
}

// setIdentity moves se to identity id for the per-identity count.
func (l *ledger) setIdentity(se *sessionEntry, id Identity) {
	if se.Identity.Name != id.Name {
		if l.perIdentity[se.Identity.Name]--; l.perIdentity[se.Identity.Name] <= 0 {
			delete(l.perIdentity, se.Identity.Name)
		}
		l.perIdentity[id.Name]++
	}
	se.Identity = id
}

func newSessionEntry(s Session) *sessionEntry {
	return &sessionEntry{
		Session: s,
		subs:    map[string]Subscription{},
		records: map[uint64]*record{},
		bound:   map[uint16]*record{},
	}
}

// putSub adds or replaces a subscription of se.
func (l *ledger) putSub(se *sessionEntry, sub Subscription) {
	if old, ok := se.subs[sub.Filter]; ok && old.QoS > 0 {
		l.durableSubs.Add(-1)
	}
	se.subs[sub.Filter] = sub
	if sub.QoS > 0 {
		l.durableSubs.Add(1)
	}
	l.markSub(se.ClientID, sub.Filter)
}

// deleteSub removes se's subscription to filter.
func (l *ledger) deleteSub(se *sessionEntry, filter string) {
	old, ok := se.subs[filter]
	if !ok {
		return
	}
	if old.QoS > 0 {
		l.durableSubs.Add(-1)
	}
	delete(se.subs, filter)
	l.markSub(se.ClientID, filter)
}

// addRecord adds a new record of msg to se.
func (l *ledger) addRecord(se *sessionEntry, msg Message) *record {
	l.seq++
	r := &record{client: se.ClientID, seq: l.seq, msg: msg}
	se.records[r.seq] = r
	l.markRecord(r)
	return r
}

// bind binds r to packet ID pid.
func (l *ledger) bind(se *sessionEntry, r *record, pid uint16) {
	if i := slices.Index(se.unbound, r); i >= 0 {
		se.unbound = slices.Delete(se.unbound, i, i+1)
	}
	r.batch = nil
	r.pid = pid
	se.bound[pid] = r
	n := int64(len(r.msg.Payload))
	se.bytes.Add(n)
	l.queuedBytes.Add(n)
	l.markRecord(r)
}

// removeRecord removes r from se.
func (l *ledger) removeRecord(se *sessionEntry, r *record) {
	if r.gone {
		return
	}
	r.gone = true
	delete(se.records, r.seq)
	if r.pid != 0 && se.bound[r.pid] == r {
		delete(se.bound, r.pid)
		n := int64(len(r.msg.Payload))
		se.bytes.Add(-n)
		l.queuedBytes.Add(-n)
	}
	if i := slices.Index(se.unbound, r); i >= 0 {
		se.unbound = slices.Delete(se.unbound, i, i+1)
	}
	l.markRecord(r)
}

// dropBatch removes the records of b that no delivery bound.
func (l *ledger) dropBatch(b *publishBatch) {
	for _, r := range b.records {
		if r.gone || r.batch != b {
			continue
		}
		if se := l.sessions[r.client]; se != nil {
			l.removeRecord(se, r)
		}
	}
}

// OnSessionEstablish mirrors, for persistent sessions, what mochi is about
// to do with cl's session: inherit the one registered under the client ID,
// or discard it. It runs after the main hook's OnSessionEstablish (which
// may have discarded another identity's session), under the client ID's
// gate.
func (l *ledger) OnSessionEstablish(cl *mqtt.Client, pk packets.Packet) {
	if cl.Net.Inline {
		return
	}
	// mochi's inheritClientSession condition.
	existing, ok := l.s.mq.Clients.Get(cl.ID)
	inherit := ok && existing != cl && !pk.Connect.Clean &&
		!(existing.Properties.Clean && existing.Properties.ProtocolVersion < 5)
	l.mu.Lock()
	old := l.sessions[cl.ID]
	switch {
	case !persistent(cl):
		if old != nil {
			l.removeSession(old)
		}
	case inherit && old != nil:
		l.setIdentity(old, identityOf(cl))
		old.ProtocolVersion = cl.Properties.ProtocolVersion
		old.Disconnected = time.Time{}
		l.markSession(cl.ID)
	default:
		if old != nil {
			l.removeSession(old)
		}
		se := newSessionEntry(sessionOf(cl))
		se.fresh = true
		se.service.Store(l.isService(cl))
		l.addSession(se)
	}
	l.mu.Unlock()
	l.wake()
}

// isService reports whether cl gets the service clients' limits.
func (l *ledger) isService(cl *mqtt.Client) bool {
	c := connOf(cl)
	return c != nil && c.service
}

// OnSessionEstablished brings cl's session entry up to date with what
// mochi did: the session expiry CONNACK granted, and the subscriptions
// and queued messages cl inherited.
func (l *ledger) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	if !persistent(cl) {
		return
	}
	subs := cl.State.Subscriptions.GetAll()
	l.mu.Lock()
	se := l.sessions[cl.ID]
	if se == nil {
		se = newSessionEntry(sessionOf(cl))
		se.fresh = true
		l.addSession(se)
	}
	s := sessionOf(cl)
	se.ProtocolVersion, se.Expiry, se.ExpirySet, se.Disconnected = s.ProtocolVersion, s.Expiry, s.ExpirySet, time.Time{}
	se.service.Store(l.isService(cl))
	l.markSession(cl.ID)
	for f, sub := range subs {
		if have, ok := se.subs[f]; !ok || have != subscriptionOf(sub) {
			l.putSub(se, subscriptionOf(sub))
		}
	}
	for f := range se.subs {
		if _, ok := subs[f]; !ok {
			l.deleteSub(se, f)
		}
	}
	// The inflight store is read under l.mu: a delivery sets its packet
	// there before OnQosPublish, which waits for l.mu, so a record is
	// never removed for a packet that is about to be bound.
	inflight := map[uint16]packets.Packet{}
	for _, pk := range cl.State.Inflight.GetAll(false) {
		inflight[pk.PacketID] = pk
	}
	for pid, r := range se.bound {
		if _, ok := inflight[pid]; !ok {
			l.removeRecord(se, r)
		}
	}
	for pid, pk := range inflight {
		if pk.FixedHeader.Type == packets.Publish && se.bound[pid] == nil {
			l.bind(se, l.addRecord(se, messageOf(pk)), pid)
		}
	}
	l.mu.Unlock()
	l.wake()
}

// OnDisconnect records when a persistent session's client disconnected,
// or removes a session that ends with its connection.
func (l *ledger) OnDisconnect(cl *mqtt.Client, _ error, expire bool) {
	if cl.Net.Inline {
		return
	}
	l.mu.Lock()
	if b := l.pending[cl]; b != nil { // its PUBACK failed: no delivery follows
		l.unpend(cl)
		l.dropBatch(b)
	}
	se := l.sessions[cl.ID]
	switch {
	case se == nil || cl.IsTakenOver():
	case expire:
		l.removeSession(se)
	default:
		s := sessionOf(cl)
		se.Expiry, se.ExpirySet = s.Expiry, s.ExpirySet // MQTT 5 DISCONNECT may change it
		se.Disconnected = time.Now()
		l.markSession(cl.ID)
	}
	l.mu.Unlock()
	l.wake()
}

// OnClientExpired removes an expired session.
func (l *ledger) OnClientExpired(cl *mqtt.Client) {
	if cur, ok := l.s.mq.Clients.Get(cl.ID); ok && cur != cl {
		return // taken over meanwhile
	}
	l.sessionEnded(cl.ID, false)
}

// sessionEnded removes the session of clientID, if any. With wait, it
// returns the commit that removes it from the store, for the caller to
// wait for; otherwise nil.
func (l *ledger) sessionEnded(clientID string, wait bool) *commitWait {
	l.mu.Lock()
	if se := l.sessions[clientID]; se != nil {
		l.removeSession(se)
	}
	var w *commitWait
	if wait {
		w = l.pendingWait()
	}
	l.mu.Unlock()
	l.wake()
	return w
}

// OnSubscribed records a persistent session's granted subscriptions; with
// a Store it returns, and mochi sends SUBACK, once they are on disk.
func (l *ledger) OnSubscribed(cl *mqtt.Client, pk packets.Packet, codes []byte) {
	if !persistent(cl) {
		return
	}
	err := l.update(cl.ID, true, func(se *sessionEntry) {
		for i, f := range pk.Filters {
			if i < len(codes) && codes[i] < packets.ErrUnspecifiedError.Code {
				l.putSub(se, subscriptionOf(f))
			}
		}
	})
	if err != nil {
		l.log.Warn("subscription acknowledged although not stored", "client", cl.ID, "error", err)
	}
}

// update runs f on clientID's session, if there is one, under l.mu, and
// has the change committed; with wait it returns once the change is on
// disk, with the commit's error.
func (l *ledger) update(clientID string, wait bool, f func(*sessionEntry)) error {
	l.mu.Lock()
	se := l.sessions[clientID]
	if se == nil {
		l.mu.Unlock()
		return nil
	}
	f(se)
	var w *commitWait
	if wait {
		w = l.pendingWait()
	}
	l.mu.Unlock()
	l.wake()
	if w == nil {
		return nil
	}
	cl, _ := l.s.mq.Clients.Get(clientID) // whose SUBSCRIBE or UNSUBSCRIBE is being handled
	return l.awaitFor(w, cl, "")
}

// OnUnsubscribed removes subscriptions of a persistent session. For an
// UNSUBSCRIBE packet it returns, and mochi sends UNSUBACK, once the
// removal is on disk; a session's teardown (packet ID 0) does not wait.
func (l *ledger) OnUnsubscribed(cl *mqtt.Client, pk packets.Packet) {
	if cl.Net.Inline || cl.IsTakenOver() {
		return
	}
	err := l.update(cl.ID, pk.PacketID != 0, func(se *sessionEntry) {
		for _, f := range pk.Filters {
			l.deleteSub(se, f.Filter)
		}
	})
	if err != nil {
		l.log.Warn("unsubscribe acknowledged although not stored", "client", cl.ID, "error", err)
	}
}

// OnPublish applies the retained-message limit to a client's PUBLISH and,
// with a Store, writes the message for every persistent session it is
// queued for before mochi acknowledges it.
func (l *ledger) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline {
		return pk, nil
	}
	if pk.FixedHeader.Retain && !l.admitRetained(cl.ID, pk.TopicName, len(pk.Payload), true) {
		if cl.Properties.ProtocolVersion == 5 && pk.FixedHeader.Qos > 0 {
			return pk, refusePublish(cl, pk, packets.ErrQuotaExceeded)
		}
		pk.FixedHeader.Retain = false // delivered, not stored
	}
	if l.store == nil || pk.FixedHeader.Qos == 0 {
		return pk, nil
	}
	if err := l.writeQueued(cl, pk); err != nil {
		// Not acknowledged: the client sends it again.
		if pk.FixedHeader.Retain {
			l.mu.Lock()
			l.unreserve(pk.TopicName)
			l.mu.Unlock()
		}
		if cl.Properties.ProtocolVersion != 5 {
			return pk, packets.ErrRejectPacket
		}
		return pk, refusePublish(cl, pk, packets.ErrImplementationSpecificError)
	}
	return pk, nil
}

// refusePublish answers a client's QoS 1 or 2 PUBLISH with code (PUBACK or
// PUBREC, which ends a QoS 2 exchange) and tells mochi to drop it.
func refusePublish(cl *mqtt.Client, pk packets.Packet, code packets.Code) error {
	ack := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Puback},
		PacketID:    pk.PacketID,
		ReasonCode:  code.Code,
		Properties:  packets.Properties{ReasonString: code.Reason},
	}
	if pk.FixedHeader.Qos == 2 {
		ack.FixedHeader.Type = packets.Pubrec
	}
	_ = cl.WritePacket(ack) // a failed write ends the connection anyway
	return packets.ErrRejectPacket
}

// writeQueued writes pk for every persistent session that will queue it,
// as unbound records, and waits for the commit.
func (l *ledger) writeQueued(cl *mqtt.Client, pk packets.Packet) error {
	if l.durableSubs.Load() == 0 {
		return nil
	}
	subs := l.s.mq.Topics.Subscribers(pk.TopicName)
	maxQoS := l.s.mq.Options.Capabilities.MaximumQos
	l.mu.Lock()
	b := &publishBatch{}
	add := func(clientID string, sub packets.Subscription) {
		se := l.sessions[clientID]
		qos := min(pk.FixedHeader.Qos, sub.Qos, maxQoS)
		if se == nil || qos == 0 || (sub.NoLocal && clientID == pk.Origin) {
			return
		}
		m := messageOf(pk)
		m.QoS = qos
		m.Retain = m.Retain && se.ProtocolVersion == 5 && sub.RetainAsPublished
		for _, id := range sub.Identifiers {
			if id > 0 {
				m.Properties.SubscriptionIDs = append(m.Properties.SubscriptionIDs, id)
			}
		}
		slices.Sort(m.Properties.SubscriptionIDs)
		r := l.addRecord(se, m)
		r.batch = b
		se.unbound = append(se.unbound, r)
		b.records = append(b.records, r)
	}
	for id, sub := range subs.Subscriptions {
		add(id, sub)
	}
	for _, group := range subs.Shared {
		for id, sub := range group {
			add(id, sub)
		}
	}
	if len(b.records) == 0 {
		l.mu.Unlock()
		return nil
	}
	if prev := l.pending[cl]; prev != nil {
		l.dropBatch(prev)
	} else {
		l.pendingN.Add(1)
	}
	l.pending[cl] = b
	w := l.pendingWait()
	l.mu.Unlock()
	l.wake()
	err := l.awaitFor(w, cl, "")
	if err != nil {
		l.mu.Lock()
		if l.pending[cl] == b {
			l.unpend(cl)
		}
		l.dropBatch(b)
		l.mu.Unlock()
		l.wake()
	}
	return err
}

// OnPublished removes the records of cl's PUBLISH that no delivery bound.
func (l *ledger) OnPublished(cl *mqtt.Client, _ packets.Packet) {
	if cl.Net.Inline || l.pendingN.Load() == 0 {
		return
	}
	l.mu.Lock()
	b := l.pending[cl]
	if b != nil {
		l.unpend(cl)
		l.dropBatch(b)
	}
	l.mu.Unlock()
	if b != nil {
		l.wake()
	}
}

// OnQosPublish binds a QoS 1 or 2 message that mochi put in a persistent
// session's inflight store (to send now, or queued while the client is
// offline) to a record: the one the PUBLISH wrote, or a new one written
// by the next commit. A QoS 2 message waits for the commit, so that its
// packet identifier survives a crash with it (exactly once).
func (l *ledger) OnQosPublish(cl *mqtt.Client, pk packets.Packet, _ int64, _ int) {
	if pk.FixedHeader.Type != packets.Publish || !l.indexed(cl) {
		return
	}
	l.mu.Lock()
	se := l.sessions[cl.ID]
	if se == nil {
		l.mu.Unlock()
		return
	}
	if r := se.bound[pk.PacketID]; r != nil {
		if r.msg.Topic == pk.TopicName && samePayload(r.msg.Payload, pk.Payload) {
			l.mu.Unlock()
			return // resent
		}
		l.removeRecord(se, r) // its packet was rolled back without a hook
	}
	var r *record
	for _, u := range se.unbound {
		if u.msg.Topic == pk.TopicName && u.msg.Origin == pk.Origin && bytes.Equal(u.msg.Payload, pk.Payload) {
			r = u
			break
		}
	}
	if r == nil {
		r = l.addRecord(se, messageOf(pk))
	}
	r.msg.Payload = pk.Payload // share mochi's copy
	l.bind(se, r, pk.PacketID)
	var w *commitWait
	if pk.FixedHeader.Qos == 2 {
		w = l.pendingWait()
	}
	l.mu.Unlock()
	l.wake()
	if w != nil {
		_ = l.awaitFor(w, cl, pk.Origin) // an error is logged by the committer
	}
}

// samePayload reports whether a and b are the same slice (mochi's copy of
// a message), not just equal bytes.
func samePayload(a, b []byte) bool {
	if len(a) != len(b) {
		return false
	}
	return len(a) == 0 || &a[0] == &b[0]
}

// OnQosDropped removes the record of a message mochi dropped from a
// session's inflight store. A session that was taken over (inherited) is
// ignored: its messages moved to the new connection.
func (l *ledger) OnQosDropped(cl *mqtt.Client, pk packets.Packet) {
	if cl.IsTakenOver() || !l.indexed(cl) {
		return
	}
	l.forgetPacket(cl.ID, pk.PacketID)
}

// forgetPacket removes the record bound to clientID's packet pid.
func (l *ledger) forgetPacket(clientID string, pid uint16) {
	_ = l.update(clientID, false, func(se *sessionEntry) {
		if r := se.bound[pid]; r != nil {
			l.removeRecord(se, r)
		}
	})
}

// OnPacketRead follows a persistent session's acknowledgements of the
// messages sent to it: PUBACK and PUBCOMP end a message, PUBREC moves a
// QoS 2 message to PUBREL (or ends it with a failure code). They are
// written lazily: a crash may send a message again (QoS 1 allows it; a
// QoS 2 receiver recognises the packet identifier).
func (l *ledger) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	switch t := pk.FixedHeader.Type; {
	case t != packets.Puback && t != packets.Pubcomp && t != packets.Pubrec, !l.indexed(cl):
		return pk, nil
	}
	switch pk.FixedHeader.Type {
	case packets.Puback, packets.Pubcomp:
		l.forgetPacket(cl.ID, pk.PacketID)
	case packets.Pubrec:
		if pk.ReasonCode >= packets.ErrUnspecifiedError.Code {
			l.forgetPacket(cl.ID, pk.PacketID)
			break
		}
		_ = l.update(cl.ID, false, func(se *sessionEntry) {
			if r := se.bound[pk.PacketID]; r != nil && !r.released {
				r.released = true
				l.markRecord(r)
			}
		})
	}
	return pk, nil
}

// OnRetainMessage records the retained message of pk's topic as mochi now
// holds it. Only messages from clients are kept (the broker's own, from
// Publish, are the in-process publisher's to restore); with a Store, a
// client's call returns, and mochi acknowledges the PUBLISH, once the
// change is on disk. The state is read from mochi under l.mu, so that the
// last write for a topic is always its latest state, whatever the order
// in which concurrent publishers reach this hook.
func (l *ledger) OnRetainMessage(cl *mqtt.Client, pk packets.Packet, _ int64) {
	topic := pk.TopicName
	if strings.HasPrefix(topic, "$SYS") {
		return
	}
	l.mu.Lock()
	l.unreserve(topic)
	cur, ok := l.s.mq.Topics.Retained.Get(topic)
	old, had := l.retained[topic]
	switch {
	case ok && !ownOrigin(cur.Origin):
		m := messageOf(cur)
		m.Retain = true
		l.retained[topic] = m
		l.retainedBytes += int64(len(m.Payload) - len(old.Payload))
		l.markRetained(topic)
	case had:
		delete(l.retained, topic)
		l.retainedBytes -= int64(len(old.Payload))
		l.markRetained(topic)
	}
	if l.retainedFull && !l.retainedOver(1) {
		l.retainedFull = false
	}
	var w *commitWait
	if !cl.Net.Inline {
		w = l.pendingWait()
	}
	l.mu.Unlock()
	l.wake()
	if w != nil {
		if err := l.awaitFor(w, cl, ""); err != nil {
			l.log.Warn("retained message acknowledged although not stored", "client", cl.ID, "topic", clip(topic), "error", err)
		}
	}
}

// OnWill applies the retained-message limit to a retained will: over the
// limit, the will is published without being retained.
func (l *ledger) OnWill(cl *mqtt.Client, will mqtt.Will) (mqtt.Will, error) {
	if will.Retain && !l.admitRetained(cl.ID, will.TopicName, len(will.Payload), false) {
		will.Retain = false
	}
	return will, nil
}

// subscriptionOf converts a mochi subscription.
func subscriptionOf(sub packets.Subscription) Subscription {
	return Subscription{
		Filter: sub.Filter, QoS: sub.Qos, NoLocal: sub.NoLocal, RetainAsPublished: sub.RetainAsPublished,
		RetainHandling: sub.RetainHandling, Identifier: sub.Identifier,
	}
}

// packetSubscription converts a stored subscription for mochi.
func packetSubscription(sub Subscription) packets.Subscription {
	return packets.Subscription{
		Filter: sub.Filter, Qos: sub.QoS, NoLocal: sub.NoLocal, RetainAsPublished: sub.RetainAsPublished,
		RetainHandling: sub.RetainHandling, Identifier: sub.Identifier,
	}
}

// messageOf converts a mochi PUBLISH; Payload and other slices are shared.
func messageOf(pk packets.Packet) Message {
	m := Message{
		Topic: pk.TopicName, Payload: pk.Payload, QoS: pk.FixedHeader.Qos, Retain: pk.FixedHeader.Retain,
		Origin: pk.Origin,
		Properties: MessageProperties{
			PayloadFormat: pk.Properties.PayloadFormat, PayloadFormatSet: pk.Properties.PayloadFormatFlag,
			ContentType: pk.Properties.ContentType, ResponseTopic: pk.Properties.ResponseTopic,
			CorrelationData: pk.Properties.CorrelationData, SubscriptionIDs: pk.Properties.SubscriptionIdentifier,
			MessageExpiry: pk.Properties.MessageExpiryInterval, MessageExpirySet: pk.Properties.MessageExpiryInterval > 0,
		},
	}
	if pk.Created > 0 {
		m.Created = time.Unix(pk.Created, 0)
	}
	if pk.Expiry > 0 {
		m.Expiry = time.Unix(pk.Expiry, 0)
	}
	for _, u := range pk.Properties.User {
		m.Properties.User = append(m.Properties.User, UserProperty{Key: u.Key, Value: u.Val})
	}
	return m
}

// packetOf converts a stored message for mochi.
func packetOf(m Message) packets.Packet {
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: m.QoS, Retain: m.Retain},
		TopicName:   m.Topic,
		Payload:     m.Payload,
		Origin:      m.Origin,
		Properties: packets.Properties{
			PayloadFormat: m.Properties.PayloadFormat, PayloadFormatFlag: m.Properties.PayloadFormatSet,
			ContentType: m.Properties.ContentType, ResponseTopic: m.Properties.ResponseTopic,
			CorrelationData: m.Properties.CorrelationData, SubscriptionIdentifier: m.Properties.SubscriptionIDs,
		},
	}
	if m.Properties.MessageExpirySet {
		pk.Properties.MessageExpiryInterval = m.Properties.MessageExpiry
	}
	if !m.Created.IsZero() {
		pk.Created = m.Created.Unix()
	}
	if !m.Expiry.IsZero() {
		pk.Expiry = m.Expiry.Unix()
	}
	for _, u := range m.Properties.User {
		pk.Properties.User = append(pk.Properties.User, packets.UserProperty{Key: u.Key, Val: u.Value})
	}
	return pk
}
