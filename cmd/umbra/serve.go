package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/url"
	"os"
	"os/signal"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/broker/natsbridge"
	"github.com/umbra-iot/umbra/firmware"
	"github.com/umbra-iot/umbra/identity"
	"github.com/umbra-iot/umbra/internal/cluster"
	"github.com/umbra-iot/umbra/internal/heapfloor"
	"github.com/umbra-iot/umbra/internal/httpapi"
	"github.com/umbra-iot/umbra/internal/plannerrpc"
	umbraserver "github.com/umbra-iot/umbra/internal/server"
	"github.com/umbra-iot/umbra/rollout"
	"github.com/umbra-iot/umbra/rollout/jobs"
	"github.com/umbra-iot/umbra/shadow"
)

// serveOptions are the flags of `umbra serve`. Those that configure the
// server are parsed straight into cfg, one server.Config field per flag;
// the others configure the process (logging, shutdown, the config file)
// or name files that are parsed into a Config field (TLS).
type serveOptions struct {
	cfg umbraserver.Config

	logFormat     string
	logLevel      string
	shutdownGrace time.Duration
	gcHeapFloor   int64

	tlsCert       string
	tlsKey        string
	clientCA      []string
	boundClientCA []string
	clientCert    string
	httpTLSCert   string
	httpTLSKey    string

	configFile  string
	printConfig bool
	healthcheck bool
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
any address; --insecure-anonymous turns authentication off (loopback only).

Topics are governed by a policy (docs/acl.md): a built-in default, extended by
--acl-file in mosquitto's acl_file syntax with role sections. SIGHUP reloads
the file without dropping connections; a bad file keeps the policy in force.

--http-tls-cert and --http-tls-key make the HTTP listener HTTPS (TLS 1.2+),
with /healthz, /metrics and firmware download URLs (https://<http-addr>
unless --public-url is given) on it. SIGHUP also reloads the certificates and
keys of both TLS listeners; a bad pair keeps the one in force.

Every flag can also be set in a YAML config file (--config FILE), whose keys
are the flag names without "--" (data-dir: /var/lib/umbra), and with an
environment variable UMBRA_<FLAG>. A flag wins over the environment, the
environment over the file, the file over the default. Relative paths in the
file are relative to the file's directory. --print-config shows the result,
with each value's source, and exits. --healthcheck asks the server this
configuration describes for GET /healthz and exits 0 when it is healthy
(the container image's HEALTHCHECK).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			sources, err := applyConfigFile(cmd.Flags(), newServeFlagSet(), o.configFile)
			if err != nil {
				return err
			}
			if o.printConfig && o.healthcheck {
				return errors.New("--print-config and --healthcheck exclude each other")
			}
			if o.printConfig {
				return printConfig(cmd.OutOrStdout(), cmd.Flags(), o.configFile, sources)
			}
			if o.healthcheck {
				return probeHealth(cmd.Context(), cmd.OutOrStdout(), o.cfg.HTTPAddr, o.httpTLSCert)
			}
			log, err := newLogger(cmd.ErrOrStderr(), o.logFormat, o.logLevel)
			if err != nil {
				return locateError(err, sources)
			}
			cfg, err := o.config(log)
			if err != nil {
				return locateError(err, sources)
			}
			if o.configFile != "" {
				log.Info("config file", "path", absPath(o.configFile))
			}
			return runServe(cmd.Context(), cfg)
		},
	}
	o.addFlags(cmd)
	return cmd
}

