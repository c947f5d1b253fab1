package sim

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/umbra-iot/umbra/device"
)

// Errors returned by Open and Run. Validation errors wrap ErrInvalidConfig.
var (
	ErrInvalidConfig = errors.New("sim: invalid config")
	ErrClosed        = errors.New("sim: fleet closed")
)

// FailMode says how a faulty simulated device fails a firmware update.
type FailMode string

// The failure modes. Each faulty device fails every update it attempts in
// the fleet's FailMode.
const (
	// FailDownload reports downloading, then failed "download_failed"
	// (retryable) without fetching the image.
	FailDownload FailMode = "download"
	// FailVerify downloads the image but sees a corrupted digest: it
	// reports verifying, then failed "sha256_mismatch" (retryable).
	FailVerify FailMode = "verify"
	// FailInstall gets through verification, "installs" for InstallTime,
	// then reports failed "install_failed" (retryable).
	FailInstall FailMode = "install"
	// FailSilent never reports anything after receiving a command, so the
	// rollout planner's device timeout is exercised.
	FailSilent FailMode = "silent"
)

// ParseFailMode validates s as a FailMode.
func ParseFailMode(s string) (FailMode, error) {
	switch m := FailMode(s); m {
	case FailDownload, FailVerify, FailInstall, FailSilent:
		return m, nil
	}
	return "", fmt.Errorf("%w: fail mode %q: want download, verify, install or silent", ErrInvalidConfig, s)
}

// Defaults applied by Open for zero Config fields.
const (
	DefaultIDPrefix        = "sim-"
	DefaultFirmwareVersion = "1.0.0"
	DefaultFailMode        = FailInstall
	DefaultOfflineAfter    = 30 * time.Second
	DefaultOfflineFor      = 10 * time.Second
	DefaultRebootTime      = 200 * time.Millisecond
	DefaultKeepAlive       = 60 * time.Second
	DefaultConnectTimeout  = 10 * time.Second
	DefaultDownloadWorkers = 16
	DefaultDownloadTimeout = 5 * time.Minute
	DefaultMaxImageSize    = 512 << 20
	DefaultConnectWorkers  = 32
	DefaultStatsInterval   = 5 * time.Second
	DefaultSyncTimeout     = 30 * time.Second
	DefaultReconnectDelay  = 500 * time.Millisecond
	// MaxReconnectDelay bounds the backoff between a device's failed
	// connects (before its ±50% jitter).
	MaxReconnectDelay = 30 * time.Second
)

