package broker

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Defaults applied by Open to zero Config fields.
const (
	DefaultMaxPacketSize       uint32 = 128 << 10
	DefaultSessionExpiry              = time.Hour
	DefaultConnectTimeout             = 10 * time.Second
	DefaultClientWritesPending int32  = 64
	DefaultReadBufferSize             = 256
	DefaultWriteBufferSize            = 2048
	DefaultMaxInflight         uint16 = 256
	// DefaultServiceWritesPending is the outbound queue of a service
	// client (an operator or integrator watching the fleet): mochi's own
	// default, 64 KiB of queue per service connection, enough for a burst
	// of one message from each of 8,192 devices.
	DefaultServiceWritesPending int32 = 8192
	// DefaultServiceInflight is the inflight store of a service client:
	// every QoS 1 message in its outbound queue is already inflight, so the
	// store holds a full queue plus as many messages written but not yet
	// acknowledged. It stays below mochi's 65,535 packet identifiers.
	DefaultServiceInflight uint16 = 2 * uint16(DefaultServiceWritesPending)
	// DefaultMaxConnsPerIdentity bounds simultaneous connections of one
	// authenticated identity (a device normally has one; a takeover briefly
	// has two).
	DefaultMaxConnsPerIdentity = 16
	// DefaultMaxTopicLength is the longest topic or filter accepted from a
	// client (AWS IoT's limit); Umbra's own topics are far shorter.
	DefaultMaxTopicLength = 256
	// DefaultServicePendingBytes caps the bytes written to a service
	// client's connection that its socket has not taken yet: a fleet's
	// burst of replies. A device's cap defaults to twice MaxPacketSize.
	DefaultServicePendingBytes = 16 << 20
	// DefaultWriteTimeout is how long a connection with pending bytes may
	// accept none before it is closed as a slow consumer.
	DefaultWriteTimeout = 30 * time.Second
	// DefaultMaxSubscriptions caps a device session's filters: a device
	// needs a handful for its own topics.
	DefaultMaxSubscriptions = 100
	// DefaultServiceSubscriptions caps a service session's filters: enough
	// for an integrator that picks devices one filter each. A subscription
	// costs about 2.6 KB, so about 26 MB at the cap.
	DefaultServiceSubscriptions = 10000
	// DefaultMaxClientIDLength is the longest client ID accepted, in bytes
	// (MQTT allows 65,535; AWS IoT 128): IDs are kept per session and
	// logged.
	DefaultMaxClientIDLength = 256
	// DefaultMaxRetained bounds the retained messages clients may hold.
	DefaultMaxRetained = 100_000
	// DefaultMaxRetainedBytes bounds the payload bytes of the retained
	// messages clients hold.
	DefaultMaxRetainedBytes int64 = 64 << 20
	// DefaultMaxQueuedBytes bounds the payload bytes of the messages a
	// device's persistent session holds (queued while offline or
	// unacknowledged): a device receives small messages.
	DefaultMaxQueuedBytes int64 = 1 << 20
	// DefaultServiceQueuedBytes is DefaultMaxQueuedBytes for a service
	// client's persistent session (an integrator collecting the fleet's
	// telemetry while it is offline).
	DefaultServiceQueuedBytes int64 = 64 << 20
	// DefaultMaxSessionsPerIdentity bounds the persistent sessions of one
	// authenticated identity. A device has one (its client ID is its
	// device ID); an integrator may keep one per worker.
	DefaultMaxSessionsPerIdentity = 100
	// DefaultMaxMessageRate is the PUBLISHes per second a device connection
	// may send on average (AWS IoT's limit per connection).
	DefaultMaxMessageRate = 100.0
	// DefaultMaxMessageBurst is how many PUBLISHes a device connection may
	// send at once: a device flushing readings it buffered while offline.
	DefaultMaxMessageBurst = 1000
	// DefaultServiceMessageRate is DefaultMaxMessageRate for service
	// clients, which publish for many devices (commands, bridges).
	DefaultServiceMessageRate = 5000.0
	// DefaultServiceMessageBurst is DefaultMaxMessageBurst for service
	// clients.
	DefaultServiceMessageBurst = 10000
	// DefaultSysInterval is how often the broker refreshes its $SYS
	// topics, as mosquitto's default sys_interval.
	DefaultSysInterval = 10 * time.Second

	// receiveMaximum is the number of unacknowledged QoS 1 and 2 PUBLISHes a client
	// may have in flight towards the broker.
	receiveMaximum uint16 = 64
	// maxTopicLen is the longest topic an MQTT packet can carry.
	maxTopicLen = math.MaxUint16
	// logKeyComponent is the slog attribute naming the component.
	logKeyComponent = "component"
)

