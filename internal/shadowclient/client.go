package shadowclient

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"
	"syscall"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/internal/pahostore"
	"github.com/umbra-iot/umbra/shadow"
)

// Defaults applied to zero Config fields.
const (
	DefaultServer  = "tcp://127.0.0.1:1883"
	DefaultTimeout = 10 * time.Second
	// ClientIDPrefix starts the random client ID used when Config.ClientID
	// is empty.
	ClientIDPrefix = "umbra-cli-"

	keepAlive       = 30 * time.Second
	disconnectGrace = 250 // milliseconds paho may spend sending DISCONNECT
	qos             = 1
	logKeyComponent = "component"
)

// Errors returned by Dial and the Client's methods.
var (
	// ErrInvalidConfig is wrapped by Dial for a bad Config.
	ErrInvalidConfig = errors.New("shadowclient: invalid config")
	// ErrInvalidRequest is wrapped by requests rejected before anything is
	// sent: an update body that is not a JSON object, a bad clientToken, a
	// clientToken already in use on this Client, or an unknown watch kind.
	ErrInvalidRequest = errors.New("shadowclient: invalid request")
	// ErrClosed is returned after Close.
	ErrClosed = errors.New("shadowclient: closed")
	// ErrConnectionLost is wrapped once the connection to the server has
	// dropped; the Client does not reconnect.
	ErrConnectionLost = errors.New("shadowclient: connection lost")
	// ErrRefused is wrapped by Dial when the server refuses the
	// credentials: a bad user name or password, or none where some are
	// needed (CONNACK "bad user name or password" or "not authorized").
	ErrRefused = errors.New("shadowclient: credentials refused")
)

// Config configures a Client. Zero values select the documented defaults.
type Config struct {
	// Server is the broker URL: tcp://host:port (mqtt:// too), ssl://,
	// ws://host:port/mqtt or wss://. Default DefaultServer. A tcp or ssl URL
	// without a port gets 1883 or 8883.
	Server string
	// ClientID is the MQTT client ID; it must be a valid device.ID, which
	// the broker requires. Default ClientIDPrefix plus random hex.
	ClientID string
	// Username and Password are sent on CONNECT when Username is set.
	Username, Password string
	// Timeout bounds connecting, and each request or subscription. Default
	// DefaultTimeout.
	Timeout time.Duration
	// Logger receives debug logs; nil discards.
	Logger *slog.Logger
	// TLSConfig, if set, is used for ssl and wss servers (e.g. RootCAs for a
	// private CA); nil means the system's roots.
	TLSConfig *tls.Config
}

