package cluster_test

import (
	"context"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/internal/cluster"
	"github.com/umbra-iot/umbra/internal/natskv"
	"github.com/umbra-iot/umbra/internal/natstest"
)

// TestStoreHealth: every bucket of an R3 cluster is healthy with three
// current replicas; with one server killed each still has a leader and a
// quorum, and names the dead server offline or lagging.
func TestStoreHealth(t *testing.T) {
	c := natstest.StartCluster(t)
	js := natstest.JetStream(t, c.URLs())
	for _, name := range []string{"umbra_a", "umbra_b"} {
		if _, err := natskv.Open(t.Context(), js, natskv.BucketConfig{Name: name, Replicas: 3, Schema: natskv.Schema{Kind: "test", Version: 1}}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := natskv.Open(t.Context(), js, natskv.BucketConfig{Name: "other", Replicas: 3, Schema: natskv.Schema{Kind: "test", Version: 1}}); err != nil {
		t.Fatal(err)
	}
	hs, err := cluster.StoreHealth(t.Context(), js, "umbra_")
	if err != nil {
		t.Fatal(err)
	}
	if len(hs) != 2 || hs[0].Stream != "KV_umbra_a" || hs[1].Stream != "KV_umbra_b" {
		t.Fatalf("StoreHealth = %+v, want KV_umbra_a and KV_umbra_b", hs)
	}
	for _, h := range hs {
		if !h.Healthy || h.Replicas != 3 || h.Keys != 1 { // the schema record
			t.Errorf("%s = %+v, want healthy, 3 replicas, 1 key", h.Stream, h)
		}
	}

	victim := c.Servers[2]
	victim.Kill()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		hs, err = cluster.StoreHealth(ctx, js, "umbra_")
		cancel()
		missing := 0
		for _, h := range hs {
			if h.Healthy && h.Current == 2 && len(h.Offline)+len(h.Lagging) == 1 && h.Leader != victim.Name {
				missing++
			}
		}
		if err == nil && len(hs) == 2 && missing == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("with %s killed: StoreHealth = %+v, %v; want each bucket healthy with %s offline or lagging", victim.Name, hs, err, victim.Name)
		}
		time.Sleep(100 * time.Millisecond) // replica state is the servers' view: poll
	}
}