// Errors returned by Server methods and reported to Config callbacks.
var (
	// ErrClosed is returned by Publish and Subscribe after Close, and is the
	// cause reported to OnDisconnect for clients disconnected by Close.
	ErrClosed = errors.New("broker: closed")
	// ErrInvalidConfig is wrapped by Open when Config is invalid.
	ErrInvalidConfig = errors.New("broker: invalid config")
	// ErrInvalidTopic is wrapped by Publish and Subscribe for an empty,
	// malformed or over-long topic or filter, and by Publish for a topic
	// with wildcards or under $SYS.
	ErrInvalidTopic = errors.New("broker: invalid topic")
	// ErrInvalidQoS is wrapped by Publish for a QoS above 2.
	ErrInvalidQoS = errors.New("broker: invalid qos")
	// ErrTooLarge is wrapped by Publish when the payload alone exceeds
	// MaxPacketSize, and reported to OnDisconnect for a client that sent a
	// packet larger than MaxPacketSize.
	ErrTooLarge = errors.New("broker: packet too large")
	// ErrNilHandler is returned by Subscribe for a nil handler.
	ErrNilHandler = errors.New("broker: nil handler")
	// ErrTakenOver is reported to OnDisconnect when a new connection with
	// the same client ID replaced the connection.
	ErrTakenOver = errors.New("broker: session taken over")
	// ErrNotAuthorized is reported to OnDisconnect for a client that
	// Evict disconnected. (A denied PUBLISH never disconnects.)
	ErrNotAuthorized = errors.New("broker: not authorized")
	// ErrProtocol is wrapped in the cause reported to OnDisconnect when the
	// broker disconnected a client for an MQTT protocol violation.
	ErrProtocol = errors.New("broker: protocol violation")
	// ErrConnectionLost is wrapped in the cause reported to OnDisconnect when
	// the network connection failed or was closed without DISCONNECT.
	ErrConnectionLost = errors.New("broker: connection lost")
	// ErrInvalidClientID is the reason a CONNECT is refused when its client
	// ID is longer than Config.MaxClientIDLength or is reserved.
	ErrInvalidClientID = errors.New("broker: invalid client id")
	// ErrSlowConsumer is wrapped in the cause reported to OnDisconnect for
	// a client disconnected because it did not read what it was sent: its
	// pending bytes exceeded MaxPendingBytes (ServicePendingBytes), or its
	// socket accepted nothing for WriteTimeout.
	ErrSlowConsumer = errors.New("broker: slow consumer")
)

// HandlerFunc receives messages for an in-process subscription made with
// Server.Subscribe. clientID is the MQTT client ID of the publisher, or ""
// for messages published in-process with Server.Publish (and for the
// broker's own $SYS messages). payload is shared with other subscribers:
// the handler must not modify it, but may keep it.
type HandlerFunc func(clientID, topic string, payload []byte)

// ConnInfo describes one client connection to Config.OnConnect and
// Config.OnDisconnect.
type ConnInfo struct {
	// ClientID is the MQTT client ID: any UTF-8 string (without NUL) of 1
	// to Config.MaxClientIDLength bytes, assigned by the broker for a
	// client that sent none.
	ClientID string
	// RemoteAddr is the peer's address, "ip:port".
	RemoteAddr string
	// Identity is what Config.Auth authenticated the connection as; without
	// Auth it holds only ClientID.
	Identity Identity
	// Seq numbers the connection: it is unique and increases with every
	// connection the Server accepts, so of two connections with the same
	// client ID the one with the higher Seq registered later. A consumer
	// keeping presence ignores an OnDisconnect whose Seq is lower than
	// the last OnConnect's for that client ID.
	Seq uint64
	// At is when the event being reported (connect or disconnect)
	// happened.
	At time.Time
	// TLS reports whether the connection came through the TLS listener.
	TLS bool
}

