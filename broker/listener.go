package broker

import (
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

// listener is a mochi listeners.Listener for TCP, TLS or WebSocket that,
// unlike mochi's own listeners, is bound before it is handed to mochi (so
// Open fails fast and Addr knows the port), gives a new connection
// ConnectTimeout to complete its TLS handshake and send CONNECT, and owns
// its goroutines: Close returns only when the accept loop and every
// connection have finished, so mochi's ClientsWg.Add (made on connection
// goroutines) never races the ClientsWg.Wait that follows; done is closed
// under mu, and the accept loop only receives from it.
type listener struct {
	id             string
	protocol       string
	ln             net.Listener
	connectTimeout time.Duration
	tlsConfig      *tls.Config         // TLS only
	httpSrv        *http.Server        // WebSocket only
	upgrader       *websocket.Upgrader // WebSocket only
	log            *slog.Logger        // set by Init
	establish      listeners.EstablishFn
	ended          func(*conn)   // called when a connection's client is gone; set before Serve
	out            *outShared    // what the listener's connections share; set before Serve
	done           chan struct{} // closed by Close

	tlsFailures atomic.Int64 // failed TLS handshakes, since Open

	mu     sync.Mutex            // guards conns and closed
	conns  map[*outConn]struct{} // open connections (for WebSocket: those upgraded)
	closed bool

	wg sync.WaitGroup // Serve and every connection; Add only under mu while !closed
}

var _ listeners.Listener = (*listener)(nil)

func newListener(id, protocol string, ln net.Listener, connectTimeout time.Duration) *listener {
	return &listener{
		id:             id,
		protocol:       protocol,
		ln:             ln,
		connectTimeout: connectTimeout,
		log:            slog.New(slog.DiscardHandler),
		done:           make(chan struct{}),
		conns:          make(map[*outConn]struct{}),
	}
}

// newTCPListener serves MQTT over TCP on ln.
func newTCPListener(id string, ln net.Listener, connectTimeout time.Duration) *listener {
	return newListener(id, "tcp", ln, connectTimeout)
}

// newTLSListener serves MQTT over TLS on ln with config, which the caller
// must not modify afterwards.
func newTLSListener(id string, ln net.Listener, connectTimeout time.Duration, config *tls.Config) *listener {
	l := newListener(id, "tls", ln, connectTimeout)
	l.tlsConfig = config
	return l
}

// newWSListener serves MQTT over WebSocket on ln, at the paths "/mqtt"
// and "/", to clients without an Origin header and to browser pages of the
// same host or of allowedOrigins (see wsOriginChecker).
func newWSListener(id string, ln net.Listener, connectTimeout time.Duration, allowedOrigins []string) *listener {
	l := newListener(id, "ws", ln, connectTimeout)
	l.upgrader = &websocket.Upgrader{
		HandshakeTimeout: connectTimeout,
		ReadBufferSize:   1024,
		WriteBufferSize:  1024,
		WriteBufferPool:  &sync.Pool{}, // no write buffer held by idle connections
		Subprotocols:     []string{"mqtt"},
		// Access control happens in CONNECT, but with authentication off
		// any page the user visits could use the broker from the browser.
		CheckOrigin: wsOriginChecker(allowedOrigins),
		Error:       wsError,
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/mqtt", l.serveWS)
	mux.HandleFunc("/{$}", l.serveWS)
	mux.HandleFunc("/", wsNotFound)
	l.httpSrv = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: connectTimeout,
		MaxHeaderBytes:    8 << 10,
	}
	return l
}

// ID implements listeners.Listener.
func (l *listener) ID() string { return l.id }

// Address implements listeners.Listener.
func (l *listener) Address() string { return l.ln.Addr().String() }

// Protocol implements listeners.Listener.
func (l *listener) Protocol() string { return l.protocol }

// Init implements listeners.Listener. The socket is already bound.
func (l *listener) Init(log *slog.Logger) error {
	l.log = log
	if l.httpSrv != nil {
		l.httpSrv.ErrorLog = slog.NewLogLogger(log.Handler(), slog.LevelDebug)
	}
	return nil
}

// add registers c (nil for the Serve loop itself) as running; it returns
// false once the listener is closed.
func (l *listener) add(c *outConn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	l.wg.Add(1)
	if c != nil {
		l.conns[c] = struct{}{}
	}
	return true
}

// remove closes c, waits for its writer (see outConn) and marks it
// finished.
func (l *listener) remove(c *outConn) {
	c.finish()
	l.mu.Lock()
	delete(l.conns, c)
	l.mu.Unlock()
	l.wg.Done()
}

// Serve implements listeners.Listener. mochi runs it on its own goroutine;
// Close waits for it.
func (l *listener) Serve(establish listeners.EstablishFn) {
	if !l.add(nil) {
		return
	}
	defer l.wg.Done()
	l.establish = establish
	if l.httpSrv != nil {
		if err := l.httpSrv.Serve(outListener{l.ln, l.out}); err != nil && !errors.Is(err, http.ErrServerClosed) && !l.isClosed() {
			l.log.Error("websocket listener failed", "error", err)
		}
		return
	}
	var backoff time.Duration
	for {
		c, err := l.ln.Accept()
		if err != nil {
			if l.isClosed() || errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors or similar: back off as net/http does.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			l.log.Warn("accept failed", "error", err, "retry_in", backoff)
			select {
			case <-l.done:
				return
			case <-time.After(backoff):
			}
			continue
		}
		backoff = 0
		o := newOutConn(c, l.out)
		if !l.add(o) {
			_ = c.Close()
			return
		}
		go func() {
			defer l.remove(o)
			l.serveConn(o, o)
		}()
	}
}

// serveWS upgrades an HTTP request to a WebSocket carrying MQTT.
func (l *listener) serveWS(w http.ResponseWriter, r *http.Request) {
	ws, err := l.upgrader.Upgrade(w, r, nil)
	if err != nil {
		return // the upgrader has replied with an HTTP error
	}
	o, ok := ws.NetConn().(*outConn) // accepted through outListener
	if !ok {
		l.log.Error("websocket connection without an outbound buffer", "remote", r.RemoteAddr)
		_ = ws.NetConn().Close()
		return
	}
	if !l.add(o) {
		_ = o.Close()
		return
	}
	defer l.remove(o)
	l.serveConn(&wsConn{Conn: o, ws: ws}, o)
}

// serveConn completes the TLS handshake, if any, and hands c to mochi,
// which reads CONNECT and then serves the client until the connection
// ends. o is the accepted connection under c (c itself for TCP).
func (l *listener) serveConn(c net.Conn, o *outConn) {
	// The deadline covers the TLS handshake and CONNECT; mochi replaces it
	// with the keepalive one after CONNECT. Writes have no deadline: they
	// never block (see outConn).
	_ = o.setExactDeadline(time.Now().Add(l.connectTimeout))
	mc := &conn{Conn: c, out: o, done: make(chan struct{})}
	defer close(mc.done)
	if l.tlsConfig != nil {
		tc := tls.Server(c, l.tlsConfig)
		if err := tc.Handshake(); err != nil {
			l.tlsFailures.Add(1)
			l.log.Debug("tls handshake failed", "remote", c.RemoteAddr().String(), "error", err)
			return
		}
		st := tc.ConnectionState()
		mc.Conn, mc.tls = tc, &st
	}
	err := l.establish(l.id, mc)
	mc.release() // mochi has finished tearing the client down
	if l.ended != nil {
		l.ended(mc)
	}
	if err != nil {
		l.log.Debug("connection ended", "remote", c.RemoteAddr().String(), "error", err)
	}
}

func (l *listener) isClosed() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.closed
}

