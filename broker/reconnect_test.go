package broker_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/internal/brokertest"
)

// quickConn is a raw MQTT 3.1.1 connection usable from any goroutine: its
// methods return errors instead of failing the test.
type quickConn struct {
	c net.Conn
	r *bufio.Reader
}

// dialQuick connects to addr as clientID with a clean session, subscribes
// to filter and waits for SUBACK.
func dialQuick(addr net.Addr, clientID, filter string) (*quickConn, error) {
	c, err := net.DialTimeout("tcp", addr.String(), wait)
	if err != nil {
		return nil, err
	}
	q := &quickConn{c: c, r: bufio.NewReader(c)}
	_ = c.SetDeadline(time.Now().Add(wait))
	if _, err := c.Write(connectPacket(v311, clientID, true, 30)); err != nil {
		c.Close()
		return nil, fmt.Errorf("write CONNECT: %w", err)
	}
	if err := q.expect(typeConnack); err != nil {
		c.Close()
		return nil, err
	}
	if _, err := c.Write(subscribePacket(v311, 1, filter, 0)); err != nil {
		c.Close()
		return nil, fmt.Errorf("write SUBSCRIBE: %w", err)
	}
	if err := q.expect(typeSuback); err != nil {
		c.Close()
		return nil, err
	}
	return q, nil
}

func (q *quickConn) expect(typ byte) error {
	p, err := readPacket(q.r)
	if err != nil {
		return fmt.Errorf("read packet type %d: %w", typ, err)
	}
	if p.typ != typ {
		return fmt.Errorf("got packet %v, want type %d", p, typ)
	}
	return nil
}

// awaitPublish reads until a PUBLISH with payload arrives or timeout passes.
func (q *quickConn) awaitPublish(payload []byte, timeout time.Duration) error {
	_ = q.c.SetReadDeadline(time.Now().Add(timeout))
	for {
		p, err := readPacket(q.r)
		if err != nil {
			return fmt.Errorf("no PUBLISH %q within %v: %w", payload, timeout, err)
		}
		if p.typ != typePublish {
			continue
		}
		if _, _, got := parsePublish(v311, p); bytes.Equal(got, payload) {
			return nil
		}
	}
}

// presence is what a consumer of OnConnect/OnDisconnect keeps per client:
// the newest connection, ignoring stale disconnects by sequence number.
type presence struct {
	mu       sync.Mutex            // guards state, seen, dup and overlaps
	state    map[string]presenceAt // by client ID
	seen     map[uint64]bool       // sequences connected, to check uniqueness
	dup      []uint64              // sequences reported twice by OnConnect
	overlaps []string              // client IDs whose callbacks overlapped

	active sync.Map // client ID → struct{} while one of its callbacks runs
}

type presenceAt struct {
	seq       uint64
	connected bool
}

func newPresence(cfg *broker.Config) *presence {
	p := &presence{state: make(map[string]presenceAt), seen: make(map[uint64]bool)}
	cfg.OnConnect = func(ci broker.ConnInfo) {
		defer p.enter(ci.ClientID)()
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.seen[ci.Seq] {
			p.dup = append(p.dup, ci.Seq)
		}
		p.seen[ci.Seq] = true
		if cur, ok := p.state[ci.ClientID]; !ok || ci.Seq > cur.seq {
			p.state[ci.ClientID] = presenceAt{seq: ci.Seq, connected: true}
		}
	}
	cfg.OnDisconnect = func(ci broker.ConnInfo, _ error) {
		defer p.enter(ci.ClientID)()
		p.mu.Lock()
		defer p.mu.Unlock()
		if cur, ok := p.state[ci.ClientID]; !ok || ci.Seq >= cur.seq {
			p.state[ci.ClientID] = presenceAt{seq: ci.Seq, connected: false}
		}
	}
	return p
}

// enter records that a callback for id started, noting an overlap with
// another callback for id, and returns the function recording its end.
func (p *presence) enter(id string) (exit func()) {
	if _, busy := p.active.LoadOrStore(id, struct{}{}); busy {
		p.mu.Lock()
		p.overlaps = append(p.overlaps, id)
		p.mu.Unlock()
		return func() {}
	}
	runtime.Gosched() // widen the window in which an overlap would show
	return func() { p.active.Delete(id) }
}