// Config configures a Server. The zero value of every field is valid and
// selects the default documented on the field.
type Config struct {
	// TCPAddr is the address of the MQTT-over-TCP listener, for example
	// ":1883" or "127.0.0.1:0". Empty means no TCP listener.
	TCPAddr string
	// WSAddr is the address of the MQTT-over-WebSocket listener, which
	// serves the paths "/mqtt" and "/". Empty means no WebSocket listener.
	WSAddr string
	// WSAllowedOrigins are the browser origins ("scheme://host[:port]")
	// whose pages may open WebSocket connections, besides pages
	// of the listener's own host (any port). A handshake without an Origin
	// header (not from a browser) is always allowed; one from any other
	// origin gets 403. Default none.
	WSAllowedOrigins []string
	// TLSAddr is the address of the MQTT-over-TLS listener, for example
	// ":8883". Empty means no TLS listener. It requires TLSConfig.
	TLSAddr string
	// TLSConfig configures the TLS listener and is required with TLSAddr
	// (and invalid without it). It must provide a server certificate
	// (Certificates, GetCertificate or GetConfigForClient). For mutual
	// TLS, set ClientAuth to tls.RequireAndVerifyClientCert and ClientCAs;
	// the verified chain then reaches Auth in Credentials.TLS. Open keeps
	// a clone, so later changes to TLSConfig have no effect.
	TLSConfig *tls.Config
	// TCPListener, WSListener and TLSListener are sockets the caller has
	// already bound, served instead of binding TCPAddr, WSAddr and TLSAddr
	// (which are then ignored): internal/server binds every listener
	// before it opens any component. The broker accepts on them from Open
	// on and closes them in Close; when Open fails, the caller closes
	// them. TLSListener
	// carries plain TCP; the broker adds TLS with TLSConfig.
	TCPListener, WSListener, TLSListener net.Listener

	// MaxPacketSize is the largest MQTT packet, in bytes, the broker
	// accepts; a client that sends a larger one is disconnected. As in
	// mochi, the size counts the packet without its 1 to 4 remaining-length
	// bytes. Default DefaultMaxPacketSize (128 KiB). There is no
	// "unlimited".
	MaxPacketSize uint32
	// SessionExpiry is the longest time a persistent session (MQTT 3.1.1
	// clean session off, or MQTT 5 session expiry) is kept after its client
	// disconnects. QoS 1 and 2 messages for the session are queued meanwhile.
	// Default DefaultSessionExpiry (1h).
	SessionExpiry time.Duration
	// ConnectTimeout is how long a new connection may take to send its
	// CONNECT packet before it is closed, and how long a connection that
	// takes over a client ID waits for the old connection's running
	// subscription handler. Default DefaultConnectTimeout.
	ConnectTimeout time.Duration

	// Logger receives the broker's logs (including mochi's). Nil discards.
	Logger *slog.Logger

	// Auth authenticates connecting clients and authorizes their topics.
	// Nil allows every client to connect and to publish and subscribe to
	// every topic.
	Auth Authenticator

	// OnConnect is called when a client has connected: after CONNACK, with
	// its session (if any) restored, on the client's goroutine.
	//
	// OnConnect and OnDisconnect calls for one client ID never overlap, but
	// they can arrive out of connection order: when a new connection takes
	// over an open one, the new connection's OnConnect comes before the
	// old one's OnDisconnect. Use ConnInfo.Seq to tell them apart. While a
	// callback runs, a new connection with the same client ID waits, so
	// callbacks must return quickly.
	OnConnect func(ConnInfo)
	// OnDisconnect is called when a connected client's connection ends,
	// with the ConnInfo (and Seq) its OnConnect received, except for At.
	// err is nil after a clean DISCONNECT; otherwise it matches (errors.Is)
	// one of ErrClosed, ErrTakenOver, ErrTooLarge, ErrNotAuthorized,
	// ErrProtocol or ErrConnectionLost.
	OnDisconnect func(info ConnInfo, err error)
	// OnSubscribe is called when a client's SUBSCRIBE was processed, with
	// the filters that were granted (denied filters are left out), after
	// the subscriptions are in the index and before SUBACK and retained
	// messages are sent, on the client's goroutine. It is not called when
	// no filter was granted. Messages published from OnSubscribe to the
	// subscribing client may reach it before its SUBACK.
	OnSubscribe func(clientID string, filters []string)

	// ClientWritesPending is the capacity of each device client's queue
	// of outbound packets; when it is full, further messages to that client
	// are dropped and counted in Stats.MessagesDropped. Default
	// DefaultClientWritesPending.
	ClientWritesPending int32
	// ServiceWritesPending is ClientWritesPending for service clients:
	// clients that Auth authenticated as an Identity without a Device
	// (operators, integrators), which subscribe to many devices' topics.
	// Without Auth every client is a device client. Default
	// DefaultServiceWritesPending; never less than ClientWritesPending.
	ServiceWritesPending int32
	// ReadBufferSize is the size of each client's read buffer. Packets
	// larger than the buffer are read directly. Default
	// DefaultReadBufferSize.
	ReadBufferSize int
	// WriteBufferSize is the threshold at which queued outbound packets are
	// flushed to a client. Default DefaultWriteBufferSize.
	WriteBufferSize int
	// MaxInflight is the number of unacknowledged QoS 1 and 2 messages kept per
	// device session, including messages queued for an offline persistent
	// session; further ones are dropped and counted in
	// Stats.InflightDropped. Default DefaultMaxInflight.
	MaxInflight uint16
	// ServiceInflight is MaxInflight for service clients (see
	// ServiceWritesPending). Default DefaultServiceInflight; never less
	// than MaxInflight.
	ServiceInflight uint16
	// MaxConnsPerIdentity caps the simultaneous connections of one
	// authenticated identity (Identity.Name); further CONNECTs are refused
	// and counted in Stats.ConnectsRejected. Only applies with Auth set.
	// Default DefaultMaxConnsPerIdentity; negative means no cap.
	MaxConnsPerIdentity int
	// MaxTopicLength caps the topic of a PUBLISH and the filter of a
	// SUBSCRIBE, in bytes: a longer publish is denied like an ACL denial, a
	// longer filter gets a failure code. Default DefaultMaxTopicLength.
	MaxTopicLength int

	// MaxPendingBytes caps, per device connection, the bytes the broker
	// has written that the client's socket has not taken yet (beyond the
	// kernel's send buffer). A write never blocks a publisher: a client
	// whose pending bytes would exceed the cap is disconnected as a slow
	// consumer (Stats.SlowConsumers, OnDisconnect cause ErrSlowConsumer).
	// It applies before authentication too. Default 2 × MaxPacketSize;
	// at least MaxPacketSize + 5 (one whole packet).
	MaxPendingBytes int
	// ServicePendingBytes is MaxPendingBytes for service clients (see
	// ServiceWritesPending). Default DefaultServicePendingBytes; never
	// less than MaxPendingBytes.
	ServicePendingBytes int
	// ReadLoops is how many read loops serve the plain TCP connections
	// once they are connected (see the package documentation): 0 for
	// one per two processors (GOMAXPROCS/2, at least 1), -1 for none, a goroutine reading each connection as for
	// TLS and WebSocket (always so on other systems than Linux).
	ReadLoops int

	// WriteTimeout is how long a connection with pending bytes may go
	// without its socket accepting any before it is disconnected as a
	// slow consumer. Default DefaultWriteTimeout.
	WriteTimeout time.Duration

	// MaxSubscriptions caps the filters of a device session (connected or
	// persistent and offline). A SUBSCRIBE filter beyond the cap is
	// refused with SUBACK code 0x97 "quota exceeded" (MQTT 5) or 0x80
	// (MQTT 3.1.1), counted in Stats.SubscriptionsRefused and logged once
	// per connection; a filter the session already has may be subscribed
	// again. Default DefaultMaxSubscriptions; negative means no cap.
	MaxSubscriptions int
	// ServiceSubscriptions is MaxSubscriptions for service clients (see
	// ServiceWritesPending). Default DefaultServiceSubscriptions; negative
	// means no cap.
	ServiceSubscriptions int

	// MaxMessageRate caps the PUBLISHes per second a device connection
	// sends, with MaxMessageBurst: a token bucket per connection (see
	// ratelimit.go). A PUBLISH over it is refused (MQTT 5: PUBACK or PUBREC
	// 0x96; MQTT 3.1.1: acknowledged and dropped), counted in
	// Stats.RateLimited and logged once per episode. Requests on
	// RequestFilters are never refused. Default DefaultMaxMessageRate;
	// negative means no limit.
	MaxMessageRate float64
	// MaxMessageBurst is the size of a device connection's bucket: how
	// many PUBLISHes it may send at once. Default DefaultMaxMessageBurst;
	// at least 1.
	MaxMessageBurst int
	// ServiceMessageRate and ServiceMessageBurst are MaxMessageRate and
	// MaxMessageBurst for service clients (see ServiceWritesPending).
	// Defaults DefaultServiceMessageRate and DefaultServiceMessageBurst.
	ServiceMessageRate  float64
	ServiceMessageBurst int

	// SysInterval is how often the broker publishes its statistics on
	// $SYS/broker/… (retained; see package documentation). Each refresh
	// reads runtime.MemStats, which stops the world briefly. Default
	// DefaultSysInterval; at least a second.
	SysInterval time.Duration

	// RequestFilters are the filters of request topics: messages that are
	// commands to an in-process subscriber (the shadow engine's
	// state/+/update, /get and /delete), never state. A PUBLISH or will on
	// a matching topic is delivered with its retain flag dropped: it is
	// never stored or replayed to later subscribers (counted in
	// Stats.RetainIgnored). Each must be a valid filter. Default none.
	RequestFilters []string
	// MaxClientIDLength caps the client ID of a CONNECT, in bytes; a
	// longer one is refused with CONNACK "client identifier not valid",
	// logged and counted in Stats.ClientIDsRefused. Default
	// DefaultMaxClientIDLength; at most 65,535.
	MaxClientIDLength int

	// Store, if set, makes retained messages and persistent sessions
	// durable (see the package documentation, "Durability"): Open restores
	// what it holds and fails if it cannot be read. The caller owns it and
	// closes it after Close. Nil keeps everything in memory.
	Store Store
	// MaxRetained caps the retained messages clients hold (the broker's
	// own, from Publish, are not counted). A PUBLISH that would retain a
	// new topic beyond it is refused with PUBACK (PUBREC) 0x97 "quota
	// exceeded" for MQTT 5 QoS 1 and 2; otherwise (MQTT 3.1.1, QoS 0,
	// wills) it is delivered without being retained. Replacing or
	// clearing a retained message always works. Refusals are counted in
	// Stats.RetainedRefused. Default DefaultMaxRetained; negative means
	// no cap.
	MaxRetained int
	// MaxRetainedBytes caps the payload bytes of the retained messages
	// clients hold, like MaxRetained: a new topic is refused if it would
	// go beyond it (a replacement that grows a topic is not). Default
	// DefaultMaxRetainedBytes; negative means no cap.
	MaxRetainedBytes int64
	// MaxQueuedBytes caps the payload bytes a device's persistent session
	// holds: messages queued while it is offline plus those sent and not
	// yet acknowledged. A session at the cap receives no further messages
	// (QoS 0 included: it is far behind) until it acknowledges some; each
	// dropped message is counted in Stats.QueueBytesDropped. Default
	// DefaultMaxQueuedBytes; negative means no cap.
	MaxQueuedBytes int64
	// ServiceQueuedBytes is MaxQueuedBytes for service clients (see
	// ServiceWritesPending). Default DefaultServiceQueuedBytes; never less
	// than MaxQueuedBytes.
	ServiceQueuedBytes int64
	// MaxSessionsPerIdentity caps the persistent sessions of one
	// authenticated identity (Identity.Name), connected or not. A CONNECT
	// that would create one more is refused with CONNACK 0x97 "quota
	// exceeded" (MQTT 5) or 3 "server unavailable" (MQTT 3.1.1) and
	// counted in Stats.SessionsRefused; clean sessions and resuming one's
	// own session are not affected. Only applies with Auth set. Default
	// DefaultMaxSessionsPerIdentity; negative means no cap.
	MaxSessionsPerIdentity int
}

