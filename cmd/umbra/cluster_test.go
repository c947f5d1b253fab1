package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/internal/natstest"
	"github.com/umbra-iot/umbra/internal/waitfor"
	"github.com/umbra-iot/umbra/wire"
)

// TestClusterStatusCLI: umbra cluster status lists a single-node server
// as itself, and in cluster mode (two umbra serve --nats nodes on one
// nats-server) every node, from any node, as text, json and yaml.
func TestClusterStatusCLI(t *testing.T) {
	single := startServer(t)
	r := runCLI(t.Context(), "", "cluster", "status", "-o", "json", "--api", single.apiURL(), "--data-dir", single.dataDir)
	var st wire.ClusterStatus
	if r.err != nil || json.Unmarshal([]byte(r.stdout), &st) != nil || st.Mode != "single-node" || len(st.Nodes) != 1 {
		t.Fatalf("single node: %v %q, want mode single-node with one node", r.err, r.stdout)
	}

	ns := natstest.Start(t)
	node := func(id string) *server {
		return startServerConfig(t, func(c *serveConfig) { c.NATS, c.NodeID, c.NATSReplicas = ns.URLs(), id, 1 })
	}
	node("n1")
	n2 := node("n2")
	args := []string{"--api", n2.apiURL(), "--data-dir", n2.dataDir}
	// The planner lease is taken in the nodes' background: wait for it.
	waitfor.PollExplained(t, 30*time.Second, "a healthy cluster with a planner lease holder", func() string {
		r = runCLI(t.Context(), "", append([]string{"cluster", "status", "-o", "json"}, args...)...)
		st = wire.ClusterStatus{}
		if r.err != nil || json.Unmarshal([]byte(r.stdout), &st) != nil {
			t.Fatalf("cluster status -o json: %v %q", r.err, r.stdout)
		}
		if st.Mode != "cluster" || st.Node != "n2" || len(st.Nodes) != 2 || st.Nodes[0].ID != "n1" || st.Nodes[1].ID != "n2" ||
			!st.Healthy || st.Planners != "lease" || st.Planner == "" {
			return fmt.Sprintf("status = %+v, want nodes n1 and n2 answered by n2, healthy, with a lease holder", st)
		}
		return ""
	})
	r = runCLI(t.Context(), "", append([]string{"cluster", "status"}, args...)...)
	if r.err != nil || !strings.Contains(r.stdout, "mode: cluster, healthy; answered by node n2; planner: lease held by "+st.Planner) ||
		!strings.Contains(r.stdout, "\nn1 ") || !strings.Contains(r.stdout, "KV_umbra_shadow") {
		t.Errorf("cluster status (text): %v\n%s", r.err, r.stdout)
	}
	r = runCLI(t.Context(), "", append([]string{"cluster", "status", "-o", "yaml"}, args...)...)
	if r.err != nil || !strings.Contains(r.stdout, "mode: cluster") {
		t.Errorf("cluster status -o yaml: %v\n%s", r.err, r.stdout)
	}
	r = runCLI(t.Context(), "", append([]string{"cluster", "status", "-o", "xml"}, args...)...)
	oneLine(t, "cluster status -o xml", r.err, "xml")
}