func (c *Config) setDefaults() error {
	if c.Server == "" {
		c.Server = DefaultServer
	}
	if c.ClientID == "" {
		c.ClientID = ClientIDPrefix + randomHex(6)
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Timeout < 0 {
		return fmt.Errorf("%w: negative Timeout %s", ErrInvalidConfig, c.Timeout)
	}
	if _, err := device.ParseID(c.ClientID); err != nil {
		return fmt.Errorf("%w: client ID: %w", ErrInvalidConfig, err)
	}
	server, err := normalizeServer(c.Server)
	if err != nil {
		return fmt.Errorf("%w: server %q: %w", ErrInvalidConfig, c.Server, err)
	}
	c.Server = server
	return nil
}

// ParseServer checks a broker URL as Config.Server and returns it with the
// default port added where the scheme has one.
func ParseServer(s string) (string, error) { return normalizeServer(s) }

// normalizeServer checks a broker URL and adds the default port where the
// scheme has one.
func normalizeServer(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil {
		return "", err
	}
	var port string
	switch u.Scheme {
	case "tcp", "mqtt":
		port = "1883"
	case "ssl", "tls", "mqtts":
		port = "8883"
	case "ws", "wss":
	default:
		return "", fmt.Errorf("scheme %q: want tcp, mqtt, ssl, tls, mqtts, ws or wss", u.Scheme)
	}
	if u.Hostname() == "" {
		return "", errors.New("no host")
	}
	if port != "" && u.Port() == "" {
		u.Host = net.JoinHostPort(u.Hostname(), port)
	}
	return u.String(), nil
}

// Client is a connection to an Umbra broker. It is safe for concurrent use.
type Client struct {
	cfg Config
	log *slog.Logger
	pc  paho.Client

	// Lock order: subMu before mu.
	subMu sync.Mutex // guards subs, and orders (un)subscribe packets
	subs  map[string]*subscription

	mu       sync.Mutex // guards pending, watchers and deadErr
	pending  map[pendingKey]chan response
	watchers map[*watcher]struct{}
	deadErr  error         // why dead was closed
	dead     chan struct{} // closed by Close or on connection loss
}

// pendingKey identifies a request awaiting its answer.
type pendingKey struct {
	id    device.ID
	name  shadow.Name // "" for the classic shadow
	op    shadow.Op
	token string
}

// hold is one reference on a subscription.
type hold struct {
	filter string
	sub    *subscription
}

// subscription is one filter the Client is subscribed to.
type subscription struct {
	refs  int
	ready chan struct{} // closed once the SUBACK (or a failure) arrived
	err   error         // set before ready is closed
}

// Dial connects to cfg.Server and returns a Client. It fails with a clear
// error when the server is unreachable or refuses the connection.
func Dial(ctx context.Context, cfg Config) (*Client, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	c := &Client{
		cfg:      cfg,
		log:      cfg.Logger.With(logKeyComponent, "shadowclient", "server", cfg.Server, "client", cfg.ClientID),
		pending:  make(map[pendingKey]chan response),
		subs:     make(map[string]*subscription),
		watchers: make(map[*watcher]struct{}),
		dead:     make(chan struct{}),
	}
	connectTimeout := cfg.Timeout
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < connectTimeout {
		connectTimeout = max(time.Until(dl), time.Millisecond)
	}
	opts := paho.NewClientOptions().SetStore(pahostore.New()).
		AddBroker(cfg.Server).
		SetClientID(cfg.ClientID).
		SetCleanSession(true).
		SetProtocolVersion(4).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetConnectTimeout(connectTimeout).
		SetWriteTimeout(cfg.Timeout).
		SetKeepAlive(keepAlive).
		SetPingTimeout(cfg.Timeout).
		SetOrderMatters(true). // handlers never block; Watch needs arrival order
		SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) { c.dispatch(m.Topic(), m.Payload()) }).
		SetConnectionLostHandler(func(_ paho.Client, err error) {
			c.log.Debug("connection lost", "err", err)
			c.die(fmt.Errorf("%w: %w", ErrConnectionLost, err))
		})
	if cfg.Username != "" {
		opts.SetUsername(cfg.Username).SetPassword(cfg.Password)
	}
	if cfg.TLSConfig != nil {
		opts.SetTLSConfig(cfg.TLSConfig)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("connect to %s: %w", cfg.Server, err)
	}
	c.pc = paho.NewClient(opts)
	tok := c.pc.Connect()
	select {
	case <-tok.Done():
	case <-ctx.Done():
		// paho finishes the attempt in the background, within connectTimeout.
		c.pc.Disconnect(0)
		return nil, fmt.Errorf("connect to %s: %w", cfg.Server, ctx.Err())
	}
	if err := tok.Error(); err != nil {
		return nil, fmt.Errorf("connect to %s: %w", cfg.Server, connectCause(err))
	}
	c.log.Debug("connected")
	return c, nil
}

// connectCause digs the useful part out of paho's connect error: the
// system error ("connection refused") or the broker's refusal, which
// wraps ErrRefused.
func connectCause(err error) error {
	if errors.Is(err, packets.ErrorRefusedNotAuthorised) || errors.Is(err, packets.ErrorRefusedBadUsernameOrPassword) {
		return fmt.Errorf("%w: %w", ErrRefused, err)
	}
	if errno, ok := errors.AsType[syscall.Errno](err); ok {
		return errno
	}
	if dnsErr, ok := errors.AsType[*net.DNSError](err); ok {
		return dnsErr
	}
	if opErr, ok := errors.AsType[*net.OpError](err); ok && opErr.Timeout() {
		return fmt.Errorf("timed out: %w", opErr)
	}
	return err
}