// setDefaults fills zero fields with their defaults.
func (c *Config) setDefaults() {
	if c.MaxPacketSize == 0 {
		c.MaxPacketSize = DefaultMaxPacketSize
	}
	if c.SessionExpiry == 0 {
		c.SessionExpiry = DefaultSessionExpiry
	}
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = DefaultConnectTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.ClientWritesPending == 0 {
		c.ClientWritesPending = DefaultClientWritesPending
	}
	if c.ReadBufferSize == 0 {
		c.ReadBufferSize = DefaultReadBufferSize
	}
	if c.WriteBufferSize == 0 {
		c.WriteBufferSize = DefaultWriteBufferSize
	}
	if c.MaxInflight == 0 {
		c.MaxInflight = DefaultMaxInflight
	}
	if c.ServiceWritesPending == 0 {
		c.ServiceWritesPending = DefaultServiceWritesPending
	}
	if c.ServiceWritesPending > 0 { // a negative value is left for validate
		c.ServiceWritesPending = max(c.ServiceWritesPending, c.ClientWritesPending)
	}
	if c.ServiceInflight == 0 {
		c.ServiceInflight = DefaultServiceInflight
	}
	c.ServiceInflight = max(c.ServiceInflight, c.MaxInflight)
	if c.MaxTopicLength == 0 {
		c.MaxTopicLength = DefaultMaxTopicLength
	}
	if c.MaxConnsPerIdentity == 0 {
		c.MaxConnsPerIdentity = DefaultMaxConnsPerIdentity
	}
	if c.MaxPendingBytes == 0 {
		c.MaxPendingBytes = 2 * int(c.MaxPacketSize)
	}
	if c.ServicePendingBytes == 0 {
		c.ServicePendingBytes = DefaultServicePendingBytes
	}
	c.ServicePendingBytes = max(c.ServicePendingBytes, c.MaxPendingBytes)
	if c.WriteTimeout == 0 {
		c.WriteTimeout = DefaultWriteTimeout
	}
	if c.MaxSubscriptions == 0 {
		c.MaxSubscriptions = DefaultMaxSubscriptions
	}
	if c.ServiceSubscriptions == 0 {
		c.ServiceSubscriptions = DefaultServiceSubscriptions
	}
	if c.MaxClientIDLength == 0 {
		c.MaxClientIDLength = DefaultMaxClientIDLength
	}
	if c.MaxRetained == 0 {
		c.MaxRetained = DefaultMaxRetained
	}
	if c.MaxRetainedBytes == 0 {
		c.MaxRetainedBytes = DefaultMaxRetainedBytes
	}
	if c.MaxQueuedBytes == 0 {
		c.MaxQueuedBytes = DefaultMaxQueuedBytes
	}
	if c.ServiceQueuedBytes == 0 {
		c.ServiceQueuedBytes = DefaultServiceQueuedBytes
	}
	if c.MaxQueuedBytes < 0 {
		c.ServiceQueuedBytes = -1 // no cap for devices: none for services either
	} else if c.ServiceQueuedBytes > 0 {
		c.ServiceQueuedBytes = max(c.ServiceQueuedBytes, c.MaxQueuedBytes)
	}
	if c.MaxSessionsPerIdentity == 0 {
		c.MaxSessionsPerIdentity = DefaultMaxSessionsPerIdentity
	}
	if c.MaxMessageRate == 0 {
		c.MaxMessageRate = DefaultMaxMessageRate
	}
	if c.MaxMessageBurst == 0 {
		c.MaxMessageBurst = DefaultMaxMessageBurst
	}
	if c.ServiceMessageRate == 0 {
		c.ServiceMessageRate = DefaultServiceMessageRate
	}
	if c.ServiceMessageBurst == 0 {
		c.ServiceMessageBurst = DefaultServiceMessageBurst
	}
	if c.SysInterval == 0 {
		c.SysInterval = DefaultSysInterval
	}
}

