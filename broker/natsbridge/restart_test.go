package natsbridge_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/broker/boltstore"
	"github.com/umbra-iot/umbra/broker/natsbridge"
	"github.com/umbra-iot/umbra/internal/brokertest"
	"github.com/umbra-iot/umbra/internal/natstest"
)

// durableNode is node n1 with its broker on a bbolt store at path, opened
// and closed by the test.
type durableNode struct {
	store *boltstore.Store
	brk   *broker.Server
	br    *natsbridge.Bridge
}

func openDurable(t *testing.T, path, natsURL string) *durableNode {
	t.Helper()
	st, err := boltstore.Open(t.Context(), boltstore.Config{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	brk, err := broker.Open(t.Context(), broker.Config{TCPAddr: "127.0.0.1:0", Store: st})
	if err != nil {
		t.Fatal(err)
	}
	br, err := natsbridge.Open(t.Context(), natsbridge.Config{Broker: brk, NodeID: "n1", URL: natsURL})
	if err != nil {
		t.Fatal(err)
	}
	d := &durableNode{store: st, brk: brk, br: br}
	t.Cleanup(d.close)
	return d
}

func (d *durableNode) close() {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	_ = d.br.Close(ctx)
	_ = d.brk.Close(ctx)
	_ = d.store.Close(ctx)
}

// TestRestoredSessionsKeepInterest: a node restarted from its store
// restores a device's offline persistent session, subscribes on NATS for
// its filter again, and queues what another node publishes to it until
// the device comes back.
func TestRestoredSessionsKeepInterest(t *testing.T) {
	ns := natstest.Start(t)
	other := startNode(t, ns.URL(), "n2", broker.Config{})
	path := filepath.Join(t.TempDir(), "broker.db")

	a := openDurable(t, path, ns.URL())
	persistent := func(o *mqtt.ClientOptions) { o.SetCleanSession(false) }
	dev := brokertest.Connect(t, brokertest.URL(a.brk), "dev-9", persistent)
	brokertest.Subscribe(t, dev, "dev-9/cmd", 1)
	dev.Disconnect(100)
	a.close()

	a = openDurable(t, path, ns.URL())
	natsbridge.Settle(t, a.br)
	if st := a.br.Stats(); st.Subscriptions != 1 || st.Sessions != 1 {
		t.Fatalf("restarted node stats %+v: want the restored session's subscription and takeover subscription", st)
	}
	pub := brokertest.Connect(t, other.url, "operator")
	brokertest.Publish(t, pub, "dev-9/cmd", 1, []byte("queued"))
	deadline := time.Now().Add(wait)
	for a.br.Stats().InMessages < 1 {
		if time.Now().After(deadline) {
			t.Fatal("the restarted node did not receive the command for its offline session")
		}
		time.Sleep(5 * time.Millisecond) // no event for a message queued offline
	}

	got := make(chan string, 1)
	brokertest.Connect(t, brokertest.URL(a.brk), "dev-9", persistent, func(o *mqtt.ClientOptions) {
		o.SetDefaultPublishHandler(func(_ mqtt.Client, m mqtt.Message) {
			select {
			case got <- string(m.Payload()):
			default:
			}
		})
	})
	select {
	case p := <-got:
		if p != "queued" {
			t.Fatalf("the device got %q, want the queued command", p)
		}
	case <-time.After(wait):
		t.Fatal("the device did not get the command queued while it was offline")
	}
}
