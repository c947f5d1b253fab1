package cluster_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/umbra-iot/umbra/internal/cluster"
	"github.com/umbra-iot/umbra/internal/natskv"
	"github.com/umbra-iot/umbra/internal/natstest"
	"github.com/umbra-iot/umbra/wire"
)

// TestStatusHandler: GET /v1/cluster lists the registered nodes, the
// planner lease's holder and every bucket, healthy; with NATS gone it
// answers 503 with the API's JSON error body.
func TestStatusHandler(t *testing.T) {
	s := natstest.Start(t)
	js := natstest.JetStream(t, s.URLs())
	ctx := t.Context()
	reg, err := cluster.OpenRegistry(ctx, cluster.RegistryConfig{JetStream: js, Node: cluster.Node{ID: "n1", Addr: "127.0.0.1:1883", Version: "test"}})
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close(context.Background())
	lease, err := cluster.OpenLease(ctx, cluster.LeaseConfig{JetStream: js, Name: "planner", Holder: "n1", TTL: testTTL})
	if err != nil {
		t.Fatal(err)
	}
	defer lease.Close(context.Background())
	if _, err := natskv.Open(ctx, js, natskv.BucketConfig{Name: "umbra_shadow", Schema: natskv.Schema{Kind: "shadow", Version: 1}}); err != nil {
		t.Fatal(err)
	}
	waitHeld(t, lease)
	srv := httptest.NewServer(cluster.StatusSource{JetStream: js, Registry: reg, Lease: lease}.Handler(nil))
	defer srv.Close()

	var st wire.ClusterStatus
	if code := getJSON(t, srv.URL, &st); code != http.StatusOK {
		t.Fatalf("GET = %d", code)
	}
	if len(st.Nodes) != 1 || st.Nodes[0].ID != "n1" || st.Planner != "n1" || !st.Healthy {
		t.Errorf("status = %+v, want node n1, planner n1, healthy", st)
	}
	streams := map[string]bool{}
	for _, b := range st.Buckets {
		streams[b.Stream] = b.Healthy
	}
	for _, want := range []string{"KV_umbra_shadow", "KV_umbra_nodes", "KV_umbra_lease"} {
		if !streams[want] {
			t.Errorf("buckets %+v: want %s, healthy", st.Buckets, want)
		}
	}

	s.Kill()
	var body wire.ErrorBody
	if code := getJSON(t, srv.URL, &body); code != http.StatusServiceUnavailable || body.Code != http.StatusServiceUnavailable {
		t.Errorf("GET with NATS down = %d %+v, want 503 with a JSON error body", code, body)
	}
}

func getJSON(t *testing.T, url string, v any) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("decode: %v", err)
	}
	return resp.StatusCode
}

func waitHeld(t *testing.T, l *cluster.Lease) {
	t.Helper()
	changes := l.Changes()
	if l.Held() {
		return
	}
	select {
	case <-changes:
	case <-t.Context().Done():
	}
	if !l.Held() {
		t.Fatal("the only candidate did not gain the lease")
	}
}
