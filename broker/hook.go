package broker

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// hook connects mochi's events to Config: client ID validation,
// authentication, ACL, callbacks and counters.
type hook struct {
	mqtt.HookBase
	s *Server

	mu       sync.RWMutex        // guards sessions and perName
	sessions map[string]*session // by client ID; only used with Config.Auth
	perName  map[string]int      // live connections by identity name; only used with Config.Auth

	gates  gates         // per client ID connect/disconnect serialisation
	seq    atomic.Uint64 // last connection sequence handed out
	shared sharedTurns   // shared subscription groups' turns (see shared.go)

	publishesDenied     atomic.Int64
	subscriptionsDenied atomic.Int64 // SUBSCRIBE filters refused by Config.Auth, since Open
	connectsRejected    atomic.Int64
	clientIDsRefused    atomic.Int64
	handlerPanics       atomic.Int64

	identityConnsRefused atomic.Int64 // CONNECTs over MaxConnsPerIdentity (also in connectsRejected), since Open
	packetsTooLarge      atomic.Int64 // clients disconnected for a packet over MaxPacketSize, since Open

	subscriptionsRefused atomic.Int64 // filters over a subscription cap, since Open
	rateLimited          atomic.Int64 // PUBLISHes refused for the message rate, since Open
	retainIgnored        atomic.Int64 // retain flags dropped on request topics, since Open
}

// session is what the broker remembers about an authenticated client.
type session struct {
	cl *mqtt.Client // the mochi client the identity belongs to
	id Identity
}

func newHook(s *Server) *hook {
	return &hook{s: s, sessions: make(map[string]*session), perName: make(map[string]int)}
}

// ID implements mqtt.Hook.
func (h *hook) ID() string { return "umbra" }

// Provides implements mqtt.Hook.
func (h *hook) Provides(b byte) bool {
	switch b {
	case mqtt.OnConnect, mqtt.OnConnectAuthenticate, mqtt.OnACLCheck, mqtt.OnSessionEstablish, mqtt.OnSessionEstablished,
		mqtt.OnDisconnect, mqtt.OnSubscribe, mqtt.OnSubscribed, mqtt.OnClientExpired,
		mqtt.OnPacketRead, mqtt.OnPacketEncode, mqtt.OnSelectSubscribers:
		return true
	case mqtt.OnWill:
		return len(h.s.cfg.RequestFilters) > 0
	}
	return false
}

// OnConnect validates the client ID. mochi assigns an ID to a client that
// sent none (with a clean session) before calling it. Which identity may
// use which ID is the Authenticator's business.
func (h *hook) OnConnect(cl *mqtt.Client, _ packets.Packet) error {
	err := validClientID(cl.ID, h.s.cfg.MaxClientIDLength)
	if err == nil {
		return nil
	}
	h.connectsRejected.Add(1)
	h.clientIDsRefused.Add(1)
	h.s.log.Info("connection refused", "client", clip(cl.ID), "remote", cl.Net.Remote, "error", err)
	if ackErr := h.s.mq.SendConnack(cl, packets.ErrClientIdentifierNotValid, false, nil); ackErr != nil {
		return fmt.Errorf("refuse connect: %w (send connack: %w)", err, ackErr)
	}
	return err
}

// validClientID reports whether id may be used as an MQTT client ID: any
// string mochi decoded (UTF-8 without NUL) of at most max bytes but the
// inline client's.
func validClientID(id string, max int) error {
	if id == mqtt.InlineClientId {
		return fmt.Errorf("%w: %q is reserved", ErrInvalidClientID, id)
	}
	if len(id) > max {
		return fmt.Errorf("%w: %d bytes, at most %d", ErrInvalidClientID, len(id), max)
	}
	return nil
}

