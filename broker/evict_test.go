package broker_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/internal/brokertest"
)

// revocableAuth admits every client as its user name and refuses
// everything to the names revoked since.
type revocableAuth struct {
	mu      sync.Mutex // guards revoked
	revoked map[string]bool
}

func (a *revocableAuth) Authenticate(_ context.Context, c broker.Credentials) (broker.Identity, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.revoked[c.Username] {
		return broker.Identity{}, errors.New("revoked")
	}
	return broker.Identity{Name: c.Username}, nil
}

func (a *revocableAuth) Allow(id broker.Identity, _ string, _ bool) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return !a.revoked[id.Name]
}

func (a *revocableAuth) revoke(name string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.revoked[name] = true
}

// TestEvict: Evict disconnects the matching connected client without
// publishing its will, drops the matching offline persistent session with
// its subscriptions and queued messages, reports ErrNotAuthorized to
// OnDisconnect, and leaves other clients alone.
func TestEvict(t *testing.T) {
	auth := &revocableAuth{revoked: map[string]bool{}}
	causes := make(chan error, 16)
	b := brokertest.New(t, broker.Config{
		Auth: auth,
		OnDisconnect: func(ci broker.ConnInfo, err error) {
			if ci.ClientID == "victim-1" {
				causes <- err
			}
		},
	})
	url := brokertest.URL(b)
	wills := make(chan string, 4)
	if err := b.Subscribe("wills/#", func(_, topic string, _ []byte) { wills <- topic }); err != nil {
		t.Fatal(err)
	}
	user := func(name string) func(*mqtt.ClientOptions) {
		return func(o *mqtt.ClientOptions) { o.SetUsername(name).SetPassword("x") }
	}
	persistent := func(o *mqtt.ClientOptions) { o.SetCleanSession(false) }

	lost := make(chan error, 1)
	v1 := brokertest.Connect(t, url, "victim-1", user("bad"), func(o *mqtt.ClientOptions) {
		o.SetWill("wills/victim-1", "gone", 1, false)
		o.SetConnectionLostHandler(func(_ mqtt.Client, err error) { lost <- err })
	})
	brokertest.Subscribe(t, v1, "v/#", 1)
	v2 := brokertest.Connect(t, url, "victim-2", user("bad"), persistent)
	brokertest.Subscribe(t, v2, "v/#", 1)
	v2.Disconnect(100) // an offline persistent session remains
	other := brokertest.Connect(t, url, "bystander", user("good"))
	otherMsgs := brokertest.Subscribe(t, other, "t/#", 1)
	if err := b.Publish("v/queued", []byte("for the offline session"), false, 1); err != nil {
		t.Fatal(err)
	}

	auth.revoke("bad")
	if n := b.Evict(t.Context(), func(id broker.Identity) bool { return id.Name == "bad" }); n != 2 {
		t.Errorf("Evict = %d, want 2 (a connected client and an offline session)", n)
	}
	// Evict returned after the connection ended: its callbacks have run.
	select {
	case err := <-causes:
		if !errors.Is(err, broker.ErrNotAuthorized) {
			t.Errorf("OnDisconnect cause = %v, want ErrNotAuthorized", err)
		}
	default:
		t.Error("OnDisconnect not called before Evict returned")
	}
	select {
	case topic := <-wills:
		t.Errorf("the evicted client's will was published on %s", topic)
	default:
	}
	select {
	case <-lost:
	case <-time.After(brokertest.Timeout):
		t.Error("the evicted client is still connected")
	}
	st := b.Stats()
	if st.Sessions != 1 || st.Inflight != 0 || b.HasSubscribers("v/x") {
		t.Errorf("after Evict: %d sessions, %d inflight, subscribers on v/x %t; want 1 (the bystander), 0, false",
			st.Sessions, st.Inflight, b.HasSubscribers("v/x"))
	}
	if err := b.Publish("t/after", []byte("still here"), false, 1); err != nil {
		t.Fatal(err)
	}
	if m := brokertest.Next(t, otherMsgs, brokertest.Timeout); m.Topic != "t/after" {
		t.Errorf("bystander received %v, want t/after", m)
	}

	// The client ID starts afresh for a valid identity.
	fresh := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(url).SetClientID("victim-2").
		SetUsername("good").SetPassword("x").SetCleanSession(false).SetAutoReconnect(false))
	tok := fresh.Connect()
	if !tok.WaitTimeout(brokertest.Timeout) || tok.Error() != nil {
		t.Fatalf("reconnect victim-2: %v", tok.Error())
	}
	defer fresh.Disconnect(0)
	if tok.(*mqtt.ConnectToken).SessionPresent() {
		t.Error("victim-2 reconnected to its evicted session (session present)")
	}

	if err := b.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	if n := b.Evict(t.Context(), func(broker.Identity) bool { return true }); n != 0 {
		t.Errorf("Evict after Close = %d, want 0", n)
	}
}

// BenchmarkEvict measures evicting one connected client from a broker
// with 1,000 other connected clients: the scan of every session plus the
// wait for the evicted connection's teardown.
func BenchmarkEvict(b *testing.B) {
	const others = 1000
	auth := &revocableAuth{revoked: map[string]bool{}}
	brk := brokertest.New(b, broker.Config{Auth: auth, Logger: slog.New(slog.DiscardHandler)})
	for i := range others {
		rc := dialRaw(b, brk.Addr())
		rc.write(fullConnectPacket(v311, fmt.Sprintf("other-%04d", i), "", "other", "x"))
		rc.expect(typeConnack)
	}
	match := func(id broker.Identity) bool { return id.Name == "victim" }
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		rc := dialRaw(b, brk.Addr())
		rc.write(fullConnectPacket(v311, "victim", "", "victim", "x"))
		rc.expect(typeConnack)
		b.StartTimer()
		if n := brk.Evict(b.Context(), match); n != 1 {
			b.Fatalf("Evict = %d, want 1", n)
		}
	}
}