func (o *serveOptions) addFlags(cmd *cobra.Command) {
	f, c := cmd.Flags(), &o.cfg
	f.StringVar(&c.DataDir, "data-dir", "./umbra-data", "directory for Umbra's databases and keys")
	f.StringVar(&c.MQTTAddr, "mqtt-addr", "127.0.0.1:1883", "MQTT over TCP listen address (\"\" disables)")
	f.StringVar(&c.WSAddr, "ws-addr", "127.0.0.1:8083", "MQTT over WebSocket listen address (\"\" disables)")
	f.StringVar(&c.HTTPAddr, "http-addr", "127.0.0.1:8080", "HTTP API listen address (\"\" disables)")
	f.StringVar(&o.logFormat, "log-format", "text", "log format: text or json")
	f.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	f.Int64Var(&o.gcHeapFloor, "gc-heap-floor", heapfloor.DefaultFloor, "bytes the Go heap may grow by between garbage collections at least (a small heap is collected less often; docs/benchmarks.md §10); 0 for Go's default; ignored when GOGC or GOMEMLIMIT is set")
	f.IntVar(&c.MaxDocumentSize, "max-shadow-size", shadow.DefaultMaxDocumentSize, "largest desired+reported state per shadow, in bytes (413 beyond)")
	f.IntVar(&c.MaxNamedShadows, "max-named-shadows", shadow.DefaultMaxNamedShadows, "named shadows one device may have besides its classic shadow (0 turns named shadows off; 400 beyond)")
	f.Uint32Var(&c.MaxPacketSize, "max-packet-size", broker.DefaultMaxPacketSize, "largest MQTT packet accepted, in bytes")
	f.Float64Var(&c.DeviceRate, "device-rate", shadow.DefaultDeviceRate, "shadow requests per second per device (429 beyond; negative disables)")
	f.Float64Var(&c.JobsRate, "jobs-rate", jobs.DefaultDeviceRate, "AWS IoT Jobs requests per second per thing, burst twice as many (RequestThrottled beyond; negative disables)")
	f.IntVar(&c.RetryCacheEntries, "retry-cache-entries", shadow.DefaultDedupeMaxEntries, "most updates remembered for clientToken retries (one per device; the oldest are evicted beyond it)")
	f.Int64Var(&c.RetryCacheBytes, "retry-cache-bytes", shadow.DefaultDedupeMaxBytes, "most memory, in bytes, the clientToken retry cache may use (the oldest entries are evicted beyond it)")
	f.DurationVar(&o.shutdownGrace, "shutdown-grace", 10*time.Second, "how long shutdown waits for requests in progress")
	f.IntVar(&c.MaxPendingBytes, "max-pending-bytes", 0, "bytes a device's connection may have pending (sent but not taken by its socket) before it is disconnected as a slow consumer; 0 means 2 × --max-packet-size")
	f.IntVar(&c.ServicePendingBytes, "service-max-pending-bytes", broker.DefaultServicePendingBytes, "--max-pending-bytes for operators and integrators")
	f.DurationVar(&c.WriteTimeout, "write-timeout", broker.DefaultWriteTimeout, "how long a connection with pending bytes may take none before it is disconnected as a slow consumer")
	f.IntVar(&c.ReadLoops, "read-loops", 0, "event loops that read connected plain TCP MQTT clients (Linux); 0 means one per two CPUs (GOMAXPROCS/2, at least 1), -1 a goroutine per connection")
	f.IntVar(&c.MaxSubscriptions, "max-subscriptions", broker.DefaultMaxSubscriptions, "subscriptions a device's session may hold (further filters are refused in SUBACK); -1 for no cap")
	f.IntVar(&c.ServiceSubscriptions, "service-max-subscriptions", broker.DefaultServiceSubscriptions, "--max-subscriptions for operators and integrators")
	f.IntVar(&c.MaxRetained, "max-retained", broker.DefaultMaxRetained, "retained messages clients may hold; a new retained topic beyond it is refused (MQTT 5: PUBACK 0x97; MQTT 3.1.1: delivered, not retained); -1 for no cap")
	f.Int64Var(&c.MaxRetainedBytes, "max-retained-bytes", broker.DefaultMaxRetainedBytes, "payload bytes of the retained messages clients may hold, refused like --max-retained; -1 for no cap")
	f.Int64Var(&c.MaxQueuedBytes, "max-queued-bytes", broker.DefaultMaxQueuedBytes, "payload bytes a device's persistent session may hold (queued while offline or unacknowledged); further messages to it are dropped; -1 for no cap")
	f.Int64Var(&c.ServiceQueuedBytes, "service-max-queued-bytes", broker.DefaultServiceQueuedBytes, "--max-queued-bytes for operators and integrators; -1 for no cap")
	f.IntVar(&c.MaxSessionsPerIdentity, "max-sessions-per-identity", broker.DefaultMaxSessionsPerIdentity, "persistent MQTT sessions one identity (operator or integrator token) may keep; one more is refused at CONNECT (quota exceeded); -1 for no cap")
	addLimitFlags(f, c)
	addLiveFlags(f, c)
	f.StringVar(&c.PublicURL, "public-url", "", "base URL devices use to reach the HTTP server (firmware download URLs); default http://<http-addr>")
	f.StringVar(&c.SigningKey, "signing-key", "", "ed25519 firmware signing key (PEM PKCS#8); default <data-dir>/firmware/signing.key, created on first start")
	f.DurationVar(&c.URLTTL, "url-ttl", firmware.DefaultURLTTL, "lifetime of per-device firmware download URLs")
	f.Int64Var(&c.MaxImageSize, "max-image-size", firmware.DefaultMaxImageSize, "largest firmware image accepted, in bytes")
	f.StringVar(&c.ACLFile, "acl-file", "", "topic policy file (mosquitto acl_file syntax with role sections, docs/acl.md) extending the built-in default policy; reloaded on SIGHUP")
	f.IntVar(&c.MaxClientIDLength, "max-client-id-length", broker.DefaultMaxClientIDLength, "longest MQTT client ID accepted, in bytes (at most 65535)")
	f.BoolVar(&c.Anonymous, "insecure-anonymous", false, "accept every MQTT and HTTP client as an operator, without credentials (loopback listeners only; for tests and demos)")
	f.StringSliceVar(&c.AllowedOrigins, "allowed-origins", nil, "browser origins (scheme://host[:port], comma-separated) whose pages may change things through the HTTP API and open MQTT over WebSocket, besides the server's own origin (HTTP) and host (WebSocket)")
	f.StringVar(&c.TLSAddr, "tls-addr", "", "MQTT over TLS listen address (\"\" disables); needs --tls-cert and --tls-key")
	f.StringVar(&o.tlsCert, "tls-cert", "", "server certificate (PEM) for --tls-addr")
	f.StringVar(&o.tlsKey, "tls-key", "", "server private key (PEM) for --tls-addr")
	f.StringSliceVar(&o.clientCA, "client-ca", nil, "PEM `files` (repeatable or comma-separated; each one certificate or a bundle) of the CAs that sign device client certificates: enables mTLS on --tls-addr. A certificate logs in as the device its common name names, or the device it is bound to (umbra device add --cert). The fleet CA of umbra ca init is <data-dir>/ca/ca.pem")
	f.StringSliceVar(&o.boundClientCA, "bound-client-ca", nil, "PEM `files` (repeatable or comma-separated) of CAs whose client certificates log in only when bound to a device by umbra device add --cert, never by their common name: for a CA that also signs others' certificates, such as the AWS IoT CA of a migrated fleet (docs/migrate-from-aws.md)")
	f.StringVar(&o.clientCert, "client-cert", clientCertOptional, "on --tls-addr with a client CA: \"optional\" (clients without a certificate may log in with a secret) or \"required\" (the handshake fails without a valid client certificate, as on AWS IoT's port 8883)")
	f.StringVar(&o.httpTLSCert, "http-tls-cert", "", "server certificate (PEM, with its chain) that makes --http-addr HTTPS (TLS 1.2+); needs --http-tls-key; reloaded on SIGHUP")
	f.StringVar(&o.httpTLSKey, "http-tls-key", "", "private key (PEM) of --http-tls-cert")
	f.StringSliceVar(&c.NATS, "nats", nil, "NATS server `URLs` (nats://host:4222, comma-separated): cluster mode (docs/cluster.md), with shadows, identities and firmware in JetStream buckets shared by every node; needs --node-id")
	f.StringVar(&c.NodeID, "node-id", "", "this node's name in the cluster (with --nats)")
	f.IntVar(&c.NATSReplicas, "nats-replicas", umbraserver.DefaultNATSReplicas, "replicas of the buckets a node creates in cluster mode: 3 for a three-server NATS cluster, 1 for a single NATS server")
	f.IntVar(&c.ClusterMaxSubscriptions, "cluster-max-subscriptions", natsbridge.DefaultMaxSubscriptions, "cluster mode: NATS subscriptions a node holds for its clients' filters; a filter beyond gets nothing from other nodes until there is room (umbra_cluster_subscriptions_refused_total)")
	f.IntVar(&c.ClusterOutboundBuffer, "cluster-outbound-buffer", natsbridge.DefaultOutboundBuffer, "cluster mode: messages that may wait for NATS on their way to other nodes; beyond, they are dropped (umbra_cluster_messages_dropped_total{direction=\"out\"})")
	f.IntVar(&c.ClusterInboundBuffer, "cluster-inbound-buffer", natsbridge.DefaultInboundBuffer, "cluster mode: messages from other nodes that may wait for local delivery; beyond, they are dropped (umbra_cluster_messages_dropped_total{direction=\"in\"})")
	f.IntVar(&c.PlannerRPCMaxBody, "planner-rpc-max-body", plannerrpc.DefaultMaxBody, "cluster mode: bytes of a rollout planner call forwarded to the planner lease's holder, or of its answer (at most NATS max_payload); beyond, the call is refused (umbra_planner_rpc_calls_total{result=\"too_large\"})")
	f.IntVar(&c.PlannerRPCInflight, "planner-rpc-inflight", plannerrpc.DefaultMaxInflight, "cluster mode: forwarded rollout planner calls a node may have in progress, sent or (as the lease holder) answered; beyond, 503 (umbra_planner_rpc_calls_total{result=\"busy\"})")
	f.DurationVar(&c.PlannerLeaseTTL, "planner-lease-ttl", cluster.DefaultLeaseTTL, "cluster mode: the planner lease's TTL; another node takes over a dead planner within TTL + 2s. The same on every node")
	f.IntVar(&c.PlannerRPCMaxStaged, "planner-rpc-max-staged", plannerrpc.DefaultMaxStaged, "cluster mode: device IDs the planner lease's holder keeps of forwarded rollout creates sent in parts (over --planner-rpc-max-body) and not yet complete; beyond, 503 (umbra_planner_rpc_staged_devices)")
	f.IntVar(&c.PlannerOpenRetries, "planner-open-retries", umbraserver.DefaultPlannerOpenRetries, "cluster mode: failed opens of the rollout planner in a row (a second apart) after which the planner lease's holder releases the lease for another node (umbra_planner_handovers_total)")
	f.DurationVar(&c.PlannerStayOut, "planner-stay-out", umbraserver.DefaultPlannerStayOut, "cluster mode: how long a node that released the planner lease because its planner did not open stays out of the campaign before it tries again")
	f.StringVar(&o.configFile, "config", "", "YAML config `file` whose keys are these flags' names (data-dir: /var/lib/umbra); flags and UMBRA_* variables override it; relative paths in it are relative to its directory")
	f.BoolVar(&o.printConfig, "print-config", false, "print the effective configuration (a valid --config file) with each value's source (flag, env, file or default), and exit without opening anything")
	f.BoolVar(&o.healthcheck, "healthcheck", false, "instead of serving, ask the server this configuration describes for GET /healthz on --http-addr (over loopback; https pinned to --http-tls-cert) and exit 0 if it is healthy, 1 if not")
	markPath(f, "data-dir", "signing-key", "acl-file", "tls-cert", "tls-key", "client-ca", "bound-client-ca",
		"http-tls-cert", "http-tls-key", "config")
}

