package natsbridge_test

import (
	"testing"

	"github.com/umbra-iot/umbra/internal/brokertest"
)

// TestPublishLocalStaysOnItsNode: a message of Server.PublishLocal (what
// every node publishes for itself, such as presence) reaches the node's
// own subscribers and is retained there, but never crosses to another
// node, while a Publish after it does.
func TestPublishLocalStaysOnItsNode(t *testing.T) {
	nodes, _ := startNodes(t, 2)
	a, b := nodes[0], nodes[1]
	onA := brokertest.Subscribe(t, brokertest.Connect(t, a.url, "sub-a"), "presence/#", 1)
	onB := brokertest.Subscribe(t, brokertest.Connect(t, b.url, "sub-b"), "presence/#", 1)
	settle(t, a, b)
	if err := a.brk.PublishLocal("presence/x", []byte("local"), true, 1); err != nil {
		t.Fatal(err)
	}
	if err := a.brk.Publish("presence/marker", []byte("marker"), false, 1); err != nil {
		t.Fatal(err)
	}
	expect(t, onA, "local", "marker")
	expect(t, onB, "marker") // in order from one origin: the local one would have come first
	expectNothing(t, onB)

	lateA := brokertest.Subscribe(t, brokertest.Connect(t, a.url, "late-a"), "presence/x", 1)
	if m := brokertest.Next(t, lateA, wait); string(m.Payload) != "local" || !m.Retained {
		t.Fatalf("late subscriber on node 1: got %s, want the retained local", m)
	}
	if st := a.brk.Stats(); st.Retained != 1 || st.RetainedBytes != 0 {
		t.Errorf("node 1 stats: %d retained, %d bytes; want 1 and 0 (the broker's own are not clients' bytes)", st.Retained, st.RetainedBytes)
	}
}
