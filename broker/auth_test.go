package broker_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/internal/brokertest"
)

// allowAuth admits everyone and denies the listed topics and filters.
type allowAuth struct{ deny map[string]bool }

func (a allowAuth) Authenticate(_ context.Context, c broker.Credentials) (broker.Identity, error) {
	return broker.Identity{Name: c.ClientID}, nil
}

func (a allowAuth) Allow(_ broker.Identity, topic string, _ bool) bool { return !a.deny[topic] }

// deviceAuth is a per-device ACL: password "pw-<id>", devices use only
// state/<id>/...; the "operator" (password "op") may read everything.
type deviceAuth struct {
	creds chan broker.Credentials
}

func (a deviceAuth) Authenticate(_ context.Context, c broker.Credentials) (broker.Identity, error) {
	a.creds <- c
	if c.ClientID == "operator" && string(c.Password) == "op" {
		return broker.Identity{Name: "operator"}, nil
	}
	if string(c.Password) != "pw-"+c.ClientID {
		return broker.Identity{}, errors.New("wrong password")
	}
	return broker.Identity{Name: c.Username, Device: device.ID(c.ClientID)}, nil
}

func (a deviceAuth) Allow(id broker.Identity, topic string, write bool) bool {
	if id.Device == "" {
		return !write
	}
	prefix := "state/" + string(id.Device) + "/"
	return strings.HasPrefix(topic, prefix) && topic != prefix+"#" || topic == prefix+"#" && !write
}

// logBuffer collects log output safely from many goroutines.
type logBuffer struct {
	mu sync.Mutex // guards b
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) count(s string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Count(l.b.String(), s)
}

func TestAuthenticate(t *testing.T) {
	auth := deviceAuth{creds: make(chan broker.Credentials, 16)}
	b := brokertest.New(t, broker.Config{Auth: auth})
	tests := []struct {
		name     string
		packet   []byte
		wantCode byte
		wantCred broker.Credentials
	}{
		{"right password", fullConnectPacket(v311, "dev-1", "", "alice", "pw-dev-1"), 0,
			broker.Credentials{ClientID: "dev-1", Username: "alice", Password: []byte("pw-dev-1")}},
		{"wrong password", fullConnectPacket(v311, "dev-2", "", "bob", "nope"), 0x05,
			broker.Credentials{ClientID: "dev-2", Username: "bob", Password: []byte("nope")}},
		{"no password", fullConnectPacket(v311, "dev-3", "", "", ""), 0x05,
			broker.Credentials{ClientID: "dev-3"}},
		{"own will topic", fullConnectPacket(v311, "dev-4", "state/dev-4/status", "", "pw-dev-4"), 0,
			broker.Credentials{ClientID: "dev-4", Password: []byte("pw-dev-4")}},
		{"foreign will topic", fullConnectPacket(v311, "dev-5", "state/dev-1/status", "", "pw-dev-5"), 0x05,
			broker.Credentials{ClientID: "dev-5", Password: []byte("pw-dev-5")}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := b.Stats().ConnectsRejected
			rc := dialRaw(t, b.Addr())
			rc.write(tc.packet)
			ack := rc.expect(typeConnack)
			if ack.body[1] != tc.wantCode {
				t.Errorf("CONNACK code: got %#x, want %#x", ack.body[1], tc.wantCode)
			}
			c := recv(t, auth.creds, "Authenticate call")
			if c.ClientID != tc.wantCred.ClientID || c.Username != tc.wantCred.Username ||
				!bytes.Equal(c.Password, tc.wantCred.Password) || c.TLS != nil ||
				!strings.HasPrefix(c.RemoteAddr, "127.0.0.1:") {
				t.Errorf("Credentials: got %+v, want %+v from 127.0.0.1", c, tc.wantCred)
			}
			wantRejected := int64(0)
			if tc.wantCode != 0 {
				wantRejected = 1
				rc.expectClosed()
			}
			if got := b.Stats().ConnectsRejected - before; got != wantRejected {
				t.Errorf("ConnectsRejected: got +%d, want +%d", got, wantRejected)
			}
		})
	}
}