// OnConnectAuthenticate runs Config.Auth and remembers the identity.
func (h *hook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	c := connOf(cl)
	auth := h.s.cfg.Auth
	if auth == nil {
		if c != nil {
			c.identity = Identity{ClientID: cl.ID}
			c.setOwner(h.s.cfg.MaxPendingBytes)
		}
		return true
	}
	creds := Credentials{
		ClientID:   cl.ID,
		Username:   string(pk.Connect.Username),
		Password:   pk.Connect.Password,
		RemoteAddr: cl.Net.Remote,
	}
	if c != nil {
		creds.TLS = c.tls
		if c.emptyPassword {
			creds.Password = []byte{}
		}
	}
	id, err := auth.Authenticate(h.s.ctx, creds)
	if err == nil && pk.Connect.WillFlag && !auth.Allow(withClientID(id, cl.ID), pk.Connect.WillTopic, true) {
		// mochi publishes wills without an ACL check.
		err = fmt.Errorf("will topic %q not allowed", pk.Connect.WillTopic)
		if c != nil {
			c.refusal = &packets.ErrNotAuthorized // see fixAck
		}
	}
	if err != nil {
		h.connectsRejected.Add(1)
		// The user name is named too: AWS IoT SDKs send their metrics in
		// it, and a refusal must say which of the two was wrong.
		h.s.log.Info("authentication failed", "client", cl.ID, "username", clip(string(pk.Connect.Username)),
			"remote", cl.Net.Remote, "error", err)
		return false
	}
	id = withClientID(id, cl.ID)
	h.mu.Lock()
	if max := h.s.cfg.MaxConnsPerIdentity; max > 0 && c != nil && h.perName[id.Name] >= max {
		h.mu.Unlock()
		h.connectsRejected.Add(1)
		h.identityConnsRefused.Add(1)
		c.refusal = &packets.ErrQuotaExceeded // see fixAck
		h.s.log.Info("connection refused: too many connections for identity", "client", cl.ID, "identity", id.Name, "max", max)
		return false
	}
	if !h.s.ledger.admitSession(cl, id) {
		h.mu.Unlock()
		h.connectsRejected.Add(1)
		h.s.ledger.refuseSession(cl)
		return false
	}
	if c != nil {
		h.perName[id.Name]++
		c.counted = id.Name
		c.identity = id
		c.service = id.Device == ""
	}
	h.sessions[cl.ID] = &session{cl: cl, id: id}
	h.mu.Unlock()
	if c != nil {
		limit := h.s.cfg.MaxPendingBytes
		if c.service {
			limit = h.s.cfg.ServicePendingBytes
		}
		c.setOwner(limit)
	}
	return true
}

// connEnded releases c's place in its identity's connection count.
func (h *hook) connEnded(c *conn) {
	if c.counted == "" {
		return
	}
	h.mu.Lock()
	if h.perName[c.counted]--; h.perName[c.counted] <= 0 {
		delete(h.perName, c.counted)
	}
	h.mu.Unlock()
}

func withClientID(id Identity, clientID string) Identity {
	id.ClientID = clientID
	return id
}

// connOf returns the broker's record of cl's connection, or nil for a
// client without one (the inline client).
func connOf(cl *mqtt.Client) *conn {
	c, _ := cl.Net.Conn.(*conn)
	return c
}

// OnACLCheck runs Config.Auth's Allow for the client's identity.
func (h *hook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	if cl.Net.Inline {
		return true
	}
	if c := connOf(cl); write && c != nil && c.rateRefused {
		return false // over the message rate: not a denial (see ratelimit.go)
	}
	if len(topic) > h.s.cfg.MaxTopicLength {
		if write {
			h.publishDenied(cl, topic)
		}
		return false
	}
	if !write && (!h.deliveryAllowed(cl) || (!subscribing(cl) && !h.s.ledger.queueRoom(cl))) {
		return false
	}
	if !write {
		topic = shareFilter(topic) // a $share/<group>/<filter> SUBSCRIBE is checked as <filter>
	}
	_, allowed := h.authAllows(cl, topic, write)
	if !allowed && write {
		h.publishDenied(cl, topic)
	}
	return allowed
}

