package sim

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/internal/pahostore"
)

// Fleet is a running simulated fleet. Its methods are safe for concurrent
// use.
//
// Lock order: gate (read) → simDevice.mu → statsMu. Nothing blocks on the
// network while holding them except paho's Publish, which paho bounds by
// its write timeout.
type Fleet struct {
	cfg     Config
	log     *slog.Logger
	run     string // unique per Open: prefixes every clientToken
	key     ed25519.PublicKey
	servers []string // the addresses of cfg.Server
	devices []*simDevice
	limiter *limiter

	ctx    context.Context // cancelled by Close; stops the workers
	cancel context.CancelFunc
	wg     sync.WaitGroup // the connect and download workers
	ops    chan op
	dlq    chan dlJob
	done   chan struct{} // closed when Close has finished

	// gate is held for reading by every callback that touches a device
	// and for writing by Close, so that no callback runs after Close.
	gate   sync.RWMutex
	closed bool // guarded by gate

	statsMu sync.Mutex    // guards counts and changed
	counts  counts        // aggregated device summaries
	changed chan struct{} // closed and replaced whenever counts change

	stats struct { // message counters, updated atomically
		reports, rejected, deltas, downloads, downloadBytes, resyncs, resent, reconnects, downloadRetries atomic.Uint64
	}
	connects  []atomic.Uint64 // successful connections per address
	closeOnce sync.Once
}

// Stats is a snapshot of the fleet.
type Stats struct {
	Devices   int // fleet size
	Connected int // devices with an open MQTT connection
	Updating  int // devices with an update in progress
	Updated   int // devices that completed at least one update during this run
	Failed    int // devices whose latest report is state "failed"
	Silent    int // faulty silent devices that swallowed a command
	// Versions counts devices by running firmware version.
	Versions map[string]int
	// Message counters since Open.
	Reports, Rejected, Deltas, Downloads, DownloadBytes uint64
	// Resyncs counts reconnects after a connect-time get went unanswered.
	Resyncs uint64
	// Resent counts reports sent again because a get showed that the
	// shadow did not hold them (rejected, lost, or overtaken by an older
	// report).
	Resent uint64
	// DownloadRetries counts downloads tried again after an answer worth
	// a retry (429, 502, 503, 504) or a broken transfer.
	DownloadRetries uint64
	// Reconnects counts connections lost without the device closing them
	// (a node died or dropped it); each is followed by a connect to the
	// next address.
	Reconnects uint64
	// Servers has one entry per address of Config.Server, in order.
	Servers []ServerStats
}

// ServerStats is one broker address's share of the fleet.
type ServerStats struct {
	URL       string `json:"url"`       // the address, as given
	Connected int    `json:"connected"` // devices connected through it now
	Connects  uint64 `json:"connects"`  // successful connections through it since Open
}

type counts struct {
	connected, updating, updated, failed, silent int
	versions                                     map[string]int
	perServer                                    []int // connected devices per address
}

// summary is what one device contributes to counts.
type summary struct {
	counted, online, updating, updated, failed, silent bool
	version                                            string
	server                                             int // the address of online
}

type opKind uint8

const (
	opConnect opKind = iota
	opReboot
	opPowerOff
	opReconnect
)

type op struct {
	d    *simDevice
	kind opKind
}

type dlJob struct {
	d     *simDevice
	url   string
	limit int64
	done  func(int64, [32]byte, error)
}