// validate reports the first invalid field of a defaulted Config.
func (c *Config) validate() error {
	if c.MaxPacketSize < 64 {
		return fmt.Errorf("%w: MaxPacketSize %d is below 64 bytes", ErrInvalidConfig, c.MaxPacketSize)
	}
	if c.SessionExpiry < time.Second || c.SessionExpiry > math.MaxUint32*time.Second {
		return fmt.Errorf("%w: SessionExpiry %v outside [1s, %v]", ErrInvalidConfig, c.SessionExpiry, math.MaxUint32*time.Second)
	}
	if c.ConnectTimeout < 0 {
		return fmt.Errorf("%w: negative ConnectTimeout %v", ErrInvalidConfig, c.ConnectTimeout)
	}
	if c.ClientWritesPending < 0 || c.ServiceWritesPending < 0 {
		return fmt.Errorf("%w: negative ClientWritesPending %d or ServiceWritesPending %d",
			ErrInvalidConfig, c.ClientWritesPending, c.ServiceWritesPending)
	}
	if c.TLSAddr != "" && c.TLSConfig == nil {
		return fmt.Errorf("%w: TLSAddr %q without TLSConfig", ErrInvalidConfig, c.TLSAddr)
	}
	if c.TLSListener != nil && c.TLSConfig == nil {
		return fmt.Errorf("%w: TLSListener without TLSConfig", ErrInvalidConfig)
	}
	if c.TLSConfig != nil {
		if c.TLSAddr == "" && c.TLSListener == nil {
			return fmt.Errorf("%w: TLSConfig without TLSAddr", ErrInvalidConfig)
		}
		if len(c.TLSConfig.Certificates) == 0 && c.TLSConfig.GetCertificate == nil && c.TLSConfig.GetConfigForClient == nil {
			return fmt.Errorf("%w: TLSConfig has no server certificate", ErrInvalidConfig)
		}
	}
	if err := checkWSOrigins(c.WSAllowedOrigins); err != nil {
		return err
	}
	if c.MaxPendingBytes < int(c.MaxPacketSize)+5 {
		return fmt.Errorf("%w: MaxPendingBytes %d is below MaxPacketSize %d + 5: a whole packet must fit",
			ErrInvalidConfig, c.MaxPendingBytes, c.MaxPacketSize)
	}
	for _, f := range c.RequestFilters {
		if err := validTopic(f, false); err != nil {
			return fmt.Errorf("%w: RequestFilters: %w", ErrInvalidConfig, err)
		}
	}
	if c.WriteTimeout < 0 {
		return fmt.Errorf("%w: negative WriteTimeout %v", ErrInvalidConfig, c.WriteTimeout)
	}
	if c.ReadLoops < -1 || c.ReadLoops > maxReadLoops {
		return fmt.Errorf("%w: ReadLoops %d: -1 (none), 0 (GOMAXPROCS/2) or up to %d", ErrInvalidConfig, c.ReadLoops, maxReadLoops)
	}
	if c.MaxClientIDLength < 1 || c.MaxClientIDLength > maxTopicLen {
		return fmt.Errorf("%w: MaxClientIDLength %d outside [1, %d]", ErrInvalidConfig, c.MaxClientIDLength, maxTopicLen)
	}
	if c.MaxMessageBurst < 1 || c.ServiceMessageBurst < 1 {
		return fmt.Errorf("%w: MaxMessageBurst %d and ServiceMessageBurst %d must be at least 1",
			ErrInvalidConfig, c.MaxMessageBurst, c.ServiceMessageBurst)
	}
	if math.IsNaN(c.MaxMessageRate) || math.IsNaN(c.ServiceMessageRate) || math.IsInf(c.MaxMessageRate, 0) || math.IsInf(c.ServiceMessageRate, 0) {
		return fmt.Errorf("%w: MaxMessageRate %v and ServiceMessageRate %v must be finite", ErrInvalidConfig, c.MaxMessageRate, c.ServiceMessageRate)
	}
	if c.SysInterval < time.Second {
		return fmt.Errorf("%w: SysInterval %v is below a second", ErrInvalidConfig, c.SysInterval)
	}
	if c.ReadBufferSize < 16 || c.WriteBufferSize < 16 {
		return fmt.Errorf("%w: buffer sizes %d/%d below 16 bytes", ErrInvalidConfig, c.ReadBufferSize, c.WriteBufferSize)
	}
	return nil
}

