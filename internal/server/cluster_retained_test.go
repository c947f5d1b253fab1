package server_test

import (
	"testing"
	"time"

	"github.com/umbra-iot/umbra/internal/brokertest"
)

// TestClusterModeRetainedEverywhere: with `serve --nats` retained
// messages are cluster-wide: one published on node A, where nobody on
// node B subscribed, is served to a new subscriber on node B and counted
// in node B's /metrics; clearing it on node B clears it on node A.
func TestClusterModeRetainedEverywhere(t *testing.T) {
	a, b, _ := openClusterPair(t)
	pubA := brokertest.Connect(t, a.mqttURL(), "pub-a")
	brokertest.PublishRetained(t, pubA, "site/gate", 1, []byte("open"))
	eventually(t, "node b holds the retained message", func() string {
		if b.metric(t, "umbra_broker_retained_bytes") != 4 || b.metric(t, "umbra_cluster_retained_applied_total") < 1 {
			return "node b's /metrics do not count node a's retained message"
		}
		return ""
	})
	late := brokertest.Subscribe(t, brokertest.Connect(t, b.mqttURL(), "late-b"), "site/#", 1)
	if m := brokertest.Next(t, late, 10*time.Second); string(m.Payload) != "open" || !m.Retained {
		t.Fatalf("late subscriber on node b: %s, want the retained open", m)
	}

	brokertest.PublishRetained(t, brokertest.Connect(t, b.mqttURL(), "pub-b"), "site/gate", 1, nil)
	eventually(t, "node a cleared it", func() string {
		if a.metric(t, "umbra_broker_retained_bytes") != 0 {
			return "node a still holds site/gate"
		}
		return ""
	})
	if n := a.metric(t, `umbra_cluster_retained_writes_total{result="stored"}`); n != 1 {
		t.Errorf("node a stored %v retained writes, want 1", n)
	}
}
