package server_test

import (
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/internal/brokertest"
	"github.com/umbra-iot/umbra/internal/cluster"
	"github.com/umbra-iot/umbra/internal/natstest"
	"github.com/umbra-iot/umbra/internal/server"
	"github.com/umbra-iot/umbra/wire"
)

// getCluster asks r for GET /v1/cluster with the bearer token tok ("" for
// none) and decodes a 200 answer into st.
func (r *rig) getCluster(t *testing.T, tok string, st *wire.ClusterStatus) int {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, "http://"+r.HTTPAddr().String()+"/v1/cluster", nil)
	if err != nil {
		t.Fatal(err)
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		if err := json.NewDecoder(resp.Body).Decode(st); err != nil {
			t.Fatalf("GET /v1/cluster: %v", err)
		}
	}
	return resp.StatusCode
}

// TestClusterStatusRoute: in cluster mode every node registers in the node
// registry, and GET /v1/cluster on any node lists every node with its MQTT
// connection count, names the node that holds the planner lease, and
// reports the store buckets healthy. A second node with a live node's ID is
// refused at Open. When a node closes it leaves the list.
func TestClusterStatusRoute(t *testing.T) {
	a, b, ns := openClusterPair(t, func(c *server.Config) { c.ClusterHeartbeat = time.Second; c.Version = "test-1" })
	brokertest.Connect(t, a.mqttURL(), "dev-1")
	brokertest.Connect(t, a.mqttURL(), "dev-2")
	brokertest.Connect(t, b.mqttURL(), "dev-3")

	var st wire.ClusterStatus
	eventually(t, "both nodes listed with their connections", func() string {
		st = wire.ClusterStatus{}
		if code := b.getCluster(t, "", &st); code != http.StatusOK {
			return "GET /v1/cluster on node B: " + http.StatusText(code)
		}
		conns := map[string]int{}
		for _, n := range st.Nodes {
			conns[n.ID] = n.Connections
		}
		if len(st.Nodes) != 2 || conns["a"] != 2 || conns["b"] != 1 {
			raw, _ := json.Marshal(st.Nodes)
			return "nodes " + string(raw) + ", want a with 2 connections and b with 1"
		}
		if st.Planner == "" {
			return "no planner lease holder yet"
		}
		return ""
	})
	if st.Mode != "cluster" || st.Node != "b" || st.Planners != "lease" || st.Planner != "a" && st.Planner != "b" || !st.Healthy {
		t.Errorf("status = mode %q node %q planners %q planner %q healthy %v; want cluster, b, lease, a or b, healthy",
			st.Mode, st.Node, st.Planners, st.Planner, st.Healthy)
	}
	for _, n := range st.Nodes {
		if n.Version != "test-1" || !strings.HasPrefix(n.Addr, "http://127.0.0.1:") {
			t.Errorf("node %+v: want version test-1 and its HTTP address", n)
		}
	}
	buckets := map[string]bool{}
	for _, bk := range st.Buckets {
		buckets[bk.Stream] = bk.Healthy
	}
	for _, want := range []string{"KV_umbra_shadow", "KV_umbra_identity", "KV_umbra_firmware", "KV_umbra_nodes", "KV_umbra_rollout", "KV_umbra_lease"} {
		if !buckets[want] {
			t.Errorf("buckets %v: want %s, healthy", buckets, want)
		}
	}

	// A third node named like a live one is refused.
	_, err := server.Open(t.Context(), server.Config{DataDir: t.TempDir(), MQTTAddr: "127.0.0.1:0", Anonymous: true,
		NATS: ns.URLs(), NodeID: "a", NATSReplicas: 1, ClusterHeartbeat: time.Second, Logger: testLogger(t)})
	if !errors.Is(err, cluster.ErrNodeIDInUse) {
		t.Errorf("Open of a second node a = %v, want ErrNodeIDInUse", err)
	}

	// A node that closes deregisters.
	ctx := t.Context()
	if err := a.Close(ctx); err != nil {
		t.Fatal(err)
	}
	st = wire.ClusterStatus{}
	if code := b.getCluster(t, "", &st); code != http.StatusOK || len(st.Nodes) != 1 || st.Nodes[0].ID != "b" {
		t.Errorf("after node A closed: %d %+v, want node b alone", code, st.Nodes)
	}
}

// TestClusterStatusSingleNode: a single-node server answers GET
// /v1/cluster with itself as the one node and its connection count, to
// operators and integrators only (401 without a token, 403 for a device).
func TestClusterStatusSingleNode(t *testing.T) {
	r := mustOpenRig(t, true)
	r.connectDevice(t, "dev-1")
	tok, err := os.ReadFile(filepath.Join(r.DataDir(), server.AdminTokenFile))
	if err != nil {
		t.Fatal(err)
	}
	var st wire.ClusterStatus
	if code := r.getCluster(t, "", &st); code != http.StatusUnauthorized {
		t.Errorf("GET /v1/cluster without a token = %d, want 401", code)
	}
	user, pass := r.credentials(t, "dev-1")
	if code := r.getCluster(t, user+":"+pass, &st); code != http.StatusForbidden {
		t.Errorf("GET /v1/cluster as a device = %d, want 403", code)
	}
	if code := r.getCluster(t, strings.TrimSpace(string(tok)), &st); code != http.StatusOK {
		t.Fatalf("GET /v1/cluster as the operator = %d", code)
	}
	if st.Mode != "single-node" || st.Planners != "single-node" || !st.Healthy || len(st.Nodes) != 1 || len(st.Buckets) != 0 {
		t.Fatalf("status = %+v, want single-node with one node and no buckets", st)
	}
	if n := st.Nodes[0]; n.Connections != 1 || n.Addr != "http://"+r.HTTPAddr().String() || n.Started.IsZero() {
		t.Errorf("node = %+v, want 1 connection, its HTTP address and its start time", n)
	}
}

// TestClusterModeOperatorTokenPerNode: the nodes of a cluster share one
// identity store, and each writes its own operator token file at start.
// With one token name for all, a node starting without its file replaced
// the token, which revoked every other node's file: node A's operator got
// 401 once node B had started. Each node's token is now "admin-<node-id>",
// and every node's file stays valid on every node.
func TestClusterModeOperatorTokenPerNode(t *testing.T) {
	ns := natstest.Start(t)
	node := func(id string) *rig {
		return mustOpenRig(t, true, func(c *server.Config) { c.NATS, c.NodeID, c.NATSReplicas = ns.URLs(), id, 1 })
	}
	token := func(r *rig) string {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(r.DataDir(), server.AdminTokenFile))
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	a := node("a")
	tokA := token(a)
	b := node("b")
	tokB := token(b)
	for _, tc := range []struct {
		name, tok, wantName string
		on                  *rig
	}{
		{"A's token on A", tokA, "admin-a", a},
		{"A's token on B", tokA, "admin-a", b},
		{"B's token on A", tokB, "admin-b", a},
		{"B's token on B", tokB, "admin-b", b},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if !strings.HasPrefix(tc.tok, tc.wantName+":") {
				t.Errorf("token file holds %q…, want the token %q", strings.SplitN(tc.tok, ":", 2)[0], tc.wantName)
			}
			var st wire.ClusterStatus
			if code := tc.on.getCluster(t, tc.tok, &st); code != http.StatusOK {
				t.Errorf("GET /v1/cluster = %d, want 200", code)
			}
		})
	}
}