// hasServices reports whether service clients get larger queues than
// devices; without Auth every client is a device.
func (c *Config) hasServices() bool {
	return c.Auth != nil && (c.ServiceWritesPending > c.ClientWritesPending || c.ServiceInflight > c.MaxInflight)
}

// serverInflight is mochi's server-wide inflight limit: the largest of any
// client.
func (c *Config) serverInflight() uint16 {
	if c.hasServices() {
		return c.ServiceInflight
	}
	return c.MaxInflight
}

// options translates a defaulted Config into mochi options.
func (c *Config) options(log *slog.Logger) *mqtt.Options {
	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumPacketSize = c.MaxPacketSize
	caps.MaximumSessionExpiryInterval = uint32(c.SessionExpiry / time.Second)
	caps.MaximumClientWritesPending = c.ClientWritesPending
	// mochi's inflight limit is server-wide: with service clients it is
	// theirs, and the hook enforces MaxInflight for devices.
	caps.MaximumInflight = c.serverInflight()
	caps.ReceiveMaximum = receiveMaximum
	caps.MaximumQos = 2 // real QoS 2: PUBREC, PUBREL, PUBCOMP in both directions
	// mochi's default (24h) forcibly deletes retained messages and queued
	// messages a day after they were published; retained device state must
	// live until replaced, and queued messages go with their session.
	caps.MaximumMessageExpiryInterval = 0
	// CONNACK does not advertise topic aliases, so clients must not use
	// them (MQTT 5 §3.2.2.3.8); 0 also keeps alias maps from growing.
	caps.TopicAliasMaximum = 0
	// A denied QoS 1 or 2 PUBLISH of an MQTT 3.1.1 client is acknowledged
	// and dropped, not answered with a disconnect (see deny.go).
	caps.Compatibilities.AcknowledgeUnauthorizedPublish = true
	return &mqtt.Options{
		Capabilities:             caps,
		ClientNetReadBufferSize:  c.ReadBufferSize,
		ClientNetWriteBufferSize: c.WriteBufferSize,
		CoalesceClientWrites:     true, // mochi patch 13: fewer writes to a subscriber of many publishers
		Logger:                   log,
		SysTopicResendInterval:   int64(c.SysInterval / time.Second),
		InlineClient:             true,
	}
}

// Server is an MQTT broker. It is safe for concurrent use.
type Server struct {
	cfg    Config
	log    *slog.Logger
	mq     *mqtt.Server
	hook   *hook
	ledger *ledger   // retained messages and persistent sessions; writes Config.Store
	tcp    *listener // nil without a TCP listener
	ws     *listener // nil without a WebSocket listener
	tls    *listener // nil without a TLS listener
	ctx    context.Context
	cancel context.CancelFunc

	sysRetained int          // retained $SYS messages mochi keeps, left out of Stats.Retained
	subID       atomic.Int64 // last inline subscription identifier handed out
	closed      atomic.Bool  // set at the start of Close

	closeOnce sync.Once
	closeErr  error // set once by closeOnce

	out *outShared // what every connection shares (see outConn)

	relay  atomic.Pointer[relayBox] // the cluster's Relay; nil without one (see relay.go)
	relays relays                   // the in-process clients Deliver publishes from
}

