package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/broker/boltstore"
	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/firmware"
	fwstore "github.com/umbra-iot/umbra/firmware/boltstore"
	"github.com/umbra-iot/umbra/identity"
	idstore "github.com/umbra-iot/umbra/identity/boltstore"
	"github.com/umbra-iot/umbra/internal/httpapi"
	"github.com/umbra-iot/umbra/internal/metrics"
	"github.com/umbra-iot/umbra/internal/rolloutfeed"
	"github.com/umbra-iot/umbra/internal/server/brokerauth"
	"github.com/umbra-iot/umbra/policy"
	"github.com/umbra-iot/umbra/rollout"
	rolloutstore "github.com/umbra-iot/umbra/rollout/boltstore"
	"github.com/umbra-iot/umbra/rollout/jobs"
	"github.com/umbra-iot/umbra/shadow"
	shadowstore "github.com/umbra-iot/umbra/shadow/boltstore"
)

// AdminTokenFile is the operator token's file in the data dir, written on
// first start (mode 0600) and read by umbra commands on the same machine.
const AdminTokenFile = "admin.token"

// ErrInvalidConfig is wrapped by Open for a Config it cannot use.
var ErrInvalidConfig = errors.New("server: invalid config")

// Config configures a Server. Addresses that are "" disable their
// listener; zero values of the other fields take the components' defaults.
type Config struct {
	// DataDir holds the databases, keys and firmware blobs; created 0700.
	DataDir string
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

	// Logger receives every component's logs; nil discards them.
	Logger *slog.Logger
}

// Server is a running Umbra.
type Server struct {
	cfg     Config
	log     *slog.Logger
	eng     *shadow.Engine
	ids     *identity.Store
	brk     *broker.Server
	api     *httpapi.Server // nil without HTTPAddr
	fw      *firmware.Store
	planner *rollout.Planner
	jobs    *jobs.Service
	metrics *metrics.Metrics

	// closers run in reverse order of opening.
	closers []closer
	// evictions runs the evictions of sessions OnConnect found stale;
	// Close waits for them after closing the broker.
	evictions sync.WaitGroup

	closeOnce sync.Once
	closeErr  error
}

type closer struct {
	name string
	c    interface{ Close(context.Context) error }
}

// Open opens every component in dependency order and binds every
// listener. On error, whatever was opened is closed again.
func Open(ctx context.Context, cfg Config) (_ *Server, err error) {
	if cfg.DataDir == "" {
		return nil, fmt.Errorf("%w: DataDir is required", ErrInvalidConfig)
	}
	if cfg.MQTTAddr == "" && cfg.WSAddr == "" {
		return nil, fmt.Errorf("%w: at least one of MQTTAddr and WSAddr is needed", ErrInvalidConfig)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, log: cfg.Logger, metrics: metrics.New()}
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
	if err := s.open(ctx, acl); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Server) push(name string, c interface{ Close(context.Context) error }) {
	s.closers = append(s.closers, closer{name, c})
}

