package main

import (
	"regexp"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/internal/natstest"
	"github.com/umbra-iot/umbra/internal/testbin"
)

// clusterDemoScript is scripts/cluster-demo.sh as seen from this package's
// directory.
const clusterDemoScript = "../../scripts/cluster-demo.sh"

// TestClusterDemo runs `make cluster-demo`'s script end to end with a
// small fleet: three nats-servers and three nodes start, every device
// connects, a shadow written through one node is read through another,
// a rollout created through one node succeeds on every device (planned by
// the planner lease's holder), the cluster status lists the three nodes
// healthy with the lease's holder, node 3 killed -9 has its 10 devices
// reconnected to another node (umbra sim's failover), and no process the
// script started outlives it.
func TestClusterDemo(t *testing.T) {
	nats, err := natstest.Binary()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	r := startScript(t, clusterDemoScript, dir, "CLUSTER_DEMO_TMP="+dir, "CLUSTER_DEMO_BIN="+testbin.Umbra(t),
		"CLUSTER_DEMO_DEVICES=30", "CLUSTER_DEMO_TIMEOUT=40", natstest.EnvBinary+"="+nats)
	if code := r.wait(t, 120*time.Second); code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
	out := r.output()
	for _, w := range []string{
		`(?m)^    30/30 devices connected over 3 nodes`,
		`(?m)^    n3 reads: "desired":\{"demo":"hello from n1"\}`,
		`(?m)^    rollout r\d+ succeeded on 30 of 30 devices in [\d.]+s, planned by n[123]$`,
		`(?m)^    mode: cluster, healthy; answered by node n2; planner: lease held by n[123]$`,
		`(?m)^    n1 +http://127\.0\.0\.1:\d+ +\S+ +\d+ `,
		`(?m)^    n3 +http://127\.0\.0\.1:\d+ +\S+ +\d+ `,
		`(?m)^    KV_umbra_shadow +3 +3 +nats-\d`,
		`(?m)^    30/30 devices connected again, 10 reconnected, in `,
	} {
		if !regexp.MustCompile(w).MatchString(out) {
			t.Errorf("output has no line matching %q", w)
		}
	}
	r.checkNoSurvivors(t)
	if t.Failed() {
		t.Logf("output:\n%s", out)
	}
}