// newServeFlagSet is a fresh set of serve's flags, on which the config
// file's values are checked.
func newServeFlagSet() *pflag.FlagSet {
	cmd := &cobra.Command{}
	(&serveOptions{}).addFlags(cmd)
	return cmd.Flags()
}

// maxNamedShadowsFlag is the largest --max-named-shadows: each named shadow
// may hold --max-shadow-size bytes, so the cap bounds a device's storage.
const maxNamedShadowsFlag = 1000

// serveConfig is everything runServe needs, built from flags: the
// server's Config and what the process itself uses.
type serveConfig struct {
	umbraserver.Config
	shutdownGrace time.Duration
	heapFloor     int64             // --gc-heap-floor
	httpTLS       *identity.KeyPair // nil: plain HTTP; runServe makes Config.HTTPTLSConfig of it
	// keyPairs are the TLS listeners' certificates, reloaded on SIGHUP.
	keyPairs []listenerKeyPair
	// ready, if set, receives the running server once every listener is
	// bound (tests use it to learn the ports).
	ready func(*server)
}

func (o *serveOptions) config(log *slog.Logger) (serveConfig, error) {
	c := o.cfg // each flag's value, in its Config field
	if c.DataDir == "" {
		return serveConfig{}, errors.New("--data-dir must not be empty")
	}
	if o.gcHeapFloor < 0 {
		return serveConfig{}, fmt.Errorf("--gc-heap-floor %d: must not be negative (0 for Go's default)", o.gcHeapFloor)
	}
	for name, addr := range map[string]string{"--mqtt-addr": c.MQTTAddr, "--ws-addr": c.WSAddr, "--http-addr": c.HTTPAddr, "--tls-addr": c.TLSAddr} {
		if addr == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return serveConfig{}, fmt.Errorf("%s %s: %w", name, addr, err)
		}
		if !c.Anonymous {
			continue // authentication is on: any interface may be used
		}
		if err := checkLoopback(addr); err != nil {
			return serveConfig{}, fmt.Errorf("%s %s: %w", name, addr, err)
		}
	}
	tlsConfig, boundOnly, err := o.tlsSettings()
	if err != nil {
		return serveConfig{}, err
	}
	var keyPairs []listenerKeyPair
	if tlsConfig != nil {
		// The certificate of the MQTT TLS listener reloads on SIGHUP too.
		kp, err := identity.LoadKeyPair(o.tlsCert, o.tlsKey)
		if err != nil {
			return serveConfig{}, fmt.Errorf("--tls-cert, --tls-key: %w", err)
		}
		tlsConfig.Certificates, tlsConfig.GetCertificate = nil, kp.GetCertificate
		keyPairs = append(keyPairs, listenerKeyPair{"tls", kp})
	}
	httpTLS, err := o.httpTLSSettings()
	if err != nil {
		return serveConfig{}, err
	}
	if httpTLS != nil {
		keyPairs = append(keyPairs, listenerKeyPair{"http", httpTLS})
	}
	if c.MQTTAddr == "" && c.WSAddr == "" {
		return serveConfig{}, errors.New("at least one of --mqtt-addr and --ws-addr is needed")
	}
	if err := checkCluster(c); err != nil {
		return serveConfig{}, err
	}
	if c.MaxDocumentSize < 256 || c.MaxDocumentSize > 1<<20 {
		return serveConfig{}, fmt.Errorf("--max-shadow-size %d: must be between 256 and 1048576", c.MaxDocumentSize)
	}
	if c.MaxNamedShadows < 0 || c.MaxNamedShadows > maxNamedShadowsFlag {
		return serveConfig{}, fmt.Errorf("--max-named-shadows %d: must be between 0 (none) and %d", c.MaxNamedShadows, maxNamedShadowsFlag)
	}
	if c.MaxNamedShadows == 0 {
		c.MaxNamedShadows = -1 // none; 0 would be the engine's default
	}
	if c.MaxPacketSize < 1024 {
		return serveConfig{}, fmt.Errorf("--max-packet-size %d: must be at least 1024", c.MaxPacketSize)
	}
	if c.MaxPendingBytes != 0 && c.MaxPendingBytes < int(c.MaxPacketSize)+5 {
		return serveConfig{}, fmt.Errorf("--max-pending-bytes %d: must be 0 (2 × --max-packet-size) or at least --max-packet-size + 5 (%d)",
			c.MaxPendingBytes, c.MaxPacketSize+5)
	}
	if c.ServicePendingBytes < 0 {
		return serveConfig{}, fmt.Errorf("--service-max-pending-bytes %d: must not be negative", c.ServicePendingBytes)
	}
	for name, v := range map[string]int{"--max-subscriptions": c.MaxSubscriptions, "--service-max-subscriptions": c.ServiceSubscriptions} {
		if v == 0 || v < -1 {
			return serveConfig{}, fmt.Errorf("%s %d: must be positive, or -1 for no cap", name, v)
		}
	}
	if err := validateLive(&c); err != nil {
		return serveConfig{}, err
	}
	if err := validateLimits(&c); err != nil {
		return serveConfig{}, err
	}
	if c.WriteTimeout < time.Second {
		return serveConfig{}, fmt.Errorf("--write-timeout %v: must be at least 1s", c.WriteTimeout)
	}
	if c.ReadLoops < -1 || c.ReadLoops > 1024 {
		return serveConfig{}, fmt.Errorf("--read-loops %d: must be -1 (a goroutine per connection), 0 (one per two CPUs) or up to 1024", c.ReadLoops)
	}
	if c.PublicURL != "" {
		u, err := url.Parse(c.PublicURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" {
			return serveConfig{}, fmt.Errorf("--public-url %q: want http(s)://host[:port][/path]", c.PublicURL)
		}
	}
	if c.URLTTL <= 0 || c.URLTTL > firmware.MaxURLTTL {
		return serveConfig{}, fmt.Errorf("--url-ttl %v: must be between 1s and %v", c.URLTTL, firmware.MaxURLTTL)
	}
	if c.MaxImageSize < 1 {
		return serveConfig{}, fmt.Errorf("--max-image-size %d: must be positive", c.MaxImageSize)
	}
	if c.RetryCacheEntries < 1 {
		return serveConfig{}, fmt.Errorf("--retry-cache-entries %d: must be at least 1", c.RetryCacheEntries)
	}
	if c.RetryCacheBytes < 1<<10 {
		return serveConfig{}, fmt.Errorf("--retry-cache-bytes %d: must be at least 1024", c.RetryCacheBytes)
	}
	if c.MaxClientIDLength < 1 || c.MaxClientIDLength > 65535 {
		return serveConfig{}, fmt.Errorf("--max-client-id-length %d: must be between 1 and 65535", c.MaxClientIDLength)
	}
	if c.DeviceRate == 0 {
		return serveConfig{}, errors.New("--device-rate 0 would reject every request; use a negative value to disable the limit")
	}
	if c.JobsRate == 0 || math.IsNaN(c.JobsRate) || math.IsInf(c.JobsRate, 0) {
		return serveConfig{}, fmt.Errorf("--jobs-rate %v: want a positive number of requests per second, or a negative one to disable the limit", c.JobsRate)
	}
	if err := validateBrokerLimits(&c); err != nil {
		return serveConfig{}, err
	}
	for _, origin := range c.AllowedOrigins {
		u, err := url.Parse(origin)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil ||
			u.Path != "" || u.RawQuery != "" || u.Fragment != "" {
			return serveConfig{}, fmt.Errorf("--allowed-origins %q: want http(s)://host[:port], as a browser sends it in Origin", origin)
		}
	}
	c.PublicURL = strings.TrimSuffix(c.PublicURL, "/")
	c.TLSConfig, c.BoundOnlyCAs = tlsConfig, boundOnly
	c.Logger = log
	c.Version = buildVersion()
	return serveConfig{Config: c, shutdownGrace: o.shutdownGrace, heapFloor: o.gcHeapFloor, httpTLS: httpTLS, keyPairs: keyPairs}, nil
}

