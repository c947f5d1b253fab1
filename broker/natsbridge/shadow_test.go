package natsbridge_test

import (
	"encoding/json"
	"path/filepath"
	"testing"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/internal/brokertest"
	"github.com/umbra-iot/umbra/internal/natstest"
	"github.com/umbra-iot/umbra/shadow"
	"github.com/umbra-iot/umbra/shadow/boltstore"
)

// shadowNode is a node with the shadow engine wired as `umbra serve`
// wires it. Each node has its own shadow file here: the path under test
// is the broker's, which is the same with cluster mode's shared store.
func shadowNode(t *testing.T, natsURL, id string) (*node, *shadow.Engine) {
	t.Helper()
	var eng *shadow.Engine
	n := startNode(t, natsURL, id, broker.Config{
		OnSubscribe:    func(client string, f []string) { eng.HandleSubscribe(client, f) },
		RequestFilters: shadow.RequestFilters,
	})
	st, err := boltstore.Open(t.Context(), boltstore.Config{Path: filepath.Join(t.TempDir(), "shadow.db")})
	if err != nil {
		t.Fatal(err)
	}
	eng, err = shadow.Open(t.Context(), shadow.Config{Store: st, Publisher: n.brk})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = eng.Close(t.Context()) })
	for _, f := range shadow.RequestFilters {
		if err := n.brk.Subscribe(f, eng.HandleRequest); err != nil {
			t.Fatal(err)
		}
	}
	return n, eng
}

// TestShadowAcrossNodes: a delta caused on node 1 (an operator's desired
// state) reaches the device connected to node 2, on the state tree and on
// the $aws tree, which the engine publishes only where it sees
// subscribers; the device's report, handled by node 2's engine (the node
// holding its connection), reaches an integrator on node 1 watching the
// fleet's accepted updates, and is handled once: node 1's engine never
// sees it.
func TestShadowAcrossNodes(t *testing.T) {
	ns := natstest.Start(t)
	a, engA := shadowNode(t, ns.URL(), "n1")
	b, _ := shadowNode(t, ns.URL(), "n2")

	dev := brokertest.Connect(t, b.url, "dev1")
	deltas := brokertest.Subscribe(t, dev, "state/dev1/update/delta", 1)
	awsDeltas := brokertest.Subscribe(t, dev, "$aws/things/dev1/shadow/update/delta", 1)
	integrator := brokertest.Connect(t, a.url, "integrator")
	accepted := brokertest.Subscribe(t, integrator, "state/+/update/accepted", 1)
	settle(t, a, b)

	if _, err := engA.Update(t.Context(), "dev1", []byte(`{"state":{"desired":{"fw":"2.0"}}}`)); err != nil {
		t.Fatal(err)
	}
	for _, ch := range []<-chan brokertest.Message{deltas, awsDeltas} {
		m := brokertest.Next(t, ch, wait)
		var d struct {
			State map[string]any `json:"state"`
		}
		if err := json.Unmarshal(m.Payload, &d); err != nil || d.State["fw"] != "2.0" {
			t.Fatalf("delta on node 2: %s (%v), want state.fw 2.0", m, err)
		}
	}
	m := brokertest.Next(t, accepted, wait) // node 1's own accepted, local
	if m.Topic != "state/dev1/update/accepted" {
		t.Fatalf("integrator: got %s, want the operator's accepted update", m)
	}

	brokertest.Publish(t, dev, "state/dev1/update", 1, []byte(`{"state":{"reported":{"fw":"1.0"}}}`))
	m = brokertest.Next(t, accepted, wait)
	if m.Topic != "state/dev1/update/accepted" {
		t.Fatalf("integrator on node 1: got %s, want the device's accepted report from node 2", m)
	}
	expectNothing(t, accepted) // one accepted: node 1's engine did not handle the report too
}