// Close implements listeners.Listener: it stops accepting, lets mochi send
// DISCONNECT to connected clients (closeClients), closes every remaining
// connection, including those that have not sent CONNECT, and waits for
// all of the listener's goroutines. It is idempotent.
func (l *listener) Close(closeClients listeners.CloseFn) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	l.closed = true
	close(l.done)
	l.mu.Unlock()

	if l.httpSrv != nil {
		_ = l.httpSrv.Close() // closes the listener and connections not yet upgraded
	}
	_ = l.ln.Close()
	// mochi's closeClients (closeListenerClients) is deliberately not
	// called: its Clients.GetByListener takes the registry's read lock and
	// then read-locks it again in Len; when a disconnecting client's
	// Clients.Delete is waiting for the write lock in between, Go's RWMutex
	// deadlocks (seen as a hung Close in the simulator tests). Closing the
	// connections we track ends every client's read loop just as well; the
	// only loss is MQTT 5's "server shutting down" DISCONNECT reason.
	l.mu.Lock()
	conns := make([]*outConn, 0, len(l.conns))
	for c := range l.conns {
		conns = append(conns, c)
	}
	l.mu.Unlock()
	for _, c := range conns {
		c.abort() // no lingering backlog at shutdown
	}
	l.wg.Wait()
}

