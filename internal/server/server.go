package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/broker/natsbridge"
	"github.com/umbra-iot/umbra/console"
	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/firmware"
	"github.com/umbra-iot/umbra/identity"
	"github.com/umbra-iot/umbra/internal/cluster"
	"github.com/umbra-iot/umbra/internal/httpapi"
	"github.com/umbra-iot/umbra/internal/metrics"
	"github.com/umbra-iot/umbra/internal/plannerrpc"
	"github.com/umbra-iot/umbra/internal/rolloutfeed"
	"github.com/umbra-iot/umbra/internal/server/brokerauth"
	"github.com/umbra-iot/umbra/policy"
	"github.com/umbra-iot/umbra/rollout"
	"github.com/umbra-iot/umbra/rollout/jobs"
	"github.com/umbra-iot/umbra/shadow"
)

// AdminTokenFile is the operator token's file in the data dir, written on
// first start (mode 0600) and read by umbra commands on the same machine.
const AdminTokenFile = "admin.token"

// adminTokenName is the name of the operator token written to
// AdminTokenFile: "admin", and "admin-<node-id>" in cluster mode, where the
// nodes share one identity store and a node starting without its file
// would otherwise replace (and so revoke) the other nodes' token.
func adminTokenName(cfg Config) string {
	if len(cfg.NATS) == 0 {
		return identity.AdminTokenName
	}
	return identity.AdminTokenName + "-" + cfg.NodeID
}

// ErrInvalidConfig is wrapped by Open for a Config it cannot use.
var ErrInvalidConfig = errors.New("server: invalid config")