// authAllows runs Config.Auth's Allow for the identity of cl's session,
// which it returns (nil without Auth, or if cl has none); without Auth
// everything is allowed.
func (h *hook) authAllows(cl *mqtt.Client, topic string, write bool) (*session, bool) {
	auth := h.s.cfg.Auth
	if auth == nil {
		return nil, true
	}
	h.mu.RLock()
	sess := h.sessions[cl.ID]
	h.mu.RUnlock()
	return sess, sess != nil && sess.cl == cl && auth.Allow(sess.id, topic, write)
}

// deliveryAllowed enforces Config.MaxInflight for a device client when
// mochi's server-wide limit is the larger ServiceInflight: mochi checks
// ACL read access right before it takes a place in the client's inflight
// store, so a device whose store is full gets no further messages (QoS 0
// ones included: it is far behind). The drops are counted with mochi's
// own in Stats.InflightDropped. The read check mochi makes for the
// filters of a SUBSCRIBE (bracketed by OnSubscribe and OnSubscribed) is
// not a delivery and passes; deliveries racing it in that moment are
// bounded by mochi's limit.
func (h *hook) deliveryAllowed(cl *mqtt.Client) bool {
	max := int(h.s.cfg.MaxInflight)
	if max >= int(h.s.cfg.serverInflight()) {
		return true // mochi enforces it
	}
	c := connOf(cl)
	if c == nil || c.service || c.subscribing.Load() || cl.State.Inflight.Len() < max {
		return true
	}
	atomic.AddInt64(&h.s.mq.Info.InflightDropped, 1)
	h.s.log.Debug("device inflight store full: message dropped", "client", cl.ID, "max", max)
	return false
}

// OnSubscribe marks the start of a SUBSCRIBE's ACL checks for
// deliveryAllowed, notes the filters Config.Auth denies (see deny.go) and
// refuses the filters over the client's subscription cap (see subcap.go).
func (h *hook) OnSubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	c := connOf(cl)
	if c == nil {
		return pk
	}
	c.subscribing.Store(true)
	allowed := h.noteDeniedFilters(cl, c, pk)
	return h.capSubscriptions(cl, c, pk, allowed)
}

// forget drops the identity of cl's session if it still belongs to cl.
func (h *hook) forget(cl *mqtt.Client) {
	if h.s.cfg.Auth == nil {
		return
	}
	h.mu.Lock()
	if sess := h.sessions[cl.ID]; sess != nil && sess.cl == cl {
		delete(h.sessions, cl.ID)
	}
	h.mu.Unlock()
}

// OnSessionEstablish runs just before mochi takes over an existing session
// with the same client ID and registers cl. It ends the connection
// registered under the client ID and waits for it (see lockAfterPrevious),
// then takes the client ID's gate, so an earlier connection's teardown
// (OnDisconnect to the end of mochi's attachClient, which unsubscribes and
// deletes the client by ID) cannot interleave with the registration, and
// numbers the connection.
func (h *hook) OnSessionEstablish(cl *mqtt.Client, _ packets.Packet) {
	c := connOf(cl)
	if c == nil || c.unlock != nil {
		return
	}
	if c.service && h.s.cfg.ServiceWritesPending > h.s.cfg.ClientWritesPending &&
		!h.enlargeQueue(cl, int(h.s.cfg.ServiceWritesPending), h.s.cfg.ConnectTimeout) {
		h.s.log.Warn("service client keeps the device outbound queue", "client", cl.ID,
			"identity", c.identity.Name, "queue", h.s.cfg.ClientWritesPending)
	}
	h.s.relayConnecting(cl, c)
	h.lockAfterPrevious(cl, c)
	h.dropForeignSession(cl, c)
	c.seq = h.seq.Add(1)
}

