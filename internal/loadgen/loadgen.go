package loadgen

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/umbra-iot/umbra/internal/pahostore"
)

// ErrInvalidConfig is wrapped by every validation error from Run.
var ErrInvalidConfig = errors.New("loadgen: invalid config")

// Defaults applied by Run for zero Config fields.
const (
	DefaultClients     = 10
	DefaultIDPrefix    = "load-"
	DefaultDuration    = 10 * time.Second
	DefaultMaxRequests = 10_000_000
	DefaultWindow      = 1
	DefaultTimeout     = 10 * time.Second
	DefaultSamples     = 100_000
	connectWorkers     = 32
)

// Config describes one closed-loop run. Zero fields take the defaults
// above; the topic and payload functions default to Umbra's shadow update
// protocol.
type Config struct {
	// Server is the broker URL, e.g. "tcp://127.0.0.1:1883". Required.
	Server string
	// Clients is the number of MQTT connections K.
	Clients int
	// IDPrefix prefixes client IDs: "<prefix><n>", zero-padded from 1.
	IDPrefix string
	// Duration is how long to measure, after Warmup. Always bounded.
	Duration time.Duration
	// MaxRequests ends the measurement early after this many responses.
	MaxRequests int
	// Window is how many requests each client keeps in flight (1 = strict
	// request/response).
	Window int
	// QoS (0 or 1) of requests and response subscriptions. Unlike other
	// fields its zero value is meaningful; benchmarks use 1.
	QoS byte
	// RequestTopic returns the topic client id publishes requests to
	// (default "state/<id>/update").
	RequestTopic func(id string) string
	// ResponseTopics returns the topics client id receives responses on
	// (default "state/<id>/update/accepted" and ".../rejected"). They must
	// be distinct per client: responses are matched by clientToken within
	// one client.
	ResponseTopics func(id string) []string
	// Payload returns request number seq of client id carrying token as its
	// "clientToken" (default a shadow update reporting seq and a
	// temperature).
	Payload func(id string, seq int, token string) []byte
	// Warmup runs load without measuring it, before Duration starts.
	Warmup time.Duration
	// ConnectRate limits new connections per second (0 = unlimited).
	ConnectRate int
	// Timeout is how long a request waits for its response before it
	// counts as an error and frees its window slot.
	Timeout time.Duration
	// Samples bounds the latency sample (reservoir sampling).
	Samples int
	// Persistent connects the clients with clean session off, as devices
	// that keep a persistent session do: the broker then holds every QoS 1
	// response for the client's session until it is acknowledged.
	Persistent bool
	// Logger receives diagnostics; nil discards them.
	Logger *slog.Logger
}

// Result is what one run measured. Only responses completed within the
// measurement window (after Warmup) count.
type Result struct {
	// Requests is the number of successful (non-rejected) responses.
	Requests int
	// Errors counts requests that failed to publish or got no response
	// within Timeout.
	Errors int
	// Elapsed is the length of the measurement window.
	Elapsed time.Duration
	// PerSecond is Requests / Elapsed.
	PerSecond float64
	// Latency percentiles of successful responses, from a sorted sample
	// of at most Samples, and the exact maximum.
	P50, P90, P99, P999, Max time.Duration
	// Rejected counts rejection responses by their "code" (0 if none).
	Rejected map[int]int
}

// String formats r on one line.
func (r Result) String() string {
	return fmt.Sprintf("%d requests in %v (%.0f/s), %d errors, rejected %v, latency p50 %v p90 %v p99 %v p99.9 %v max %v",
		r.Requests, r.Elapsed.Round(time.Millisecond), r.PerSecond, r.Errors, r.Rejected,
		r.P50, r.P90, r.P99, r.P999, r.Max)
}

func (c *Config) validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrInvalidConfig}, args...)...)
	}
	u, err := url.Parse(c.Server)
	switch {
	case c.Server == "":
		return bad("server is required")
	case err != nil || u.Host == "":
		return bad("server %q: want scheme://host:port", c.Server)
	case c.Clients < 0, c.Window < 0, c.MaxRequests < 0, c.Samples < 0, c.ConnectRate < 0:
		return bad("clients, window, max requests, samples and connect rate must be ≥ 0")
	case c.Duration < 0, c.Warmup < 0, c.Timeout < 0:
		return bad("durations must be ≥ 0")
	case c.QoS > 1:
		return bad("qos %d: want 0 or 1", c.QoS)
	case strings.ContainsAny(c.IDPrefix, "/+#"):
		return bad("id prefix %q: must not contain / + or #", c.IDPrefix)
	}
	return nil
}