// Values of --client-cert.
const (
	clientCertOptional = "optional"
	clientCertRequired = "required"
)

// validateBrokerLimits checks the limit flags of the broker's durable
// state: each is positive, or -1 for no cap.
func validateBrokerLimits(c *umbraserver.Config) error {
	for _, f := range []struct {
		name string
		v    int64
	}{
		{"--max-retained", int64(c.MaxRetained)}, {"--max-retained-bytes", c.MaxRetainedBytes},
		{"--max-queued-bytes", c.MaxQueuedBytes}, {"--service-max-queued-bytes", c.ServiceQueuedBytes},
		{"--max-sessions-per-identity", int64(c.MaxSessionsPerIdentity)},
	} {
		if f.v == 0 || f.v < -1 {
			return fmt.Errorf("%s %d: must be positive, or -1 for no cap", f.name, f.v)
		}
	}
	return nil
}

// tlsSettings validates the TLS flags and loads the listener's
// configuration and the bound-only CAs; nil when --tls-addr is not set.
func (o *serveOptions) tlsSettings() (*tls.Config, []*x509.Certificate, error) {
	if o.clientCert != clientCertOptional && o.clientCert != clientCertRequired {
		return nil, nil, fmt.Errorf("--client-cert %q: want %s or %s", o.clientCert, clientCertOptional, clientCertRequired)
	}
	cas := len(o.clientCA) + len(o.boundClientCA)
	if o.cfg.TLSAddr == "" {
		if o.tlsCert != "" || o.tlsKey != "" || cas > 0 || o.clientCert != clientCertOptional {
			return nil, nil, errors.New("--tls-cert, --tls-key, --client-ca, --bound-client-ca and --client-cert need --tls-addr")
		}
		return nil, nil, nil
	}
	if o.tlsCert == "" || o.tlsKey == "" {
		return nil, nil, errors.New("--tls-addr needs --tls-cert and --tls-key")
	}
	if cas > 0 && o.cfg.Anonymous {
		return nil, nil, errors.New("--client-ca and --bound-client-ca (mTLS) and --insecure-anonymous exclude each other")
	}
	if o.clientCert == clientCertRequired && cas == 0 {
		return nil, nil, errors.New("--client-cert required needs --client-ca or --bound-client-ca")
	}
	for _, f := range append(slices.Clone(o.clientCA), o.boundClientCA...) {
		if f == "" {
			return nil, nil, errors.New("--client-ca and --bound-client-ca: empty file name")
		}
	}
	c, boundOnly, err := identity.ServerTLS(identity.ServerTLSOptions{
		CertFile: o.tlsCert, KeyFile: o.tlsKey,
		ClientCAFiles: o.clientCA, BoundClientCAFiles: o.boundClientCA,
		RequireClientCert: o.clientCert == clientCertRequired,
	})
	if err != nil {
		return nil, nil, fmt.Errorf("--tls-addr: %w", err)
	}
	return c, boundOnly, nil
}