// Config describes a simulated fleet. Each field maps to one flag of
// `umbra sim`; zero values take the defaults above unless noted.
type Config struct {
	// Server is the MQTT broker URL, e.g. "tcp://127.0.0.1:1883", or several
	// separated by commas (the nodes of a cluster). Required. Device i
	// (0-based) first connects to address i mod n; a device whose
	// connection is lost, or whose connect fails, tries the next address
	// after a jittered backoff (see ReconnectDelay).
	Server string
	// Devices is the fleet size N (at least 1).
	Devices int
	// IDPrefix prefixes device IDs: "<prefix><n>", n zero-padded to the
	// width of Devices and starting at 1 (sim-0001 … sim-1000).
	IDPrefix string
	// Username and Password, when set, are sent on every CONNECT.
	Username, Password string
	// Credentials, when non-nil, overrides Username and Password per device
	// (for per-device enrolment once security exists).
	Credentials func(id device.ID) (username, password string)
	// FirmwareVersion is the version every device runs at start ("1.0.0").
	FirmwareVersion string
	// HW is the hardware type of the devices. A command for another "hw" is
	// refused with "hw_mismatch". Empty accepts any hw.
	HW string
	// InstallTime is how long an install takes, with ±20% jitter per
	// device. Zero installs instantly.
	InstallTime time.Duration
	// FailRate is the fraction of devices (0..1) that are faulty: exactly
	// round(FailRate*Devices) devices, chosen from Seed, fail every update
	// in FailMode.
	FailRate float64
	// FailMode is how faulty devices fail (default FailInstall).
	FailMode FailMode
	// OfflineRate is the fraction of devices (0..1) that power off now and
	// then: online for about OfflineAfter, offline for about OfflineFor
	// (each ±50%), losing any update in progress, and repeat.
	OfflineRate float64
	// OfflineAfter is the mean time an offline-prone device stays up.
	OfflineAfter time.Duration
	// OfflineFor is the mean time an offline-prone device stays down.
	OfflineFor time.Duration
	// ConnectRate limits new connections per second across the fleet
	// (token bucket, burst 1). 0 means unlimited.
	ConnectRate int
	// QoS is the MQTT QoS (0 or 1) of device publishes and subscriptions.
	// Unlike other fields its zero value is meaningful; `umbra sim`
	// defaults to 1.
	QoS byte
	// PublicKey is the fleet's pinned ed25519 public key: base64 of the 32
	// raw bytes, a PEM "PUBLIC KEY" block, or the path of a file holding
	// either (or the raw 32 bytes). Empty means no key is trusted and every
	// firmware command fails with "untrusted".
	PublicKey string
	// HTTPClient downloads images (nil = a client with DownloadTimeout).
	HTTPClient *http.Client
	ownHTTP    bool // HTTPClient was made by setDefaults
	// DownloadWorkers bounds concurrent downloads across the fleet.
	DownloadWorkers int
	// DownloadTimeout bounds one download.
	DownloadTimeout time.Duration
	// MaxImageSize is the largest image a device accepts.
	MaxImageSize int64
	// RebootTime is how long a device stays disconnected while "rebooting".
	RebootTime time.Duration
	// KeepAlive is the MQTT keep-alive interval.
	KeepAlive time.Duration
	// ConnectTimeout bounds one connection attempt.
	ConnectTimeout time.Duration
	// SyncTimeout is how long a device waits for the answer to the get it
	// sends after connecting before it assumes the connection is deaf and
	// reconnects. Keep it well above the server's worst response time under
	// load (5s was too short for 10,000 devices rebooting at once).
	SyncTimeout time.Duration
	// ReconnectDelay is how long a device whose connection was lost waits
	// (±50% jitter, so that a node's devices do not all come back at once)
	// before connecting to the next address; each failed connect after
	// that doubles it, up to MaxReconnectDelay.
	ReconnectDelay time.Duration
	// StatsInterval is how often Run writes a stats line.
	StatsInterval time.Duration
	// Seed makes fault selection and jitter reproducible. 0 picks a random
	// seed, which Open logs.
	Seed int64
	// OnEvent, when non-nil, is called for every change of a device's
	// reported firmware state. It runs with the device locked and must not
	// block or call back into the Fleet.
	OnEvent func(Event)
	// Logger receives diagnostics; nil discards them.
	Logger *slog.Logger
}