// Config configures a Server. Addresses that are "" disable their
// listener; zero values of the other fields take the components' defaults.
type Config struct {
	// DataDir holds the databases, keys and firmware blobs; created 0700.
	DataDir string

	// NATS, when set, runs the node in cluster mode (docs/cluster.md): its
	// shadows, identities and firmware (records and images) are in
	// JetStream buckets on these NATS servers (nats://host:port), shared by
	// every node. Empty is single-node mode. NodeID names the node (required
	// with NATS). NATSReplicas is the replica count of the buckets a node
	// creates; default DefaultNATSReplicas.
	NATS         []string
	NodeID       string
	NATSReplicas int
	// The cluster bridge's per-node limits (broker/natsbridge.Config's
	// MaxSubscriptions, OutboundBuffer and InboundBuffer; zero takes its
	// defaults): NATS subscriptions for the clients' filters, messages
	// waiting for NATS, messages from NATS waiting for local delivery.
	ClusterMaxSubscriptions, ClusterOutboundBuffer, ClusterInboundBuffer int
	// PlannerLeaseTTL is the planner lease's TTL (cluster.LeaseConfig.TTL):
	// a dead planner's node is replaced within cluster.TakeoverBound of
	// it. Default cluster.DefaultLeaseTTL; every node of a cluster must
	// use the same.
	PlannerLeaseTTL time.Duration
	// PlannerOpenRetries is how many opens of the planner in a row may fail
	// (a second apart) on the planner lease's holder before it releases
	// the lease for another node to take; default
	// DefaultPlannerOpenRetries. PlannerStayOut is how long a node that
	// released the lease so stays out of the campaign before it tries
	// again; default DefaultPlannerStayOut.
	PlannerOpenRetries int
	PlannerStayOut     time.Duration
	// plannerOpenFault, when set, is called before each open of the
	// planner in cluster mode; an error fails the open (the tests' fault
	// injection, set through export_test.go).
	plannerOpenFault func() error
	// The planner RPC's per-node limits (plannerrpc.Config's MaxBody and
	// MaxInflight; zero takes its defaults): the bytes of a forwarded
	// planner call or its answer, and the forwarded calls in progress
	// (those this node sends, and those it answers as the leader).
	PlannerRPCMaxBody, PlannerRPCInflight int
	// PlannerRPCMaxStaged is plannerrpc.Config.MaxStaged: the device IDs
	// the lease's holder keeps of forwarded creates sent in parts and not
	// yet complete (zero takes its default).
	PlannerRPCMaxStaged int
	// Version is the Umbra version a node reports in GET /v1/cluster.
	Version string
	// ClusterHeartbeat is how often a node renews its registration in the
	// node registry (cluster.RegistryConfig.Heartbeat; a node is forgotten
	// three heartbeats after its last). Default cluster.DefaultHeartbeat;
	// every node of a cluster must use the same.
	ClusterHeartbeat time.Duration
	// MQTTAddr, WSAddr and TLSAddr are the broker's listeners (at least one
	// of MQTTAddr and WSAddr); TLSConfig is required with TLSAddr.
	MQTTAddr, WSAddr, TLSAddr string
	TLSConfig                 *tls.Config
	// BoundOnlyCAs are the CAs of TLSConfig.ClientCAs that vouch only for
	// certificates bound to a device (identity.Config.BoundOnlyCAs; see
	// identity.ServerTLS).
	BoundOnlyCAs []*x509.Certificate
	// HTTPAddr is the HTTP API's listener; with HTTPTLSConfig it serves
	// HTTPS (httpapi.Config.TLSConfig), and firmware download URLs are
	// https ones unless PublicURL says otherwise.
	HTTPAddr      string
	HTTPTLSConfig *tls.Config

	MaxDocumentSize int     // shadow.Config.MaxDocumentSize
	MaxNamedShadows int     // shadow.Config.MaxNamedShadows (named shadows per device; negative: none)
	MaxPacketSize   uint32  // broker.Config.MaxPacketSize; the shadow engine's replies are kept 512 bytes below it
	DeviceRate      float64 // shadow.Config.DeviceRate

	RetryCacheEntries int   // shadow.Config.DedupeMaxEntries
	RetryCacheBytes   int64 // shadow.Config.DedupeMaxBytes

	// Slow consumers: broker.Config.MaxPendingBytes (devices),
	// ServicePendingBytes (operators and integrators) and WriteTimeout.
	MaxPendingBytes, ServicePendingBytes int
	WriteTimeout                         time.Duration
	// ReadLoops is broker.Config.ReadLoops: the read loops of connected
	// plain TCP clients (0: GOMAXPROCS/2, at least
	// one; -1: a goroutine per connection).
	ReadLoops int
	// Subscription caps per session: broker.Config.MaxSubscriptions
	// (devices) and ServiceSubscriptions.
	MaxSubscriptions, ServiceSubscriptions int
	// Message rate per connection: broker.Config.MaxMessageRate and
	// MaxMessageBurst (devices), ServiceMessageRate and
	// ServiceMessageBurst.
	MaxMessageRate, ServiceMessageRate   float64
	MaxMessageBurst, ServiceMessageBurst int
	// MaxConnsPerIdentity is broker.Config.MaxConnsPerIdentity. It does not
	// apply with Anonymous, where every client is the same identity.
	MaxConnsPerIdentity int
	// ConnectTimeout and SysInterval are broker.Config's.
	ConnectTimeout, SysInterval time.Duration

	// JobsRate is jobs.Config.DeviceRate: AWS IoT Jobs requests per
	// second per thing (RequestThrottled beyond; the burst is twice it).
	JobsRate float64

	// PublicURL is the base URL in firmware download URLs; default
	// http://<the bound HTTP address> (https:// with HTTPTLSConfig).
	PublicURL    string
	SigningKey   string        // firmware.Config.SigningKeyPath
	URLTTL       time.Duration // firmware.Config.URLTTL
	MaxImageSize int64         // firmware.Config.MaxImageSize

	// Retained messages and persistent sessions are kept in
	// <DataDir>/broker.db (see broker's "Durability"); these are their
	// limits (broker.Config fields of the same names; zero takes the
	// broker's default, negative means no cap). In anonymous mode every
	// client is one identity, so MaxSessionsPerIdentity does not apply.
	MaxRetained            int
	MaxRetainedBytes       int64
	MaxQueuedBytes         int64
	ServiceQueuedBytes     int64
	MaxSessionsPerIdentity int

	// Anonymous turns authentication off (every client is an operator).
	Anonymous bool
	// AllowedOrigins are browser origins ("scheme://host[:port]") whose
	// pages may send state-changing HTTP requests (httpapi.Config.
	// TrustedOrigins) and open MQTT-over-WebSocket connections (broker.
	// Config.WSAllowedOrigins), besides pages of the server's own origin
	// (HTTP) or host (WebSocket). Default none.
	AllowedOrigins []string

	// ACLFile is a topic policy file (docs/acl.md) that extends the
	// built-in default policy, or replaces it if it says "default
	// replace"; "" means the built-in default alone. Open fails on a bad
	// file; ReloadACL reads it again.
	ACLFile string
	// MaxClientIDLength is broker.Config.MaxClientIDLength.
	MaxClientIDLength int

	// RolloutTick and RolloutRescan tune the planner (rollout.Config.Tick
	// and Rescan); tests and benchmarks shorten them.
	RolloutTick, RolloutRescan time.Duration

	// The web console's live feed (GET /v1/events, Server-Sent Events):
	// MaxSSEConns caps its streams in all, MaxSSEConnsPerToken those of
	// one token, SSEBuffer the events a stream may have waiting before it
	// is dropped (fleet.HubConfig; zero takes fleet's defaults).
	MaxSSEConns, MaxSSEConnsPerToken, SSEBuffer int

	// Logger receives every component's logs; nil discards them.
	Logger *slog.Logger
}

