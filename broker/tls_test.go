package broker_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/internal/brokertest"
)

// certAuth authenticates a device by the common name of its verified
// client certificate, which must equal its client ID, and lets it use only
// its own topics under tls/<id>/.
type certAuth struct{}

func (certAuth) Authenticate(_ context.Context, c broker.Credentials) (broker.Identity, error) {
	if c.TLS == nil || len(c.TLS.VerifiedChains) == 0 {
		return broker.Identity{}, errors.New("no verified client certificate")
	}
	cn := c.TLS.VerifiedChains[0][0].Subject.CommonName
	if cn != c.ClientID {
		return broker.Identity{}, fmt.Errorf("certificate for %q used by client %q", cn, c.ClientID)
	}
	id, err := device.ParseID(cn)
	if err != nil {
		return broker.Identity{}, err
	}
	return broker.Identity{Name: "cn:" + cn, Device: id}, nil
}

func (certAuth) Allow(id broker.Identity, topic string, _ bool) bool {
	return len(topic) > 4 && topic[:4] == "tls/" && topic[4:] == string(id.Device)
}

// tlsFixture is a broker with a mutual-TLS listener, a CA it trusts, and
// client certificates: valid ones for tls-1 and tls-2, and invalid ones.
type tlsFixture struct {
	b          *broker.Server
	ev         *events
	ca         *brokertest.CA
	valid      brokertest.KeyPair // CN tls-1
	expired    brokertest.KeyPair // CN tls-1, expired yesterday
	untrusted  brokertest.KeyPair // CN tls-1, issued by another CA
	notYet     brokertest.KeyPair // CN tls-1, valid from tomorrow
	serverOnly brokertest.KeyPair // CN tls-1 from the right CA, but for server authentication only
	impostor   brokertest.KeyPair // CN tls-1, issued by another CA with the trusted CA's name
	handled    chan string        // publisher IDs seen by an in-process subscription to tls/#
}