// Open validates cfg, builds the fleet and starts connecting it in the
// background (at ConnectRate). It fails at once if a server address cannot
// be reached. The fleet runs until Close; ctx only bounds Open itself.
func Open(ctx context.Context, cfg Config) (*Fleet, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	key, err := cfg.publicKey()
	if err != nil {
		return nil, err
	}
	servers := cfg.servers()
	for _, server := range servers {
		if err := probe(ctx, server, cfg.ConnectTimeout); err != nil {
			return nil, err
		}
	}
	seed := cfg.Seed
	if seed == 0 {
		seed = rand.Int64()
	}
	log := cfg.Logger.With("component", "sim")
	if key == nil {
		log.Warn("no public key pinned: every firmware command will fail as untrusted")
	}
	log.Info("opening fleet", "devices", cfg.Devices, "server", cfg.Server, "seed", seed)

	f := &Fleet{
		cfg:      cfg,
		log:      log,
		run:      strconv.FormatInt(time.Now().UnixNano(), 36),
		key:      key,
		servers:  servers,
		limiter:  newLimiter(cfg.ConnectRate),
		ops:      make(chan op, cfg.Devices),
		dlq:      make(chan dlJob, 2*cfg.Devices),
		done:     make(chan struct{}),
		changed:  make(chan struct{}),
		counts:   counts{versions: map[string]int{}, perServer: make([]int, len(servers))},
		connects: make([]atomic.Uint64, len(servers)),
	}
	f.ctx, f.cancel = context.WithCancel(context.WithoutCancel(ctx))

	rng := rand.New(rand.NewPCG(uint64(seed), 0))
	faulty := pick(rng, cfg.Devices, cfg.FailRate)
	flaky := pick(rng, cfg.Devices, cfg.OfflineRate)
	f.devices = make([]*simDevice, cfg.Devices)
	for i := range f.devices {
		id := deviceID(cfg.IDPrefix, i+1, cfg.Devices)
		d := &simDevice{f: f, id: id, prefix: "state/" + string(id) + "/", flaky: flaky[i], server: i % len(servers)}
		d.rng = rand.New(rand.NewPCG(uint64(seed), uint64(i)+1))
		d.m = machine{
			env: d, key: key, hw: cfg.HW, maxSize: cfg.MaxImageSize, running: cfg.FirmwareVersion,
			last: report{Version: cfg.FirmwareVersion, State: StateUpdated},
		}
		if faulty[i] {
			d.m.faulty = cfg.FailMode
		}
		if cfg.InstallTime > 0 {
			d.m.installTime = func() time.Duration { return d.jitter(cfg.InstallTime, 0.2) }
		}
		d.dial()
		f.devices[i] = d
		f.account(d)
	}

	workers := min(DefaultConnectWorkers, cfg.Devices)
	for range workers {
		f.wg.Go(f.opWorker)
	}
	for range min(cfg.DownloadWorkers, cfg.Devices) {
		f.wg.Go(f.downloadWorker)
	}
	for _, d := range f.devices {
		f.ops <- op{d: d, kind: opConnect} // capacity is Devices: never blocks
	}
	return f, nil
}

// probe dials the broker once so that a wrong address fails Open with a
// clear error instead of endless reconnects.
func probe(ctx context.Context, server string, timeout time.Duration) error {
	u, err := url.Parse(server)
	if err != nil {
		return fmt.Errorf("%w: server %q: %v", ErrInvalidConfig, server, err)
	}
	host := u.Host
	if u.Port() == "" {
		port := map[string]string{"tcp": "1883", "mqtt": "1883", "ssl": "8883", "tls": "8883", "mqtts": "8883", "ws": "80", "wss": "443"}[u.Scheme]
		host = net.JoinHostPort(u.Hostname(), port)
	}
	dialer := net.Dialer{Timeout: timeout}
	conn, err := dialer.DialContext(ctx, "tcp", host)
	if err != nil {
		return fmt.Errorf("sim: server %s unreachable: %w", server, err)
	}
	return conn.Close()
}

// pick marks exactly round(rate*n) of n indices, chosen by rng.
func pick(rng *rand.Rand, n int, rate float64) []bool {
	marked := make([]bool, n)
	k := int(math.Round(rate * float64(n)))
	for _, i := range rng.Perm(n)[:k] {
		marked[i] = true
	}
	return marked
}

// clientOptions configures d's client for one broker address. The fleet,
// not paho, reconnects a lost connection (see simDevice.onLost), so that it
// can move to the next address.
func (f *Fleet) clientOptions(d *simDevice, server string) *paho.ClientOptions {
	cfg := &f.cfg
	o := paho.NewClientOptions().SetStore(pahostore.New()).
		AddBroker(server).
		SetClientID(string(d.id)).
		SetCleanSession(true).
		SetResumeSubs(false).
		SetOrderMatters(false).
		SetAutoReconnect(false).
		SetKeepAlive(cfg.KeepAlive).
		SetConnectTimeout(cfg.ConnectTimeout).
		SetWriteTimeout(5 * time.Second).
		SetDefaultPublishHandler(d.onMessage).
		SetOnConnectHandler(d.onConnect).
		SetConnectionLostHandler(d.onLost)
	user, pass := cfg.Username, cfg.Password
	if cfg.Credentials != nil {
		user, pass = cfg.Credentials(d.id)
	}
	if user != "" || pass != "" {
		o.SetUsername(user).SetPassword(pass)
	}
	return o
}