func (c *Config) setDefaults() {
	if c.Clients == 0 {
		c.Clients = DefaultClients
	}
	if c.IDPrefix == "" {
		c.IDPrefix = DefaultIDPrefix
	}
	if c.Duration == 0 {
		c.Duration = DefaultDuration
	}
	if c.MaxRequests == 0 {
		c.MaxRequests = DefaultMaxRequests
	}
	if c.Window == 0 {
		c.Window = DefaultWindow
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.Samples == 0 {
		c.Samples = DefaultSamples
	}
	if c.RequestTopic == nil {
		c.RequestTopic = func(id string) string { return "state/" + id + "/update" }
	}
	if c.ResponseTopics == nil {
		c.ResponseTopics = func(id string) []string {
			return []string{"state/" + id + "/update/accepted", "state/" + id + "/update/rejected"}
		}
	}
	if c.Payload == nil {
		c.Payload = ShadowUpdate
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// ShadowUpdate is the default payload: a shadow update reporting the
// sequence number and a temperature, carrying token as clientToken.
func ShadowUpdate(_ string, seq int, token string) []byte {
	return fmt.Appendf(nil, `{"state":{"reported":{"seq":%d,"temp":%.1f}},"clientToken":%q}`,
		seq, 20+float64(seq%100)/10, token)
}

// Run connects cfg.Clients clients, runs the closed loop for Warmup plus
// Duration (or until MaxRequests responses or ctx is done), drains the
// requests in flight and disconnects. It fails if any client cannot connect
// and subscribe.
func Run(ctx context.Context, cfg Config) (Result, error) {
	if err := cfg.validate(); err != nil {
		return Result{}, err
	}
	cfg.setDefaults()
	log := cfg.Logger.With("component", "loadgen")
	m := newMeter(cfg.MaxRequests, cfg.Samples)

	clients, err := connectAll(ctx, &cfg, m)
	defer disconnectAll(clients)
	if err != nil {
		return Result{}, err
	}
	log.Info("clients connected", "clients", len(clients))

	m.begin(time.Now().Add(cfg.Warmup), cfg.Duration)
	var wg sync.WaitGroup
	for _, c := range clients {
		wg.Go(func() { c.loop(ctx, m) })
	}
	exited := make(chan struct{})
	go func() { wg.Wait(); close(exited) }()
	select {
	case <-ctx.Done():
	case <-m.stop:
	case <-exited: // every client lost its connection
	}
	m.finish(time.Now())
	<-exited
	res := m.result()
	log.Info("run finished", "result", res.String())
	return res, nil
}

// connectAll connects every client (bounded parallelism, at ConnectRate)
// and subscribes its response topics. It returns the clients created so
// far even on error, so the caller can disconnect them.
func connectAll(ctx context.Context, cfg *Config, m *meter) ([]*client, error) {
	width := max(4, len(strconv.Itoa(cfg.Clients)))
	clients := make([]*client, cfg.Clients)
	for i := range clients {
		id := fmt.Sprintf("%s%0*d", cfg.IDPrefix, width, i+1)
		clients[i] = newClient(cfg, id, m)
	}
	jobs := make(chan *client)
	errs := make(chan error, len(clients))
	var wg sync.WaitGroup
	for range min(connectWorkers, len(clients)) {
		wg.Go(func() {
			for c := range jobs {
				errs <- c.connect(cfg)
			}
		})
	}
	var tick <-chan time.Time
	if cfg.ConnectRate > 0 {
		t := time.NewTicker(time.Second / time.Duration(cfg.ConnectRate))
		defer t.Stop()
		tick = t.C
	}
	var err error
feed:
	for _, c := range clients {
		if tick != nil {
			select {
			case <-tick:
			case <-ctx.Done():
				err = ctx.Err()
				break feed
			}
		}
		jobs <- c
	}
	close(jobs)
	wg.Wait()
	close(errs)
	for e := range errs {
		err = firstErr(err, e)
	}
	return clients, err
}

// firstErr returns the first non-nil error.
func firstErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

func disconnectAll(clients []*client) {
	var wg sync.WaitGroup
	sem := make(chan struct{}, connectWorkers)
	for _, c := range clients {
		if c == nil {
			continue
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			c.cl.Disconnect(250)
		})
	}
	wg.Wait()
}

// client is one closed-loop MQTT client.
type client struct {
	id      string
	topic   string
	qos     byte
	payload func(id string, seq int, token string) []byte
	timeout time.Duration
	cl      paho.Client
	slots   chan struct{} // one token per free window slot

	mu      sync.Mutex           // guards pending
	pending map[string]time.Time // clientToken → sent at
}

func newClient(cfg *Config, id string, m *meter) *client {
	c := &client{
		id: id, topic: cfg.RequestTopic(id), qos: cfg.QoS, payload: cfg.Payload, timeout: cfg.Timeout,
		slots: make(chan struct{}, cfg.Window), pending: make(map[string]time.Time, cfg.Window),
	}
	for range cfg.Window {
		c.slots <- struct{}{}
	}
	opts := paho.NewClientOptions().SetStore(pahostore.New()).AddBroker(cfg.Server).SetClientID(id).
		SetCleanSession(!cfg.Persistent).SetOrderMatters(false).SetAutoReconnect(false).
		SetConnectTimeout(cfg.Timeout).SetWriteTimeout(cfg.Timeout).SetKeepAlive(60 * time.Second).
		SetDefaultPublishHandler(func(_ paho.Client, msg paho.Message) { c.response(m, msg) })
	c.cl = paho.NewClient(opts)
	return c
}

func (c *client) connect(cfg *Config) error {
	if tok := c.cl.Connect(); !tok.WaitTimeout(cfg.Timeout) || tok.Error() != nil {
		return fmt.Errorf("loadgen: connect %s: %w", c.id, firstErr(tok.Error(), errors.New("timeout")))
	}
	filters := map[string]byte{}
	for _, t := range cfg.ResponseTopics(c.id) {
		filters[t] = cfg.QoS
	}
	if tok := c.cl.SubscribeMultiple(filters, nil); !tok.WaitTimeout(cfg.Timeout) || tok.Error() != nil {
		return fmt.Errorf("loadgen: subscribe %s: %w", c.id, firstErr(tok.Error(), errors.New("timeout")))
	}
	return nil
}

// loop keeps the client's window full until the run stops, then waits
// for the requests in flight (each bounded by Timeout).
func (c *client) loop(ctx context.Context, m *meter) {
	tick := time.NewTicker(min(c.timeout/4, 250*time.Millisecond))
	defer tick.Stop()
	stop, done := m.stop, ctx.Done()
	seq := 0
	for {
		if stop == nil && c.inFlight() == 0 {
			return
		}
		select {
		case <-c.slots:
			if stop == nil {
				continue // stopping: only wait for the window to drain
			}
			seq++
			if !c.send(m, seq) && !c.cl.IsConnectionOpen() {
				stop = nil // the connection is gone: do not spin on errors
			}
		case now := <-tick.C:
			c.expire(m, now)
		case <-stop:
			stop = nil
		case <-done:
			return // cancelled: do not wait for the window to drain
		}
	}
}

// send publishes request seq; false if it failed at once.
func (c *client) send(m *meter, seq int) bool {
	token := strconv.Itoa(seq)
	c.mu.Lock()
	c.pending[token] = time.Now()
	c.mu.Unlock()
	tok := c.cl.Publish(c.topic, c.qos, false, c.payload(c.id, seq, token))
	select {
	case <-tok.Done():
		if tok.Error() != nil {
			c.settle(token)
			m.fail(time.Now())
			c.slots <- struct{}{}
			return false
		}
	default: // the PUBACK is still on its way: the response decides
	}
	return true
}

// settle removes token from pending and returns when it was sent.
func (c *client) settle(token string) (time.Time, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	sent, ok := c.pending[token]
	delete(c.pending, token)
	return sent, ok
}

func (c *client) inFlight() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.pending)
}