// Close disconnects. Requests and watches in progress return ErrClosed. It
// is idempotent.
func (c *Client) Close() {
	if c.die(ErrClosed) {
		c.pc.Disconnect(disconnectGrace)
	}
}

// die records why the Client stopped and wakes everything waiting on it.
// It reports whether this call was the first.
func (c *Client) die(err error) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.deadErr != nil {
		return false
	}
	c.deadErr = err
	close(c.dead)
	return true
}

// err returns why the Client stopped, or nil while it runs.
func (c *Client) err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.deadErr
}

// Get returns the classic shadow of id: the get/accepted JSON.
func (c *Client) Get(ctx context.Context, id device.ID) ([]byte, error) {
	return c.GetNamed(ctx, id, "")
}

// Delete deletes the classic shadow of id and returns the delete/accepted
// JSON.
func (c *Client) Delete(ctx context.Context, id device.ID) ([]byte, error) {
	return c.DeleteNamed(ctx, id, "")
}

// Update sends body, an update request exactly as a device would publish it
// ({"state":{…},"version":N,"clientToken":"…"}), to the classic shadow of
// id and returns the update/accepted JSON. A body without a clientToken
// gets a random one. The body must be a JSON object, else the error wraps
// ErrInvalidRequest and nothing is sent; the rest is validated by the
// server.
func (c *Client) Update(ctx context.Context, id device.ID, body []byte) ([]byte, error) {
	return c.UpdateNamed(ctx, id, "", body)
}

// GetNamed is Get for the shadow name of id ("" is the classic shadow),
// over state/<id>/shadow/<name>/get. An invalid name is an error wrapping
// ErrInvalidRequest, and nothing is sent.
func (c *Client) GetNamed(ctx context.Context, id device.ID, name shadow.Name) ([]byte, error) {
	tok := newToken()
	return c.request(ctx, id, name, shadow.OpGet, tok, tokenPayload(tok))
}

// DeleteNamed is Delete for the shadow name of id ("" is the classic
// shadow).
func (c *Client) DeleteNamed(ctx context.Context, id device.ID, name shadow.Name) ([]byte, error) {
	tok := newToken()
	return c.request(ctx, id, name, shadow.OpDelete, tok, tokenPayload(tok))
}

// UpdateNamed is Update for the shadow name of id ("" is the classic
// shadow).
func (c *Client) UpdateNamed(ctx context.Context, id device.ID, name shadow.Name, body []byte) ([]byte, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(body, &top); err != nil || top == nil {
		return nil, fmt.Errorf("update %s: %w: body is not a JSON object", id, ErrInvalidRequest)
	}
	var tok string
	if raw, ok := top["clientToken"]; ok {
		if err := json.Unmarshal(raw, &tok); err != nil || tok == "" || len(tok) > shadow.MaxClientTokenLen {
			return nil, fmt.Errorf("update %s: %w: clientToken must be a string of 1 to %d bytes", id, ErrInvalidRequest, shadow.MaxClientTokenLen)
		}
	} else {
		tok = newToken()
		top["clientToken"], _ = json.Marshal(tok)
		body, _ = json.Marshal(top)
	}
	return c.request(ctx, id, name, shadow.OpUpdate, tok, body)
}