// enqueue hands an operation to the connect workers. Each device has at
// most one operation queued, and the queue holds one per device, so this
// never blocks.
func (f *Fleet) enqueue(o op) {
	select {
	case f.ops <- o:
	default:
		f.log.Error("operation queue full", "device", o.d.id)
	}
}

func (f *Fleet) opWorker() {
	for {
		select {
		case <-f.ctx.Done():
			return
		case o := <-f.ops:
			switch o.kind {
			case opConnect:
				f.connect(o.d)
			default:
				f.disconnect(o.d, o.kind)
			}
		}
	}
}

func (f *Fleet) connect(d *simDevice) {
	if f.limiter.wait(f.ctx) != nil {
		return
	}
	d.mu.Lock()
	c, at := d.dial(), d.server
	d.mu.Unlock()
	// Wait for the attempt even when closing, so that no connection is
	// still being set up after Close; paho bounds it by ConnectTimeout.
	tok := c.Connect()
	err := errors.New("sim: connect did not finish")
	if tok.WaitTimeout(f.cfg.ConnectTimeout + 5*time.Second) {
		err = tok.Error()
	} else {
		c.Disconnect(0) // abandon the attempt: no late connection
	}
	d.do(func() {
		if c != d.client || d.conn != connQueued {
			return // the connection was lost meanwhile: onLost reconnects
		}
		if err == nil && !c.IsConnectionOpen() {
			// Lost before this ran: onLost left the reconnect to us.
			f.stats.reconnects.Add(1)
			d.server, d.connFails = f.next(at), 0
			d.connectLater(d.jitter(f.cfg.ReconnectDelay, 0.5))
			return
		}
		if err == nil {
			d.conn, d.connFails = connUp, 0
			d.scheduleOffline()
			return
		}
		d.connFails++
		d.connErr = err
		d.server = f.next(at)
		f.log.Debug("connect failed", "device", d.id, "server", f.servers[at], "attempt", d.connFails, "err", err)
		d.connectLater(d.jitter(min(MaxReconnectDelay, f.cfg.ReconnectDelay<<min(d.connFails, 6)), 0.5))
	})
}

// next returns the address after server, round the list.
func (f *Fleet) next(server int) int { return (server + 1) % len(f.servers) }

// disconnect powers a device off for a reboot or an offline spell, and
// schedules its return.
func (f *Fleet) disconnect(d *simDevice, kind opKind) {
	d.mu.Lock()
	last, c := d.lastPub, d.client
	d.mu.Unlock()
	if last != nil { // let the last report (e.g. "rebooting") reach the broker
		select {
		case <-last.Done():
		case <-time.After(2 * time.Second):
		case <-f.ctx.Done():
			return
		}
	}
	c.Disconnect(100)
	d.do(func() {
		d.online, d.syncing = false, false
		switch kind {
		case opPowerOff:
			d.m.powerOff()
			d.connectLater(d.jitter(f.cfg.OfflineFor, 0.5))
		default: // a reboot, or a reconnect the machine does not notice
			d.connectLater(f.cfg.RebootTime)
		}
	})
}

// download queues a download; called with d locked.
func (f *Fleet) download(j dlJob) {
	select {
	case f.dlq <- j:
	default:
		time.AfterFunc(0, func() {
			j.d.do(func() { j.done(0, [32]byte{}, fmt.Errorf("sim: download queue full")) })
		})
	}
}

func (f *Fleet) downloadWorker() {
	for {
		select {
		case <-f.ctx.Done():
			return
		case j := <-f.dlq:
			n, sum, err := f.fetchRetrying(j)
			if err != nil {
				f.log.Debug("download failed", "device", j.d.id, "err", err)
			}
			j.d.do(func() { j.done(n, sum, err) })
		}
	}
}

// downloadRetries is how many times a download is tried again, as a
// device's updater does, before the device reports download_failed:
// a server node that died mid-transfer, or one that cannot read the image
// store for a moment (503), is not a failed update.
const downloadRetries = 3

// maxRetryAfter caps the wait a Retry-After header asks for.
const maxRetryAfter = 5 * time.Second

// retryError marks a download failure worth retrying, with the wait the
// server asked for (0: the device's own backoff).
type retryError struct {
	after time.Duration
	err   error
}