// Open binds the configured listeners and starts serving. The listeners'
// real addresses are available from Addr, WSAddr and TLSAddr when Open
// returns.
// Open fails with an error wrapping ErrInvalidConfig for an invalid Config,
// or with the listen error (for example, address in use).
func Open(ctx context.Context, cfg Config) (*Server, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("broker: open: %w", err)
	}
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if cfg.TLSConfig != nil {
		cfg.TLSConfig = cfg.TLSConfig.Clone()
	}
	cfg.RequestFilters = slices.Clone(cfg.RequestFilters)
	log := cfg.Logger.With(logKeyComponent, "broker")
	s := &Server{cfg: cfg, log: log}
	s.out = &outShared{log: log, writeTimeout: cfg.WriteTimeout, linger: closeLinger, deviceLimit: cfg.MaxPendingBytes}
	s.ctx, s.cancel = context.WithCancel(context.WithoutCancel(ctx))
	s.mq = mqtt.New(cfg.options(log))
	s.hook = newHook(s)
	if err := s.mq.AddHook(s.hook, nil); err != nil {
		s.cancel()
		return nil, fmt.Errorf("broker: add hook: %w", err)
	}
	// The ledger comes after the main hook: it sees the main hook's
	// decisions (a discarded session, a dropped retain flag).
	s.ledger = newLedger(s)
	if err := s.mq.AddHook(s.ledger, nil); err != nil {
		s.cancel()
		return nil, fmt.Errorf("broker: add ledger hook: %w", err)
	}
	if cfg.Store != nil {
		if err := s.restore(ctx); err != nil {
			s.cancel()
			return nil, err
		}
	}
	s.ledger.start()
	if n := cfg.ReadLoops; loopsSupported && n >= 0 {
		if n == 0 {
			n = defaultLoops()
		}
		loops, err := newIOLoops(log, n)
		if err != nil {
			s.cancel()
			_ = s.ledger.close()
			return nil, fmt.Errorf("broker: start read loops: %w", err)
		}
		s.out.loops = loops
		s.mq.Options.DeferDelivery = s.deferDelivery // mochi patch 22: before any client connects
	}
	if err := s.listen(); err != nil {
		if s.out.loops != nil {
			s.out.loops.stop()
		}
		s.closeListeners()
		s.cancel()
		_ = s.ledger.close()
		return nil, err
	}
	if err := s.mq.Serve(); err != nil {
		_ = s.Close(ctx)
		return nil, fmt.Errorf("broker: serve: %w", err)
	}
	// Serve published mochi's $SYS topics; only mochi can publish there.
	s.sysRetained = len(s.mq.Topics.Messages("$SYS/#"))
	return s, nil
}

// listen binds the configured listeners and attaches them to mochi.
func (s *Server) listen() (err error) {
	if s.tcp, err = s.addListener("tcp", s.cfg.TCPAddr, s.cfg.TCPListener, newTCPListener); err != nil {
		return err
	}
	if s.ws, err = s.addListener("ws", s.cfg.WSAddr, s.cfg.WSListener, func(id string, ln net.Listener, timeout time.Duration) *listener {
		return newWSListener(id, ln, timeout, s.cfg.WSAllowedOrigins)
	}); err != nil {
		return err
	}
	s.tls, err = s.addListener("tls", s.cfg.TLSAddr, s.cfg.TLSListener, func(id string, ln net.Listener, timeout time.Duration) *listener {
		return newTLSListener(id, ln, timeout, s.cfg.TLSConfig)
	})
	return err
}

// addListener binds addr ("" for none), or takes the caller's bound ln,
// and attaches the listener that newListener makes of it to mochi.
func (s *Server) addListener(id, addr string, ln net.Listener, newListener func(string, net.Listener, time.Duration) *listener) (*listener, error) {
	if ln == nil {
		if addr == "" {
			return nil, nil
		}
		var err error
		if ln, err = net.Listen("tcp", addr); err != nil {
			return nil, fmt.Errorf("broker: listen %s %s: %w", id, addr, err)
		}
	}
	l := newListener(id, ln, s.cfg.ConnectTimeout)
	l.ended = s.hook.connEnded
	l.out = s.out
	if err := s.mq.AddListener(l); err != nil {
		_ = ln.Close()
		return nil, fmt.Errorf("broker: add %s listener: %w", id, err)
	}
	return l, nil
}

// closeListeners closes listeners of an Open that failed before Serve.
func (s *Server) closeListeners() {
	for _, l := range []*listener{s.tcp, s.ws, s.tls} {
		if l != nil {
			l.Close(func(string) {})
		}
	}
}

// Addr returns the TCP listener's address, or nil without a TCP listener.
func (s *Server) Addr() net.Addr {
	if s.tcp == nil {
		return nil
	}
	return s.tcp.ln.Addr()
}

// WSAddr returns the WebSocket listener's address, or nil without one.
func (s *Server) WSAddr() net.Addr {
	if s.ws == nil {
		return nil
	}
	return s.ws.ln.Addr()
}

// TLSAddr returns the TLS listener's address, or nil without one.
func (s *Server) TLSAddr() net.Addr {
	if s.tls == nil {
		return nil
	}
	return s.tls.ln.Addr()
}

// Publish publishes a message from the broker itself. Subscribers receive
// it with QoS min(qos, their subscription's QoS); retain stores it as the
// topic's retained message (an empty payload clears it); such a retained
// message is not written to Config.Store: its publisher restores it after
// a restart. Publish copies payload. In-process subscribers (Subscribe) run
// before Publish returns.
//
// Publish returns ErrClosed after Close, and errors wrapping ErrInvalidTopic
// (empty, wildcard, $SYS or over-long topic), ErrInvalidQoS (qos > 2) or
// ErrTooLarge (payload over MaxPacketSize).
func (s *Server) Publish(topic string, payload []byte, retain bool, qos byte) error {
	retain, err := s.checkPublish(topic, payload, retain, qos)
	if err != nil {
		return err
	}
	if err := s.mq.Publish(topic, bytes.Clone(payload), retain, qos); err != nil {
		return fmt.Errorf("publish %s: %w", topic, err)
	}
	return nil
}

