package identity_test

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/identity"
	"github.com/umbra-iot/umbra/internal/brokertest"
	"github.com/umbra-iot/umbra/internal/server/brokerauth"
)

// connEvent is a broker connection callback, after the store recorded it.
type connEvent struct {
	connect bool
	info    broker.ConnInfo
	err     error
}

// presenceBroker opens a broker whose connection callbacks record device
// presence in s, the way umbra serve wires them, and report each call.
func presenceBroker(t *testing.T, s *identity.Store, cfg broker.Config) (*broker.Server, <-chan connEvent) {
	t.Helper()
	events := make(chan connEvent, 64)
	cfg.Auth = brokerauth.New(s)
	cfg.OnConnect = func(info broker.ConnInfo) {
		if id := info.Identity.Device; id != "" {
			s.Connected(id, info.Seq, info.At, info.RemoteAddr)
		}
		events <- connEvent{connect: true, info: info}
	}
	cfg.OnDisconnect = func(info broker.ConnInfo, err error) {
		if id := info.Identity.Device; id != "" {
			reason := ""
			if err != nil {
				reason = err.Error()
			}
			s.Disconnected(id, info.Seq, info.At, reason)
		}
		events <- connEvent{info: info, err: err}
	}
	return brokertest.New(t, cfg), events
}

func nextEvent(t *testing.T, events <-chan connEvent, connect bool) connEvent {
	t.Helper()
	select {
	case e := <-events:
		if e.connect != connect {
			t.Fatalf("got event connect=%t (%+v, err %v), want connect=%t", e.connect, e.info, e.err, connect)
		}
		return e
	case <-time.After(brokertest.Timeout):
		t.Fatalf("no connection event (connect=%t) within %v", connect, brokertest.Timeout)
		return connEvent{}
	}
}

func wantPresence(t *testing.T, s *identity.Store, connected bool, reasonIs error) {
	t.Helper()
	p, ok := s.Presence("A")
	if !ok || p.Connected != connected {
		t.Fatalf("Presence(A): got %+v (ok %t), want connected=%t", p, ok, connected)
	}
	if !connected && reasonIs != nil && !strings.Contains(p.DisconnectReason, reasonIs.Error()) {
		t.Errorf("DisconnectReason: got %q, want %q…", p.DisconnectReason, reasonIs)
	}
}

// TestPresenceBroker drives presence through a real broker: a clean
// disconnect, a client that vanishes without DISCONNECT (as after kill -9),
// and a quick reconnect whose old session ends after the new one started.
func TestPresenceBroker(t *testing.T) {
	s := mustOpen(t, "", identity.Config{})
	secA := mustAddDevice(t, s, "A")
	b, events := presenceBroker(t, s, broker.Config{})
	url := brokertest.URL(b)

	// Clean connect and DISCONNECT.
	c := brokertest.Connect(t, url, "A", login("A", secA))
	nextEvent(t, events, true)
	wantPresence(t, s, true, nil)
	c.Disconnect(100)
	if e := nextEvent(t, events, false); e.err != nil {
		t.Errorf("clean disconnect: got err %v, want nil", e.err)
	}
	wantPresence(t, s, false, nil)

	// Killed client: the TCP connection just closes.
	raw := rawConnect(t, b.Addr().String(), "A", "A", secA)
	nextEvent(t, events, true)
	wantPresence(t, s, true, nil)
	raw.Close()
	if e := nextEvent(t, events, false); !errors.Is(e.err, broker.ErrConnectionLost) {
		t.Errorf("killed client: got err %v, want ErrConnectionLost", e.err)
	}
	wantPresence(t, s, false, broker.ErrConnectionLost)

	// Quick reconnect (takeover): the broker ends the old session before it
	// accepts the new one, so the old disconnect comes first; the device
	// ends online with the new session's times.
	brokertest.Connect(t, url, "A", login("A", secA))
	nextEvent(t, events, true)
	second := brokertest.Connect(t, url, "A", login("A", secA))
	oldGone := nextEvent(t, events, false)
	newConn := nextEvent(t, events, true)
	if !errors.Is(oldGone.err, broker.ErrTakenOver) || oldGone.info.Seq >= newConn.info.Seq {
		t.Errorf("takeover: old session seq %d ended with %v; want ErrTakenOver and seq below %d", oldGone.info.Seq, oldGone.err, newConn.info.Seq)
	}
	wantPresence(t, s, true, nil)
	p, _ := s.Presence("A")
	if !p.ConnectedAt.Equal(newConn.info.At.UTC()) {
		t.Errorf("ConnectedAt: got %v, want the new session's %v", p.ConnectedAt, newConn.info.At)
	}
	second.Disconnect(100)
	nextEvent(t, events, false)
	wantPresence(t, s, false, nil)
}