// Server is a running Umbra.
type Server struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics.Metrics

	// In the order Open opens them (see the data path above Open).
	stores   stores
	lns      listeners
	ids      *identity.Store
	brk      *broker.Server
	bridge   *natsbridge.Bridge // cluster mode's cross-node delivery; nil in single-node mode
	registry *cluster.Registry  // cluster mode's node registration; nil in single-node mode
	presence *cluster.Presence  // cluster mode's device presence; nil in single-node mode
	started  time.Time
	eng      *shadow.Engine
	fw       *firmware.Store
	planner  *rollout.Planner // single-node mode's planner; nil in cluster mode
	// leader runs the planner under the planner lease in cluster mode;
	// nil in single-node mode.
	leader *plannerLeader
	// rollouts is what every consumer of the planner calls: planner, or
	// in cluster mode leader's forwarding client (planner.go).
	rollouts plannerrpc.Planner
	jobs     *jobs.Service
	feed     *rolloutfeed.Feed
	// feedRelay receives the rollout feed the lease holder relays to the
	// other nodes' live feeds (cluster mode; planner.go).
	feedRelay *nats.Subscription
	api       *httpapi.Server // nil without HTTPAddr
	// fleet is the web console's fleet index and live feed, fed by
	// identity's callbacks and what the server publishes (tapBroker).
	fleet *fleetFeed

	// evictions runs the evictions of sessions OnConnect found stale;
	// Close waits for them after closing the broker.
	evictions sync.WaitGroup

	closeOnce sync.Once
	closeErr  error
}

// The data path, in the order Open opens its parts:
//
//	device ─MQTT─► broker ─► shadow engine ─► rollout planner ─► firmware URL
//
// A device's packets reach the broker, which asks identity (authentication,
// the topic policy) and hands request topics to the shadow engine (and the
// Jobs service). The engine commits each update to its store, then answers
// through the broker (accepted, delta). A committed change is a hint to the
// planner, which reads the device's reported.firmware and writes the next
// command as desired.firmware through the engine: a short-lived URL the
// firmware store signed. Planner events go to the rollout feed and the Jobs
// service, which publish through the broker. The HTTP API sits beside the
// path and calls its parts.
//
// Open first opens the stores (openStores: the data dir's files and
// locks, or cluster mode's buckets) and binds every listener, then opens
// each component with what it calls, in the order above. The few calls against that order are events:
// identity tells the broker of a revocation and the planner of an
// enrolment, the engine tells the planner of a change, the firmware store
// asks the planner whether a version is in use, and the planner tells the
// feed and the Jobs service of its commits. They reach the Server's fields
// directly: they happen only once Open has set every field, because the
// listeners accept nothing and the planner runs no pass until Open ends
// (closing s.lns.serving), and the HTTP API, the only other caller, is
// opened last.

// Open opens every component in data-path order and binds every
// listener. On error, whatever was opened is closed again.
func Open(ctx context.Context, cfg Config) (_ *Server, err error) {
	if cfg.DataDir == "" {
		return nil, fmt.Errorf("%w: DataDir is required", ErrInvalidConfig)
	}
	if cfg.MQTTAddr == "" && cfg.WSAddr == "" {
		return nil, fmt.Errorf("%w: at least one of MQTTAddr and WSAddr is needed", ErrInvalidConfig)
	}
	if len(cfg.NATS) > 0 && cfg.NodeID == "" {
		return nil, fmt.Errorf("%w: cluster mode (NATS) needs a NodeID", ErrInvalidConfig)
	}
	if cfg.NATSReplicas < 0 || cfg.NATSReplicas > 5 {
		return nil, fmt.Errorf("%w: NATSReplicas %d: JetStream keeps 1 to 5 replicas", ErrInvalidConfig, cfg.NATSReplicas)
	}
	if cfg.PlannerOpenRetries < 0 || cfg.PlannerStayOut < 0 {
		return nil, fmt.Errorf("%w: PlannerOpenRetries %d, PlannerStayOut %v: want zero (the default) or more",
			ErrInvalidConfig, cfg.PlannerOpenRetries, cfg.PlannerStayOut)
	}
	if cfg.TLSAddr != "" && cfg.TLSConfig == nil {
		return nil, fmt.Errorf("%w: TLSAddr without TLSConfig", ErrInvalidConfig)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, log: cfg.Logger, metrics: metrics.New(), started: time.Now().UTC()}
	// A bad policy file fails before anything is created or opened.
	acl, err := s.loadACL()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("server: create data dir: %w", err)
	}
	defer func() {
		if err != nil {
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			defer cancel()
			err = errors.Join(err, s.Close(cctx))
		}
	}()
	// The stores first: a second server on the same data dir fails on a
	// file lock, with a clear message, before it binds a port.
	if s.stores, err = openStores(ctx, cfg, s.metrics); err != nil {
		return nil, err
	}
	if s.lns, err = listen(ctx, cfg); err != nil {
		return nil, err
	}
	if err := s.open(ctx, acl); err != nil {
		return nil, err
	}
	close(s.lns.serving) // devices and HTTP clients are served; the planner runs
	s.logServing()
	return s, nil
}

