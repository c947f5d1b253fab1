package broker_test

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/internal/brokertest"
)

// clientHello returns the first TLS record a client with cfg sends: its
// ClientHello.
func clientHello(t *testing.T, cfg *tls.Config) []byte {
	t.Helper()
	cfg = cfg.Clone()
	cfg.ServerName = "localhost" // the handshake never gets as far as checking it
	cli, srv := net.Pipe()
	var wg sync.WaitGroup
	wg.Go(func() {
		_ = tls.Client(cli, cfg).Handshake() // fails once srv is closed
		cli.Close()
	})
	defer wg.Wait()
	defer srv.Close()
	_ = srv.SetDeadline(time.Now().Add(wait))
	hdr := make([]byte, 5)
	if _, err := io.ReadFull(srv, hdr); err != nil {
		t.Fatalf("read ClientHello header: %v", err)
	}
	body := make([]byte, int(hdr[3])<<8|int(hdr[4]))
	if _, err := io.ReadFull(srv, body); err != nil {
		t.Fatalf("read ClientHello: %v", err)
	}
	return append(hdr, body...)
}

// randomBytes returns n random bytes that cannot start a TLS handshake
// record (type 22).
func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	if b[0] == 22 {
		b[0] = 'G'
	}
	return b
}

// goroutinesIn counts the goroutines whose stack contains any of fns.
func goroutinesIn(fns ...string) int {
	buf := make([]byte, 4<<20)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for g := range strings.SplitSeq(string(buf), "\n\n") {
		for _, fn := range fns {
			if strings.Contains(g, fn) {
				n++
				break
			}
		}
	}
	return n
}

// closedByServer reads from c until the server closes it and reports
// whether it did before the deadline: a read that times out means the
// connection is still open.
func closedByServer(c net.Conn, deadline time.Time) error {
	_ = c.SetReadDeadline(deadline)
	buf := make([]byte, 4096)
	for {
		_, err := c.Read(buf)
		var ne net.Error
		switch {
		case errors.As(err, &ne) && ne.Timeout():
			return err
		case err != nil:
			return nil // EOF or reset: closed by the server
		}
	}
}