func (e *retryError) Error() string { return e.err.Error() }
func (e *retryError) Unwrap() error { return e.err }

// fetchRetrying runs fetch for j, trying again up to downloadRetries times
// after a retryable failure: after the Retry-After the server gave (at
// most maxRetryAfter), or a jittered 250 ms, 500 ms, 1 s.
func (f *Fleet) fetchRetrying(j dlJob) (int64, [32]byte, error) {
	for try := 0; ; try++ {
		n, sum, err := f.fetch(j.url, j.limit)
		var re *retryError
		if !errors.As(err, &re) || try == downloadRetries {
			return n, sum, err
		}
		f.stats.downloadRetries.Add(1)
		wait := re.after
		if wait == 0 {
			j.d.mu.Lock()
			wait = j.d.jitter(250*time.Millisecond<<try, 0.5)
			j.d.mu.Unlock()
		}
		f.log.Debug("download retried", "device", j.d.id, "try", try+1, "after", wait, "err", err)
		select {
		case <-time.After(wait):
		case <-f.ctx.Done():
			return n, sum, err
		}
	}
}

// fetch downloads url, hashing as it reads; it never holds the image in
// memory. It reads at most limit+1 bytes so that an oversized body shows
// as a size mismatch. A failure worth retrying is a *retryError.
func (f *Fleet) fetch(rawURL string, limit int64) (int64, [32]byte, error) {
	var sum [32]byte
	req, err := http.NewRequestWithContext(f.ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		return 0, sum, err
	}
	resp, err := f.cfg.HTTPClient.Do(req)
	if err != nil {
		if f.ctx.Err() != nil {
			return 0, sum, err
		}
		return 0, sum, &retryError{err: err} // e.g. the node is gone: another may answer
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusForbidden:
		return 0, sum, errURLRejected
	case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		var after time.Duration
		if secs, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && secs >= 0 {
			after = min(time.Duration(secs)*time.Second, maxRetryAfter)
		}
		return 0, sum, &retryError{after: after, err: fmt.Errorf("sim: download: http status %d", resp.StatusCode)}
	default:
		return 0, sum, fmt.Errorf("sim: download: http status %d", resp.StatusCode)
	}
	h := sha256.New()
	n, err := io.Copy(h, io.LimitReader(resp.Body, limit+1))
	f.stats.downloads.Add(1)
	f.stats.downloadBytes.Add(uint64(n))
	if err != nil {
		err = fmt.Errorf("sim: download: %w", err)
		if f.ctx.Err() == nil {
			err = &retryError{err: err} // the transfer broke
		}
		return n, sum, err
	}
	h.Sum(sum[:0])
	return n, sum, nil
}

// account brings the fleet counts up to date with d; d is locked.
func (f *Fleet) account(d *simDevice) {
	m := &d.m
	s := summary{
		counted:  true,
		online:   d.online,
		updating: m.busy(),
		updated:  m.installs > 0,
		failed:   m.last.State == StateFailed,
		silent:   m.phase == phaseSilent,
		version:  m.running,
		server:   d.clientAt,
	}
	if s == d.sum {
		return
	}
	f.statsMu.Lock()
	defer f.statsMu.Unlock()
	f.counts.add(d.sum, -1)
	f.counts.add(s, 1)
	d.sum = s
	close(f.changed)
	f.changed = make(chan struct{})
}

func (c *counts) add(s summary, delta int) {
	if !s.counted {
		return
	}
	b := func(v bool) int {
		if v {
			return delta
		}
		return 0
	}
	c.connected += b(s.online)
	c.updating += b(s.updating)
	c.updated += b(s.updated)
	c.failed += b(s.failed)
	c.silent += b(s.silent)
	c.perServer[s.server] += b(s.online)
	c.versions[s.version] += delta
	if c.versions[s.version] == 0 {
		delete(c.versions, s.version)
	}
}

// Stats returns a snapshot of the fleet.
func (f *Fleet) Stats() Stats {
	st, _ := f.snapshot()
	return st
}