// open opens the components in data-path order (see above Open).
func (s *Server) open(ctx context.Context, acl *policy.Policy) (err error) {
	cfg, log, m := s.cfg, s.log, s.metrics
	s.fleet = newFleetFeed(cfg)
	s.fleet.registerMetrics(m)
	for _, reason := range []string{identity.RevokeRemoved, identity.RevokeRotated, identity.RevokeRevoked,
		identity.RevokeReplaced, evictStale} {
		m.AddEvictions(reason, 0)
	}
	s.ids, err = identity.Open(ctx, identity.Config{
		Storage:      s.stores.identity,
		Logger:       log,
		Anonymous:    cfg.Anonymous,
		BoundOnlyCAs: cfg.BoundOnlyCAs,
		Policy:       acl,
		// A revocation disconnects the sessions that logged in with the
		// ended credential before the call that revoked returns.
		OnRevoke: func(ctx context.Context, r identity.Revocation) {
			s.fleet.revoked(r)
			m.AddEvictions(r.Reason, s.brk.Evict(ctx, brokerauth.Match(r)))
			s.forgetPresence(ctx, r) // cluster mode (cluster.go)
		},
		// Every enrolment path (device add, bulk import, certificate
		// binding) tells the planner: devices enrolled later join its
		// dynamic rollouts.
		OnEnrolled: func(ctx context.Context, enrolled []identity.Enrollment) {
			s.fleet.enrolled(enrolled)
			s.devicesEnrolled(ctx, rolloutDevices(enrolled))
		},
	})
	if err != nil {
		return err
	}
	m.AddACLReloads(reloadOK, 0)
	m.AddACLReloads(reloadError, 0)
	log.Info("topic policy", "policy", acl.String())
	if len(cfg.NATS) > 0 && cfg.PublicURL == "" {
		log.Warn("cluster mode without --public-url: the firmware download URLs this node mints (all of a rollout's, when it runs the planner) name this node and stop working if it goes; give every node the same --public-url, a load balancer or DNS name that reaches every node (docs/cluster.md)")
	}
	if cfg.Anonymous {
		log.Warn("INSECURE: --insecure-anonymous accepts every MQTT and HTTP client as an operator without credentials; never use it beyond a test machine")
	}

	if err := s.openBroker(ctx); err != nil {
		return err
	}
	if err := s.openBridge(ctx); err != nil {
		return err
	}
	// The operator token may replace an old one (a revocation): after the
	// broker, whose restored sessions are then checked against it.
	adminToken := filepath.Join(cfg.DataDir, AdminTokenFile)
	created, err := s.ids.EnsureOperatorToken(ctx, adminToken, adminTokenName(cfg))
	if err != nil {
		return err
	}
	if created {
		log.Info("created the operator token; umbra commands on this machine use it automatically", "file", adminToken)
	} else {
		log.Info("operator token", "file", adminToken)
	}
	// Restored sessions whose credential ended while Umbra was down (an
	// admin token rotated by deleting its file) go, as at a revocation.
	auth := brokerauth.New(s.ids)
	if n := s.brk.Evict(ctx, func(id broker.Identity) bool { return !auth.Valid(id) }); n > 0 {
		m.AddEvictions(evictStale, n)
	}

	maxPacket := cfg.MaxPacketSize
	if maxPacket == 0 {
		maxPacket = broker.DefaultMaxPacketSize
	}
	s.eng, err = shadow.Open(ctx, shadow.Config{
		Store:            s.stores.shadow,
		Publisher:        tapBroker{s.brk, s.fleet.tap},
		MaxDocumentSize:  cfg.MaxDocumentSize,
		MaxNamedShadows:  cfg.MaxNamedShadows,
		DeviceRate:       cfg.DeviceRate,
		DedupeMaxEntries: cfg.RetryCacheEntries,
		DedupeMaxBytes:   cfg.RetryCacheBytes,
		// A reply must fit in one packet with its topic and headers.
		MaxReply: max(int(maxPacket)-512, shadow.MinMaxReply),
		Logger:   log,
		Observe:  func(op shadow.Op, code int, d time.Duration) { m.ObserveShadow(string(op), code, d) },
		// The planner of this node hears of its changes at once; in
		// cluster mode the leader hears of the others' through the
		// shadow bucket's change feed (planner.go).
		OnChange: func(id device.ID, _ shadow.Version) {
			if p := s.localPlanner(); p != nil {
				p.Notify(id)
			}
		},
	})
	if err != nil {
		return err
	}
	if err := subscribe(s.brk, "shadow", shadow.RequestFilters, s.eng.HandleRequest); err != nil {
		return err
	}
	s.fleet.eng.Store(s.eng)
	s.fleet.load(ctx, s.ids, s.eng, log)
	m.RegisterRetryCache(func() metrics.RetryCacheStats {
		st := s.eng.Stats().RetryCache
		return metrics.RetryCacheStats{Entries: int64(st.Entries), Bytes: st.Bytes, Evictions: st.Evictions, Hits: st.Hits}
	})
	m.RegisterNamedShadows(func() metrics.NamedShadowStats {
		st := s.eng.Stats()
		return metrics.NamedShadowStats{Shadows: st.NamedShadows, Rejected: st.NamedLimitRejected}
	})

	s.fw, err = firmware.Open(ctx, firmware.Config{
		Dir:            s.stores.firmwareDir,
		Blobs:          s.stores.firmwareBlobs,
		Catalog:        s.stores.firmware,
		SigningKeyPath: cfg.SigningKey,
		URLSecret:      s.stores.firmwareURLSecret,
		URLTTL:         cfg.URLTTL,
		MaxImageSize:   cfg.MaxImageSize,
		BaseURL:        s.baseURL(),
		Logger:         log,
		// Removing a device revokes its download URLs.
		Enrolment: s.ids.Enrolment,
		// A version a rollout uses cannot be deleted.
		InUse: func(ctx context.Context, v firmware.Version) (string, bool, error) { return s.rollouts.InUse(ctx, v) },
	})
	if err != nil {
		return err
	}
	m.RegisterFirmware(s.fw)

	if err := s.openPlanner(ctx); err != nil {
		return err
	}

	// The AWS IoT Jobs service answers $aws/things/+/jobs/… through the
	// planner and the firmware store.
	s.jobs, err = jobs.Open(ctx, jobs.Config{
		Planner:    s.rollouts,
		Firmware:   s.fw,
		Publisher:  s.brk,
		DeviceRate: cfg.JobsRate,
		Logger:     log,
		Observe:    func(op jobs.Op, result string) { m.ObserveJobs(string(op), result) },
	})
	if err != nil {
		return err
	}
	if err := subscribe(s.brk, "jobs", jobs.Filters, s.jobs.HandleRequest); err != nil {
		return err
	}
	m.RegisterJobs(func() metrics.JobsStats {
		st := s.jobs.Stats()
		return metrics.JobsStats{NotificationsSent: st.NotificationsSent, NotificationsDropped: st.NotificationsDropped}
	})

	// The feed publishes rollout progress on rollouts/<id>/events and the
	// retained rollouts/<id>/status, and keeps the rollout gauges.
	var feedPub rolloutfeed.Publisher = tapBroker{s.brk, s.fleet.tap}
	if s.stores.nc != nil {
		feedPub = feedPublisher{tapBroker{s.brk, s.fleet.tap}, s.stores.nc, s.cfg.NodeID, log}
	}
	s.feed, err = rolloutfeed.Open(ctx, rolloutfeed.Config{
		Publisher: feedPub,
		Metrics:   m,
		Logger:    log,
		Status:    s.rollouts.Get,
	})
	if err != nil {
		return err
	}
	if s.planner != nil { // in cluster mode, the lease holder syncs when it gains the lease
		s.syncFeed(ctx, s.planner)
	}
	if err := s.relayFeed(); err != nil {
		return err
	}

	if err := s.register(ctx); err != nil {
		return err
	}
	if err := s.openPresence(ctx); err != nil {
		return err
	}

	if s.lns.http != nil {
		auth := httpapi.Authenticate(s.ids, cfg.Anonymous)
		mounts := httpapi.IdentityRoutes(s.ids, auth, log)
		mounts["GET /v1/cluster"] = auth(s.clusterHandler())
		mounts["GET /fw/{sha256}"] = s.fw.DownloadHandler() // URL-signed, no bearer token
		mounts["GET /metrics"] = m.Handler()                // for Prometheus scrapers, like /healthz: no bearer token
		for pattern, h := range console.Routes() {
			mounts[pattern] = h // the web console's page and assets: public; the API calls carry the token
		}
		s.api, err = httpapi.Open(ctx, httpapi.Config{
			Listener:       s.lns.http,
			Shadow:         s.eng,
			Firmware:       s.fw,
			Rollouts:       s.rollouts,
			Logger:         log,
			Mounts:         mounts,
			Middleware:     auth,
			Presence:       s.ids.Presence,
			Enrolled:       s.ids.GetDevice,
			TrustedOrigins: cfg.AllowedOrigins,
			Observe:        m.ObserveHTTP,
			TLSConfig:      cfg.HTTPTLSConfig,
			Fleet:          s.fleet.idx,
			Live:           s.fleet.hub,
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// openBroker opens the broker on the bound MQTT listeners, with identity
// as its authenticator and the topic policy.
func (s *Server) openBroker(ctx context.Context) (err error) {
	cfg, log, m, ids := s.cfg, s.log, s.metrics, s.ids
	auth := brokerauth.New(ids)
	// presence publishes a device's presence when the store applied the
	// change (a replaced session's late disconnect is not applied).
	presence := func(d device.ID) {
		if err := (tapBroker{s.brk, s.fleet.tap}).Publish("state/"+string(d)+"/presence", ids.PresenceJSON(d), true, 1); err != nil && !errors.Is(err, broker.ErrClosed) {
			log.Warn("publish presence", "device", d, "err", err)
		}
	}
	maxConns := cfg.MaxConnsPerIdentity // 0: the broker's default
	maxSessions := cfg.MaxSessionsPerIdentity
	if cfg.Anonymous {
		// Every anonymous client shares one identity: a per-identity cap
		// would cap the whole (loopback, test or demo) fleet.
		maxConns, maxSessions = -1, -1
	}
	s.brk, err = broker.Open(ctx, broker.Config{
		MaxConnsPerIdentity: maxConns,
		MaxClientIDLength:   cfg.MaxClientIDLength,
		TCPListener:         s.lns.mqtt,
		WSListener:          s.lns.ws,
		TLSListener:         s.lns.tls,
		TLSConfig:           cfg.TLSConfig,
		WSAllowedOrigins:    cfg.AllowedOrigins,
		MaxPacketSize:       cfg.MaxPacketSize,
		Logger:              log,
		Auth:                auth,
		OnSubscribe: func(clientID string, filters []string) {
			s.eng.HandleSubscribe(clientID, filters)
			s.jobs.HandleSubscribe(clientID, filters)
		},
		OnConnect: func(ci broker.ConnInfo) {
			if !auth.Valid(ci.Identity) {
				// It logged in with a credential that ended before it
				// was registered, so the revocation's eviction missed
				// it. Allow refuses it everything; evict it too (not
				// here: Evict waits for this connection).
				s.evictStale(ci.Identity)
				return
			}
			if d := ci.Identity.Device; d != "" && s.presence != nil {
				s.presence.Connected(d, ci.Seq, ci.At, ci.RemoteAddr) // cluster mode: see cluster.go
			} else if d != "" && ids.Connected(d, ci.Seq, ci.At, ci.RemoteAddr) {
				presence(d)
			}
		},
		OnDisconnect: func(ci broker.ConnInfo, err error) {
			// A removed device's last disconnect is not recorded: its
			// presence went with it.
			d := ci.Identity.Device
			if d != "" && s.presence != nil {
				// Cluster mode (cluster.go): a removed device's record is
				// deleted by forgetPresence, which this write cannot undo.
				s.presence.Disconnected(d, ci.Seq, ci.At, disconnectReason(err))
			} else if d != "" && (cfg.Anonymous || ids.Enrolment(d) != "") &&
				ids.Disconnected(d, ci.Seq, ci.At, disconnectReason(err)) {
				presence(d)
			}
		},

		// Per-client limits (docs/threat-model.md, MQTT clients).
		MaxPendingBytes:      cfg.MaxPendingBytes,
		ServicePendingBytes:  cfg.ServicePendingBytes,
		WriteTimeout:         cfg.WriteTimeout,
		ReadLoops:            cfg.ReadLoops,
		MaxSubscriptions:     cfg.MaxSubscriptions,
		ServiceSubscriptions: cfg.ServiceSubscriptions,
		MaxMessageRate:       cfg.MaxMessageRate,
		MaxMessageBurst:      cfg.MaxMessageBurst,
		ServiceMessageRate:   cfg.ServiceMessageRate,
		ServiceMessageBurst:  cfg.ServiceMessageBurst,
		ConnectTimeout:       cfg.ConnectTimeout,
		SysInterval:          cfg.SysInterval,
		// The in-process services' request topics (shadow.RequestFilters,
		// jobs.Filters; their ACL rules are in identity) are commands,
		// never retained state.
		RequestFilters: slices.Concat(shadow.RequestFilters, jobs.Filters),

		// Retained messages and persistent sessions: durable, and their
		// limits (docs/protocol.md, Durability).
		Store:                  s.stores.broker,
		MaxRetained:            cfg.MaxRetained,
		MaxRetainedBytes:       cfg.MaxRetainedBytes,
		MaxQueuedBytes:         cfg.MaxQueuedBytes,
		ServiceQueuedBytes:     cfg.ServiceQueuedBytes,
		MaxSessionsPerIdentity: maxSessions,
	})
	if err != nil {
		return brokerStateError(err)
	}
	// The broker owns its listeners from here on.
	s.lns.mqtt, s.lns.ws, s.lns.tls = nil, nil, nil
	m.RegisterBroker(func() metrics.BrokerStats {
		st := s.brk.Stats()
		return metrics.BrokerStats{
			ClientsConnected: st.ClientsConnected, MessagesReceived: st.MessagesReceived,
			MessagesSent: st.MessagesSent, MessagesDropped: st.MessagesDropped,
			InflightDropped: st.InflightDropped, PublishesDenied: st.PublishesDenied,
			SlowConsumers: st.SlowConsumers, PendingBytes: st.PendingBytes,
			LoopConns: st.LoopConns, LoopHandoffs: st.LoopHandoffs,
			Subscriptions: st.Subscriptions, SubscriptionsRefused: st.SubscriptionsRefused,
			ClientIDsRefused: st.ClientIDsRefused,

			Retained: st.Retained, RetainedBytes: st.RetainedBytes, RetainedRefused: st.RetainedRefused,
			PersistentSessions: st.PersistentSessions, SessionsRefused: st.SessionsRefused,
			QueuedBytes: st.QueuedBytes, QueueBytesDropped: st.QueueBytesDropped,
			StoreCommits: st.StoreCommits, StoreErrors: st.StoreErrors, StoreTime: st.StoreTime,
			SubscriptionsDenied: st.SubscriptionsDenied, RateLimited: st.RateLimited,
			ConnectsRejected: st.ConnectsRejected, IdentityConnsRefused: st.IdentityConnsRefused,
			TLSHandshakesFailed: st.TLSHandshakesFailed, PacketsTooLarge: st.PacketsTooLarge,
		}
	})
	return nil
}

// openBridge joins the broker to the other nodes' in cluster mode
// (broker/natsbridge, docs/cluster.md): right after the broker opens,
// before any client is served. Nothing in single-node mode.
func (s *Server) openBridge(ctx context.Context) (err error) {
	if len(s.cfg.NATS) == 0 {
		return nil
	}
	s.bridge, err = natsbridge.Open(ctx, natsbridge.Config{
		Broker:           s.brk,
		NodeID:           s.cfg.NodeID,
		URL:              strings.Join(s.cfg.NATS, ","),
		Logger:           s.log,
		MaxSubscriptions: s.cfg.ClusterMaxSubscriptions,
		OutboundBuffer:   s.cfg.ClusterOutboundBuffer,
		InboundBuffer:    s.cfg.ClusterInboundBuffer,
		// Retained messages are cluster-wide (docs/cluster.md).
		JetStream: s.stores.js,
		Replicas:  natsReplicas(s.cfg),
	})
	if errors.Is(err, natsbridge.ErrInvalidConfig) {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	if err != nil {
		return fmt.Errorf("%w: cluster bridge: %w", ErrNATSUnreachable, err)
	}
	s.metrics.RegisterBridge(func() metrics.BridgeStats { return metrics.BridgeStats(s.bridge.Stats()) })
	return nil
}

// subscribe hands a service's request filters to its handler.
func subscribe(brk *broker.Server, name string, filters []string, h broker.HandlerFunc) error {
	for _, f := range filters {
		if err := brk.Subscribe(f, h); err != nil {
			return fmt.Errorf("subscribe %s to %s: %w", name, f, err)
		}
	}
	return nil
}

// baseURL is the base of firmware download URLs: Config.PublicURL, or the
// bound HTTP listener's.
func (s *Server) baseURL() string {
	if s.cfg.PublicURL != "" || s.lns.http == nil {
		return s.cfg.PublicURL
	}
	return s.httpScheme() + "://" + s.lns.http.Addr().String()
}

func (s *Server) logServing() {
	attrs := []any{"data_dir", s.cfg.DataDir}
	for _, l := range []struct {
		name string
		addr net.Addr
	}{{"mqtt", s.brk.Addr()}, {"ws", s.brk.WSAddr()}, {"tls", s.brk.TLSAddr()}, {"http", s.HTTPAddr()}} {
		if l.addr != nil {
			attrs = append(attrs, l.name, l.addr.String())
		}
	}
	if s.api != nil {
		attrs = append(attrs, "http_scheme", s.httpScheme(), "console", s.httpScheme()+"://"+s.api.Addr().String()+"/")
	}
	s.log.Info("umbra serving", attrs...)
}

// Close stops the server: first its inputs (the HTTP API, then the planner
// and its feed), then device traffic (the broker, then the Jobs service),
// then the firmware store, the shadow engine and identity, and last the
// stores, which their components do not close. ctx bounds each
// component's wait for work in progress. It is idempotent, and closes
// what a failed Open opened.
func (s *Server) Close(ctx context.Context) error {
	s.closeOnce.Do(func() {
		var errs []error
		closeOne := func(name string, c interface{ Close(context.Context) error }) {
			if err := c.Close(ctx); err != nil {
				s.log.Error("close", "component", name, "err", err)
				errs = append(errs, fmt.Errorf("close %s: %w", name, err))
			}
		}
		if s.api != nil {
			closeOne("http", s.api)
		}
		// Other nodes stop listing this one. During a leader election the
		// removal is retried (up to 3 heartbeats, within ctx): meanwhile
		// the rest closes; the stores wait for it.
		regErr := make(chan error, 1)
		if s.registry != nil {
			go func() { regErr <- s.registry.Close(ctx) }()
		} else {
			regErr <- nil
		}
		if s.planner != nil {
			closeOne("rollout", s.planner)
		}
		if s.leader != nil {
			closeOne("rollout", s.leader) // stops the planner if it runs here, then releases the lease
		}
		if s.feed != nil {
			closeOne("rolloutfeed", s.feed)
		}
		if s.feedRelay != nil {
			_ = s.feedRelay.Unsubscribe() // NATS may be gone: the connection closes with the stores
		}
		if s.fleet != nil {
			closeOne("fleet", s.fleet) // stops its load; the event streams ended with the HTTP API
		}
		if s.bridge != nil {
			closeOne("natsbridge", s.bridge) // detaches from the broker, which closes next
		}
		if s.brk != nil {
			closeOne("broker", s.brk)
		}
		if s.presence != nil {
			closeOne("presence", s.presence) // after the broker: writes the disconnects its close reported
		}
		s.evictions.Wait() // quick: the broker is closed
		if s.jobs != nil {
			closeOne("jobs", s.jobs) // after the broker: no request comes in any more
		}
		if s.fw != nil {
			closeOne("firmware", s.fw)
		}
		if s.eng != nil {
			closeOne("shadow", s.eng)
		}
		if s.ids != nil {
			closeOne("identity", s.ids)
		}
		if err := <-regErr; err != nil {
			s.log.Error("close", "component", "registry", "err", err)
			errs = append(errs, fmt.Errorf("close registry: %w", err))
		}
		errs = append(errs, s.stores.close(ctx, s.log))
		s.lns.close() // those no component took (a failed Open)
		s.closeErr = errors.Join(errs...)
	})
	return s.closeErr
}

// httpScheme is the HTTP listener's URL scheme: https with
// Config.HTTPTLSConfig.
func (s *Server) httpScheme() string {
	if s.cfg.HTTPTLSConfig != nil {
		return "https"
	}
	return "http"
}

// DataDir returns Config.DataDir.
func (s *Server) DataDir() string { return s.cfg.DataDir }

// Engine returns the shadow engine.
func (s *Server) Engine() *shadow.Engine { return s.eng }

// Identity returns the identity store.
func (s *Server) Identity() *identity.Store { return s.ids }

// Broker returns the MQTT broker.
func (s *Server) Broker() *broker.Server { return s.brk }

// API returns the HTTP API, nil without Config.HTTPAddr.
func (s *Server) API() *httpapi.Server { return s.api }

// Firmware returns the firmware store.
func (s *Server) Firmware() *firmware.Store { return s.fw }

// Planner returns the rollout planner running on this node: always in
// single-node mode; in cluster mode only while the node holds the planner
// lease, else nil (see Rollouts).
func (s *Server) Planner() *rollout.Planner { return s.localPlanner() }

// Rollouts returns what the node's API calls for rollouts: the planner in
// single-node mode, the client that forwards to the planner lease's holder
// in cluster mode.
func (s *Server) Rollouts() plannerrpc.Planner { return s.rollouts }

// Jobs returns the AWS IoT Jobs service.
func (s *Server) Jobs() *jobs.Service { return s.jobs }

// HTTPAddr returns the HTTP API's bound address, nil without one.
func (s *Server) HTTPAddr() net.Addr {
	if s.api == nil {
		return nil
	}
	return s.api.Addr()
}

// evictStale is the eviction reason of a session that logged in with a
// credential that ended before the broker registered it.
const evictStale = "stale"

// evictStale evicts the session of id, reported stale by OnConnect, on
// a goroutine of its own: Evict waits for the connection whose callback
// found it. The broker closes before Close waits for the goroutine.
func (s *Server) evictStale(id broker.Identity) {
	s.evictions.Go(func() {
		// Evict is bounded by the broker's ConnectTimeout and its Close.
		n := s.brk.Evict(context.Background(), func(other broker.Identity) bool { return other == id })
		s.metrics.AddEvictions(evictStale, n)
	})
}

// rolloutDevices adapts enrolled devices to the planner's kind.
func rolloutDevices(enrolled []identity.Enrollment) []rollout.EnrolledDevice {
	out := make([]rollout.EnrolledDevice, len(enrolled))
	for i, e := range enrolled {
		out[i] = rollout.EnrolledDevice{ID: e.ID, Labels: e.Labels}
	}
	return out
}

var (
	_ broker.Authenticator   = (*brokerauth.Auth)(nil)
	_ shadow.Publisher       = (*broker.Server)(nil)
	_ shadow.ClientPublisher = (*broker.Server)(nil)
	_ jobs.Publisher         = (*broker.Server)(nil)
	_ jobs.Planner           = (*rollout.Planner)(nil)
	_ rollout.Firmware       = (*firmware.Store)(nil)
)

// disconnectReason is the presence reason for a broker disconnect error:
// a short stable word, "" for a clean DISCONNECT.
func disconnectReason(err error) string {
	switch {
	case err == nil:
		return "" // clean DISCONNECT, as identity.Presence documents
	case errors.Is(err, broker.ErrTakenOver):
		return "taken_over"
	case errors.Is(err, broker.ErrClosed):
		return "server_shutdown"
	case errors.Is(err, broker.ErrTooLarge):
		return "packet_too_large"
	case errors.Is(err, broker.ErrNotAuthorized):
		return "not_authorized"
	case errors.Is(err, broker.ErrProtocol):
		return "protocol_error"
	case errors.Is(err, broker.ErrConnectionLost):
		return "connection_lost"
	case errors.Is(err, broker.ErrSlowConsumer):
		return "slow_consumer"
	}
	return "error"
}