// TestTLSPlainClients: a client that speaks plain MQTT to the TLS port is
// closed at once (not after ConnectTimeout) and counted as a failed
// handshake, without a CONNACK or an authentication; a TLS client on the
// plain TCP port is refused too. Both listeners keep serving.
func TestTLSPlainClients(t *testing.T) {
	ca := brokertest.NewCA(t, "plain CA")
	var cfg broker.Config
	ev := withEvents(&cfg)
	creds := make(chan broker.Credentials, 8)
	cfg.Auth = deviceAuth{creds: creds}
	cfg.TLSConfig = ca.ServerConfig(t, false)
	cfg.ConnectTimeout = time.Minute // a close within wait is not the timeout
	b := brokertest.New(t, cfg)

	tests := []struct {
		name string
		addr net.Addr
		send []byte
	}{
		{"MQTT CONNECT on the TLS port", b.TLSAddr(), connectPacket(v311, "plain", true, 30)},
		{"MQTT 5 CONNECT on the TLS port", b.TLSAddr(), connectPacket(v5, "plain", true, 30)},
		{"HTTP request on the TLS port", b.TLSAddr(), []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")},
		{"random bytes on the TLS port", b.TLSAddr(), randomBytes(t, 512)},
		{"TLS ClientHello on the TCP port", b.Addr(), clientHello(t, ca.ClientConfig())},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := b.Stats()
			c, err := net.DialTimeout("tcp", tc.addr.String(), wait)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := c.Write(tc.send); err != nil {
				t.Fatal(err)
			}
			_ = c.SetReadDeadline(time.Now().Add(wait))
			got, err := io.ReadAll(c)
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("connection still open after %v, want closed at once (ConnectTimeout is %v)", wait, cfg.ConnectTimeout)
			}
			if len(got) > 0 && got[0]>>4 == typeConnack {
				t.Errorf("got a CONNACK (% x), want the connection closed without one", got)
			}
			if tc.addr == b.TLSAddr() {
				if !eventually(func() bool { return b.Stats().TLSHandshakesFailed == before.TLSHandshakesFailed+1 }) {
					t.Errorf("TLSHandshakesFailed: got %d, want %d", b.Stats().TLSHandshakesFailed, before.TLSHandshakesFailed+1)
				}
			}
			select {
			case c := <-creds:
				t.Errorf("Authenticate called for %q, want no authentication", c.ClientID)
			default:
			}
			// Both listeners still serve a real client.
			for _, url := range []string{brokertest.URL(b), brokertest.TLSURL(b)} {
				opts := []func(*mqtt.ClientOptions){withPassword("pw-ok")}
				if url == brokertest.TLSURL(b) {
					opts = append(opts, brokertest.WithTLS(ca.ClientConfig()))
				}
				c := brokertest.Connect(t, url, "ok", opts...)
				recv(t, creds, "Authenticate")
				recv(t, ev.connects, "OnConnect")
				c.Disconnect(100)
				recv(t, ev.disconnects, "OnDisconnect")
			}
		})
	}

	t.Run("paho over plain TCP to the TLS port", func(t *testing.T) {
		before := b.Stats().TLSHandshakesFailed
		// Version 4 only: paho would retry a failed 3.1.1 CONNECT as 3.1.
		v4 := func(o *mqtt.ClientOptions) { o.SetProtocolVersion(4) }
		if _, err := brokertest.TryConnect(t, "tcp://"+b.TLSAddr().String(), "plain", withPassword("pw-plain"), v4); err == nil {
			t.Fatal("connect: got nil error, want refused")
		}
		if !eventually(func() bool { return b.Stats().TLSHandshakesFailed == before+1 }) {
			t.Errorf("TLSHandshakesFailed: got %d, want %d", b.Stats().TLSHandshakesFailed, before+1)
		}
	})
}