// request publishes payload on state/<id>/<op> (or
// state/<id>/shadow/<name>/<op>) and waits for the answer carrying tok.
func (c *Client) request(ctx context.Context, id device.ID, name shadow.Name, op shadow.Op, tok string, payload []byte) ([]byte, error) {
	if _, err := device.ParseID(string(id)); err != nil {
		return nil, fmt.Errorf("%s %s: %w: %w", op, id, ErrInvalidRequest, err)
	}
	if name != "" {
		if _, err := shadow.ParseName(string(name)); err != nil {
			return nil, fmt.Errorf("%s %s: %w: %w", op, id, ErrInvalidRequest, err)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	fail := func(err error) ([]byte, error) {
		if errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("no answer within %s: %w", c.cfg.Timeout, err)
		}
		return nil, fmt.Errorf("%s %s: %w", op, id, err)
	}
	// The response subscriptions are kept for later requests on id.
	if _, err := c.subscribe(ctx, shadow.TreeState.Topic(id, name, string(op)+"/accepted"), shadow.TreeState.Topic(id, name, string(op)+"/rejected")); err != nil {
		return fail(err)
	}
	key := pendingKey{id, name, op, tok}
	answer := make(chan response, 1)
	c.mu.Lock()
	if _, dup := c.pending[key]; dup {
		c.mu.Unlock()
		return fail(fmt.Errorf("%w: clientToken %q is already in use", ErrInvalidRequest, tok))
	}
	c.pending[key] = answer
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.pending, key)
		c.mu.Unlock()
	}()

	if err := c.wait(ctx, c.pc.Publish(shadow.TreeState.Topic(id, name, string(op)), qos, false, payload)); err != nil {
		return fail(fmt.Errorf("publish: %w", err))
	}
	select {
	case r := <-answer:
		return r.result(op, id)
	case <-ctx.Done():
		return fail(ctx.Err())
	case <-c.dead:
		return fail(c.err())
	}
}

// response is an accepted or rejected message for a pending request.
type response struct {
	rejected bool
	payload  []byte
}

// rejection is the JSON of a rejected message.
type rejection struct {
	Code        int    `json:"code"`
	Message     string `json:"message"`
	ClientToken string `json:"clientToken"`
}

// result turns a response into the return values of a request: the payload
// of an accepted message, or a *shadow.RequestError for a rejected one.
func (r response) result(op shadow.Op, id device.ID) ([]byte, error) {
	if !r.rejected {
		return r.payload, nil
	}
	var rej rejection
	if err := json.Unmarshal(r.payload, &rej); err != nil || rej.Code == 0 {
		rej.Code, rej.Message = shadow.CodeOf(shadow.ErrInternal), "Malformed rejected message: "+clip(string(r.payload))
	}
	return nil, fmt.Errorf("%s %s: %w", op, id, &shadow.RequestError{
		Code: rej.Code, Message: rej.Message, ClientToken: rej.ClientToken, Err: sentinelFor(rej.Code),
	})
}

