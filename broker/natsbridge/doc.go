// Package natsbridge carries MQTT messages between the brokers of an
// Umbra cluster over NATS core subjects (issue 15, design items 2 and 4):
// a message published on one node reaches the subscribers connected to
// every other node, and a device that connects to another node takes its
// session over there.
//
// # Wiring
//
// Each node opens its broker, then its bridge, before clients connect:
//
//	brk, err := broker.Open(ctx, brokerCfg)
//	br, err := natsbridge.Open(ctx, natsbridge.Config{
//		Broker: brk, NodeID: "n1", URL: "nats://h1:4222,nats://h2:4222", Logger: log,
//	})
//	defer brk.Close(ctx)
//	defer br.Close(ctx) // deferred last, runs first
//
// Open fails at once when no NATS server is reachable; afterwards the
// bridge reconnects by itself. Config.Conn takes a connection the caller
// owns instead of URL. Stats feeds /metrics:
//
//	m.RegisterBridge(func() metrics.BridgeStats { return metrics.BridgeStats(br.Stats()) })
//
// # Model
//
// The bridge is the broker's broker.Relay. Every message published on the
// node (a client's PUBLISH that the ACL allowed, a will, or an in-process
// Publish such as the shadow engine's accepted and delta messages) is
// published on NATS, on the subject of its topic, by one goroutine from a
// bounded buffer (Config.OutboundBuffer): a slow or lost NATS link never
// slows a local client; what does not fit is dropped and counted
// (Stats.OutDropped). $SYS topics stay on their node.
//
// Delivery is interest-based: a node subscribes on NATS only to the
// subjects of the filters its clients hold (one subscription per subject
// however many clients share it, two for a filter ending in "#"), and
// unsubscribes when the last local subscriber of a filter goes (UNSUBSCRIBE,
// a clean session's end, a session expired, evicted or taken over). The
// broker reports filters from its topic index, so the subscriptions follow
// exactly. In-process subscriptions (the shadow engine's requests) are not
// interest: a device's requests are handled by the node it is connected
// to. Up to Config.MaxSubscriptions NATS subscriptions are held; further
// filters get nothing from other nodes (Stats.SubscriptionsRefused).
//
// A message from NATS is delivered with broker.Server.Deliver to the
// node's clients only: not to its in-process subscribers, and never
// published again. The broker's ACL is checked for each recipient, as for
// a local message, and offline persistent sessions queue it. A node drops
// the messages it published itself (every message carries its origin:
// node ID and a random boot number) and the second copy of a message that
// two of its subscriptions matched (a sequence number per origin;
// Stats.Duplicates).
//
// A shared subscription "$share/<group>/<filter>" is a NATS queue
// subscription on each node with members, in a queue group named after the
// group and the filter, so NATS hands each message to one node, whose
// broker hands it to one local member: once in the cluster. While NATS is
// down each node serves its own members.
//
// # Session takeover
//
// A node subscribes to <Prefix>.s.<client ID> for every session it holds.
// When a client connects to another node, that node's broker asks on the
// subject (a NATS request) before it completes the CONNECT; the node
// holding the session ends it with broker.Server.Handoff (MQTT 5
// DISCONNECT 0x8E "session taken over", OnDisconnect with
// broker.ErrTakenOver, the session dropped there) and then replies. The old connection's OnDisconnect therefore comes before
// the new one's OnConnect, as within one node. When no node holds the
// session NATS answers "no responders" at once, so a connect costs one
// NATS round trip; a reconnect to the node that holds the session is a
// local takeover, which the node answers itself (and any other node that
// still holds a session of the client, say one restored from its store,
// releases it too). An offline persistent session is released like a
// connected one. A session's subscription reaches the NATS
// server a moment (one flush) after its client connected: a client that
// connects to a second node within that moment keeps both sessions until
// its next connect.
//
// A persistent session moves with its client: the holder ends it with
// broker.Server.Handoff instead of Release, and its reply carries the
// session (header Umbra-Session: 1, the JSON of broker.SessionState: the
// session, its subscriptions and the QoS 1 and 2 messages of its inflight
// store with their packet identifiers). The connecting node's broker
// adopts it (Relay.Connecting returns it) unless the client starts clean
// or authenticated as another identity: CONNACK session present 1, the
// subscriptions, and the queued messages sent again. A session whose JSON
// exceeds the connection's maximum payload (1 MB by default) travels whole
// through the JetStream object store umbra_handoff (Config.JetStream set;
// the reply's header Umbra-Session-Object names the object, which the
// receiver reads and deletes; objects expire after ten minutes;
// Stats.HandoffObjects); without JetStream, or if the store fails, it
// travels with its oldest queued messages only (Stats.HandoffDropped
// counts the rest). A reply that cannot be fetched or decoded, or carries
// another client's session, is refused (Stats.HandoffRefused) and the
// client starts fresh.
//
// # Subjects and headers
//
// A message's subject is <Prefix>.m.<level>.<level>…, one token per topic
// level: the bytes A-Z, a-z, 0-9, '-' and '_' stay, every other byte
// (including '.', spaces, '*', '>' and '%') becomes %XX, and an empty
// level is "%". The mapping is injective and reversible, and MQTT's
// wildcards become NATS's ("+" is "*", a final "#" is ">" plus its parent
// level), so NATS matches subjects as MQTT matches topics (FuzzSubject
// checks all three). The header Umbra-Msg holds "1 <origin> <seq> <qos>
// <retain> <shared>"; Umbra-Props the MQTT 5 properties kept (payload
// format, content type, response topic, correlation data, user
// properties, message expiry) as base64url JSON. A message without a valid
// Umbra-Msg header, of another version, or on a subject no topic maps to,
// is dropped and counted (Stats.InDropped).
//
// # Guarantees and limits
//
// NATS core is at most once: a message crosses nodes while NATS is
// connected, and a QoS 1 message is acknowledged by its publisher's node
// before it crosses (as within one node, PUBACK means "received by the
// broker"). Subscribers on the receiving node get it at their QoS from
// their node. While NATS is down, nats.go keeps up to 8 MB of published
// messages and sends them on reconnection; beyond that they are dropped.
// Without Config.JetStream, retained messages are kept by each node that
// receives them (a node with no subscriber to a topic when its retained
// message was published does not have it).
//
// # Retained messages
//
// With Config.JetStream retained messages are cluster-wide. The node
// where a retained message is published (a client's PUBLISH that its
// limits admitted, a will, or the broker's Publish; not PublishLocal)
// writes it to the retained bucket (Config.RetainedBucket, key
// r.<topic>; an empty payload deletes the key), in the order of its
// publishes, retrying while NATS is away; every node watches the bucket
// and applies each change with broker.Server.Retain, in the bucket's
// order, so every node ends with the bucket's retained messages and
// counts them toward its retained limits (checked on the publishing
// node: concurrent new topics on several nodes can overshoot by what is
// in flight). At Open the node loads the bucket before it serves and
// clears the retained messages it held (from its broker.Store) that the
// bucket no longer has, except at its first join (no joined.<node> key
// yet), when it first adds those of its own the bucket never had: a
// single broker moved into a cluster keeps its retained messages. A
// message from another node is then delivered with DeliverLive: its
// retained state comes from the bucket only, so the delivery does not
// store it, and its retain flag reaches MQTT 5 subscribers with Retain
// As Published as published. A record that cannot be decoded or
// applied is logged once, counted (Stats.RetainedCorrupt) and skipped.
//
// # Concurrency
//
// Open starts seven goroutines (outbound, two inbound, interest, sessions,
// takeover replies, connection watch), two more with Config.JetStream
// (the retained bucket's watch and writer), and Close stops them and waits;
// Close is idempotent. The methods the broker calls never wait for NATS,
// except Connecting (Config.TakeoverTimeout; up to Config.WriteTimeout
// more if the takeover link itself is stalled): interest and
// session changes are recorded and applied by their own goroutines,
// published messages go through the bounded outbound buffer, and whether
// NATS is up is sampled (nats.go answers that under the lock a write
// blocked on a stalled link holds). With Config.URL the bridge dials two
// connections, one for messages and one for session takeovers, so a
// backed-up message link never delays a connecting client; a write that
// makes no progress for Config.WriteTimeout drops the link, which is then
// redialled.
//
// # Errors
//
// Open wraps ErrInvalidConfig or the NATS connection error. Close returns
// an error only if detaching from the broker failed.
package natsbridge