// TestTLSHandshakeFlood opens many connections to the mutual-TLS listener
// that never complete a handshake: silent ones, ones that stop inside a
// TLS record, stop after their ClientHello, drip a ClientHello byte by
// byte, or send garbage. While they are open a real client connects,
// subscribes, publishes and gets its message back. Every flood connection
// is then closed by the broker (garbage at once, the others at
// ConnectTimeout, however slowly they keep sending) and counted in
// TLSHandshakesFailed, nothing reaches authentication, and no connection
// goroutine is left behind.
func TestTLSHandshakeFlood(t *testing.T) {
	const (
		perKind        = 25
		connectTimeout = 3 * time.Second
		drip           = 100 * time.Millisecond
	)
	f := newTLSFloodFixture(t, connectTimeout)
	hello := clientHello(t, f.ca.ClientConfig(f.valid))
	kinds := []struct {
		name    string
		prefix  []byte // sent at once
		drip    []byte // then sent a byte every drip, until the broker closes
		garbage bool   // the broker closes at once: not TLS
	}{
		{name: "silent"},
		{name: "partial record", prefix: append([]byte{22, 3, 1, 0x40, 0x00}, hello[5:15]...)},
		{name: "ClientHello then silence", prefix: hello},
		{name: "ClientHello drip", drip: hello},
		{name: "garbage", prefix: randomBytes(t, 256), garbage: true},
		{name: "ClientHello then garbage", prefix: append(bytes.Clone(hello), randomBytes(t, 64)...), garbage: true},
	}

	baseline := goroutinesIn("broker.(*listener).serveConn")
	before := f.b.Stats()
	type result struct {
		kind    string
		garbage bool
		err     error // nil: closed by the broker
	}
	results := make(chan result, perKind*len(kinds))
	var stalledClosed atomic.Int64 // flood connections without garbage closed so far
	var wg sync.WaitGroup
	deadline := time.Now().Add(connectTimeout + wait)
	for _, k := range kinds {
		for range perKind {
			c, err := net.DialTimeout("tcp", f.b.TLSAddr().String(), wait)
			if err != nil {
				t.Fatalf("flood dial: %v", err)
			}
			t.Cleanup(func() { c.Close() })
			if len(k.prefix) > 0 {
				if _, err := c.Write(k.prefix); err != nil && !k.garbage {
					t.Fatalf("flood write (%s): %v", k.name, err)
				}
			}
			if len(k.drip) > 0 {
				wg.Go(func() {
					for i := range k.drip {
						_ = c.SetWriteDeadline(deadline)
						if _, err := c.Write(k.drip[i : i+1]); err != nil {
							return // closed by the broker
						}
						time.Sleep(drip)
					}
				})
			}
			wg.Go(func() {
				err := closedByServer(c, deadline)
				if !k.garbage {
					stalledClosed.Add(1)
				}
				results <- result{k.name, k.garbage, err}
			})
		}
	}

	// A real device is served while the flood is open.
	c := brokertest.Connect(t, brokertest.TLSURL(f.b), "tls-1", brokertest.WithTLS(f.ca.ClientConfig(f.valid)))
	msgs := brokertest.Subscribe(t, c, "tls/tls-1", 1)
	brokertest.Publish(t, c, "tls/tls-1", 1, []byte("during the flood"))
	checkMessage(t, brokertest.Next(t, msgs, wait), "tls/tls-1", []byte("during the flood"), 1, false)
	if n := stalledClosed.Load(); n > 0 {
		t.Fatalf("%d stalled flood connections were already closed when the real client got its message: "+
			"the client was not served during the flood (ConnectTimeout %v too short for this machine?)", n, connectTimeout)
	}
	c.Disconnect(100)

	wg.Wait()
	close(results)
	flood := 0
	for r := range results {
		flood++
		if r.err != nil {
			t.Errorf("%s flood connection: still open %v after the flood started (%v), want closed by ConnectTimeout %v",
				r.kind, connectTimeout+wait, r.err, connectTimeout)
		}
	}
	after := f.b.Stats()
	if got := after.TLSHandshakesFailed - before.TLSHandshakesFailed; got != int64(flood) {
		t.Errorf("TLSHandshakesFailed increment: got %d, want %d (one per flood connection)", got, flood)
	}
	if got := after.ConnectsRejected - before.ConnectsRejected; got != 0 {
		t.Errorf("ConnectsRejected increment: got %d, want 0 (no flood connection reaches CONNECT)", got)
	}
	if ci := recv(t, f.ev.connects, "OnConnect"); ci.ClientID != "tls-1" {
		t.Errorf("OnConnect: got %q, want only tls-1", ci.ClientID)
	}
	select {
	case ci := <-f.ev.connects:
		t.Errorf("OnConnect for a flood connection: got %+v, want none", ci)
	default:
	}
	// No event tells when a connection goroutine has returned: poll.
	if !eventually(func() bool { return goroutinesIn("broker.(*listener).serveConn") <= baseline }) {
		t.Errorf("connection goroutines: got %d after the flood ended, want %d",
			goroutinesIn("broker.(*listener).serveConn"), baseline)
	}
}

// tlsFloodFixture is a broker with a mutual-TLS listener and a short
// ConnectTimeout, and a valid client certificate for tls-1.
type tlsFloodFixture struct {
	b     *broker.Server
	ev    *events
	ca    *brokertest.CA
	valid brokertest.KeyPair
}

func newTLSFloodFixture(t *testing.T, connectTimeout time.Duration) *tlsFloodFixture {
	t.Helper()
	ca := brokertest.NewCA(t, "flood CA")
	cfg := broker.Config{TLSConfig: ca.ServerConfig(t, true), Auth: certAuth{}, ConnectTimeout: connectTimeout}
	ev := withEvents(&cfg)
	return &tlsFloodFixture{
		b:     brokertest.New(t, cfg),
		ev:    ev,
		ca:    ca,
		valid: ca.Issue(t, brokertest.CertOptions{CommonName: "tls-1"}),
	}
}
