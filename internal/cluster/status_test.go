package cluster_test

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
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

// TestStatusWarnsOfMixedReleases: nodes of different Umbra releases are
// named in a warning (the cluster stays healthy: a rolling upgrade passes
// through it); nodes of one release give none.
func TestStatusWarnsOfMixedReleases(t *testing.T) {
	s := natstest.Start(t)
	js := natstest.JetStream(t, s.URLs())
	tests := []struct {
		name     string
		versions map[string]string // node → release
		want     string            // "" = no warning
	}{
		{name: "one release", versions: map[string]string{"a1": "0.5.0", "a2": "0.5.0"}},
		{name: "two releases", versions: map[string]string{"b1": "0.4.0", "b2": "0.5.0", "b3": "0.5.0"},
			want: "nodes run different Umbra releases: 0.4.0 (b1), 0.5.0 (b2, b3); finish the upgrade"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bucket := fmt.Sprintf("umbra_nodes_%d", i)
			var reg *cluster.Registry
			for _, id := range slices.Sorted(maps.Keys(tt.versions)) {
				r, err := cluster.OpenRegistry(t.Context(), cluster.RegistryConfig{JetStream: js, Bucket: bucket,
					Node: cluster.Node{ID: id, Version: tt.versions[id]}})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { r.Close(context.Background()) })
				reg = r
			}
			st, err := cluster.StatusSource{JetStream: js, Registry: reg, Prefix: "none_"}.Status(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case tt.want == "" && len(st.Warnings) != 0:
				t.Errorf("warnings %q, want none", st.Warnings)
			case tt.want != "" && (len(st.Warnings) != 1 || !strings.HasPrefix(st.Warnings[0], tt.want)):
				t.Errorf("warnings %q, want one starting %q", st.Warnings, tt.want)
			}
			if !st.Healthy {
				t.Errorf("healthy = false, want true: mixed releases are a warning")
			}
		})
	}
}
