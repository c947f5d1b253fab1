package httpapi

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/firmware"
	"github.com/umbra-iot/umbra/identity"
	"github.com/umbra-iot/umbra/shadow"
)

// Defaults applied to zero Config fields.
const (
	DefaultAddr         = "127.0.0.1:8080"
	DefaultMaxBodyBytes = 64 << 10

	readHeaderTimeout = 10 * time.Second
	readTimeout       = 30 * time.Second
	writeTimeout      = 30 * time.Second
	idleTimeout       = 2 * time.Minute
	maxHeaderBytes    = 64 << 10

	logKeyComponent = "component"
)

// ErrInvalidConfig is wrapped by NewHandler and Open when Config is invalid:
// no Shadow engine, a negative MaxBodyBytes, or a mount that is malformed or
// conflicts with the API's routes.
var ErrInvalidConfig = errors.New("httpapi: invalid config")

// Config configures the API. The zero value of every field except Shadow
// selects the documented default.
type Config struct {
	// Addr is the listen address, e.g. "127.0.0.1:8080" or "127.0.0.1:0".
	// Default DefaultAddr. Only Open uses it, and only without Listener.
	Addr string
	// Listener, when set, is a socket the caller has already bound (the
	// net/http Serve(ln) shape): internal/server binds it before it opens
	// the firmware store, whose URLs carry its address. Open serves on it
	// instead of binding Addr, and Close closes it.
	Listener net.Listener
	// Shadow is the engine the shadow routes call. Required.
	Shadow *shadow.Engine
	// Firmware is the store the /v1/firmware routes call. Nil means those
	// routes answer 503.
	Firmware *firmware.Store
	// Logger receives request logs (debug level) and errors; nil discards.
	Logger *slog.Logger
	// Mounts are extra routes served beside the API, keyed by a ServeMux
	// pattern such as "GET /fw/{sha}" or "GET /metrics". They are served as
	// given, without Middleware: they carry their own checks (signed
	// firmware URLs) or none (metrics on a loopback listener).
	Mounts map[string]http.Handler
	// MaxBodyBytes caps a request body; larger bodies get 413. Default
	// DefaultMaxBodyBytes (64 KiB).
	MaxBodyBytes int64
	// Presence, if set, reports a device's connection state (the identity
	// store's Presence); GET /v1/devices then includes it as "presence" in
	// every entry, the zero Presence for a device never seen.
	Presence func(id device.ID) (identity.Presence, bool)
	// Enrolled, if set, returns an enrolled device (the identity store's
	// GetDevice, an error wrapping identity.ErrNotFound for none); GET
	// /v1/devices/{id} then includes its enrolment.
	Enrolled func(ctx context.Context, id device.ID) (identity.Device, error)
	// Middleware, if set, wraps every /v1 route: Authenticate for bearer
	// token authentication and the role rules.
	Middleware func(http.Handler) http.Handler
	// Rollouts is the planner the /v1/rollouts routes call (a
	// *rollout.Planner). Nil means those routes answer 503.
	Rollouts Rollouts
	// TrustedOrigins are browser origins, each "scheme://host[:port]"
	// exactly as a browser sends it in the Origin header (for example
	// "https://console.example.com"), whose pages may send state-changing
	// requests besides pages of the API's own origin. Default none: a
	// cross-origin POST, PUT, PATCH or DELETE from a browser gets 403.
	TrustedOrigins []string
	// TLSConfig, if set, makes Open's listener HTTPS with this
	// configuration (its certificates or GetCertificate); TLS 1.2 is the
	// least version accepted whatever MinVersion says. HTTP/1.1 only. A
	// plain-HTTP request to it gets a 400 JSON error saying to use https.
	// Only Open uses it.
	TLSConfig *tls.Config
	// Observe, if set, is called once per answered request with the route
	// pattern that served it (for example "GET /v1/devices/{id}/shadow";
	// "unmatched" when no route did), the status code and the time taken:
	// the /metrics request counters. It must return quickly.
	Observe func(route string, code int, d time.Duration)
	// Fleet, if set, answers GET /v1/devices with a wire.FleetList: the
	// enrolled devices and those with a shadow, with filters and the
	// fleet's totals (fleet.go). Nil keeps the shadow listing.
	Fleet Fleet
	// Live, if set, serves GET /v1/events, the live feed as Server-Sent
	// Events (events.go), with its caps.
	Live Live
}