func newTLSFixture(t *testing.T) *tlsFixture {
	t.Helper()
	ca := brokertest.NewCA(t, "umbra test CA")
	other := brokertest.NewCA(t, "untrusted CA")
	sameName := brokertest.NewCA(t, "umbra test CA")
	var cfg broker.Config
	ev := withEvents(&cfg)
	cfg.TLSConfig = ca.ServerConfig(t, true)
	cfg.Auth = certAuth{}
	now := time.Now()
	f := &tlsFixture{
		b:          brokertest.New(t, cfg),
		ev:         ev,
		ca:         ca,
		valid:      ca.Issue(t, brokertest.CertOptions{CommonName: "tls-1"}),
		expired:    ca.Issue(t, brokertest.CertOptions{CommonName: "tls-1", NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-24 * time.Hour)}),
		untrusted:  other.Issue(t, brokertest.CertOptions{CommonName: "tls-1"}),
		notYet:     ca.Issue(t, brokertest.CertOptions{CommonName: "tls-1", NotBefore: now.Add(24 * time.Hour), NotAfter: now.Add(48 * time.Hour)}),
		serverOnly: ca.Issue(t, brokertest.CertOptions{CommonName: "tls-1", Server: true}),
		impostor:   sameName.Issue(t, brokertest.CertOptions{CommonName: "tls-1"}),
		handled:    make(chan string, 16),
	}
	err := f.b.Subscribe("tls/#", func(clientID, _ string, _ []byte) {
		select {
		case f.handled <- clientID:
		default:
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func TestTLSPaho(t *testing.T) {
	f := newTLSFixture(t)
	url := brokertest.TLSURL(f.b)
	if a := f.b.TLSAddr(); a == nil || a.(*net.TCPAddr).Port == 0 {
		t.Fatalf("TLSAddr: got %v, want 127.0.0.1 with a port", a)
	}

	t.Run("valid client certificate", func(t *testing.T) {
		c := brokertest.Connect(t, url, "tls-1", brokertest.WithTLS(f.ca.ClientConfig(f.valid)))
		ci := recv(t, f.ev.connects, "OnConnect")
		want := broker.Identity{ClientID: "tls-1", Name: "cn:tls-1", Device: "tls-1"}
		if ci.ClientID != "tls-1" || !ci.TLS || ci.Identity != want || ci.Seq == 0 || ci.At.IsZero() {
			t.Errorf("OnConnect: got %+v, want tls-1 over TLS as %+v with Seq and At set", ci, want)
		}
		msgs := brokertest.Subscribe(t, c, "tls/tls-1", 1)
		brokertest.Publish(t, c, "tls/tls-1", 1, []byte("over tls"))
		checkMessage(t, brokertest.Next(t, msgs, wait), "tls/tls-1", []byte("over tls"), 1, false)
		if got := recv(t, f.handled, "in-process message"); got != "tls-1" {
			t.Errorf("in-process handler publisher: got %q, want tls-1", got)
		}
		c.Disconnect(100)
		d := recv(t, f.ev.disconnects, "OnDisconnect")
		if d.err != nil || d.info.Seq != ci.Seq || !d.info.TLS || d.info.Identity != want {
			t.Errorf("OnDisconnect: got %+v, %v; want Seq %d over TLS as %+v, nil", d.info, d.err, ci.Seq, want)
		}
	})

	// A certificate whose private key is not the one presented: the
	// client signs the handshake with the wrong key.
	wrongKey := f.valid
	wrongKey.TLS.PrivateKey = f.untrusted.TLS.PrivateKey
	// Bytes that are not a certificate at all, with a real key.
	garbage := f.valid
	garbage.TLS = tls.Certificate{Certificate: [][]byte{[]byte("not a certificate")}, PrivateKey: f.valid.TLS.PrivateKey}
	tests := []struct {
		name          string
		clientID      string
		client        *tls.Config
		wantHandshake bool // the TLS handshake fails (rather than authentication)
	}{
		{"no client certificate", "tls-1", f.ca.ClientConfig(), true},
		{"untrusted client certificate", "tls-1", f.ca.ClientConfig(f.untrusted), true},
		{"expired client certificate", "tls-1", f.ca.ClientConfig(f.expired), true},
		{"client certificate not yet valid", "tls-1", f.ca.ClientConfig(f.notYet), true},
		{"server certificate used as a client certificate", "tls-1", f.ca.ClientConfig(f.serverOnly), true},
		{"certificate from a CA impersonating the trusted one", "tls-1", f.ca.ClientConfig(f.impostor), true},
		{"certificate with another key", "tls-1", f.ca.ClientConfig(wrongKey), true},
		{"certificate that does not parse", "tls-1", f.ca.ClientConfig(garbage), true},
		{"certificate of another device", "tls-2", f.ca.ClientConfig(f.valid), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := f.b.Stats()
			// Version 4 only: paho would retry a refused 3.1.1 CONNECT as 3.1.
			v4 := func(o *mqtt.ClientOptions) { o.SetProtocolVersion(4) }
			if _, err := brokertest.TryConnect(t, url, tc.clientID, brokertest.WithTLS(tc.client), v4); err == nil {
				t.Fatalf("connect: got nil error, want refused")
			}
			// The client can see the server's TLS alert before the server
			// counts the failed handshake: poll.
			var gotTLS, gotAuth int64
			ok := eventually(func() bool {
				after := f.b.Stats()
				gotTLS = after.TLSHandshakesFailed - before.TLSHandshakesFailed
				gotAuth = after.ConnectsRejected - before.ConnectsRejected
				return gotTLS+gotAuth > 0
			})
			if !ok || tc.wantHandshake && (gotTLS != 1 || gotAuth != 0) || !tc.wantHandshake && (gotTLS != 0 || gotAuth != 1) {
				t.Errorf("TLSHandshakesFailed, ConnectsRejected increments: got %d, %d; want handshake failure %t",
					gotTLS, gotAuth, tc.wantHandshake)
			}
		})
	}
	select {
	case ci := <-f.ev.connects:
		t.Errorf("OnConnect for a refused client: got %+v, want none", ci)
	default:
	}
}

// TestTLSServerOnly: without ClientAuth, any client trusting the server
// connects; Credentials.TLS is set but holds no client certificate, and
// the plain TCP listener of the same broker reports TLS false.
func TestTLSServerOnly(t *testing.T) {
	ca := brokertest.NewCA(t, "server-only CA")
	var cfg broker.Config
	ev := withEvents(&cfg)
	creds := make(chan broker.Credentials, 4)
	cfg.Auth = deviceAuth{creds: creds}
	cfg.TLSConfig = ca.ServerConfig(t, false)
	b := brokertest.New(t, cfg)

	tests := []struct {
		name    string
		url     string
		opts    []func(*mqtt.ClientOptions)
		wantTLS bool
	}{
		{"tls", brokertest.TLSURL(b), []func(*mqtt.ClientOptions){brokertest.WithTLS(ca.ClientConfig())}, true},
		{"tcp", brokertest.URL(b), nil, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id := "srv-" + tc.name
			brokertest.Connect(t, tc.url, id, append(tc.opts, withPassword("pw-"+id))...)
			c := recv(t, creds, "Authenticate")
			if gotTLS := c.TLS != nil; gotTLS != tc.wantTLS {
				t.Fatalf("Credentials.TLS set: got %t, want %t", gotTLS, tc.wantTLS)
			}
			if c.TLS != nil && (!c.TLS.HandshakeComplete || len(c.TLS.PeerCertificates) != 0) {
				t.Errorf("Credentials.TLS: got complete %t with %d peer certificates, want complete with none",
					c.TLS.HandshakeComplete, len(c.TLS.PeerCertificates))
			}
			if ci := recv(t, ev.connects, "OnConnect"); ci.ClientID != id || ci.TLS != tc.wantTLS {
				t.Errorf("OnConnect: got %s TLS %t, want %s TLS %t", ci.ClientID, ci.TLS, id, tc.wantTLS)
			}
		})
	}

	t.Run("client not trusting the server", func(t *testing.T) {
		other := brokertest.NewCA(t, "other CA")
		if _, err := brokertest.TryConnect(t, brokertest.TLSURL(b), "srv-x", brokertest.WithTLS(other.ClientConfig())); err == nil {
			t.Errorf("connect: got nil error, want certificate verification failure")
		}
	})
}

// TestTLSHandshakeTimeout: a client that opens a TCP connection to the TLS
// listener and says nothing is closed after ConnectTimeout, and Close does
// not wait for a silent client's handshake.
func TestTLSHandshakeTimeout(t *testing.T) {
	ca := brokertest.NewCA(t, "timeout CA")
	tests := []struct {
		name           string
		connectTimeout time.Duration
		closeBroker    bool // close the broker instead of waiting for the timeout
	}{
		{"handshake deadline", 200 * time.Millisecond, false},
		{"close during handshake", time.Minute, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b, err := broker.Open(t.Context(), broker.Config{
				TLSAddr:        "127.0.0.1:0",
				TLSConfig:      ca.ServerConfig(t, true),
				ConnectTimeout: tc.connectTimeout,
			})
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close(context.Background())
			c, err := net.DialTimeout("tcp", b.TLSAddr().String(), wait)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			start := time.Now()
			closed := make(chan error, 1)
			go func() {
				_ = c.SetReadDeadline(time.Now().Add(wait))
				_, err := c.Read(make([]byte, 1))
				closed <- err
			}()
			if tc.closeBroker {
				if err := b.Close(t.Context()); err != nil {
					t.Fatal(err)
				}
			}
			err = recv(t, closed, "connection closed")
			var ne net.Error
			switch {
			case errors.As(err, &ne) && ne.Timeout():
				t.Fatalf("silent TLS client: still open after %v, want closed", wait)
			case err == nil:
				t.Fatalf("read from silent TLS client: got data, want the connection closed")
			}
			if tc.closeBroker {
				return
			}
			if d := time.Since(start); d < tc.connectTimeout/2 {
				t.Errorf("silent TLS client closed after %v, want about %v", d, tc.connectTimeout)
			}
			if got := b.Stats().TLSHandshakesFailed; got != 1 {
				t.Errorf("Stats.TLSHandshakesFailed: got %d, want 1", got)
			}
		})
	}
}