// expire fails requests older than Timeout and frees their slots.
func (c *client) expire(m *meter, now time.Time) {
	c.mu.Lock()
	var n int
	for token, sent := range c.pending {
		if now.Sub(sent) > c.timeout {
			delete(c.pending, token)
			n++
		}
	}
	c.mu.Unlock()
	for range n {
		m.fail(now)
		c.slots <- struct{}{}
	}
}

// responseMessage is what the generator reads from a response.
type responseMessage struct {
	ClientToken string `json:"clientToken"`
	Code        int    `json:"code"`
}

func (c *client) response(m *meter, msg paho.Message) {
	now := time.Now()
	var r responseMessage
	if err := json.Unmarshal(msg.Payload(), &r); err != nil || r.ClientToken == "" {
		return
	}
	sent, ok := c.settle(r.ClientToken)
	if !ok {
		return // late (already expired) or not ours
	}
	rejected := r.Code != 0 || strings.HasSuffix(msg.Topic(), "/rejected")
	m.record(now, now.Sub(sent), rejected, r.Code)
	c.slots <- struct{}{}
}

// meter aggregates the measurement window.
type meter struct {
	maxRequests, samples int
	stop                 chan struct{} // closed when the window ends

	mu       sync.Mutex // guards the fields below
	start    time.Time
	end      time.Time // zero until finished
	timer    *time.Timer
	requests int
	errors   int
	seen     int // successful responses offered to the reservoir
	sample   []time.Duration
	max      time.Duration
	rejected map[int]int
	rng      *rand.Rand
}

