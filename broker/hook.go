package broker

import (
	"sync"
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// hook connects mochi's events to Config: client ID validation and
// authentication (connect.go), authorization (acl.go), the order and
// ownership of sessions (session.go), disconnect causes (disconnect.go),
// callbacks and the counters behind Stats. The ledger (ledger.go) is a
// second hook for retained messages and persistent sessions.
type hook struct {
	mqtt.HookBase
	s *Server

	epoch allowEpocher // Config.Auth's AllowEpoch; nil if it has none (see publishAllowed)

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
	h := &hook{s: s, sessions: make(map[string]*session), perName: make(map[string]int)}
	h.epoch, _ = s.cfg.Auth.(allowEpocher)
	return h
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

// WantsPacket implements mochi's PacketFilter (mochi patch 18): the hook
// reads CONNECTs and PUBLISHes (OnPacketRead) and corrects CONNACKs and
// refusing PUBACKs and PUBRECs (OnPacketEncode, see fixAck); every other
// packet, the PUBACK of an accepted PUBLISH and each delivered PUBLISH
// among them, passes without a hook call and its copies of the packet.
func (h *hook) WantsPacket(event byte, _ *mqtt.Client, fh packets.FixedHeader, reasonCode byte) bool {
	switch event {
	case mqtt.OnPacketRead:
		return fh.Type == packets.Publish || fh.Type == packets.Connect
	case mqtt.OnPacketEncode:
		return fixesAck(fh.Type, reasonCode)
	}
	return true
}

// clip shortens client-controlled strings for logging.
func clip(s string) string {
	const n = 256
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