// httpTLSSettings validates --http-tls-cert and --http-tls-key and loads
// them; nil for plain HTTP.
func (o *serveOptions) httpTLSSettings() (*identity.KeyPair, error) {
	if o.httpTLSCert == "" && o.httpTLSKey == "" {
		return nil, nil
	}
	if o.httpTLSCert == "" || o.httpTLSKey == "" {
		return nil, errors.New("--http-tls-cert and --http-tls-key go together")
	}
	if o.cfg.HTTPAddr == "" {
		return nil, errors.New("--http-tls-cert and --http-tls-key need --http-addr")
	}
	kp, err := identity.LoadKeyPair(o.httpTLSCert, o.httpTLSKey)
	if err != nil {
		return nil, fmt.Errorf("--http-tls-cert, --http-tls-key: %w", err)
	}
	return kp, nil
}

// listenerKeyPair is a TLS listener's certificate, by listener name.
type listenerKeyPair struct {
	listener string
	kp       *identity.KeyPair
}

// reloadKeyPairs reads every TLS listener's certificate and key again; a
// bad pair is logged and the one in force stays.
func reloadKeyPairs(log *slog.Logger, pairs []listenerKeyPair) {
	for _, p := range pairs {
		if err := p.kp.Reload(); err != nil {
			log.Error("tls certificate not reloaded: keeping the one in force", "listener", p.listener, "err", err)
			continue
		}
		leaf := p.kp.Certificate().Leaf
		log.Info("tls certificate reloaded", "listener", p.listener, "subject", leaf.Subject.String(),
			"not_after", leaf.NotAfter.UTC().Format(time.RFC3339))
	}
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

// server is a running Umbra's components, as the tests reach them.
type server struct {
	dataDir string
	eng     *shadow.Engine
	ids     *identity.Store
	brk     *broker.Server
	api     *httpapi.Server // nil when --http-addr is ""
	fw      *firmware.Store
	planner *rollout.Planner
}

// runServe runs Umbra until ctx is cancelled, then shuts down in reverse
// order: device traffic stops first, then the engine finishes what is in
// progress and closes its database. SIGHUP reloads the --acl-file.
func runServe(ctx context.Context, cfg serveConfig) error {
	// SIGHUP reloads the policy file; from now on it no longer ends the
	// process, also while serve starts.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	defer heapfloor.Start(cfg.heapFloor).Stop()
	scfg := cfg.Config
	if cfg.httpTLS != nil {
		scfg.HTTPTLSConfig = httpTLSConfig(cfg.httpTLS)
	}
	s, err := umbraserver.Open(ctx, scfg)
	if err != nil {
		return err
	}

	if cfg.ready != nil {
		cfg.ready(&server{
			dataDir: s.DataDir(), eng: s.Engine(), ids: s.Identity(), brk: s.Broker(),
			api: s.API(), fw: s.Firmware(), planner: s.Planner(),
		})
	}
	for done := false; !done; {
		select {
		case <-hup:
			_ = s.ReloadACL() // logged and counted
			reloadKeyPairs(scfg.Logger, cfg.keyPairs)
		case <-ctx.Done():
			done = true
		}
	}
	scfg.Logger.Info("shutting down")
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.shutdownGrace)
	defer cancel()
	return s.Close(cctx)
}

