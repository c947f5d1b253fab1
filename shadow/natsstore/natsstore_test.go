package natsstore_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/internal/natskv"
	"github.com/umbra-iot/umbra/internal/natstest"
	"github.com/umbra-iot/umbra/shadow"
	"github.com/umbra-iot/umbra/shadow/natsstore"
	"github.com/umbra-iot/umbra/shadow/storetest"
)

// opener returns a storetest.Opener on target: each test directory is one
// bucket, so reopening a directory reopens its bucket through a new Store.
func opener(t *testing.T, target natstest.Target) storetest.Opener {
	js := natstest.JetStream(t, target.URLs())
	bucket := natstest.BucketNames("shadow")
	return func(tb testing.TB, dir string) storetest.Store {
		tb.Helper()
		s, err := natsstore.Open(context.Background(), natsstore.Config{JetStream: js, Bucket: bucket(dir), Replicas: target.Replicas()})
		if err != nil {
			tb.Fatalf("open: %v", err)
		}
		return s
	}
}

func TestContract(t *testing.T) { storetest.Contract(t, opener(t, natstest.Start(t))) }

func TestContractR3(t *testing.T) { storetest.Contract(t, opener(t, natstest.StartCluster(t))) }

// TestTwoNodesLoseNoUpdate: two engines on one R3 bucket, each connected
// to another server of the cluster (two Umbra nodes), update the same
// shadow concurrently; every accepted update is in the final document and
// each got its own version (the compare-and-set on the key's revision).
func TestTwoNodesLoseNoUpdate(t *testing.T) {
	c := natstest.StartCluster(t)
	const perNode = 25
	var engines []*shadow.Engine
	for i := range 2 {
		js := natstest.JetStream(t, []string{c.Servers[i].URL()})
		st, err := natsstore.Open(t.Context(), natsstore.Config{JetStream: js, Replicas: 3})
		if err != nil {
			t.Fatal(err)
		}
		eng, err := shadow.Open(t.Context(), shadow.Config{Store: st, DeviceRate: -1, MaxInFlight: -1, DedupeWindow: -1})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { eng.Close(context.Background()); st.Close(context.Background()) })
		engines = append(engines, eng)
	}
	var wg sync.WaitGroup
	var conflicts atomic.Int64
	versions := make(chan float64, 2*perNode)
	for n, eng := range engines {
		wg.Go(func() {
			for i := range perNode {
				body := fmt.Sprintf(`{"state":{"reported":{"n%d_%d":%d}}}`, n, i, i)
				// A 409 (the shadow kept changing at each of the engine's
				// attempts) is a refusal, not a loss: the client retries,
				// as the rejection tells it to.
				out, err := eng.Update(t.Context(), "dev-1", []byte(body))
				for retry := 0; errors.Is(err, shadow.ErrVersionConflict) && retry < 50; retry++ {
					conflicts.Add(1)
					out, err = eng.Update(t.Context(), "dev-1", []byte(body))
				}
				if err != nil {
					t.Errorf("node %d update %d: %v", n, i, err)
					return
				}
				var acc struct{ Version float64 }
				if err := json.Unmarshal(out, &acc); err != nil {
					t.Errorf("node %d: accepted %s: %v", n, out, err)
					return
				}
				versions <- acc.Version
			}
		})
	}
	wg.Wait()
	close(versions)
	seen := map[float64]bool{}
	for v := range versions {
		if seen[v] {
			t.Errorf("version %v accepted twice", v)
		}
		seen[v] = true
	}
	t.Logf("%d updates, %d answered 409 and retried by the client", 2*perNode, conflicts.Load())
	doc, err := engines[1].Get(t.Context(), "dev-1", nil)
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		State   struct{ Reported map[string]int }
		Version int
	}
	if err := json.Unmarshal(doc, &got); err != nil {
		t.Fatal(err)
	}
	if len(got.State.Reported) != 2*perNode || got.Version != 2*perNode {
		t.Errorf("final document has %d reported fields at version %d, want %d at version %d: %s",
			len(got.State.Reported), got.Version, 2*perNode, 2*perNode, doc)
	}
}

// TestNewerBucketRefused: a node whose shadow layout differs from the
// bucket's (a newer release wrote it) refuses to open it, saying both
// versions, and changes nothing.
func TestNewerBucketRefused(t *testing.T) {
	s := natstest.Start(t)
	js := natstest.JetStream(t, s.URLs())
	if _, err := natskv.OpenBucket(t.Context(), js, natskv.BucketConfig{Name: natsstore.DefaultBucket,
		Schema: natskv.Schema{Kind: "shadow", Version: natsstore.SchemaVersion + 1}}); err != nil {
		t.Fatal(err)
	}
	_, err := natsstore.Open(t.Context(), natsstore.Config{JetStream: js})
	want := fmt.Sprintf("the bucket holds shadow schema version %d, this node uses shadow schema version %d", natsstore.SchemaVersion+1, natsstore.SchemaVersion)
	if !errors.Is(err, natskv.ErrSchemaMismatch) || !strings.Contains(err.Error(), want) {
		t.Fatalf("Open = %v, want ErrSchemaMismatch saying %q", err, want)
	}
}

// TestWatchDevices: a Store on another connection (another node) hears of
// every classic shadow written or deleted through the first, and of no
// named shadow.
func TestWatchDevices(t *testing.T) {
	srv := natstest.Start(t)
	open := func() *natsstore.Store {
		s, err := natsstore.Open(t.Context(), natsstore.Config{JetStream: natstest.JetStream(t, srv.URLs())})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close(context.Background()) })
		return s
	}
	writer, watcher := open(), open()
	ch, err := watcher.WatchDevices(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []shadow.Write{
		{Key: shadow.Key{Device: "dev-1"}, Value: []byte(`{"version":1}`)},
		{Key: shadow.Key{Device: "dev-1", Name: "cfg"}, Value: []byte(`{"version":1}`)},
		{Key: shadow.Key{Device: "dev.2"}, Value: []byte(`{"version":1}`)},
	} {
		if err := writer.Commit(t.Context(), w); err != nil {
			t.Fatal(err)
		}
	}
	rec, err := writer.Get(t.Context(), shadow.Key{Device: "dev-1"})
	if err != nil {
		t.Fatal(err)
	}
	if err := writer.Commit(t.Context(), shadow.Write{Key: shadow.Key{Device: "dev-1"}, Rev: rec.Rev}); err != nil {
		t.Fatal(err)
	}
	var got []string
	for len(got) < 3 {
		select {
		case id := <-ch:
			got = append(got, string(id))
		case <-time.After(10 * time.Second):
			t.Fatalf("watch reported %v, want dev-1, dev.2, dev-1", got)
		}
	}
	if want := "dev-1 dev.2 dev-1"; strings.Join(got, " ") != want {
		t.Errorf("watch reported %v, want %s (no named shadow)", got, want)
	}
}