// TestTLSMosquittoPub drives the TLS listener with Debian's mosquitto_pub,
// an independent MQTT and TLS (OpenSSL) implementation.
func TestTLSMosquittoPub(t *testing.T) {
	bin, err := exec.LookPath("mosquitto_pub")
	if err != nil {
		t.Fatalf("mosquitto_pub not found (%v): run make deps", err)
	}
	f := newTLSFixture(t)
	port := strconv.Itoa(f.b.TLSAddr().(*net.TCPAddr).Port)
	tests := []struct {
		name   string
		cert   *brokertest.KeyPair
		wantOK bool
	}{
		{"valid client certificate", &f.valid, true},
		{"no client certificate", nil, false},
		{"untrusted client certificate", &f.untrusted, false},
		{"expired client certificate", &f.expired, false},
		{"client certificate not yet valid", &f.notYet, false},
		{"server certificate used as a client certificate", &f.serverOnly, false},
		{"certificate from a CA impersonating the trusted one", &f.impostor, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			args := []string{"-h", "127.0.0.1", "-p", port, "--cafile", f.ca.CertFile(),
				"-i", "tls-1", "-t", "tls/tls-1", "-m", tc.name, "-q", "1"}
			if tc.cert != nil {
				args = append(args, "--cert", tc.cert.CertFile, "--key", tc.cert.KeyFile)
			}
			before := f.b.Stats().TLSHandshakesFailed
			ctx, cancel := context.WithTimeout(t.Context(), 2*wait)
			defer cancel()
			out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
			if ctx.Err() != nil {
				t.Fatalf("mosquitto_pub did not finish within %v: %s", 2*wait, out)
			}
			if tc.wantOK {
				if err != nil {
					t.Fatalf("mosquitto_pub: got %v (%s), want success", err, out)
				}
				if got := recv(t, f.handled, "in-process message"); got != "tls-1" {
					t.Errorf("in-process handler publisher: got %q, want tls-1", got)
				}
				return
			}
			if err == nil {
				t.Errorf("mosquitto_pub: got success, want refused")
			}
			t.Logf("mosquitto_pub refused: %v: %s", err, bytes.TrimSpace(out))
			// The refusal is the broker's: its TLS handshake failed.
			if !eventually(func() bool { return f.b.Stats().TLSHandshakesFailed == before+1 }) {
				t.Errorf("Stats.TLSHandshakesFailed: got %d, want %d", f.b.Stats().TLSHandshakesFailed, before+1)
			}
		})
	}
}