func (p *presence) get(id string) presenceAt {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.state[id]
}

// TestQuickReconnect reproduces the reconnect race: mochi's cleanup of a
// clean session's old connection (attachClient, after OnDisconnect)
// removes the client ID from the registry and unsubscribes its filters; if
// it runs after the new connection with the same ID registered, the new
// connection stays open but receives nothing. Every device reconnects
// repeatedly, alternately dropping its connection and taking it over
// while still open, and must receive a message on its own topic each time.
// Presence built from OnConnect/OnDisconnect with ConnInfo.Seq must end
// with every device connected on its last connection.
func TestQuickReconnect(t *testing.T) {
	const (
		devices = 32
		rounds  = 12
	)
	var cfg broker.Config
	pres := newPresence(&cfg)
	b := brokertest.New(t, cfg)

	deadline := time.Now().Add(60 * time.Second) // bounds the whole loop
	errs := make(chan error, devices)
	var wg sync.WaitGroup
	for d := range devices {
		wg.Go(func() {
			last, err := reconnectLoop(b, fmt.Sprintf("quick-%d", d), rounds, deadline)
			if last != nil {
				t.Cleanup(func() { last.c.Close() })
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if t.Failed() {
		return
	}

	for d := range devices {
		id := fmt.Sprintf("quick-%d", d)
		if got := pres.get(id); !got.connected {
			t.Errorf("presence of %s: got disconnected (seq %d), want connected", id, got.seq)
		}
	}
	pres.mu.Lock()
	defer pres.mu.Unlock()
	if len(pres.overlaps) > 0 {
		t.Errorf("callbacks overlapping for one client ID: got %v, want none", pres.overlaps)
	}
	if len(pres.dup) > 0 {
		t.Errorf("OnConnect sequences reported twice: %v, want none", pres.dup)
	}
	if got, want := len(pres.seen), devices*rounds; got != want {
		t.Errorf("distinct OnConnect sequences: got %d, want %d", got, want)
	}
}

// reconnectLoop connects clientID rounds times, each time checking that a
// message published to its topic arrives. Odd rounds drop the previous
// connection first; even rounds leave it open to be taken over. It returns
// the last connection, still open.
func reconnectLoop(b *broker.Server, clientID string, rounds int, deadline time.Time) (last *quickConn, err error) {
	topic := "quick/" + clientID
	var prev *quickConn
	defer func() {
		if err != nil && prev != nil {
			prev.c.Close()
			prev = nil
		}
		last = prev
	}()
	for r := range rounds {
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%s: round %d: time limit reached", clientID, r)
		}
		if prev != nil && r%2 == 1 {
			prev.c.Close()
			prev = nil
		}
		// A short, varying gap between reconnects (the simulator's ~1 ms)
		// makes the old connection's cleanup overlap the new connection.
		time.Sleep(time.Duration(r%3) * 500 * time.Microsecond)
		q, err := dialQuick(b.Addr(), clientID, topic)
		if err != nil {
			return nil, fmt.Errorf("%s: round %d: %w", clientID, r, err)
		}
		if prev != nil {
			prev.c.Close()
		}
		prev = q
		payload := fmt.Appendf(nil, "%s/%d", clientID, r)
		if err := b.Publish(topic, payload, false, 0); err != nil {
			return nil, fmt.Errorf("%s: round %d: publish: %w", clientID, r, err)
		}
		if err := q.awaitPublish(payload, 2*time.Second); err != nil {
			return nil, fmt.Errorf("%s: round %d: new connection receives nothing: %w", clientID, r, err)
		}
	}
	return prev, nil
}

// TestConnInfoSeq checks the order and numbering of OnConnect and
// OnDisconnect when a client ID reconnects.
func TestConnInfoSeq(t *testing.T) {
	tests := []struct {
		name      string
		dropFirst bool // close the first connection before the second connects
		wantErr   error
	}{
		// The new connection waits until the old one it disconnects is
		// torn down, so OnDisconnect comes first in both cases.
		{"taken over", false, broker.ErrTakenOver},
		{"dropped then reconnected", true, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			type event struct {
				connect bool
				info    broker.ConnInfo
				err     error
			}
			events := make(chan event, 8)
			b := brokertest.New(t, broker.Config{
				OnConnect:    func(ci broker.ConnInfo) { events <- event{true, ci, nil} },
				OnDisconnect: func(ci broker.ConnInfo, err error) { events <- event{false, ci, err} },
			})
			first := dialRaw(t, b.Addr())
			first.connect(v311, "seq-1", true)
			c1 := recv(t, events, "first OnConnect")
			if tc.dropFirst {
				first.c.Close()
			}
			second := dialRaw(t, b.Addr())
			second.connect(v311, "seq-1", true)
			d1, c2 := recv(t, events, "event"), recv(t, events, "event")
			if !c1.connect || d1.connect || !c2.connect {
				t.Fatalf("events: got connect=%t, %t, %t; want OnConnect, OnDisconnect, OnConnect",
					c1.connect, d1.connect, c2.connect)
			}
			if c2.info.Seq <= c1.info.Seq {
				t.Errorf("Seq of the second connection: got %d, want above the first's %d", c2.info.Seq, c1.info.Seq)
			}
			if d1.info.Seq != c1.info.Seq || d1.info.RemoteAddr != c1.info.RemoteAddr {
				t.Errorf("OnDisconnect: got Seq %d from %s, want the first connection's Seq %d from %s",
					d1.info.Seq, d1.info.RemoteAddr, c1.info.Seq, c1.info.RemoteAddr)
			}
			if tc.wantErr != nil && !errors.Is(d1.err, tc.wantErr) {
				t.Errorf("OnDisconnect cause: got %v, want %v", d1.err, tc.wantErr)
			}
			if d1.info.At.Before(c1.info.At) {
				t.Errorf("OnDisconnect At %v before OnConnect At %v", d1.info.At, c1.info.At)
			}
		})
	}
}

// TestCloseDuringConnectStorm closes the broker while clients keep
// connecting over TCP and TLS. Under -race this checks that accepting a
// connection never races Close (mochi's ClientsWg.Add against its Wait,
// and its listeners' done flag), and that Close neither hangs nor leaves
// goroutines behind (TestMain's leak check).
func TestCloseDuringConnectStorm(t *testing.T) {
	const (
		workers   = 8
		perWorker = 200 // bounds each worker's loop
		closeMark = 40  // successful connects before Close
	)
	ca := brokertest.NewCA(t, "storm CA")
	b, err := broker.Open(t.Context(), broker.Config{
		TCPAddr:   "127.0.0.1:0",
		TLSAddr:   "127.0.0.1:0",
		TLSConfig: ca.ServerConfig(t, false),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close(context.Background())
	dialers := []func() (net.Conn, error){
		func() (net.Conn, error) { return net.DialTimeout("tcp", b.Addr().String(), wait) },
		func() (net.Conn, error) {
			d := &net.Dialer{Timeout: wait}
			return tls.DialWithDialer(d, "tcp", b.TLSAddr().String(), ca.ClientConfig())
		},
	}
	connected := make(chan struct{}, workers*perWorker)
	var wg sync.WaitGroup
	for w := range workers {
		dial := dialers[w%len(dialers)]
		wg.Go(func() {
			for i := range perWorker {
				c, err := dial()
				if err != nil {
					return // the broker closed
				}
				_ = c.SetDeadline(time.Now().Add(wait))
				_, err = c.Write(connectPacket(v311, fmt.Sprintf("storm-%d-%d", w, i%4), true, 30))
				if err == nil {
					_, err = readPacket(bufio.NewReader(c))
				}
				c.Close()
				if err != nil {
					return
				}
				connected <- struct{}{}
			}
		})
	}
	for range closeMark {
		recv(t, connected, "connect before Close")
	}
	start := time.Now()
	if err := b.Close(t.Context()); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if d := time.Since(start); d > wait {
		t.Errorf("Close during connects took %v, want under %v", d, wait)
	}
	wg.Wait()
	if _, err := net.DialTimeout("tcp", b.TLSAddr().String(), time.Second); err == nil {
		t.Errorf("dial TLS after Close: got nil error, want connection refused")
	}
}