// setDefaults fills zero fields of a copy of the caller's Config.
func (c *Config) setDefaults() {
	if c.IDPrefix == "" {
		c.IDPrefix = DefaultIDPrefix
	}
	if c.FirmwareVersion == "" {
		c.FirmwareVersion = DefaultFirmwareVersion
	}
	if c.FailMode == "" {
		c.FailMode = DefaultFailMode
	}
	if c.OfflineAfter == 0 {
		c.OfflineAfter = DefaultOfflineAfter
	}
	if c.OfflineFor == 0 {
		c.OfflineFor = DefaultOfflineFor
	}
	if c.DownloadWorkers == 0 {
		c.DownloadWorkers = DefaultDownloadWorkers
	}
	if c.DownloadTimeout == 0 {
		c.DownloadTimeout = DefaultDownloadTimeout
	}
	if c.MaxImageSize == 0 {
		c.MaxImageSize = DefaultMaxImageSize
	}
	if c.RebootTime == 0 {
		c.RebootTime = DefaultRebootTime
	}
	if c.KeepAlive == 0 {
		c.KeepAlive = DefaultKeepAlive
	}
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = DefaultConnectTimeout
	}
	if c.SyncTimeout == 0 {
		c.SyncTimeout = DefaultSyncTimeout
	}
	if c.StatsInterval == 0 {
		c.StatsInterval = DefaultStatsInterval
	}
	if c.ReconnectDelay == 0 {
		c.ReconnectDelay = DefaultReconnectDelay
	}
	if c.HTTPClient == nil {
		// A transport of the fleet's own, so that Close can drop its idle
		// keep-alive connections (a server's graceful shutdown waits for
		// them) without touching http.DefaultTransport's.
		c.HTTPClient = &http.Client{Timeout: c.DownloadTimeout, Transport: http.DefaultTransport.(*http.Transport).Clone()}
		c.ownHTTP = true
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Validate reports the first problem with c as an error wrapping
// ErrInvalidConfig. It checks c as given, before defaults.
func (c *Config) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrInvalidConfig}, args...)...)
	}
	if c.Server == "" {
		return bad("server is required")
	}
	for _, server := range c.servers() {
		if err := validServer(server); err != nil {
			return bad("%v", err)
		}
	}
	if c.Devices < 1 {
		return bad("devices %d: want at least 1", c.Devices)
	}
	// The widest ID must still be a valid device ID.
	if _, err := device.ParseID(deviceID(c.prefix(), c.Devices, c.Devices).String()); err != nil {
		return bad("id prefix %q: %v", c.IDPrefix, err)
	}
	for _, r := range []struct {
		name string
		v    float64
	}{{"fail rate", c.FailRate}, {"offline rate", c.OfflineRate}} {
		if !(r.v >= 0 && r.v <= 1) { // also rejects NaN
			return bad("%s %v: want a fraction in [0,1]", r.name, r.v)
		}
	}
	if c.FailMode != "" {
		if _, err := ParseFailMode(string(c.FailMode)); err != nil {
			return err
		}
	}
	if c.QoS > 1 {
		return bad("qos %d: want 0 or 1", c.QoS)
	}
	if c.ConnectRate < 0 {
		return bad("connect rate %d: want ≥ 0 (0 = unlimited)", c.ConnectRate)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"install time", c.InstallTime}, {"offline after", c.OfflineAfter}, {"offline for", c.OfflineFor},
		{"download timeout", c.DownloadTimeout}, {"reboot time", c.RebootTime},
		{"keep alive", c.KeepAlive}, {"connect timeout", c.ConnectTimeout}, {"stats interval", c.StatsInterval},
		{"sync timeout", c.SyncTimeout}, {"reconnect delay", c.ReconnectDelay},
	} {
		if d.v < 0 {
			return bad("%s %v: want ≥ 0", d.name, d.v)
		}
	}
	if c.DownloadWorkers < 0 || c.MaxImageSize < 0 {
		return bad("download workers and max image size must be ≥ 0")
	}
	return nil
}

// servers returns the addresses of Server, in order.
func (c *Config) servers() []string {
	list := strings.Split(c.Server, ",")
	for i := range list {
		list[i] = strings.TrimSpace(list[i])
	}
	return list
}

// validServer checks one broker address of Server.
func validServer(server string) error {
	if server == "" {
		return errors.New("server list has an empty address: want comma-separated scheme://host:port")
	}
	u, err := url.Parse(server)
	switch {
	case err != nil:
		return fmt.Errorf("server %q: %v", server, err)
	case u.Host == "":
		return fmt.Errorf("server %q: want scheme://host:port, e.g. tcp://127.0.0.1:1883", server)
	}
	switch u.Scheme {
	case "tcp", "mqtt", "ssl", "tls", "mqtts", "ws", "wss":
		return nil
	}
	return fmt.Errorf("server %q: unsupported scheme %q", server, u.Scheme)
}

func (c *Config) prefix() string {
	if c.IDPrefix == "" {
		return DefaultIDPrefix
	}
	return c.IDPrefix
}

// deviceID returns the ID of device i (1-based) in a fleet of n.
func deviceID(prefix string, i, n int) device.ID {
	width := len(fmt.Sprint(n))
	if width < 4 {
		width = 4
	}
	return device.ID(fmt.Sprintf("%s%0*d", prefix, width, i))
}

// publicKey resolves Config.PublicKey; nil when it is empty.
func (c *Config) publicKey() (ed25519.PublicKey, error) {
	if c.PublicKey == "" {
		return nil, nil
	}
	k, err := LoadPublicKey(c.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("%w: public key: %w", ErrInvalidConfig, err)
	}
	return k, nil
}