func newMeter(maxRequests, samples int) *meter {
	return &meter{
		maxRequests: maxRequests, samples: samples, stop: make(chan struct{}),
		rejected: map[int]int{}, rng: rand.New(rand.NewPCG(1, 2)),
		start: time.Now().Add(time.Hour), // nothing counts before begin
	}
}

// begin opens the window at start for d.
func (m *meter) begin(start time.Time, d time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.start = start
	m.timer = time.AfterFunc(time.Until(start.Add(d)), func() { m.finish(start.Add(d)) })
}

func (m *meter) finish(at time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.finishLocked(at)
}

func (m *meter) finishLocked(at time.Time) {
	if !m.end.IsZero() {
		return
	}
	if at.Before(m.start) {
		at = m.start
	}
	m.end = at
	if m.timer != nil {
		m.timer.Stop()
	}
	close(m.stop)
}

// counting reports whether an event at now falls in the window; m.mu held.
func (m *meter) counting(now time.Time) bool {
	return !now.Before(m.start) && m.end.IsZero()
}

func (m *meter) fail(now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !now.Before(m.start) { // failures while draining still count
		m.errors++
	}
}

func (m *meter) record(now time.Time, lat time.Duration, rejected bool, code int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.counting(now) {
		return
	}
	if rejected {
		m.rejected[code]++
		return
	}
	m.requests++
	m.max = max(m.max, lat)
	m.seen++
	if len(m.sample) < m.samples {
		m.sample = append(m.sample, lat)
	} else if j := m.rng.IntN(m.seen); j < m.samples {
		m.sample[j] = lat // reservoir sampling (Algorithm R)
	}
	if m.requests >= m.maxRequests {
		m.finishLocked(now)
	}
}

func (m *meter) result() Result {
	m.mu.Lock()
	defer m.mu.Unlock()
	r := Result{Requests: m.requests, Errors: m.errors, Elapsed: m.end.Sub(m.start), Max: m.max, Rejected: m.rejected}
	if r.Elapsed > 0 {
		r.PerSecond = float64(r.Requests) / r.Elapsed.Seconds()
	}
	s := slices.Clone(m.sample)
	slices.Sort(s)
	r.P50, r.P90, r.P99, r.P999 = percentile(s, 0.50), percentile(s, 0.90), percentile(s, 0.99), percentile(s, 0.999)
	return r
}

// percentile returns the nearest-rank p-quantile of sorted s.
func percentile(s []time.Duration, p float64) time.Duration {
	if len(s) == 0 {
		return 0
	}
	i := int(float64(len(s))*p+0.999999) - 1
	return s[min(max(i, 0), len(s)-1)]
}