// httpTLSConfig is the HTTPS listener's configuration for kp; nil for
// plain HTTP.
func httpTLSConfig(kp *identity.KeyPair) *tls.Config {
	if kp == nil {
		return nil
	}
	return &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: kp.GetCertificate}
}

// adminTokenFile is the operator token's file in the data dir.
const adminTokenFile = umbraserver.AdminTokenFile

// nodeIDPattern is what --node-id may hold (broker/natsbridge's node IDs).
var nodeIDPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// checkCluster validates the cluster-mode flags: --nats and --node-id go
// together, each URL is nats://host:port, --nats-replicas is 1 to 5 and
// the --cluster-* limits are positive.
func checkCluster(c umbraserver.Config) error {
	switch {
	case len(c.NATS) == 0 && c.NodeID != "":
		return errors.New("--node-id is for cluster mode: give --nats too")
	case len(c.NATS) == 0:
		return nil
	case c.NodeID == "":
		return errors.New("--nats needs --node-id, this node's name in the cluster")
	case c.NATSReplicas < 1 || c.NATSReplicas > 5:
		return fmt.Errorf("--nats-replicas %d: JetStream keeps 1 to 5 replicas", c.NATSReplicas)
	case !nodeIDPattern.MatchString(c.NodeID):
		return fmt.Errorf("--node-id %q: want 1 to 64 of A-Z a-z 0-9 - _ (it names the node in NATS subjects)", c.NodeID)
	}
	for _, l := range []struct {
		name string
		v    int
	}{{"--cluster-max-subscriptions", c.ClusterMaxSubscriptions}, {"--cluster-outbound-buffer", c.ClusterOutboundBuffer},
		{"--cluster-inbound-buffer", c.ClusterInboundBuffer}, {"--planner-rpc-inflight", c.PlannerRPCInflight},
		{"--planner-open-retries", c.PlannerOpenRetries}, {"--planner-rpc-max-staged", c.PlannerRPCMaxStaged}} {
		if l.v < 1 {
			return fmt.Errorf("%s %d: must be at least 1", l.name, l.v)
		}
	}
	if c.PlannerRPCMaxBody < 1024 || c.PlannerRPCMaxBody > 64<<20 {
		return fmt.Errorf("--planner-rpc-max-body %d: want 1024 to %d bytes (and at most the NATS servers' max_payload)", c.PlannerRPCMaxBody, 64<<20)
	}
	if c.PlannerLeaseTTL < time.Second || c.PlannerLeaseTTL%time.Second != 0 {
		return fmt.Errorf("--planner-lease-ttl %v: want whole seconds, at least 1s (the NATS servers' TTL resolution)", c.PlannerLeaseTTL)
	}
	if c.PlannerStayOut < time.Second {
		return fmt.Errorf("--planner-stay-out %v: want at least 1s", c.PlannerStayOut)
	}
	for _, u := range c.NATS {
		p, err := url.Parse(u)
		if err != nil || (p.Scheme != "nats" && p.Scheme != "tls") || p.Host == "" {
			return fmt.Errorf("--nats %q: want nats://host:port", u)
		}
	}
	return nil
}