func (c *Config) setDefaults() {
	if c.Addr == "" {
		c.Addr = DefaultAddr
	}
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

func (c *Config) validate() error {
	if c.Shadow == nil {
		return fmt.Errorf("%w: Shadow is required", ErrInvalidConfig)
	}
	if c.MaxBodyBytes < 0 {
		return fmt.Errorf("%w: MaxBodyBytes %d is negative", ErrInvalidConfig, c.MaxBodyBytes)
	}
	return nil
}

// Server is a running HTTP API: a listener and the goroutine serving it.
type Server struct {
	log     *slog.Logger
	ln      net.Listener
	srv     *http.Server
	handler http.Handler
	api     *api
	cancel  context.CancelFunc // cancels the requests' base context
	wg      sync.WaitGroup     // the Serve goroutine

	closeOnce sync.Once
	closeErr  error // set by the first Close
	serveErr  error // set by the Serve goroutine before wg.Done

	silent silentConns
}

// silentConns are the connections that have not sent a request yet
// (http.StateNew). net/http's Shutdown waits up to 5 s for one's first
// request, which it would then not serve (a request read during shutdown
// is dropped): longer than a short shutdown grace. Close closes them at
// once instead.
type silentConns struct {
	mu           sync.Mutex
	conns        map[net.Conn]struct{}
	shuttingDown bool
}

// track follows c's state; a connection that is new once shutdown began
// is closed.
func (s *silentConns) track(c net.Conn, st http.ConnState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case st == http.StateNew && s.shuttingDown:
		_ = c.Close()
	case st == http.StateNew:
		if s.conns == nil {
			s.conns = map[net.Conn]struct{}{}
		}
		s.conns[c] = struct{}{}
	default:
		delete(s.conns, c)
	}
}

// closeAll closes the silent connections; it runs when Shutdown has
// closed the listener.
func (s *silentConns) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.shuttingDown = true
	for c := range s.conns {
		_ = c.Close()
	}
	clear(s.conns)
}

// Open validates cfg, binds cfg.Addr (or takes cfg.Listener) and serves
// the API in the background until Close. Errors wrap ErrInvalidConfig, or
// are the listen error.
func Open(ctx context.Context, cfg Config) (*Server, error) {
	cfg.setDefaults()
	h, a, err := newHandler(cfg)
	if err != nil {
		return nil, err
	}
	ln := cfg.Listener
	if ln == nil {
		var lc net.ListenConfig
		if ln, err = lc.Listen(ctx, "tcp", cfg.Addr); err != nil {
			return nil, fmt.Errorf("httpapi: listen: %w", err)
		}
	}
	log := cfg.Logger.With(logKeyComponent, "httpapi")
	base, cancel := context.WithCancel(context.WithoutCancel(ctx))
	if cfg.TLSConfig != nil {
		// errorConn wraps the TLS connection, so that it sees (and
		// rewrites) net/http's plain-text answers before encryption; net/http
		// then treats the connection as plain and does not negotiate HTTP/2.
		tc := cfg.TLSConfig.Clone()
		tc.MinVersion = max(tc.MinVersion, tls.VersionTLS12)
		tc.NextProtos = []string{"http/1.1"}
		ln = tls.NewListener(ln, tc)
	}
	ln = errorListener{ln} // net/http's own error answers become JSON
	s := &Server{log: log, ln: ln, handler: h, api: a, cancel: cancel}
	s.srv = &http.Server{
		Handler:           h,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		BaseContext:       func(net.Listener) context.Context { return base },
	}
	serverHooks(s.srv)
	hooked := s.srv.ConnState
	s.srv.ConnState = func(c net.Conn, st http.ConnState) {
		hooked(c, st)
		s.silent.track(c, st)
	}
	s.srv.RegisterOnShutdown(s.silent.closeAll)
	s.srv.RegisterOnShutdown(func() { close(a.shutdown) }) // ends the event streams
	s.wg.Go(func() {
		if err := s.srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			s.serveErr = fmt.Errorf("httpapi: serve: %w", err)
		}
	})
	log.Info("http api listening", "addr", ln.Addr().String(), "tls", cfg.TLSConfig != nil)
	return s, nil
}

// Addr returns the address the API listens on, with the real port when
// Config.Addr asked for port 0.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Handler returns the server's routes, the same as NewHandler would.
func (s *Server) Handler() http.Handler { return s.handler }

// Routes returns the "METHOD /path" patterns the server registered (its
// own routes and Config.Mounts), sorted: what the OpenAPI document at
// OpenAPIPath must describe.
func (s *Server) Routes() []string { return slices.Clone(s.api.routes) }

// Close stops accepting connections, closes those that have not sent a
// request, and waits, until ctx is done, for requests in progress to
// finish; then it closes the remaining connections and waits for the
// serving goroutine. It is idempotent: later calls return
// the first call's result.
func (s *Server) Close(ctx context.Context) error {
	s.closeOnce.Do(func() {
		err := s.srv.Shutdown(ctx)
		if err != nil {
			// ctx ended first: cut the remaining connections.
			err = errors.Join(fmt.Errorf("httpapi: shutdown: %w", err), s.srv.Close())
		}
		s.cancel()
		s.wg.Wait()
		if s.serveErr != nil {
			err = errors.Join(s.serveErr, err)
		}
		s.closeErr = err
	})
	return s.closeErr
}
