// Package broker is Umbra's embedded MQTT broker, built on mochi-mqtt v2.
//
// A Server speaks MQTT 3.1.1 and MQTT 5 over TCP, over TLS (optionally
// mutual TLS) and over WebSocket (paths "/mqtt" and "/"), with QoS 0, 1
// and 2 in both directions (a QoS 2 PUBLISH gets PUBREC, PUBREL is
// answered with PUBCOMP; a QoS 2 delivery waits for the subscriber's
// PUBREC and PUBCOMP), retained messages and persistent sessions: a client
// that connects with clean session off (or an MQTT 5 session expiry) keeps
// its subscriptions and receives the QoS 1 and 2 messages published while
// it was offline, for up to Config.SessionExpiry. With Config.Store,
// retained messages and persistent sessions survive a restart (see
// Durability). The broker knows nothing about
// device shadows; cmd/umbra wires it to the shadow engine through Publish,
// Subscribe and the Config callbacks. mochi's types do not leave this
// package.
//
// # Lifecycle
//
// Open binds the listeners synchronously (Addr, WSAddr and TLSAddr report
// the real ports) and starts serving. Close disconnects every client, closes the
// listeners and waits for all connection goroutines; it is idempotent, and
// Publish and Subscribe return ErrClosed afterwards.
//
// # Connections, reconnects and presence
//
// Config.OnConnect and Config.OnDisconnect receive a ConnInfo whose Seq
// numbers connections in the order they registered. A client that
// reconnects with the same client ID takes over its old connection: the
// broker disconnects the old connection and waits, for up to
// ConnectTimeout, until it has been torn down before it registers the new
// one, so the old connection's OnDisconnect normally comes first. When the
// old connection's subscription handler runs longer than that, the broker
// logs a warning and proceeds, and the new connection's OnConnect can
// arrive before the old one's OnDisconnect; a consumer tracking presence
// therefore keeps the highest Seq per client ID and ignores older
// disconnects. Callbacks for one client ID never run concurrently.
//
// A persistent session belongs to the identity (Identity.Name) that
// created it: a client that authenticates as another identity with the
// same client ID starts a fresh session (CONNACK session present 0),
// without the old session's subscriptions or queued messages, which are
// discarded. The same identity gets its session back.
//
// mochi tears down a clean session's old connection by client ID (it
// unsubscribes the ID's filters and deletes the ID from its registry) after
// OnDisconnect. The broker serialises, per client ID, that teardown with
// the registration of a new connection, so a quick reconnect never leaves
// the new connection open but receiving nothing.
//
// # TLS
//
// Config.TLSAddr with Config.TLSConfig adds an MQTT-over-TLS listener. The
// handshake must complete within ConnectTimeout (it counts towards the
// CONNECT deadline); failures are counted in Stats.TLSHandshakesFailed and
// logged at debug level. For mutual TLS, the caller's tls.Config requires
// and verifies client certificates; an Authenticator reads the verified
// chain from Credentials.TLS, for example to match the certificate's
// common name to the client ID.
//
// # WebSocket origins
//
// The WebSocket listener refuses, with a JSON 403, a handshake whose
// Origin header names another host than the request's Host (ports are
// ignored) and is not in Config.WSAllowedOrigins: a page the user visits
// cannot use the broker from their browser. Handshakes without Origin
// (MQTT libraries, devices) are not browsers' and are accepted.
//
// # In-process subscribers
//
// Subscribe registers a HandlerFunc that receives the publisher's client
// ID (mochi's pk.Origin; "" for Publish). Handlers run synchronously on the
// publishing client's goroutine, and a slow handler slows only the device
// that published (natural backpressure). Do not make handlers
// asynchronous, and do not call Close from one. For a QoS 1 PUBLISH the
// broker sends PUBACK before handlers run, so PUBACK means "received by the
// broker", not "processed"; for QoS 2, PUBREC is sent before handlers run
// and a message is delivered (and handled) once, on its first PUBLISH.
// Handlers see messages as QoS 0 regardless of the publish QoS.
//
// The retained message is stored before PUBACK, the delivery to
// subscribers happens after it: a client that subscribes right after a
// publisher saw its PUBACK may receive a retained message twice, once as
// retained and once live. Subscribers of retained state must be
// idempotent (the shadow topics are: every document carries its version).
//
// A client ID's messages reach handlers in order, also across reconnects
// and takeovers: a new connection with the client ID is registered, and
// its messages read, only after the old connection's running handler has
// returned and the old connection has been torn down (a device that
// reboots right after the PUBACK of its last report cannot have its next
// report handled first). The old connection's read loop stops after the
// packet it is handling; QoS 1 messages it had received but not yet
// acknowledged are resent by the client. The wait is bounded by
// Config.ConnectTimeout, after which the broker logs a warning and lets the
// new connection proceed, so ordering then holds only for handlers that
// finish within ConnectTimeout. A handler may publish, also to the
// publishing client, without delaying a reconnect.
//
// # Cluster relay
//
// In cluster mode a Relay (SetRelay; broker/natsbridge over NATS) joins
// this node's broker to the other nodes'. The broker tells it of every
// message published here (Relay.Published: clients' PUBLISHes that Auth
// allowed, wills, Publish; not $SYS), of each filter's first and last
// client subscription (Relay.Interest, from mochi's topic index: see
// third_party/mochi/PATCHES.md, patch 11), of the sessions it holds
// (Relay.Session), and lets it end a client's session elsewhere before
// the client's CONNACK (Relay.Connecting). Deliver hands this node's
// clients a message another node published: not the in-process
// subscribers, which serve this node's clients, and not the Relay again.
// When Relay.Published reports that the Relay serves a message's shared
// subscriptions, they get it only through Deliver with their filter, so
// that one member in the whole cluster receives it. Release ends a session here because its client
// connected to another node: DISCONNECT 0x8E "session taken over",
// OnDisconnect with ErrTakenOver, subscriptions and queued messages
// dropped; Handoff does the same and returns the session, which the
// node the client connected to adopts when Relay.Connecting returns it
// (the client inherits it as after a restart: session present 1). Retain
// applies a retained message from a shared store without delivering it;
// DeliverLive delivers a message whose retained state comes from such a
// store without storing it (its retain flag reaches Retain As Published);
// RetainedMessages lists the node's retained messages for a store it
// joins.
// PublishLocal publishes like Publish without the Relay: for
// what every node publishes for itself from shared state (device
// presence).
//
// # Limits and edge validation
//
// Every packet is capped at Config.MaxPacketSize (default 128 KiB); a client
// sending a larger one is disconnected. A connection must send CONNECT
// within Config.ConnectTimeout. A client ID may be any UTF-8 string MQTT
// allows up to Config.MaxClientIDLength bytes (default 256) but "inline",
// which mochi reserves; other CONNECTs are refused with "client
// identifier not valid" and counted in Stats.ClientIDsRefused. A client
// that sends an empty client ID with a clean session gets one assigned
// (MQTT 5 clients learn it from CONNACK). Which identity may use which
// client ID is Config.Auth's decision. A client's outbound queue holds Config.ClientWritesPending
// packets and its inflight store Config.MaxInflight unacknowledged QoS 1
// messages; excess messages are dropped and counted in
// Stats.MessagesDropped and Stats.InflightDropped. Retained messages do
// not expire.
//
// A session holds at most Config.MaxSubscriptions filters (devices,
// default 100) or Config.ServiceSubscriptions (service clients, default
// 10,000), also while it is offline: further filters get SUBACK code 0x97
// "quota exceeded" (MQTT 5) or 0x80 (MQTT 3.1.1) and are counted in
// Stats.SubscriptionsRefused; the first refusal per connection is logged.
// Subscribing again to a filter the session has takes no new place.
//
// A connection may send Config.MaxMessageRate PUBLISHes a second on
// average and Config.MaxMessageBurst at once (service clients:
// ServiceMessageRate and ServiceMessageBurst; defaults 100/s and 1,000,
// 5,000/s and 10,000), as a token bucket per connection. A PUBLISH beyond
// it is refused: QoS 0 dropped, MQTT 5 QoS 1 and 2 with PUBACK or PUBREC
// 0x96 "message rate too high", MQTT 3.1.1 acknowledged and dropped (a
// disconnect would make the device reconnect and resend at once); counted
// in Stats.RateLimited and logged once per episode (until the client's
// bucket is full again). Requests on Config.RequestFilters are never
// refused by it: the service that handles them has its own limit and
// answer (the shadow engine's 429, the Jobs API's RequestThrottled). See
// ratelimit.go.
//
// A CONNECT over Config.MaxConnsPerIdentity connections of one identity
// is refused (Stats.IdentityConnsRefused); a client that sends a packet
// over MaxPacketSize is disconnected (Stats.PacketsTooLarge).
//
// Config.RequestFilters names request topics (Umbra wires the shadow's
// state/+/update, /get and /delete): the retain flag of a PUBLISH or a
// will on them is dropped, so a request is delivered and handled but never
// stored or replayed to later subscribers (Stats.RetainIgnored).
//
// # Shared subscriptions, $ topics and $SYS
//
// A shared subscription "$share/<group>/<filter>" delivers each matching
// message to one member of the group, in turn, connected members first
// (see shared.go); the ACL checks <filter>. As MQTT requires, a filter
// whose first level is a wildcard ("#", "+/…", also in a shared
// subscription) matches no topic starting with "$", live or retained.
//
// Every Config.SysInterval (default 10 s, as mosquitto's sys_interval)
// the broker publishes its statistics, retained, on $SYS/broker/…
// (mochi's set: version, uptime, clients, messages, bytes, subscriptions,
// retained, memory and goroutines). Who may read them is Config.Auth's
// decision; only the broker publishes there: a client's PUBLISH to $SYS
// is refused as denied (see deny.go), and Publish refuses $SYS topics.
// Each refresh reads runtime.MemStats, which stops the world: 6 to 36 µs
// with 2,000 connections on the project's loaded 2-core machine
// (BenchmarkSysRefresh), negligible every 10 s. Stats is the way for
// Umbra's own code and /metrics to read the counters.
//
// # Slow consumers
//
// A publisher never blocks on a slow subscriber: not the shadow engine,
// not the rollout planner, not another client. A write to a client never
// waits for its socket: what the kernel does not take at once is kept as
// the connection's pending bytes and written by a goroutine that exists
// only while there is a backlog (see outconn.go: mochi writes under the
// client's lock, which publishers need for packet IDs). A client whose
// pending bytes would exceed Config.MaxPendingBytes (devices, default
// twice MaxPacketSize: 256 KiB) or Config.ServicePendingBytes (service
// clients, default 16 MiB), or whose socket accepts nothing for
// Config.WriteTimeout (default 30 s) while bytes are pending, is
// disconnected as a slow consumer, with or without keepalive: counted in
// Stats.SlowConsumers, logged once at warning level, and reported to
// OnDisconnect with a cause matching ErrSlowConsumer. Stats.PendingBytes
// is the backlog of all connections now. A persistent session keeps its
// unacknowledged QoS 1 messages and gets them again on reconnect.
//
// Deadlines set on a connection by mochi (keepalive) apply to reads only,
// and are armed up to a second (at most an eighth of the keepalive and a
// half) later than asked, so that the timer is not reset for every packet:
// a silent client is disconnected at most that much after MQTT's
// keepalive and a half, never before. The TLS handshake and CONNECT
// deadline (ConnectTimeout) is exact. Reads and writes on TCP sockets are
// raw non-blocking system calls (see outconn_unix.go). When mochi closes a connection that has a backlog (after a DISCONNECT
// or a refusing CONNACK), the backlog is still written for up to a
// second; Close of the Server drops it.
//
// # Read loops
//
// Once a plain TCP client is connected (after CONNACK), its packets are
// read by one of Config.ReadLoops read loops (default one per two
// processors, GOMAXPROCS/2, at least one; Linux only), not by a goroutine
// of its own: its socket leaves the Go runtime's poller for the loop's
// epoll instance, and the loop reads each ready
// socket once and handles its packets on one hot goroutine, without a
// goroutine wake-up and a second read(2) per message (see ioloop_linux.go
// and docs/benchmarks.md §10). TLS and WebSocket clients, and every
// client until CONNACK, keep their goroutine; Config.ReadLoops -1 keeps it
// for all.
//
// A packet's handling may block. Where the broker knows it will (a
// Subscribe handler is about to run, as the shadow engine's, which
// commits; the ledger waits for a commit of a retained message, a
// persistent session's subscription or its queued message), it hands the
// loop to a new goroutine first; anything else that holds a loop for more
// than about 2 ms is handed off by a monitor. Either way the blocked
// goroutine finishes that connection's packets already read, in order,
// before the loop reads its socket again, and other connections' requests
// go on (and share the next commit). So a slow handler holds up only its own
// connection, as with a goroutine per connection (counted in
// Stats.LoopHandoffs; Stats.LoopConns is the connections loops serve). In a
// loop the keepalive is applied by the same monitor every quarter second:
// a silent client is disconnected at most that much after its keepalive
// and a half.
//
// A delivery that a read loop's handling makes (a device's telemetry for
// an integrator) is written at the end of the loop's batch, together with
// the batch's other deliveries for that subscriber, in one write and
// without waking the subscriber's write loop; each publisher's messages
// stay in order (see ioloop_linux.go, "Deferred deliveries").
//
// Messages queued for a client are written together: before writing the
// last packet in its queue, the client's write loop lets the goroutines
// that are already runnable (other publishers) queue theirs, and writes
// up to Config.WriteBufferSize bytes at once (mochi patch 13), so a
// subscriber of many publishers costs one system call per batch, not per
// message. Nothing waits for more messages when nothing else is runnable.
//
// # Persistent sessions, retained messages and their limits
//
// A persistent session holds at most Config.MaxInflight messages
// (ServiceInflight for service clients) and Config.MaxQueuedBytes payload
// bytes (ServiceQueuedBytes), counting both the messages queued while it is
// offline and those sent and not yet acknowledged. When either is reached,
// further messages for the session are dropped, the oldest kept (MQTT has
// no way to tell their publisher): counted in Stats.InflightDropped
// (messages) and Stats.QueueBytesDropped (bytes), with one log line when
// a session reaches its bytes limit; other subscribers are not affected.
//
// Clients' retained messages are capped by Config.MaxRetained and
// MaxRetainedBytes (the broker's own, from Publish, are not counted). A
// PUBLISH that would retain a new topic beyond them is refused with reason
// code 0x97 "quota exceeded" (MQTT 5, QoS 1 and 2: PUBACK or PUBREC; the
// message is not delivered), or delivered without being retained (MQTT
// 3.1.1, QoS 0, wills), counted in Stats.RetainedRefused and logged once
// when the limit is reached. Replacing or clearing a retained message
// always works, even if it grows the bytes beyond the limit.
//
// With Config.Auth, an identity has at most Config.MaxSessionsPerIdentity
// persistent sessions, connected or offline; a CONNECT that would create
// one more is refused with CONNACK 0x97 "quota exceeded" (MQTT 3.1.1: 3
// "server unavailable"), counted in Stats.SessionsRefused and logged once
// per identity until it is below again. Clean sessions and a client
// resuming (or replacing) its own session are not affected.
//
// # Durability
//
// With Config.Store, the broker keeps in it the retained messages clients
// published and every persistent session: client ID, owning Identity,
// protocol version, session expiry, disconnect time, subscriptions with
// their options (QoS, no local, retain as published, retain handling,
// subscription identifier) and the QoS 1 and 2 messages queued for it or
// sent to it and not yet acknowledged, with their packet identifiers and
// QoS 2 state. Open restores all of it before the listeners serve, and
// fails if the Store cannot be read: the broker never starts without the
// state it acknowledged. What is on disk when:
//
//   - A client's retained message (set, replaced or cleared) is on disk
//     before its PUBACK or PUBREC; at QoS 0, before the client's next
//     packet is read.
//   - A client's QoS 1 or 2 PUBLISH is on disk, for every persistent
//     session (offline or connected) it is queued for, before its PUBACK
//     or PUBREC. Only a PUBLISH that matches a persistent session's QoS 1
//     or 2 subscription waits for the disk: a shadow request does only if
//     some persistent session subscribes to it (an operator's monitor on
//     # with clean session off, say), and then shares the commit with
//     every request arriving meanwhile.
//   - Granted subscriptions are on disk before SUBACK, removed ones before
//     UNSUBACK.
//   - A QoS 2 message sent to a persistent session is on disk with its
//     packet identifier before it is written to the client, so a receiver
//     that gets it again after a crash recognises it.
//   - Evict returns once the evicted sessions are deleted from disk.
//   - Everything else is written lazily: within a second, or with the next
//     commit a caller waits for. That is subscribers' acknowledgements
//     (PUBACK, PUBREC, PUBCOMP), the packet identifiers of QoS 1 messages
//     sent, sessions created, resumed, disconnected, replaced by a clean
//     session or expired, and messages not published by a client: the
//     broker's own (Publish: the shadow engine's replies and deltas),
//     wills, and retained messages sent to a session when it subscribes.
//     A crash can therefore send an acknowledged QoS 1 message again (QoS
//     1 allows duplicates), send a QoS 1 message with a new packet
//     identifier, bring back a session that ended just before it, and
//     lose the broker's own messages queued for offline sessions (a
//     device gets its current delta when it subscribes, and its shadow
//     with get).
//   - Not kept: the broker's own retained messages (Publish with retain;
//     their publisher restores them, as Umbra does for rollout status),
//     the will of a client connected at a crash (not sent), the QoS 2 state
//     of messages clients publish (a PUBREL after a restart completes the
//     exchange; the message was delivered when it arrived), and $SYS.
//
// A restored session expires its session expiry after its client
// disconnected (after the restart, for a client that was connected when
// the broker stopped); sessions and MQTT 5 messages that expired while the
// broker was down are dropped, and its queued messages are resent in the
// order they were queued.
//
// Writes are grouped: one goroutine commits everything changed since its
// last commit in one Store.Apply (one bbolt transaction and fsync), at
// once when someone waits for it; a commit writes the state at that
// moment, so a message queued and acknowledged in between is never
// written. If a commit fails, it is logged and counted in
// Stats.StoreErrors, the waiting callers learn it, and the next commit
// (retried with backoff) rewrites the whole state: meanwhile a client's
// PUBLISH queued for persistent sessions is refused (MQTT 5: PUBACK 0x83;
// MQTT 3.1.1: not acknowledged, so the client sends it again), while
// retained messages and subscriptions, already in effect, are acknowledged
// and logged as not stored.
//
// # Devices and service clients
//
// Both limits are sized for many idle devices. A service client, one that
// Config.Auth authenticated as an Identity without a Device (an operator
// or integrator subscribed to the whole fleet's topics), gets
// Config.ServiceWritesPending and Config.ServiceInflight instead (8,192
// and 16,384 by default), so that a burst such as a fleet's accepted
// updates reaches it complete. Without Auth every client is a device. A
// device whose inflight store is full receives no further messages, QoS 0
// included, until it acknowledges some.
//
// mochi sizes both limits for the whole server, the queue when a
// connection is accepted, before CONNECT. The broker sets mochi's inflight
// limit to the service one and enforces the device limit in its ACL hook,
// and replaces a service client's queue after authentication, before the
// client is registered, from the client's own write loop (see queue.go;
// Client.SetOutboundCapacity, mochi patch 14). If that does not happen
// within ConnectTimeout (the connection is closing), the client keeps the
// device queue and a warning is logged.
//
// # Authentication and authorization
//
// Config.Auth, an Authenticator, authenticates CONNECTs and authorizes
// every PUBLISH, SUBSCRIBE filter, delivery and will topic. Nil allows
// everything. A shared subscription "$share/<group>/<filter>" is
// authorized as <filter>. A CONNECT whose will topic is denied is refused
// with "not authorized" (5 for MQTT 3.1.1, 0x87 for MQTT 5). An
// Authenticator with AllowEpoch (identity's has it) lets each connection
// remember the last topic it was allowed to publish to: the next PUBLISH to
// it is not asked for again while the epoch and the connection's session
// stay (a revocation or a new policy moves the epoch). Denials are always
// asked for.
//
// A denied operation never ends the connection (see deny.go). A denied
// PUBLISH, and any client's PUBLISH to $SYS, is dropped (neither delivered
// nor retained): QoS 0 silently, QoS 1 and 2 with PUBACK or PUBREC 0x87
// for MQTT 5 and with the usual PUBACK, or PUBREC and PUBCOMP, for MQTT
// 3.1.1, as mosquitto does. A denied SUBSCRIBE filter gets SUBACK 0x87
// (0x80 for MQTT 3.1.1) and the packet's other filters are granted. Each
// denial is counted (Stats.PublishesDenied, Stats.SubscriptionsDenied) and
// logged at warning level once per connection and topic or filter, for up
// to 16 distinct ones per connection.
//
// A zero-length password is a password (mochi would refuse it as a
// protocol error): Auth decides, with Credentials.Password empty rather
// than nil. An MQTT 3.1.1 client only ever gets CONNACK return codes 0 to
// 5: a refused login gets 5 "not authorized", a malformed CONNECT (for
// example with the reserved flag set) no CONNACK at all, as 3.1.1
// requires, and the connection is closed.
//
// # Memory
//
// Defaults are chosen for many idle devices: a small outbound queue
// (64 packets), a 256-byte read buffer and a 256-message inflight store
// (mochi's defaults cost about 90 KB per idle connection, mostly an
// 8192-slot outbound queue, which only service clients get). What remains is dominated by mochi's two
// goroutines per connection: the reader idles about 6 KB deep, so its
// stack stays at 16 KB once a packet has been handled, and the writer's
// stack is 4 KB. BenchmarkIdleConnections measures the total: about 25 KB
// per idle connection that only connected, about 34 KB per device that
// also subscribed to its own topics and published once. The non-blocking
// writes and raw reads (see Slow consumers) add about 0.4 KB of heap per
// connection and no goroutine: an idle connection has no pending bytes and
// no writer.
//
// # mochi
//
// The broker corrects a number of mochi's behaviours (the CONNACK codes,
// wills without an ACL check, per-client queue and inflight sizes,
// takeover order, session ownership, expiry, subscription caps, shared
// subscription turns, writes that block publishers) and builds on a
// patched copy of mochi (third_party/mochi/PATCHES.md). docs/upstream.md
// indexes every such workaround with its reason, its test and the
// upstream change that would remove it; TestMochiVersion fails when the
// mochi version changes, so that an upgrade re-reads that index.
//
// # Errors
//
// Open wraps ErrInvalidConfig (including TLSAddr without TLSConfig, or a
// TLSConfig without a certificate), the Store's Load error, or the listen
// error. Close returns an error wrapping the Store's if its last commit
// failed. Publish and Subscribe
// return ErrClosed, or wrap ErrInvalidTopic, ErrInvalidQoS, ErrTooLarge or
// ErrNilHandler. Config.OnDisconnect receives nil for a clean DISCONNECT,
// or an error matching ErrClosed, ErrTakenOver, ErrTooLarge,
// ErrNotAuthorized, ErrProtocol or ErrConnectionLost.
package broker
