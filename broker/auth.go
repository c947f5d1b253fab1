package broker

import (
	"context"
	"crypto/tls"

	"github.com/umbra-iot/umbra/device"
)

// Authenticator decides who may connect and which topics they may use.
// Its methods are called on connection goroutines, concurrently; they must
// be safe for concurrent use and should return quickly, because a slow call
// delays that client (Allow is called for every PUBLISH the client sends and
// for every message delivered to it).
//
// An Authenticator may also have a method AllowEpoch() uint64 that returns
// a number which changes whenever an answer of Allow may change (a
// revocation, a new policy): the broker then remembers the last topic
// Allow let each connection publish to, and asks again only for another
// topic or after the number changed. Denials are always asked for.
type Authenticator interface {
	// Authenticate checks a connecting client's credentials and returns
	// who it is. A non-nil error refuses the connection with CONNACK
	// "bad username or password"; the error is logged, never sent. ctx is
	// cancelled when the broker closes.
	Authenticate(ctx context.Context, c Credentials) (Identity, error)
	// Allow reports whether id may publish to topic (write true) or
	// subscribe to the filter topic and receive messages on topic (write
	// false: called with the SUBSCRIBE filter, which may hold wildcards,
	// and again with each delivered message's topic).
	//
	// A denied SUBSCRIBE filter gets a failure code in SUBACK (0x87 for
	// MQTT 5, 0x80 for 3.1.1); the filter of a shared subscription
	// "$share/<group>/<filter>" is checked as <filter>. A denied PUBLISH is
	// dropped and the client stays connected: silently for QoS 0 (MQTT has
	// no negative ack), with PUBACK or PUBREC "not authorized" for an MQTT
	// 5 client, and with the usual acknowledgement for an MQTT 3.1.1
	// client. Denials are counted in Stats.PublishesDenied and
	// Stats.SubscriptionsDenied and logged once per connection and topic.
	Allow(id Identity, topic string, write bool) bool
}

// Credentials are what a client presented when connecting.
type Credentials struct {
	ClientID   string               // MQTT client ID: any the broker accepted (see Config.MaxClientIDLength), or one it assigned
	Username   string               // CONNECT user name; "" if absent
	Password   []byte               // CONNECT password; nil if absent
	RemoteAddr string               // peer address, "ip:port"
	TLS        *tls.ConnectionState // nil unless the connection uses TLS
}

// Identity is who a connection authenticated as. The broker keeps it for
// the life of the client's session and passes it to Authenticator.Allow.
type Identity struct {
	// ClientID is the connection's MQTT client ID; the broker sets it.
	ClientID string
	// Name is the authenticated principal, for example a device ID or an
	// operator's user name.
	Name string
	// Device is the device this identity acts for; "" for identities that
	// are not a device (operators, services).
	Device device.ID
	// Credential identifies the credential the connection logged in with,
	// for example one generation of a device's secret, so that an
	// Authenticator can refuse a session whose credential was revoked or
	// replaced although its Name is valid again. The broker does not
	// interpret it; "" if unused.
	Credential string
}
