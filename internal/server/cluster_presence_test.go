package server_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/identity"
	"github.com/umbra-iot/umbra/internal/brokertest"
	"github.com/umbra-iot/umbra/internal/natstest"
	"github.com/umbra-iot/umbra/internal/server"
	"github.com/umbra-iot/umbra/wire"
)

// presenceOf decodes a state/<id>/presence payload.
func presenceOf(t *testing.T, payload []byte) wire.Presence {
	t.Helper()
	var p struct {
		Connected        bool   `json:"connected"`
		DisconnectReason string `json:"disconnectReason"`
		Node             string `json:"node"`
	}
	if err := json.Unmarshal(payload, &p); err != nil {
		t.Fatalf("presence payload %q: %v", payload, err)
	}
	return wire.Presence{Connected: p.Connected, DisconnectReason: p.DisconnectReason, Node: p.Node}
}

// awaitPresence reads msgs until a presence that ok accepts arrives.
func awaitPresence(t *testing.T, where string, msgs <-chan brokertest.Message, what string, ok func(wire.Presence) bool) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case m := <-msgs:
			if ok(presenceOf(t, m.Payload)) {
				return
			}
		case <-deadline:
			t.Fatalf("%s: no presence message %s within 10 s", where, what)
		}
	}
}

// devicePresence is the presence GET /v1/devices/{id} gives on r.
func (r *rig) devicePresence(t *testing.T, id string) wire.Presence {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, "http://"+r.HTTPAddr().String()+"/v1/devices/"+id, nil)
	req.Header.Set("Authorization", "Bearer "+r.adminToken(t))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var d wire.Device
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&d) != nil {
		t.Fatalf("GET /v1/devices/%s: %d", id, resp.StatusCode)
	}
	return d.Presence
}

// TestClusterModePresenceFollowsTheDevice: every node gives one answer
// for a device's presence, on its MQTT presence topic and on GET
// /v1/devices/{id}. A device connected to node B is connected on B on
// both nodes; when it reconnects to node A (a takeover) it is connected
// on A on both nodes, and B's late "taken_over" does not overwrite it:
// a new subscriber on either node gets the retained "connected on a".
func TestClusterModePresenceFollowsTheDevice(t *testing.T) {
	ns := natstest.Start(t)
	node := func(id string) *rig {
		return mustOpenRig(t, true, func(c *server.Config) {
			c.NATS, c.NodeID, c.NATSReplicas, c.ClusterHeartbeat = ns.URLs(), id, 1, time.Second
		})
	}
	a, b := node("a"), node("b")
	secret, err := a.Identity().AddDevice(t.Context(), "dev-p", nil)
	if err != nil {
		t.Fatal(err)
	}
	awaitEnrolled(t, b, "dev-p") // else b may evict the device when it hears of its enrolment
	connect := func(r *rig) {
		brokertest.Connect(t, r.mqttURL(), "dev-p", func(o *paho.ClientOptions) { o.SetUsername("dev-p").SetPassword(secret) })
	}
	watchA := brokertest.Subscribe(t, a.connectToken(t, identity.RoleIntegrator, "watch-a", "watch-a"), "state/dev-p/presence", 1)
	watchB := brokertest.Subscribe(t, b.connectToken(t, identity.RoleIntegrator, "watch-b", "watch-b"), "state/dev-p/presence", 1)
	on := func(node string) func(wire.Presence) bool {
		return func(p wire.Presence) bool { return p.Connected && p.Node == node }
	}

	connect(b)
	for _, w := range []struct {
		name string
		msgs <-chan brokertest.Message
	}{{"node a", watchA}, {"node b", watchB}} {
		awaitPresence(t, w.name, w.msgs, "connected on b", on("b"))
	}
	for name, r := range map[string]*rig{"a": a, "b": b} {
		if p := r.devicePresence(t, "dev-p"); !on("b")(p) {
			t.Errorf("GET on node %s: presence %+v, want connected on b", name, p)
		}
	}

	connect(a) // takes the session over from node b
	awaitPresence(t, "node a", watchA, "connected on a", on("a"))
	awaitPresence(t, "node b", watchB, "connected on a", on("a"))
	// Node b has handled the old connection's disconnect (written before
	// a's connect, or skipped as stale) when its two events are counted.
	eventually(t, "node b's disconnect handled", func() string {
		written := b.metric(t, `umbra_cluster_presence_writes_total{result="written"}`)
		stale := b.metric(t, `umbra_cluster_presence_writes_total{result="stale"}`)
		if written+stale < 2 || b.metric(t, "umbra_cluster_presence_pending") != 0 {
			return "node b has not handled dev-p's takeover disconnect"
		}
		return ""
	})
	for name, r := range map[string]*rig{"a": a, "b": b} {
		if p := r.devicePresence(t, "dev-p"); !on("a")(p) {
			t.Errorf("GET on node %s: presence %+v, want connected on a", name, p)
		}
		late := brokertest.Subscribe(t, r.connectToken(t, identity.RoleIntegrator, "late-"+name, "late-"+name), "state/dev-p/presence", 1)
		m := brokertest.Next(t, late, 10*time.Second)
		if p := presenceOf(t, m.Payload); !m.Retained || !on("a")(p) {
			t.Errorf("retained presence on node %s: %s, want connected on a", name, m.Payload)
		}
	}

	// Removed on node b: its presence goes on every node (it is evicted,
	// and its last disconnect is not recorded), as in single-node mode.
	if err := b.Identity().RemoveDevice(t.Context(), "dev-p"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "dev-p's presence forgotten on both nodes", func() string {
		for name, r := range map[string]*rig{"a": a, "b": b} {
			if p, _ := r.Identity().Presence("dev-p"); p != (identity.Presence{}) {
				return fmt.Sprintf("node %s still reports %+v", name, p)
			}
		}
		return ""
	})
}

// awaitEnrolled waits until node r has heard of device id's enrolment on
// another node: a device that connects to r first may be disconnected
// when r's identity store then reads its new credential.
func awaitEnrolled(t *testing.T, r *rig, id device.ID) {
	t.Helper()
	eventually(t, "node knows "+string(id), func() string {
		if r.Identity().Enrolment(id) == "" {
			return "not enrolled on this node yet"
		}
		return ""
	})
}