// conn is a connection as handed to mochi (mochi's Client.Net.Conn): the
// transport plus what the broker learns about the connection. Fields other
// than Conn are set and read only on the connection's goroutine (mochi runs
// the connect and disconnect hooks there), except those documented
// otherwise below.
type conn struct {
	net.Conn                      // TCP, TLS or WebSocket, over out
	out      *outConn             // the accepted connection; nil in some tests
	tls      *tls.ConnectionState // state after the TLS handshake; nil without TLS
	identity Identity             // set by the authentication hook
	seq      uint64               // connection sequence; set when the session is established
	unlock   func()               // releases the client ID's gate; nil while not held
	counted  string               // identity name counted against MaxConnsPerIdentity; "" if none

	// done is closed when the listener has finished with the connection:
	// mochi has torn the client down and every hook has run. A connection
	// taking over the client ID waits for it (hook.lockAfterPrevious).
	done chan struct{}

	// service is set at authentication, before mochi registers the client,
	// and only read afterwards (also by publishers' goroutines): the
	// client is not a device and gets the service queue and inflight sizes.
	service bool
	// subscribing is true while mochi checks a SUBSCRIBE's filters.
	subscribing atomic.Bool
	// emptyPassword is set when CONNECT had the password flag and an
	// empty password (see connack.go).
	emptyPassword bool
	// refused are the filters of the SUBSCRIBE being handled that are over
	// the subscription cap; refusedLogged is set once they were logged.
	refused       []refusal
	refusedLogged bool
	// deniedFilters are the filters of the SUBSCRIBE being handled that
	// Config.Auth denies; denials records which denials were logged (see
	// deny.go). Both are used by the client's goroutine only.
	deniedFilters []string
	denials       denials
	// refusal is the CONNACK reason an MQTT 5 client gets when the
	// authentication hook refuses it for something else than its
	// credentials (see fixAck); nil for "bad user name or password".
	refusal *packets.Code
	// rate is the client's message-rate bucket, and rateRefused marks the
	// PUBLISH being handled as over it (see ratelimit.go); used by the
	// client's goroutine only.
	rate        bucket
	rateRefused bool
	// sess is the connection's authenticated session while it is the one
	// registered for its client ID (hook.sessions), nil before and after;
	// stored under the hook's mu, read without it (see authAllows).
	sess atomic.Pointer[session]
	// allowedTopic is the topic Config.Auth last allowed the client to
	// publish to, and allowedEpoch the Authenticator's AllowEpoch before
	// it answered (see publishAllowed); used by the client's goroutine
	// only.
	allowedTopic string
	allowedEpoch uint64
}

// ReadPackets implements mochi's PacketReader (umbra patch 20): a plain
// TCP connection's packets are read by one of the server's read loops (see
// ioLoops); TLS and WebSocket connections keep their goroutine.
func (c *conn) ReadPackets(cl *mqtt.Client, buffered []byte, handle mqtt.ReadFn) (bool, error) {
	if c.out == nil || c.Conn != net.Conn(c.out) || c.out.sh.loops == nil {
		return false, nil
	}
	return c.out.readPackets(c.out.sh.loops, cl, buffered, handle)
}

// ended reports whether the listener has finished with c. A conn without
// done (made by a test) counts as ended.
func (c *conn) ended() bool {
	if c.done == nil {
		return true
	}
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// wsConn presents a WebSocket as the byte stream mochi reads MQTT from.
// Deadlines and addresses are those of the underlying connection.
type wsConn struct {
	net.Conn                 // the underlying connection
	ws       *websocket.Conn // framing on top of Conn
	r        io.Reader       // current message; nil between messages
}

// errTextFrame is returned for a text frame: MQTT over WebSocket must use
// binary frames.
var errTextFrame = errors.New("broker: websocket text frame")

// Read reads from the current binary message, moving to the next one at
// the end of each.
func (c *wsConn) Read(p []byte) (int, error) {
	for {
		if c.r == nil {
			op, r, err := c.ws.NextReader()
			if err != nil {
				return 0, err
			}
			if op != websocket.BinaryMessage {
				return 0, errTextFrame
			}
			c.r = r
		}
		n, err := c.r.Read(p)
		if errors.Is(err, io.EOF) {
			c.r = nil
			err = nil
		}
		if n > 0 || err != nil {
			return n, err
		}
	}
}

// Write sends p as one binary message. mochi writes one or more whole
// packets per call.
func (c *wsConn) Write(p []byte) (int, error) {
	if err := c.ws.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}