// dropForeignSession discards the session registered under cl's client ID
// when another identity created it: a persistent session belongs to the
// identity (Identity.Name) that made it, and a client that authenticates
// as someone else with the same client ID starts fresh, without the old
// subscriptions or the messages queued for them (issue 10 case 3). It runs
// under the client ID's gate, after the old connection has ended: mochi
// then finds no session to inherit. If the old connection has not ended
// (lockAfterPrevious gave up waiting), its session is only emptied: mochi
// still tears it down by ID, which must not remove cl.
func (h *hook) dropForeignSession(cl *mqtt.Client, c *conn) {
	old, ok := h.s.mq.Clients.Get(cl.ID)
	if !ok || old == cl {
		return
	}
	oc := connOf(old)
	if oc != nil && oc.identity.Name == c.identity.Name {
		return
	}
	h.s.mq.UnsubscribeClient(old)
	old.ClearInflights()
	if oc == nil || oc.ended() {
		h.s.mq.Clients.Delete(cl.ID)
	}
	var was string
	if oc != nil {
		was = oc.identity.Name
	}
	h.s.log.Info("session of another identity discarded: the client starts a fresh session",
		"client", cl.ID, "identity", c.identity.Name, "session_identity", was)
}

// lockAfterPrevious takes the gate of cl's client ID once the connection
// registered under that ID (the one cl takes over) has ended, so that a
// client ID's messages reach handlers in order across reconnects: mochi
// acknowledges a QoS 1 PUBLISH before handlers run, and the old
// connection's read loop may still be running one when the device, having
// seen the PUBACK, reconnects and publishes again.
//
// The old connection is disconnected as mochi's takeover would (its read
// loop ends after the packet it is handling) and awaited until its
// listener goroutine has finished (conn.done), without holding the gate,
// which the old connection's teardown takes. Under the gate no other
// connection can register, so the registered client is checked again;
// one that registered meanwhile is ended in turn. The wait is bounded by
// ConnectTimeout in total: a handler that runs longer (for example one
// blocked on something this connection's progress would release) is
// logged and no longer waited for, and the gate then orders the
// registration as before.
func (h *hook) lockAfterPrevious(cl *mqtt.Client, c *conn) {
	var timer *time.Timer // started with the first wait
	defer func() {
		if timer != nil {
			timer.Stop()
			refreshDeadline(cl, c)
		}
	}()
	for {
		old, oc := h.previous(cl)
		if old != nil {
			if timer == nil {
				timer = time.NewTimer(h.s.cfg.ConnectTimeout)
			}
			if !h.awaitEnd(cl, old, oc, timer.C) {
				c.unlock = h.gates.lock(cl.ID)
				return
			}
		}
		c.unlock = h.gates.lock(cl.ID)
		if old, _ := h.previous(cl); old == nil {
			return
		}
		c.release() // a connection registered while cl waited: end it too
	}
}

// refreshDeadline restarts the keepalive deadline that mochi set on c, the
// connection of cl, before authentication, as mochi does before every
// read: a wait for the previous connection must not use up the time that
// cl's CONNACK write and first read have.
func refreshDeadline(cl *mqtt.Client, c *conn) {
	var expiry time.Time // zero: no deadline (keepalive 0)
	if ka := time.Duration(cl.State.Keepalive) * time.Second; ka > 0 {
		expiry = time.Now().Add(ka + ka/2) // [MQTT-3.1.2-22]
	}
	_ = c.SetDeadline(expiry)
}

// previous returns the client registered under cl's client ID, other than
// cl, whose connection has not ended, and its conn; nil if there is none.
func (h *hook) previous(cl *mqtt.Client) (*mqtt.Client, *conn) {
	old, ok := h.s.mq.Clients.Get(cl.ID)
	if !ok || old == cl {
		return nil, nil
	}
	oc := connOf(old)
	if oc == nil || oc.ended() {
		return nil, nil
	}
	return old, oc
}