// rawConnect opens a TCP connection, sends an MQTT 3.1.1 CONNECT with user
// name and password, and waits for a successful CONNACK.
func rawConnect(t *testing.T, addr, clientID, user, password string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, brokertest.Timeout)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	str := func(s string) []byte { return append(binary.BigEndian.AppendUint16(nil, uint16(len(s))), s...) }
	body := append(str("MQTT"), 4, 0xC2, 0, 60) // level 4; user, password, clean session; keep-alive 60s
	body = append(body, str(clientID)...)
	body = append(body, str(user)...)
	body = append(body, str(password)...)
	pkt := append([]byte{0x10, byte(len(body))}, body...) // bodies here are below 128 bytes
	c.SetDeadline(time.Now().Add(brokertest.Timeout))
	if _, err := c.Write(pkt); err != nil {
		t.Fatal(err)
	}
	ack := make([]byte, 4)
	if _, err := io.ReadFull(c, ack); err != nil {
		t.Fatalf("read CONNACK: %v", err)
	}
	if ack[0] != 0x20 || ack[3] != 0 {
		t.Fatalf("CONNACK: got % x, want 20 02 00 00", ack)
	}
	c.SetDeadline(time.Time{})
	return c
}

// TestBrokerMutualTLS connects devices to the broker's TLS listener with
// client certificates from the fleet CA.
func TestBrokerMutualTLS(t *testing.T) {
	s := mustOpen(t, "", identity.Config{})
	if _, err := s.AddDevice(t.Context(), "A", nil); err != nil {
		t.Fatal(err)
	}
	p := newPKI(t)
	caFile := filepath.Join(p.dir, identity.CACertFile)
	srv, err := identity.ServerTLSConfig(p.serverCert, p.srvKey, caFile)
	if err != nil {
		t.Fatal(err)
	}
	b, events := presenceBroker(t, s, broker.Config{TLSAddr: "127.0.0.1:0", TLSConfig: srv})
	url := "ssl://" + b.TLSAddr().String()
	certA, keyA := p.deviceFiles(t, "A", time.Hour)
	certGhost, keyGhost := p.deviceFiles(t, "ghost", time.Hour)
	stranger := newPKI(t)
	certStranger, keyStranger := stranger.deviceFiles(t, "A", time.Hour)

	tests := []struct {
		name, clientID, cert, key string
		wantOK                    bool
	}{
		{"enrolled device", "A", certA, keyA, true},
		{"certificate of another device", "ghost", certA, keyA, false},
		{"unknown device", "ghost", certGhost, keyGhost, false},
		{"untrusted CA", "A", certStranger, keyStranger, false},
		{"no certificate, no password", "A", "", "", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := identity.ClientTLSConfig(caFile, tc.cert, tc.key)
			if err != nil {
				t.Fatal(err)
			}
			c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(url).SetClientID(tc.clientID).SetTLSConfig(cfg).
				SetAutoReconnect(false).SetConnectTimeout(brokertest.Timeout).SetProtocolVersion(4))
			tok := c.Connect()
			if !tok.WaitTimeout(brokertest.Timeout) {
				t.Fatalf("no CONNACK within %v", brokertest.Timeout)
			}
			if ok := tok.Error() == nil; ok != tc.wantOK {
				t.Fatalf("connect: got error %v, want success %t", tok.Error(), tc.wantOK)
			}
			if !tc.wantOK {
				return
			}
			e := nextEvent(t, events, true)
			if !e.info.TLS || e.info.Identity.Device != "A" {
				t.Errorf("OnConnect: got %+v, want device A over TLS", e.info)
			}
			c.Disconnect(100)
			nextEvent(t, events, false)
		})
	}
}