func (s *Server) open(ctx context.Context, acl *policy.Policy) error {
	cfg, log, m := s.cfg, s.log, s.metrics
	pub := &lazyPublisher{}
	// The rollout planner is opened after the engine and the firmware store
	// it depends on; the engine's change feed and the store's delete guard
	// reach it through this pointer.
	var planner atomic.Pointer[rollout.Planner]
	maxPacket := cfg.MaxPacketSize
	if maxPacket == 0 {
		maxPacket = broker.DefaultMaxPacketSize
	}
	shadows, err := shadowstore.Open(ctx, shadowstore.Config{
		Path:           filepath.Join(cfg.DataDir, "shadow.db"),
		CommitObserved: m.ObserveCommit,
	})
	if err != nil {
		return fmt.Errorf("shadow: %w", err)
	}
	eng, err := shadow.Open(ctx, shadow.Config{
		Store:            shadows, // the engine closes it
		Publisher:        pub,
		MaxDocumentSize:  cfg.MaxDocumentSize,
		MaxNamedShadows:  cfg.MaxNamedShadows,
		DeviceRate:       cfg.DeviceRate,
		DedupeMaxEntries: cfg.RetryCacheEntries,
		DedupeMaxBytes:   cfg.RetryCacheBytes,
		// A reply must fit in one packet with its topic and headers.
		MaxReply: max(int(maxPacket)-512, shadow.MinMaxReply),
		Logger:   log,
		Observe:  func(op shadow.Op, code int, d time.Duration) { m.ObserveShadow(string(op), code, d) },
		OnChange: func(id device.ID, _ shadow.Version) {
			if p := planner.Load(); p != nil {
				p.Notify(id)
			}
		},
	})
	if err != nil {
		return err
	}
	s.push("shadow", eng)
	s.eng = eng
	m.RegisterRetryCache(func() metrics.RetryCacheStats {
		st := eng.Stats().RetryCache
		return metrics.RetryCacheStats{Entries: int64(st.Entries), Bytes: st.Bytes, Evictions: st.Evictions, Hits: st.Hits}
	})
	m.RegisterNamedShadows(func() metrics.NamedShadowStats {
		st := eng.Stats()
		return metrics.NamedShadowStats{Shadows: st.NamedShadows, Rejected: st.NamedLimitRejected}
	})

	// The broker is opened after the identity store; until then there is
	// no session to evict.
	for _, reason := range []string{identity.RevokeRemoved, identity.RevokeRotated, identity.RevokeRevoked,
		identity.RevokeReplaced, evictStale} {
		m.AddEvictions(reason, 0)
	}
	idst, err := idstore.Open(ctx, idstore.Config{Path: filepath.Join(cfg.DataDir, "identity.db"), Logger: log})
	if err != nil {
		return err
	}
	s.push("identity.db", idst) // closes after the identity store
	ids, err := identity.Open(ctx, identity.Config{
		Storage:      idst,
		Logger:       log,
		Anonymous:    cfg.Anonymous,
		BoundOnlyCAs: cfg.BoundOnlyCAs,
		Policy:       acl,
		OnRevoke: func(ctx context.Context, r identity.Revocation) {
			if b := pub.b.Load(); b != nil {
				m.AddEvictions(r.Reason, b.Evict(ctx, brokerauth.Match(r)))
			}
		},
		// Every enrolment path (device add, bulk import, certificate
		// binding) tells the planner: devices enrolled later join its
		// dynamic rollouts. The planner is opened below (after the HTTP
		// API and the firmware store): a device enrolled before that does
		// not join one.
		OnEnrolled: func(ctx context.Context, enrolled []identity.Enrollment) {
			if p := planner.Load(); p != nil {
				p.DevicesEnrolled(ctx, rolloutDevices(enrolled))
			}
		},
	})
	if err != nil {
		return err
	}
	s.push("identity", ids) // closes after the broker
	s.ids = ids
	auth := brokerauth.New(ids)
	adminToken := filepath.Join(cfg.DataDir, AdminTokenFile)
	created, err := ids.EnsureAdminToken(ctx, adminToken)
	if err != nil {
		return err
	}
	if created {
		log.Info("created the operator token; umbra commands on this machine use it automatically", "file", adminToken)
	} else {
		log.Info("operator token", "file", adminToken)
	}
	m.AddACLReloads(reloadOK, 0)
	m.AddACLReloads(reloadError, 0)
	log.Info("topic policy", "policy", acl.String())
	if cfg.Anonymous {
		log.Warn("INSECURE: --insecure-anonymous accepts every MQTT and HTTP client as an operator without credentials; never use it beyond a test machine")
	}

	// The AWS IoT Jobs service answers on the broker (through pub) and
	// asks the planner and the firmware store, opened later: until then
	// its requests are answered InternalError.
	lazyPl, lazyFw := &lazyPlanner{}, &lazyFirmware{}
	jsvc, err := jobs.Open(ctx, jobs.Config{
		Planner:    lazyPl,
		Firmware:   lazyFw,
		Publisher:  pub,
		DeviceRate: cfg.JobsRate,
		Logger:     log,
		Observe:    func(op jobs.Op, result string) { m.ObserveJobs(string(op), result) },
	})
	if err != nil {
		return err
	}
	s.push("jobs", jsvc) // closes after the broker: no request comes in any more
	s.jobs = jsvc
	m.RegisterJobs(func() metrics.JobsStats {
		st := jsvc.Stats()
		return metrics.JobsStats{NotificationsSent: st.NotificationsSent, NotificationsDropped: st.NotificationsDropped}
	})

	// presence publishes a device's presence when the store applied the
	// change (a replaced session's late disconnect is not applied).
	presence := func(d device.ID) {
		if err := pub.Publish("state/"+string(d)+"/presence", ids.PresenceJSON(d), true, 1); err != nil && !errors.Is(err, broker.ErrClosed) {
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
	// The in-process services that answer device requests, each on its
	// own request filters: the shadow engine serves state/… and
	// $aws/things/+/shadow/… (see shadow.RequestFilters), the Jobs service
	// $aws/things/+/jobs/… (jobs.Filters). Their ACL rules are in
	// identity. Their filters are the broker's request topics,
	// which are never retained.
	services := []struct {
		name    string
		filters []string
		handle  broker.HandlerFunc
	}{
		{"shadow", shadow.RequestFilters, eng.HandleRequest},
		{"jobs", jobs.Filters, jsvc.HandleRequest},
	}
	var requestFilters []string
	for _, svc := range services {
		requestFilters = append(requestFilters, svc.filters...)
	}
	// The broker's retained messages and persistent sessions; closed
	// after the broker.
	brokerDB := filepath.Join(cfg.DataDir, "broker.db")
	bst, err := boltstore.Open(ctx, boltstore.Config{Path: brokerDB, Timeout: time.Second})
	if err != nil {
		return brokerStateError(err)
	}
	s.push("broker.db", bst)
	brk, err := broker.Open(ctx, broker.Config{
		MaxConnsPerIdentity: maxConns,
		MaxClientIDLength:   cfg.MaxClientIDLength,
		TCPAddr:             cfg.MQTTAddr,
		WSAddr:              cfg.WSAddr,
		TLSAddr:             cfg.TLSAddr,
		TLSConfig:           cfg.TLSConfig,
		WSAllowedOrigins:    cfg.AllowedOrigins,
		MaxPacketSize:       cfg.MaxPacketSize,
		Logger:              log,
		Auth:                auth,
		OnSubscribe: func(clientID string, filters []string) {
			eng.HandleSubscribe(clientID, filters)
			jsvc.HandleSubscribe(clientID, filters)
		},
		OnConnect: func(ci broker.ConnInfo) {
			if !auth.Valid(ci.Identity) {
				// It logged in with a credential that ended before it
				// was registered, so the revocation's eviction missed
				// it. Allow refuses it everything; evict it too (not
				// here: Evict waits for this connection).
				s.evictStale(pub.b.Load(), ci.Identity)
				return
			}
			if d := ci.Identity.Device; d != "" && ids.Connected(d, ci.Seq, ci.At, ci.RemoteAddr) {
				presence(d)
			}
		},
		OnDisconnect: func(ci broker.ConnInfo, err error) {
			// A removed device's last disconnect is not recorded: its
			// presence went with it.
			if d := ci.Identity.Device; d != "" && (cfg.Anonymous || ids.Enrolment(d) != "") &&
				ids.Disconnected(d, ci.Seq, ci.At, disconnectReason(err)) {
				presence(d)
			}
		},

		// Per-client limits (docs/threat-model.md, MQTT clients).
		MaxPendingBytes:      cfg.MaxPendingBytes,
		ServicePendingBytes:  cfg.ServicePendingBytes,
		WriteTimeout:         cfg.WriteTimeout,
		MaxSubscriptions:     cfg.MaxSubscriptions,
		ServiceSubscriptions: cfg.ServiceSubscriptions,
		MaxMessageRate:       cfg.MaxMessageRate,
		MaxMessageBurst:      cfg.MaxMessageBurst,
		ServiceMessageRate:   cfg.ServiceMessageRate,
		ServiceMessageBurst:  cfg.ServiceMessageBurst,
		ConnectTimeout:       cfg.ConnectTimeout,
		SysInterval:          cfg.SysInterval,
		// Requests are commands, never retained state.
		RequestFilters: requestFilters,

		// Retained messages and persistent sessions: durable, and their
		// limits (docs/protocol.md, Durability).
		Store:                  bst,
		MaxRetained:            cfg.MaxRetained,
		MaxRetainedBytes:       cfg.MaxRetainedBytes,
		MaxQueuedBytes:         cfg.MaxQueuedBytes,
		ServiceQueuedBytes:     cfg.ServiceQueuedBytes,
		MaxSessionsPerIdentity: maxSessions,
	})
	if err != nil {
		return brokerStateError(err)
	}
	s.push("broker", brk) // closes before the engine and the identity store
	s.brk = brk
	pub.b.Store(brk)
	// Restored sessions whose credential ended while Umbra was down (an
	// admin token rotated by deleting its file) go, as at a revocation.
	if n := brk.Evict(ctx, func(id broker.Identity) bool { return !auth.Valid(id) }); n > 0 {
		m.AddEvictions(evictStale, n)
	}
	m.RegisterBroker(func() metrics.BrokerStats {
		st := brk.Stats()
		return metrics.BrokerStats{
			ClientsConnected: st.ClientsConnected, MessagesReceived: st.MessagesReceived,
			MessagesSent: st.MessagesSent, MessagesDropped: st.MessagesDropped,
			InflightDropped: st.InflightDropped, PublishesDenied: st.PublishesDenied,
			SlowConsumers: st.SlowConsumers, PendingBytes: st.PendingBytes,
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
	for _, svc := range services {
		for _, f := range svc.filters {
			if err := brk.Subscribe(f, svc.handle); err != nil {
				return fmt.Errorf("subscribe %s to %s: %w", svc.name, f, err)
			}
		}
	}

	fwHandler := &lazyHandler{}
	baseURL := cfg.PublicURL
	if cfg.HTTPAddr != "" {
		auth := httpapi.Authenticate(ids, cfg.Anonymous)
		mounts := httpapi.IdentityRoutes(ids, auth, log)
		mounts["GET /fw/{sha256}"] = fwHandler // URL-signed, no bearer token
		mounts["GET /metrics"] = m.Handler()   // for Prometheus scrapers, like /healthz: no bearer token
		api, err := httpapi.Open(ctx, httpapi.Config{
			Addr:           cfg.HTTPAddr,
			Shadow:         eng,
			Logger:         log,
			Mounts:         mounts,
			Middleware:     auth,
			Presence:       ids.Presence,
			Enrolled:       ids.GetDevice,
			TrustedOrigins: cfg.AllowedOrigins,
			Observe:        s.metrics.ObserveHTTP,
			TLSConfig:      cfg.HTTPTLSConfig,
			// Firmware and Rollouts are installed below: the store needs the bound address.
		})
		if err != nil {
			return err
		}
		s.push("http", api) // closes first
		s.api = api
		if baseURL == "" {
			baseURL = s.httpScheme() + "://" + api.Addr().String()
		}
	}
	fwDir := filepath.Join(cfg.DataDir, "firmware")
	if err := os.MkdirAll(fwDir, 0o750); err != nil {
		return fmt.Errorf("firmware: %w", err)
	}
	images, err := fwstore.Open(ctx, fwstore.Config{Path: filepath.Join(fwDir, fwstore.File)})
	if err != nil {
		return fmt.Errorf("firmware: %w", err)
	}
	fw, err := firmware.Open(ctx, firmware.Config{
		Dir:            fwDir,
		Catalog:        images, // the store closes it
		SigningKeyPath: cfg.SigningKey,
		URLTTL:         cfg.URLTTL,
		MaxImageSize:   cfg.MaxImageSize,
		BaseURL:        baseURL,
		Logger:         log,
		// Removing a device revokes its download URLs.
		Enrolment: ids.Enrolment,
		InUse: func(ctx context.Context, v firmware.Version) (string, bool, error) {
			if p := planner.Load(); p != nil {
				return p.InUse(ctx, v)
			}
			return "", false, nil
		},
	})
	if err != nil {
		return err
	}
	s.push("firmware", fw)
	s.fw = fw
	lazyFw.f.Store(fw)
	m.RegisterFirmware(fw)
	// The feed publishes rollout progress on rollouts/<id>/events and the
	// retained rollouts/<id>/status, and keeps the rollout gauges. It is
	// closed after the planner (no more events) and before the broker.
	feed, err := rolloutfeed.Open(ctx, rolloutfeed.Config{
		Publisher: brk,
		Metrics:   m,
		Logger:    log,
		Status: func(ctx context.Context, id string) (rollout.Status, error) {
			if p := planner.Load(); p != nil {
				return p.Get(ctx, id)
			}
			return rollout.Status{}, rollout.ErrClosed // not open yet; Sync below catches up
		},
	})
	if err != nil {
		return err
	}
	s.push("rolloutfeed", feed)
	// The planner's store; closed after the planner.
	rst, err := rolloutstore.Open(ctx, rolloutstore.Config{Path: filepath.Join(cfg.DataDir, "rollout.db")})
	if err != nil {
		return fmt.Errorf("server: %w", err)
	}
	s.push("rollout.db", rst)
	pl, err := rollout.Open(ctx, rollout.Config{
		Store:    rst,
		Shadows:  rollout.EngineShadows(eng),
		Firmware: fw,
		Logger:   log,
		Tick:     cfg.RolloutTick,
		Rescan:   cfg.RolloutRescan,
		OnEvent:  feed.OnEvent,
		// Targets by label selector or all, and their hardware models:
		// the enrolled devices and every shadow.
		Inventory: rollout.EngineInventory(eng, func(ctx context.Context) ([]rollout.EnrolledDevice, error) {
			devs, err := ids.ListDevices(ctx)
			if err != nil {
				return nil, err
			}
			out := make([]rollout.EnrolledDevice, len(devs))
			for i, d := range devs {
				out[i] = rollout.EnrolledDevice{ID: d.ID, Labels: d.Labels}
			}
			return out, nil
		}),
		// The notify and notify-next topics of Jobs devices.
		OnExecution: jsvc.ExecutionChanged,
	})
	if err != nil {
		return err
	}
	s.push("rollout", pl) // closes before firmware, broker and engine
	planner.Store(pl)
	lazyPl.p.Store(pl)
	s.planner = pl
	var dl http.Handler = fw.DownloadHandler()
	fwHandler.h.Store(&dl)
	if s.api != nil {
		s.api.SetFirmware(fw)
		s.api.SetRollouts(pl)
	}
	if rs, err := pl.List(ctx); err != nil {
		log.Warn("list rollouts for their status topics", "err", err)
	} else {
		ids := make([]string, len(rs))
		for i, r := range rs {
			ids[i] = r.ID
		}
		if err := feed.Sync(ctx, ids); err != nil {
			log.Warn("publish rollout statuses", "err", err)
		}
	}

	attrs := []any{"data_dir", cfg.DataDir}
	for _, l := range []struct {
		name string
		addr net.Addr
	}{{"mqtt", brk.Addr()}, {"ws", brk.WSAddr()}, {"tls", brk.TLSAddr()}, {"http", s.HTTPAddr()}} {
		if l.addr != nil {
			attrs = append(attrs, l.name, l.addr.String())
		}
	}
	if s.api != nil {
		attrs = append(attrs, "http_scheme", s.httpScheme())
	}
	log.Info("umbra serving", attrs...)
	return nil
}

// Close closes every component in reverse order of opening: the HTTP API
// and the planner first, then device traffic, then the stores. ctx bounds
// each component's wait for work in progress. It is idempotent.
func (s *Server) Close(ctx context.Context) error {
	s.closeOnce.Do(func() {
		var errs []error
		for i := len(s.closers) - 1; i >= 0; i-- {
			c := s.closers[i]
			if err := c.c.Close(ctx); err != nil {
				s.log.Error("close", "component", c.name, "err", err)
				errs = append(errs, fmt.Errorf("close %s: %w", c.name, err))
			}
		}
		s.evictions.Wait() // quick: the broker is closed
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

// Planner returns the rollout planner.
func (s *Server) Planner() *rollout.Planner { return s.planner }

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

// evictStale evicts from b the session of id, reported stale by
// OnConnect, on a goroutine of its own: Evict waits for the connection
// whose callback found it. b is nil while broker.Open has not returned
// (no credential ends then). The broker closes before Close waits for
// the goroutine.
func (s *Server) evictStale(b *broker.Server, id broker.Identity) {
	if b == nil {
		return
	}
	s.evictions.Go(func() {
		// Evict is bounded by the broker's ConnectTimeout and its Close.
		n := b.Evict(context.Background(), func(other broker.Identity) bool { return other == id })
		s.metrics.AddEvictions(evictStale, n)
	})
}

// lazyHandler serves through a handler installed after the HTTP listener is
// bound: the firmware store needs the listener's real address for its URLs.
type lazyHandler struct{ h atomic.Pointer[http.Handler] }

func (l *lazyHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if h := l.h.Load(); h != nil {
		(*h).ServeHTTP(w, r)
		return
	}
	http.Error(w, "starting", http.StatusServiceUnavailable)
}

// lazyPublisher lets the shadow engine be opened (and its database lock
// taken) before the broker binds its ports: a second server on the same
// data dir then fails on the lock with a clear message, not on a port.
type lazyPublisher struct{ b atomic.Pointer[broker.Server] }

func (p *lazyPublisher) Publish(topic string, payload []byte, retain bool, qos byte) error {
	if b := p.b.Load(); b != nil {
		return b.Publish(topic, payload, retain, qos)
	}
	return broker.ErrClosed
}

func (p *lazyPublisher) PublishTo(clientID, topic string, payload []byte, qos byte) error {
	if b := p.b.Load(); b != nil {
		return b.PublishTo(clientID, topic, payload, qos)
	}
	return broker.ErrClosed
}

func (p *lazyPublisher) SendTo(clientID, topic string, payload []byte, qos byte) error {
	if b := p.b.Load(); b != nil {
		return b.SendTo(clientID, topic, payload, qos)
	}
	return broker.ErrClosed
}

func (p *lazyPublisher) HasSubscribers(topic string) bool {
	if b := p.b.Load(); b != nil {
		return b.HasSubscribers(topic)
	}
	return false
}

// lazyPlanner is the Jobs service's planner, opened after the service
// (whose subscriptions are the broker's, made when it opens): until then
// every call fails with rollout.ErrClosed.
type lazyPlanner struct {
	p atomic.Pointer[rollout.Planner]
}

func (l *lazyPlanner) get() (*rollout.Planner, error) {
	if p := l.p.Load(); p != nil {
		return p, nil
	}
	return nil, rollout.ErrClosed
}

func (l *lazyPlanner) MarkJobs(ctx context.Context, id device.ID) error {
	p, err := l.get()
	if err != nil {
		return err
	}
	return p.MarkJobs(ctx, id)
}

func (l *lazyPlanner) NextExecution(ctx context.Context, id device.ID) (rollout.Execution, bool, error) {
	p, err := l.get()
	if err != nil {
		return rollout.Execution{}, false, err
	}
	return p.NextExecution(ctx, id)
}

func (l *lazyPlanner) DescribeExecution(ctx context.Context, id device.ID, jobID string, number int) (rollout.Execution, error) {
	p, err := l.get()
	if err != nil {
		return rollout.Execution{}, err
	}
	return p.DescribeExecution(ctx, id, jobID, number)
}

func (l *lazyPlanner) StartNextExecution(ctx context.Context, id device.ID, details map[string]string) (rollout.Execution, bool, error) {
	p, err := l.get()
	if err != nil {
		return rollout.Execution{}, false, err
	}
	return p.StartNextExecution(ctx, id, details)
}

func (l *lazyPlanner) UpdateExecution(ctx context.Context, id device.ID, jobID string, u rollout.ExecutionUpdate) (rollout.Execution, error) {
	p, err := l.get()
	if err != nil {
		return rollout.Execution{}, err
	}
	return p.UpdateExecution(ctx, id, jobID, u)
}

// lazyFirmware is the Jobs service's firmware store, opened after the
// service. The service mints documents only for executions, which exist
// once the planner (opened after the store) runs.
type lazyFirmware struct {
	f atomic.Pointer[firmware.Store]
}

func (l *lazyFirmware) Get(ctx context.Context, v firmware.Version) (firmware.Image, error) {
	if f := l.f.Load(); f != nil {
		return f.Get(ctx, v)
	}
	return firmware.Image{}, firmware.ErrClosed
}

func (l *lazyFirmware) Command(img firmware.Image, id device.ID, ttl time.Duration, job string) firmware.Command {
	return l.f.Load().Command(img, id, ttl, job)
}

var (
	_ broker.Authenticator   = (*brokerauth.Auth)(nil)
	_ shadow.Publisher       = (*broker.Server)(nil)
	_ shadow.ClientPublisher = (*broker.Server)(nil)
	_ shadow.ClientPublisher = (*lazyPublisher)(nil)
	_ jobs.Publisher         = (*broker.Server)(nil)
	_ jobs.Publisher         = (*lazyPublisher)(nil)
	_ jobs.Planner           = (*rollout.Planner)(nil)
	_ jobs.Planner           = (*lazyPlanner)(nil)
	_ rollout.Firmware       = (*lazyFirmware)(nil)
)

// rolloutDevices adapts enrolled devices to the planner's kind.
func rolloutDevices(enrolled []identity.Enrollment) []rollout.EnrolledDevice {
	out := make([]rollout.EnrolledDevice, len(enrolled))
	for i, e := range enrolled {
		out[i] = rollout.EnrolledDevice{ID: e.ID, Labels: e.Labels}
	}
	return out
}

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

var (
	_ broker.Store  = (*boltstore.Store)(nil)
	_ rollout.Store = (*rolloutstore.Store)(nil)
)

// brokerStateError explains what to do about a broker.db serve cannot
// use: it never starts without the state it holds.
func brokerStateError(err error) error {
	switch {
	case errors.Is(err, boltstore.ErrCorrupt):
		return fmt.Errorf("server: %w (the broker's retained messages and persistent sessions; "+
			"to start without them, move broker.db out of the data dir)", err)
	case errors.Is(err, boltstore.ErrLocked):
		return fmt.Errorf("server: %w", err)
	}
	return err
}