// awaitEnd disconnects old, the connection cl takes over, and waits until
// its listener goroutine has finished. It returns false if expired fired
// or the Server is closing first.
func (h *hook) awaitEnd(cl, old *mqtt.Client, oc *conn, expired <-chan time.Time) bool {
	// As mochi's takeover does later (then a no-op): an MQTT 5 client
	// learns why, and the socket is closed, so that the read loop ends
	// after the packet it is handling. The DISCONNECT write is bounded by
	// the old connection's keepalive deadline, as in mochi.
	_ = h.s.mq.DisconnectClient(old, packets.ErrSessionTakenOver)
	select {
	case <-oc.done:
		return true
	case <-h.s.ctx.Done():
		return false
	case <-expired:
	}
	h.s.log.Warn("taking over a connection whose handler is still running: its messages may be handled after the new connection's",
		"client", cl.ID, "old_remote", old.Net.Remote, "remote", cl.Net.Remote, "waited", h.s.cfg.ConnectTimeout)
	return false
}

// OnSessionEstablished calls Config.OnConnect and releases the client ID's
// gate taken by OnSessionEstablish.
func (h *hook) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	c := connOf(cl)
	if c == nil {
		return
	}
	h.s.relaySession(cl.ID, true)
	if cb := h.s.cfg.OnConnect; cb != nil {
		cb(c.info(cl, time.Now()))
	}
	c.release()
}

// OnDisconnect takes the client ID's gate (released by the listener when
// mochi has finished with the connection), forgets an expired session and
// calls Config.OnDisconnect.
func (h *hook) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	c := connOf(cl)
	if c == nil {
		return // the inline client
	}
	if c.unlock == nil {
		c.unlock = h.gates.lock(cl.ID)
	}
	if expire {
		h.forget(cl)
		if cur, ok := h.s.mq.Clients.Get(cl.ID); !ok || cur == cl {
			h.s.relaySession(cl.ID, false) // mochi deletes the clean session next
		}
	}
	cause := disconnectCause(cl.StopCause(), err)
	if errors.Is(cause, ErrTooLarge) {
		h.packetsTooLarge.Add(1)
	}
	if cb := h.s.cfg.OnDisconnect; cb != nil {
		if c.out != nil {
			if slow := c.out.slowConsumer(); slow != nil {
				cause = slow
			}
		}
		if cause != nil && h.s.closed.Load() && !errors.Is(cause, ErrTakenOver) {
			// Close cuts connections itself (see listener.Close), so
			// their read loops end with "use of closed connection".
			cause = ErrClosed
		}
		cb(c.info(cl, time.Now()), cause)
	}
}

// info describes c, the connection of cl, for a callback.
func (c *conn) info(cl *mqtt.Client, at time.Time) ConnInfo {
	return ConnInfo{
		ClientID:   cl.ID,
		RemoteAddr: cl.Net.Remote,
		Identity:   c.identity,
		Seq:        c.seq,
		At:         at,
		TLS:        c.tls != nil,
	}
}

// setOwner gives c's connection the pending-bytes cap of its identity
// (see outConn) and names it for the slow-consumer log line.
func (c *conn) setOwner(limit int) {
	if c.out != nil {
		c.out.setOwner(limit, fmt.Sprintf("%s (%s)", c.identity.ClientID, c.identity.Name))
	}
}

// release releases the client ID's gate if c holds it.
func (c *conn) release() {
	if c.unlock != nil {
		c.unlock()
		c.unlock = nil
	}
}

// gates serialises, per client ID, the registration of a new connection in
// mochi with the teardown of an earlier connection with the same ID. mochi
// removes a clean session's client and subscriptions by client ID after
// OnDisconnect; without the gate that cleanup can run after a quick
// reconnect registered, leaving the new connection open but deaf.
type gates struct {
	mu sync.Mutex       // guards m and every gate's refs
	m  map[string]*gate // by client ID; present while held or awaited
}