// checkPublish checks the arguments of Publish and PublishLocal and
// returns retain, dropped on a request topic.
func (s *Server) checkPublish(topic string, payload []byte, retain bool, qos byte) (bool, error) {
	if s.closed.Load() {
		return false, ErrClosed
	}
	if err := validTopic(topic, true); err != nil {
		return false, fmt.Errorf("publish: %w", err)
	}
	if qos > 2 {
		return false, fmt.Errorf("publish %s: qos %d: %w", topic, qos, ErrInvalidQoS)
	}
	if uint64(len(payload)) > uint64(s.cfg.MaxPacketSize) {
		return false, fmt.Errorf("publish %s: %d-byte payload over %d: %w", topic, len(payload), s.cfg.MaxPacketSize, ErrTooLarge)
	}
	if retain && s.hook.isRequest(topic) {
		retain = false // requests are never retained (see retain.go)
		s.hook.retainIgnored.Add(1)
	}
	return retain, nil
}

// Subscribe registers h for messages on topics matching filter, published
// by clients or by Publish. Retained messages matching filter are passed to
// h before Subscribe returns.
//
// h runs synchronously on the publishing client's goroutine (or in Publish):
// messages from one client ID reach h in order, also across reconnects and
// takeovers (for handlers that return within ConnectTimeout; see the
// package documentation), and a slow h slows only that client. For QoS 1
// and 2, the broker acknowledges the PUBLISH (PUBACK, PUBREC) before h runs.
// A panic in h is recovered and logged.
//
// Subscribe returns ErrClosed after Close, ErrNilHandler for a nil h, and an
// error wrapping ErrInvalidTopic for an invalid filter.
func (s *Server) Subscribe(filter string, h HandlerFunc) error {
	if s.closed.Load() {
		return ErrClosed
	}
	if h == nil {
		return ErrNilHandler
	}
	if err := validTopic(filter, false); err != nil {
		return fmt.Errorf("subscribe: %w", err)
	}
	id := int(s.subID.Add(1))
	err := s.mq.Subscribe(filter, id, func(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
		// A handler may wait (the shadow engine commits): a read loop
		// handling the publisher's packet is handed off first, so that
		// other clients' requests go on and share the commit.
		if origin := pk.Origin; origin != "" && !ownOrigin(origin) {
			if cl, ok := s.mq.Clients.Get(origin); ok {
				releaseLoopOf(cl)
			}
		}
		s.runHandler(h, pk)
	})
	if err != nil {
		return fmt.Errorf("subscribe %s: %w", filter, err)
	}
	return nil
}

// runHandler calls h for pk, recovering a panic so that one bad message
// cannot stop the broker.
func (s *Server) runHandler(h HandlerFunc, pk packets.Packet) {
	origin := pk.Origin
	if ownOrigin(origin) {
		origin = ""
	}
	defer func() {
		if r := recover(); r != nil {
			s.hook.handlerPanics.Add(1)
			s.log.Error("subscription handler panicked", "client", origin, "topic", pk.TopicName,
				"panic", r, "stack", string(debug.Stack()))
		}
	}()
	h(origin, pk.TopicName, pk.Payload)
}

// HasSubscribers reports whether any subscription, of a client (connected
// or with a persistent session) or in-process, matches topic. It is false
// for an invalid topic. With a Relay (cluster mode) it is true for every
// valid topic but $SYS ones: clients of other nodes may subscribe to it,
// and this node cannot see their subscriptions.
func (s *Server) HasSubscribers(topic string) bool {
	if validTopic(topic, true) != nil {
		return false
	}
	if s.currentRelay() != nil && !mqtt.IsSysTopic(topic) {
		return true
	}
	subs := s.mq.Topics.Subscribers(topic)
	return len(subs.Subscriptions) > 0 || len(subs.InlineSubscriptions) > 0 || len(subs.Shared) > 0
}

// Close disconnects every client, closes the listeners and waits for the
// connections' goroutines, including running subscription handlers, to
// finish. It is idempotent: later calls return the first call's result.
// Connections are closed forcibly, so Close waits only for running
// subscription handlers and does not consult ctx: cleanup always completes.
func (s *Server) Close(ctx context.Context) error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		s.cancel()
		s.closeErr = s.mq.Close()
		if s.closeErr != nil {
			s.closeErr = fmt.Errorf("broker: close: %w", s.closeErr)
		}
		if s.out.loops != nil {
			s.out.loops.stop() // every connection has ended
		}
		// Every client is gone: the last commit writes their disconnects.
		if err := s.ledger.close(); err != nil && s.closeErr == nil {
			s.closeErr = fmt.Errorf("broker: close: %w", err)
		}
	})
	return s.closeErr
}

// validTopic checks a topic name (forPublish) or filter.
func validTopic(topic string, forPublish bool) error {
	switch {
	case topic == "":
		return fmt.Errorf("%w: empty", ErrInvalidTopic)
	case len(topic) > maxTopicLen:
		return fmt.Errorf("%w: %d bytes, at most %d allowed", ErrInvalidTopic, len(topic), maxTopicLen)
	case !mqtt.IsValidFilter(topic, forPublish):
		return fmt.Errorf("%w: %q", ErrInvalidTopic, topic)
	}
	return nil
}
