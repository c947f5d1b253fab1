package server_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/umbra-iot/umbra/internal/brokertest"
	"github.com/umbra-iot/umbra/internal/natstest"
	"github.com/umbra-iot/umbra/internal/server"
)

// openClusterPair opens two anonymous nodes, a and b, in cluster mode on
// one NATS server.
func openClusterPair(t *testing.T, opts ...func(*server.Config)) (a, b *rig, ns *natstest.Server) {
	t.Helper()
	ns = natstest.Start(t)
	node := func(id string) *rig {
		return mustOpenRig(t, false, append([]func(*server.Config){func(c *server.Config) {
			c.NATS, c.NodeID, c.NATSReplicas = ns.URLs(), id, 1
		}}, opts...)...)
	}
	return node("a"), node("b"), ns
}

// metric returns the value of the unlabelled series name in r's /metrics.
func (r *rig) metric(t *testing.T, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + r.HTTPAddr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("/metrics: %s: %v", sc.Text(), err)
			}
			return f
		}
	}
	t.Fatalf("/metrics has no %s", name)
	return 0
}

// postShadow sends an update through r's HTTP API and fails unless it is
// accepted.
func (r *rig) postShadow(t *testing.T, id, body string) {
	t.Helper()
	resp, err := http.Post("http://"+r.HTTPAddr().String()+"/v1/devices/"+id+"/shadow", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("update of %s: %d", id, resp.StatusCode)
	}
}

// warmUp calls send(i) for i = 0, 1, … every 100 ms until recv yields a
// message (NATS subscriptions are made asynchronously after SUBACK), at
// most 10 s, then drains recv for a moment so that later messages are
// fresh.
func warmUp(t *testing.T, what string, recv <-chan brokertest.Message, send func(i int)) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for i := 0; ; i++ {
		send(i)
		select {
		case <-recv:
			for {
				select {
				case <-recv:
				case <-time.After(200 * time.Millisecond):
					return
				}
			}
		case <-tick.C:
		case <-deadline:
			t.Fatalf("%s: nothing crossed between the nodes within 10 s", what)
		}
	}
}

// TestClusterModeCrossNodeDelivery: with `serve --nats` the nodes' brokers
// are bridged (broker/natsbridge). A delta caused by an HTTP update on
// node A reaches the device connected to node B; an integrator on node A
// subscribed to state/+/update/accepted gets the accepted update of a
// device on node B; a device connecting to node A while connected to node
// B takes its session over, and node B drops the old connection. The
// bridge's series are in /metrics.
func TestClusterModeCrossNodeDelivery(t *testing.T) {
	a, b, _ := openClusterPair(t)

	// Connected first: its takeover subscription on node B is long in
	// place when it reconnects to node A at the end.
	lost := make(chan error, 1)
	old := brokertest.Connect(t, b.mqttURL(), "dev-3", func(o *paho.ClientOptions) {
		o.SetConnectionLostHandler(func(_ paho.Client, err error) { lost <- err })
	})

	t.Run("delta to a device on another node", func(t *testing.T) {
		dev := brokertest.Connect(t, b.mqttURL(), "dev-1")
		deltas := brokertest.Subscribe(t, dev, "state/dev-1/update/delta", 1)
		warmUp(t, "delta from node A to node B", deltas, func(i int) {
			a.postShadow(t, "dev-1", fmt.Sprintf(`{"state":{"desired":{"warm":%d}}}`, i))
		})
		a.postShadow(t, "dev-1", `{"state":{"desired":{"led":"on"}}}`)
		m := brokertest.Next(t, deltas, 10*time.Second)
		var delta struct {
			State map[string]any `json:"state"`
		}
		if err := json.Unmarshal(m.Payload, &delta); err != nil || delta.State["led"] != "on" {
			t.Fatalf("delta on node B = %s, want led on", m.Payload)
		}
	})

	t.Run("accepted of a device on another node", func(t *testing.T) {
		integrator := brokertest.Connect(t, a.mqttURL(), "integrator-1")
		accepted := brokertest.Subscribe(t, integrator, "state/+/update/accepted", 1)
		dev := brokertest.Connect(t, b.mqttURL(), "dev-2")
		warmUp(t, "accepted from node B to node A", accepted, func(i int) {
			brokertest.Publish(t, dev, "state/dev-2/update", 1, fmt.Appendf(nil, `{"state":{"reported":{"warm":%d}}}`, i))
		})
		brokertest.Publish(t, dev, "state/dev-2/update", 1, []byte(`{"state":{"reported":{"temp":21}},"clientToken":"final"}`))
		m := brokertest.Next(t, accepted, 10*time.Second)
		if m.Topic != "state/dev-2/update/accepted" || !strings.Contains(string(m.Payload), `"clientToken":"final"`) {
			t.Fatalf("integrator on node A got %s, want dev-2's accepted update with clientToken final", m)
		}
	})

	t.Run("session takeover", func(t *testing.T) {
		// dev-1 and dev-2 left with their subtests (clean sessions). Their
		// DISCONNECTs were sent, but node B ends a session on the
		// connection's goroutine after reading it: await the count.
		eventually(t, "node B to hold dev-3's session only", func() string {
			if n := b.metric(t, "umbra_cluster_sessions"); n != 1 {
				return fmt.Sprintf("node B holds %v sessions, want 1 (dev-3)", n)
			}
			return ""
		})
		before := b.metric(t, "umbra_cluster_takeovers_total{role=\"released\"}")
		brokertest.Connect(t, a.mqttURL(), "dev-3")
		select {
		case err := <-lost:
			t.Logf("node B dropped the old connection: %v", err)
		case <-time.After(10 * time.Second):
			t.Fatal("node B kept dev-3's old connection after it connected to node A")
		}
		if old.IsConnectionOpen() {
			t.Error("old connection still open")
		}
		if after := b.metric(t, "umbra_cluster_takeovers_total{role=\"released\"}"); after != before+1 {
			t.Errorf("node B's released takeovers: %v, then %v; want one more", before, after)
		}
		if a.metric(t, "umbra_cluster_nats_connected") != 1 {
			t.Error("umbra_cluster_nats_connected on node A is not 1")
		}
	})
}