func TestACL(t *testing.T) {
	logs := &logBuffer{}
	auth := deviceAuth{creds: make(chan broker.Credentials, 64)}
	var cfg broker.Config
	cfg.Auth = auth
	cfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
	ev := withEvents(&cfg)
	b := brokertest.New(t, cfg)

	op := brokertest.Connect(t, brokertest.URL(b), "operator", withPassword("op"))
	all := brokertest.Subscribe(t, op, "state/#", 0)

	dev := dialRaw(t, b.Addr())
	dev.write(fullConnectPacket(v311, "dev-a", "", "", "pw-dev-a"))
	dev.expect(typeConnack)

	t.Run("subscribe", func(t *testing.T) {
		dev.write(subscribePacket(v311, 1, "state/dev-b/#", 0))
		if got := dev.expect(typeSuback).body[2]; got != 0x80 {
			t.Errorf("SUBACK for another device's filter: got %#x, want 0x80", got)
		}
		dev.write(subscribePacket(v311, 2, "state/dev-a/#", 1))
		if got := dev.expect(typeSuback).body[2]; got != 1 {
			t.Errorf("SUBACK for own filter: got %#x, want 1", got)
		}
	})

	t.Run("qos0 publish denied silently", func(t *testing.T) {
		for range 3 {
			dev.write(publishPacket(v311, "state/dev-b/update", 0, 0, []byte("forged")))
		}
		dev.write(publishPacket(v311, "state/dev-a/update", 0, 0, []byte("mine")))
		// Messages from one client are processed in order, so the forged
		// ones were dropped if "mine" arrives first.
		checkMessage(t, brokertest.Next(t, all, wait), "state/dev-a/update", []byte("mine"), 0, false)
		if got := b.Stats().PublishesDenied; got != 3 {
			t.Errorf("PublishesDenied: got %d, want 3", got)
		}
		if got := logs.count("publish denied"); got != 1 {
			t.Errorf("publish denied log lines: got %d, want 1 (once per client and topic)", got)
		}
		// dev-a subscribed to its own topics.
		if topic, _, _ := parsePublish(v311, dev.expect(typePublish)); topic != "state/dev-a/update" {
			t.Errorf("dev-a received %q, want state/dev-a/update", topic)
		}
	})

	t.Run("delivery checked", func(t *testing.T) {
		// The operator may not publish; dev-a receives only its own topics.
		if err := b.Publish("state/dev-a/update/delta", []byte("d"), false, 1); err != nil {
			t.Fatal(err)
		}
		p := dev.expect(typePublish)
		if topic, id, payload := parsePublish(v311, p); topic != "state/dev-a/update/delta" || string(payload) != "d" {
			t.Errorf("delivered: got %s %q, want state/dev-a/update/delta %q", topic, payload, "d")
		} else {
			dev.write(pubackPacket(id))
		}
		checkMessage(t, brokertest.Next(t, all, wait), "state/dev-a/update/delta", []byte("d"), 0, false)
	})

	t.Run("qos1 publish denied acknowledged for 3.1.1 client", func(t *testing.T) {
		dev.write(publishPacket(v311, "state/dev-b/update", 1, 9, []byte("forged")))
		dev.expectAck(typePuback, 9)
		dev.write(publishPacket(v311, "state/dev-a/update", 0, 0, []byte("after")))
		checkMessage(t, brokertest.Next(t, all, wait), "state/dev-a/update", []byte("after"), 0, false)
		if got := b.Stats().PublishesDenied; got != 4 {
			t.Errorf("PublishesDenied: got %d, want 4", got)
		}
		select {
		case d := <-ev.disconnects:
			t.Errorf("OnDisconnect(%s, %v): a denied PUBLISH must not disconnect", d.clientID, d.err)
		default:
		}
	})

	t.Run("qos1 publish denied acked for 5 client", func(t *testing.T) {
		rc := dialRaw(t, b.Addr())
		rc.write(fullConnectPacket(v5, "dev-c", "", "", "nope"))
		if code := rc.expect(typeConnack).body[1]; code != 0x86 {
			t.Fatalf("CONNACK with wrong password: got %#x, want 0x86", code)
		}
		rc = dialRaw(t, b.Addr())
		rc.write(fullConnectPacket(v5, "dev-c", "", "", "pw-dev-c"))
		if code := rc.expect(typeConnack).body[1]; code != 0 {
			t.Fatalf("CONNACK: got %#x, want 0", code)
		}
		rc.write(publishPacket(v5, "state/dev-b/update", 1, 5, []byte("forged")))
		ack := rc.expect(typePuback)
		if len(ack.body) < 3 || ack.body[2] != 0x87 {
			t.Errorf("PUBACK: got % x, want packet id 00 05 and reason 0x87", ack.body)
		}
		// Still connected: an allowed publish goes through.
		rc.write(publishPacket(v5, "state/dev-c/update", 1, 6, []byte("ok")))
		if ack := rc.expect(typePuback); len(ack.body) > 2 && ack.body[2] != 0 {
			t.Errorf("PUBACK for allowed publish: got % x, want success", ack.body)
		}
		checkMessage(t, brokertest.Next(t, all, wait), "state/dev-c/update", []byte("ok"), 0, false)
	})
}

func withPassword(pw string) func(*mqtt.ClientOptions) {
	return func(o *mqtt.ClientOptions) { o.SetPassword(pw).SetUsername("u") }
}