type gate struct {
	mu   sync.Mutex // held by the connection registering or tearing down
	refs int        // holders plus waiters
}

// lock takes the gate of id, waiting while another connection holds it,
// and returns the function that releases it.
func (g *gates) lock(id string) (unlock func()) {
	g.mu.Lock()
	if g.m == nil {
		g.m = make(map[string]*gate)
	}
	e := g.m[id]
	if e == nil {
		e = &gate{}
		g.m[id] = e
	}
	e.refs++
	g.mu.Unlock()
	e.mu.Lock()
	return func() {
		e.mu.Unlock()
		g.mu.Lock()
		if e.refs--; e.refs == 0 {
			delete(g.m, id)
		}
		g.mu.Unlock()
	}
}

// disconnectCause maps mochi's reasons for a disconnect to the errors
// documented on Config.OnDisconnect. stop (the reason the client was
// stopped first) wins over err (what ended its read loop).
func disconnectCause(stop, err error) error {
	var code packets.Code
	switch {
	case errors.As(stop, &code), errors.As(err, &code):
		switch {
		case code.Code < packets.ErrUnspecifiedError.Code:
			return nil // DISCONNECT, with or without will
		case code.Code == packets.ErrSessionTakenOver.Code:
			return ErrTakenOver
		case code.Code == packets.ErrServerShuttingDown.Code:
			return ErrClosed
		case code.Code == packets.ErrPacketTooLarge.Code:
			return ErrTooLarge
		case code.Code == packets.ErrNotAuthorized.Code:
			return ErrNotAuthorized
		default:
			return fmt.Errorf("%w: %s", ErrProtocol, code.Reason)
		}
	case err != nil:
		return readFailure(err)
	case stop != nil:
		return readFailure(stop)
	}
	return nil
}

// readFailure classifies an error that ended a client's read loop: a
// failing or closed connection, or bytes that are not MQTT.
func readFailure(err error) error {
	var netErr net.Error
	var closeErr *websocket.CloseError
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
		errors.As(err, &netErr) || errors.As(err, &closeErr) {
		return fmt.Errorf("%w: %w", ErrConnectionLost, err)
	}
	return fmt.Errorf("%w: %w", ErrProtocol, err)
}

// OnClientExpired releases an expired persistent session. mochi only
// deletes the client: without this its subscriptions would stay in the
// topic index (and match in HasSubscribers) and its queued messages in the
// inflight count forever.
//
// Known gap: mochi's expiry sweep deletes the client by ID right after this
// hook, outside any gate, so a reconnect that takes over the expiring
// session in that instant (between the sweep's snapshot and its delete)
// is removed from the registry. The window is the sweep's iteration, once
// per session lifetime; closing it needs a change in mochi.
func (h *hook) OnClientExpired(cl *mqtt.Client) {
	h.forget(cl)
	h.s.relaySession(cl.ID, false)
	h.s.mq.UnsubscribeClient(cl)
	cl.ClearInflights()
}

// OnSubscribed calls Config.OnSubscribe with the granted filters.
func (h *hook) OnSubscribed(cl *mqtt.Client, pk packets.Packet, reasonCodes []byte) {
	if c := connOf(cl); c != nil {
		c.subscribing.Store(false)
		h.reportRefused(cl, c, pk, reasonCodes)
		h.reportDeniedFilters(cl, c)
	}
	cb := h.s.cfg.OnSubscribe
	if cb == nil || cl.Net.Inline {
		return
	}
	granted := make([]string, 0, len(pk.Filters))
	for i, f := range pk.Filters {
		if i < len(reasonCodes) && reasonCodes[i] < packets.ErrUnspecifiedError.Code {
			granted = append(granted, f.Filter)
		}
	}
	if len(granted) > 0 {
		cb(cl.ID, granted)
	}
}

// clip shortens client-controlled strings for logging.
func clip(s string) string {
	const n = 256
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
