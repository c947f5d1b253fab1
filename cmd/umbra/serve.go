package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/firmware"
	"github.com/umbra-iot/umbra/internal/device"
	"github.com/umbra-iot/umbra/internal/httpapi"
	"github.com/umbra-iot/umbra/internal/identity"
	"github.com/umbra-iot/umbra/internal/metrics"
	"github.com/umbra-iot/umbra/rollout"
	"github.com/umbra-iot/umbra/shadow"
)

// serveOptions are the flags of `umbra serve`.
type serveOptions struct {
	dataDir   string
	mqttAddr  string
	wsAddr    string
	httpAddr  string
	logFormat string
	logLevel  string

	maxDocSize    int
	maxPacketSize uint32
	deviceRate    float64
	shutdownGrace time.Duration

	publicURL    string
	signingKey   string
	urlTTL       time.Duration
	maxImageSize int64

	insecureAnonymous bool
	tlsAddr           string
	tlsCert           string
	tlsKey            string
	clientCA          string
}

func newServeCmd() *cobra.Command {
	o := &serveOptions{}
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the MQTT broker, the shadow engine and the HTTP API",
		Long: `Run Umbra: an MQTT broker (TCP and WebSocket) with the device shadow engine
on state/<id>/… topics, and the HTTP API. Data is kept in --data-dir.
Stop with SIGINT or SIGTERM: listeners close, requests in progress finish,
the database is closed.

Every client must authenticate: on first start serve writes an operator token
to <data-dir>/admin.token (mode 0600), which umbra commands on the same machine
use automatically. Enroll devices with "umbra device add". Listeners may bind
any address; --insecure-anonymous turns authentication off (loopback only).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			log, err := newLogger(cmd.ErrOrStderr(), o.logFormat, o.logLevel)
			if err != nil {
				return err
			}
			cfg, err := o.config(log)
			if err != nil {
				return err
			}
			return runServe(cmd.Context(), cfg)
		},
	}
	o.addFlags(cmd)
	return cmd
}

func (o *serveOptions) addFlags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&o.dataDir, "data-dir", "./umbra-data", "directory for Umbra's databases and keys")
	f.StringVar(&o.mqttAddr, "mqtt-addr", "127.0.0.1:1883", "MQTT over TCP listen address (\"\" disables)")
	f.StringVar(&o.wsAddr, "ws-addr", "127.0.0.1:8083", "MQTT over WebSocket listen address (\"\" disables)")
	f.StringVar(&o.httpAddr, "http-addr", "127.0.0.1:8080", "HTTP API listen address (\"\" disables)")
	f.StringVar(&o.logFormat, "log-format", "text", "log format: text or json")
	f.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	f.IntVar(&o.maxDocSize, "max-shadow-size", shadow.DefaultMaxDocumentSize, "largest desired+reported state per shadow, in bytes (413 beyond)")
	f.Uint32Var(&o.maxPacketSize, "max-packet-size", broker.DefaultMaxPacketSize, "largest MQTT packet accepted, in bytes")
	f.Float64Var(&o.deviceRate, "device-rate", shadow.DefaultDeviceRate, "shadow requests per second per device (429 beyond; negative disables)")
	f.DurationVar(&o.shutdownGrace, "shutdown-grace", 10*time.Second, "how long shutdown waits for requests in progress")
	f.StringVar(&o.publicURL, "public-url", "", "base URL devices use to reach the HTTP server (firmware download URLs); default http://<http-addr>")
	f.StringVar(&o.signingKey, "signing-key", "", "ed25519 firmware signing key (PEM PKCS#8); default <data-dir>/firmware/signing.key, created on first start")
	f.DurationVar(&o.urlTTL, "url-ttl", firmware.DefaultURLTTL, "lifetime of per-device firmware download URLs")
	f.Int64Var(&o.maxImageSize, "max-image-size", firmware.DefaultMaxImageSize, "largest firmware image accepted, in bytes")
	f.BoolVar(&o.insecureAnonymous, "insecure-anonymous", false, "accept every MQTT and HTTP client as an operator, without credentials (loopback listeners only; for tests and demos)")
	f.StringVar(&o.tlsAddr, "tls-addr", "", "MQTT over TLS listen address (\"\" disables); needs --tls-cert and --tls-key")
	f.StringVar(&o.tlsCert, "tls-cert", "", "server certificate (PEM) for --tls-addr")
	f.StringVar(&o.tlsKey, "tls-key", "", "server private key (PEM) for --tls-addr")
	f.StringVar(&o.clientCA, "client-ca", "", "CA certificate(s) (PEM) that sign device client certificates: enables mTLS on --tls-addr (e.g. <data-dir>/ca/ca.crt from `umbra ca init`)")
}

// serveConfig is everything runServe needs, built from flags.
type serveConfig struct {
	dataDir       string
	mqttAddr      string
	wsAddr        string
	httpAddr      string
	maxDocSize    int
	maxPacketSize uint32
	deviceRate    float64
	shutdownGrace time.Duration
	publicURL     string
	signingKey    string
	urlTTL        time.Duration
	maxImageSize  int64
	anonymous     bool
	tlsAddr       string
	tlsConfig     *tls.Config // nil unless tlsAddr is set
	log           *slog.Logger
	// ready, if set, receives the running server once every listener is
	// bound (tests use it to learn the ports).
	ready func(*server)
}

func (o *serveOptions) config(log *slog.Logger) (serveConfig, error) {
	if o.dataDir == "" {
		return serveConfig{}, errors.New("--data-dir must not be empty")
	}
	for name, addr := range map[string]string{"--mqtt-addr": o.mqttAddr, "--ws-addr": o.wsAddr, "--http-addr": o.httpAddr, "--tls-addr": o.tlsAddr} {
		if addr == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return serveConfig{}, fmt.Errorf("%s %s: %w", name, addr, err)
		}
		if !o.insecureAnonymous {
			continue // authentication is on: any interface may be used
		}
		if err := checkLoopback(addr); err != nil {
			return serveConfig{}, fmt.Errorf("%s %s: %w", name, addr, err)
		}
	}
	tlsConfig, err := o.tlsSettings()
	if err != nil {
		return serveConfig{}, err
	}
	if o.mqttAddr == "" && o.wsAddr == "" {
		return serveConfig{}, errors.New("at least one of --mqtt-addr and --ws-addr is needed")
	}
	if o.maxDocSize < 256 || o.maxDocSize > 1<<20 {
		return serveConfig{}, fmt.Errorf("--max-shadow-size %d: must be between 256 and 1048576", o.maxDocSize)
	}
	if o.maxPacketSize < 1024 {
		return serveConfig{}, fmt.Errorf("--max-packet-size %d: must be at least 1024", o.maxPacketSize)
	}
	if o.publicURL != "" {
		u, err := url.Parse(o.publicURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" {
			return serveConfig{}, fmt.Errorf("--public-url %q: want http(s)://host[:port][/path]", o.publicURL)
		}
	}
	if o.urlTTL <= 0 || o.urlTTL > firmware.MaxURLTTL {
		return serveConfig{}, fmt.Errorf("--url-ttl %v: must be between 1s and %v", o.urlTTL, firmware.MaxURLTTL)
	}
	if o.maxImageSize < 1 {
		return serveConfig{}, fmt.Errorf("--max-image-size %d: must be positive", o.maxImageSize)
	}
	if o.deviceRate == 0 {
		return serveConfig{}, errors.New("--device-rate 0 would reject every request; use a negative value to disable the limit")
	}
	return serveConfig{
		dataDir: o.dataDir, mqttAddr: o.mqttAddr, wsAddr: o.wsAddr, httpAddr: o.httpAddr,
		maxDocSize: o.maxDocSize, maxPacketSize: o.maxPacketSize, deviceRate: o.deviceRate,
		shutdownGrace: o.shutdownGrace, log: log,
		publicURL: strings.TrimSuffix(o.publicURL, "/"), signingKey: o.signingKey, urlTTL: o.urlTTL, maxImageSize: o.maxImageSize,
		anonymous: o.insecureAnonymous, tlsAddr: o.tlsAddr, tlsConfig: tlsConfig,
	}, nil
}

// tlsSettings validates the TLS flags and loads the listener's
// configuration; nil when --tls-addr is not set.
func (o *serveOptions) tlsSettings() (*tls.Config, error) {
	if o.tlsAddr == "" {
		if o.tlsCert != "" || o.tlsKey != "" || o.clientCA != "" {
			return nil, errors.New("--tls-cert, --tls-key and --client-ca need --tls-addr")
		}
		return nil, nil
	}
	if o.tlsCert == "" || o.tlsKey == "" {
		return nil, errors.New("--tls-addr needs --tls-cert and --tls-key")
	}
	if o.clientCA != "" && o.insecureAnonymous {
		return nil, errors.New("--client-ca (mTLS) and --insecure-anonymous exclude each other")
	}
	c, err := identity.ServerTLSConfig(o.tlsCert, o.tlsKey, o.clientCA)
	if err != nil {
		return nil, fmt.Errorf("--tls-addr: %w", err)
	}
	return c, nil
}

// checkLoopback refuses listen addresses beyond loopback: with
// --insecure-anonymous, Umbra must not be reachable from the network.
func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if host == "localhost" {
		return nil
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return errors.New("only loopback addresses (127.0.0.0/8, ::1, localhost) may be used with --insecure-anonymous")
	}
	return nil
}

func newLogger(w interface{ Write([]byte) (int, error) }, format, level string) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	switch strings.ToLower(format) {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", format)
}

// server is a running Umbra: every component, opened in dependency order.
type server struct {
	dataDir string
	eng     *shadow.Engine
	ids     *identity.Store
	brk     *broker.Server
	api     *httpapi.Server // nil when --http-addr is ""
	fw      *firmware.Store
	planner *rollout.Planner
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
// taken) before the broker binds its ports: a second `umbra serve` on the
// same data dir then fails on the lock with a clear message, not on a port.
type lazyPublisher struct{ b atomic.Pointer[broker.Server] }

func (p *lazyPublisher) Publish(topic string, payload []byte, retain bool, qos byte) error {
	if b := p.b.Load(); b != nil {
		return b.Publish(topic, payload, retain, qos)
	}
	return broker.ErrClosed
}

func (p *lazyPublisher) HasSubscribers(topic string) bool {
	if b := p.b.Load(); b != nil {
		return b.HasSubscribers(topic)
	}
	return false
}

var _ shadow.Publisher = (*broker.Server)(nil)

// runServe runs Umbra until ctx is cancelled, then shuts down in reverse
// order: device traffic stops first, then the engine finishes what is in
// progress and closes its database.
func runServe(ctx context.Context, cfg serveConfig) (err error) {
	log := cfg.log
	if err := os.MkdirAll(cfg.dataDir, 0o700); err != nil {
		return fmt.Errorf("create data dir: %w", err)
	}
	closeCtx := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.WithoutCancel(ctx), cfg.shutdownGrace)
	}
	closeInto := func(name string, c interface{ Close(context.Context) error }) {
		cctx, cancel := closeCtx()
		defer cancel()
		if cerr := c.Close(cctx); cerr != nil {
			log.Error("close", "component", name, "err", cerr)
			if err == nil {
				err = fmt.Errorf("close %s: %w", name, cerr)
			}
		}
	}

	pub := &lazyPublisher{}
	m := metrics.New()
	// The rollout planner is opened after the engine and the firmware store
	// it depends on; the engine's change feed and the store's delete guard
	// reach it through this pointer.
	var planner atomic.Pointer[rollout.Planner]
	eng, err := shadow.Open(ctx, shadow.Config{
		Path:            filepath.Join(cfg.dataDir, "shadow.db"),
		Publisher:       pub,
		MaxDocumentSize: cfg.maxDocSize,
		DeviceRate:      cfg.deviceRate,
		Logger:          log,
		Observe:         func(op shadow.Op, code int, d time.Duration) { m.ObserveShadow(string(op), code, d) },
		CommitObserved:  m.ObserveCommit,
		OnChange: func(id device.ID, _ shadow.Version) {
			if p := planner.Load(); p != nil {
				p.Notify(id)
			}
		},
	})
	if err != nil {
		return err
	}
	defer closeInto("shadow", eng)

	ids, err := identity.Open(ctx, identity.Config{
		Path:      filepath.Join(cfg.dataDir, "identity.db"),
		Logger:    log,
		Anonymous: cfg.anonymous,
	})
	if err != nil {
		return err
	}
	defer closeInto("identity", ids) // runs after the broker closed
	adminToken := filepath.Join(cfg.dataDir, adminTokenFile)
	created, err := ids.EnsureAdminToken(ctx, adminToken)
	if err != nil {
		return err
	}
	if created {
		log.Info("created the operator token; umbra commands on this machine use it automatically", "file", adminToken)
	} else {
		log.Info("operator token", "file", adminToken)
	}
	if cfg.anonymous {
		log.Warn("INSECURE: --insecure-anonymous accepts every MQTT and HTTP client as an operator without credentials; never use it beyond a test machine")
	}

	// presence publishes a device's presence when the store applied the
	// change (a replaced session's late disconnect is not applied).
	presence := func(d device.ID) {
		if err := pub.Publish("state/"+string(d)+"/presence", ids.PresenceJSON(d), true, 1); err != nil && !errors.Is(err, broker.ErrClosed) {
			log.Warn("publish presence", "device", d, "err", err)
		}
	}
	brk, err := broker.Open(ctx, broker.Config{
		TCPAddr:       cfg.mqttAddr,
		WSAddr:        cfg.wsAddr,
		TLSAddr:       cfg.tlsAddr,
		TLSConfig:     cfg.tlsConfig,
		MaxPacketSize: cfg.maxPacketSize,
		Logger:        log,
		Auth:          ids,
		OnSubscribe:   eng.HandleSubscribe,
		OnConnect: func(ci broker.ConnInfo) {
			if d := ci.Identity.Device; d != "" && ids.Connected(d, ci.Seq, ci.At, ci.RemoteAddr) {
				presence(d)
			}
		},
		OnDisconnect: func(ci broker.ConnInfo, err error) {
			if d := ci.Identity.Device; d != "" && ids.Disconnected(d, ci.Seq, ci.At, disconnectReason(err)) {
				presence(d)
			}
		},
	})
	if err != nil {
		return err
	}
	defer closeInto("broker", brk) // runs before the engine and the identity store close
	pub.b.Store(brk)
	m.RegisterBroker(func() metrics.BrokerStats {
		st := brk.Stats()
		return metrics.BrokerStats{
			ClientsConnected: st.ClientsConnected, MessagesReceived: st.MessagesReceived,
			MessagesSent: st.MessagesSent, MessagesDropped: st.MessagesDropped,
			InflightDropped: st.InflightDropped, PublishesDenied: st.PublishesDenied,
		}
	})
	for _, f := range shadow.RequestFilters {
		if err := brk.Subscribe(f, eng.HandleRequest); err != nil {
			return fmt.Errorf("subscribe engine to %s: %w", f, err)
		}
	}

	srv := &server{dataDir: cfg.dataDir, eng: eng, ids: ids, brk: brk}
	fwHandler := &lazyHandler{}
	baseURL := cfg.publicURL
	if cfg.httpAddr != "" {
		auth := httpapi.Authenticate(ids, cfg.anonymous)
		mounts := httpapi.IdentityRoutes(ids, auth, log)
		mounts["GET /fw/{sha256}"] = fwHandler // URL-signed, no bearer token
		mounts["GET /metrics"] = m.Handler()   // for Prometheus scrapers, like /healthz: no bearer token
		api, err := httpapi.Open(ctx, httpapi.Config{
			Addr:       cfg.httpAddr,
			Shadow:     eng,
			Logger:     log,
			Mounts:     mounts,
			Middleware: auth,
			Presence:   ids.Presence,
			// Firmware is installed below: the store needs the bound address.
		})
		if err != nil {
			return err
		}
		defer closeInto("http", api) // deferred last: closes first
		srv.api = api
		if baseURL == "" {
			baseURL = "http://" + api.Addr().String()
		}
	}
	fw, err := firmware.Open(ctx, firmware.Config{
		Dir:            filepath.Join(cfg.dataDir, "firmware"),
		SigningKeyPath: cfg.signingKey,
		URLTTL:         cfg.urlTTL,
		MaxImageSize:   cfg.maxImageSize,
		BaseURL:        baseURL,
		Logger:         log,
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
	defer closeInto("firmware", fw)
	srv.fw = fw
	m.RegisterFirmware(fw)
	pl, err := rollout.Open(ctx, rollout.Config{
		Path:     filepath.Join(cfg.dataDir, "rollout.db"),
		Shadows:  rollout.EngineShadows(eng),
		Firmware: fw,
		Logger:   log,
	})
	if err != nil {
		return err
	}
	defer closeInto("rollout", pl) // closes before firmware, broker and engine
	planner.Store(pl)
	srv.planner = pl
	var dl http.Handler = fw.DownloadHandler()
	fwHandler.h.Store(&dl)
	if srv.api != nil {
		srv.api.SetFirmware(fw)
	}

	attrs := []any{"data_dir", cfg.dataDir}
	if a := brk.Addr(); a != nil {
		attrs = append(attrs, "mqtt", a.String())
	}
	if a := brk.WSAddr(); a != nil {
		attrs = append(attrs, "ws", a.String())
	}
	if a := brk.TLSAddr(); a != nil {
		attrs = append(attrs, "tls", a.String())
	}
	if srv.api != nil {
		attrs = append(attrs, "http", srv.api.Addr().String())
	}
	log.Info("umbra serving", attrs...)
	if cfg.ready != nil {
		cfg.ready(srv)
	}
	<-ctx.Done()
	log.Info("shutting down")
	return nil
}

// adminTokenFile is the operator token's file in the data dir.
const adminTokenFile = "admin.token"

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
	}
	return "error"
}