// clip shortens s for an error message.
func clip(s string) string {
	const n = 200
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// sentinelFor maps a wire code back to the shadow sentinel it stands for.
func sentinelFor(code int) error {
	for _, s := range []error{shadow.ErrInvalid, shadow.ErrNotFound, shadow.ErrVersionConflict,
		shadow.ErrTooLarge, shadow.ErrRateLimited, shadow.ErrClosed} {
		if shadow.CodeOf(s) == code {
			return s
		}
	}
	return shadow.ErrInternal
}

// wait waits for a paho token, ctx or the Client's end.
func (c *Client) wait(ctx context.Context, t paho.Token) error {
	select {
	case <-t.Done():
		return t.Error()
	case <-ctx.Done():
		return ctx.Err()
	case <-c.dead:
		return c.err()
	}
}

// subscribe makes sure the Client is subscribed to every filter, sharing
// subscriptions already made or in progress, and returns a reference on
// each for release. On error it holds no reference.
func (c *Client) subscribe(ctx context.Context, filters ...string) ([]hold, error) {
	if err := c.err(); err != nil {
		return nil, err
	}
	var fresh []string
	holds := make([]hold, 0, len(filters))
	c.subMu.Lock()
	for _, f := range filters {
		s, ok := c.subs[f]
		if ok {
			s.refs++
		} else {
			s = &subscription{refs: 1, ready: make(chan struct{})}
			c.subs[f] = s
			fresh = append(fresh, f)
		}
		holds = append(holds, hold{f, s})
	}
	var t paho.Token
	if len(fresh) > 0 {
		m := make(map[string]byte, len(fresh))
		for _, f := range fresh {
			m[f] = qos
		}
		// Queued under subMu, so SUBSCRIBE and UNSUBSCRIBE packets go out
		// in the order subs changed.
		t = c.pc.SubscribeMultiple(m, nil) // nil callback: messages go to dispatch
	}
	c.subMu.Unlock()

	if t != nil {
		err := c.subscribed(ctx, t, fresh)
		c.subMu.Lock()
		for _, f := range fresh {
			s := c.subs[f]
			s.err = err
			if err != nil {
				delete(c.subs, f) // a later call tries again
			}
			close(s.ready)
		}
		c.subMu.Unlock()
	}
	for _, h := range holds {
		select {
		case <-h.sub.ready:
			if h.sub.err != nil {
				c.release(holds)
				return nil, h.sub.err
			}
		case <-ctx.Done():
			c.release(holds)
			return nil, ctx.Err()
		}
	}
	return holds, nil
}

// subscribed waits for the SUBACK of a subscription to filters.
func (c *Client) subscribed(ctx context.Context, t paho.Token, filters []string) error {
	if err := c.wait(ctx, t); err != nil {
		return fmt.Errorf("subscribe: %w", err)
	}
	if st, ok := t.(*paho.SubscribeToken); ok {
		for f, code := range st.Result() {
			if code >= 0x80 {
				return fmt.Errorf("subscribe %s: refused by the server", f)
			}
		}
	}
	c.log.Debug("subscribed", "filters", filters)
	return nil
}

// release drops references taken by subscribe, unsubscribing from filters
// no longer used. A failed subscription, already removed, is skipped.
func (c *Client) release(holds []hold) {
	var drop []string
	var t paho.Token
	c.subMu.Lock()
	for _, h := range holds {
		if c.subs[h.filter] != h.sub {
			continue
		}
		if h.sub.refs--; h.sub.refs == 0 {
			delete(c.subs, h.filter)
			drop = append(drop, h.filter)
		}
	}
	if len(drop) > 0 && c.err() == nil {
		t = c.pc.Unsubscribe(drop...)
	}
	c.subMu.Unlock()
	if t == nil {
		return
	}
	// Bounded, best effort: the server drops subscriptions on disconnect anyway.
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.Timeout)
	defer cancel()
	if err := c.wait(ctx, t); err != nil {
		c.log.Debug("unsubscribe failed", "filters", drop, "err", err)
	}
}

// dispatch routes an incoming message to the request waiting for it and to
// every matching watcher. It runs on paho's router goroutine and never
// blocks.
func (c *Client) dispatch(topic string, payload []byte) {
	parts := strings.Split(topic, "/")
	var id device.ID
	var name shadow.Name
	var op shadow.Op
	var kind string
	switch {
	case len(parts) == 4 && parts[0] == "state": // state/<id>/<op>/<kind>
		id, op, kind = device.ID(parts[1]), shadow.Op(parts[2]), parts[3]
	case len(parts) == 6 && parts[0] == "state" && parts[2] == "shadow" && parts[3] != "": // state/<id>/shadow/<name>/<op>/<kind>
		id, name, op, kind = device.ID(parts[1]), shadow.Name(parts[3]), shadow.Op(parts[4]), parts[5]
	default:
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if kind == "accepted" || kind == "rejected" {
		var tok struct {
			ClientToken string `json:"clientToken"`
		}
		if json.Unmarshal(payload, &tok) == nil {
			if ch, ok := c.pending[pendingKey{id, name, op, tok.ClientToken}]; ok {
				select {
				case ch <- response{rejected: kind == "rejected", payload: payload}:
				default: // a duplicate answer
				}
			}
		}
	}
	if op != shadow.OpUpdate {
		return
	}
	for w := range c.watchers {
		w.offer(Event{Device: id, Name: name, Kind: kind, Topic: topic, Payload: json.RawMessage(payload)})
	}
}

func tokenPayload(tok string) []byte {
	b, _ := json.Marshal(struct {
		ClientToken string `json:"clientToken"`
	}{tok})
	return b
}

// newToken returns a random clientToken.
func newToken() string { return "cli-" + randomHex(8) }

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails
	return hex.EncodeToString(b)
}