func (f *Fleet) snapshot() (Stats, <-chan struct{}) {
	f.statsMu.Lock()
	defer f.statsMu.Unlock()
	c := f.counts
	servers := make([]ServerStats, len(f.servers))
	for i, url := range f.servers {
		servers[i] = ServerStats{URL: url, Connected: c.perServer[i], Connects: f.connects[i].Load()}
	}
	return Stats{
		Devices:       len(f.devices),
		Connected:     c.connected,
		Updating:      c.updating,
		Updated:       c.updated,
		Failed:        c.failed,
		Silent:        c.silent,
		Versions:      maps.Clone(c.versions),
		Reports:       f.stats.reports.Load(),
		Rejected:      f.stats.rejected.Load(),
		Deltas:        f.stats.deltas.Load(),
		Downloads:     f.stats.downloads.Load(),
		DownloadBytes: f.stats.downloadBytes.Load(),
		Resyncs:       f.stats.resyncs.Load(),
		Resent:        f.stats.resent.Load(),
		Reconnects:    f.stats.reconnects.Load(),
		Servers:       servers,

		DownloadRetries: f.stats.downloadRetries.Load(),
	}, f.changed
}

// Wait blocks until cond holds for the fleet's Stats (checked on every
// change) and returns those Stats. It returns early with ctx's error, or
// ErrClosed when the fleet closes.
func (f *Fleet) Wait(ctx context.Context, cond func(Stats) bool) (Stats, error) {
	for {
		st, changed := f.snapshot()
		if cond(st) {
			return st, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return st, ctx.Err()
		case <-f.done:
			return st, ErrClosed
		}
	}
}

// IDs returns the device IDs in order.
func (f *Fleet) IDs() []device.ID {
	ids := make([]device.ID, len(f.devices))
	for i, d := range f.devices {
		ids[i] = d.id
	}
	return ids
}

// Describe says where device id's connection and update stand, for
// failure messages: its connection state, consecutive failed connects and
// the last one's error, the address of the next connect, and the update
// phase and attempt. "" for a device not in the fleet.
func (f *Fleet) Describe(id device.ID) string {
	for _, d := range f.devices {
		if d.id != id {
			continue
		}
		d.mu.Lock()
		defer d.mu.Unlock()
		states := [...]string{connQueued: "connecting", connUp: "up", connLeaving: "leaving", connAway: "away"}
		phases := [...]string{phaseIdle: "idle", phaseDownloading: "downloading", phaseInstalling: "installing",
			phaseChecking: "checking", phaseRebooting: "rebooting", phaseSilent: "silent"}
		return fmt.Sprintf("sim %s: conn %s (online %v) via %s, %d failed connects (last: %v), phase %s, attempt %d, running %s",
			id, states[d.conn], d.online, f.servers[d.server], d.connFails, d.connErr, phases[d.m.phase], d.m.attempt, d.m.running)
	}
	return ""
}

// Close disconnects every device and stops every worker and timer. It is
// idempotent; ctx bounds the disconnects.
func (f *Fleet) Close(ctx context.Context) error {
	f.closeOnce.Do(func() {
		f.gate.Lock() // waits for running callbacks; later ones see closed
		f.closed = true
		f.gate.Unlock()
		f.cancel()
		f.wg.Wait()
		for _, d := range f.devices {
			d.stop()
		}
		sem := make(chan struct{}, 64)
		var wg sync.WaitGroup
		for _, d := range f.devices {
			if ctx.Err() != nil {
				break
			}
			sem <- struct{}{}
			d.mu.Lock()
			c := d.client
			d.mu.Unlock()
			wg.Go(func() {
				defer func() { <-sem }()
				c.Disconnect(100)
			})
		}
		wg.Wait()
		if f.cfg.ownHTTP {
			f.cfg.HTTPClient.CloseIdleConnections()
		}
		close(f.done)
		f.log.Info("fleet closed")
	})
	return nil
}

// limiter spaces events at most rate per second (a token bucket of depth 1).
type limiter struct {
	interval time.Duration
	mu       sync.Mutex // guards next
	next     time.Time
}

func newLimiter(rate int) *limiter {
	if rate <= 0 {
		return &limiter{}
	}
	return &limiter{interval: time.Second / time.Duration(rate)}
}

func (l *limiter) wait(ctx context.Context) error {
	if l.interval == 0 {
		return ctx.Err()
	}
	l.mu.Lock()
	now := time.Now()
	at := l.next
	if at.Before(now) {
		at = now
	}
	l.next = at.Add(l.interval)
	l.mu.Unlock()
	t := time.NewTimer(time.Until(at))
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
