package natstest_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/umbra-iot/umbra/internal/natstest"
)

func TestBinaryMissingSaysMakeDeps(t *testing.T) {
	t.Setenv(natstest.EnvBinary, t.TempDir()+"/no-such-nats-server")
	_, err := natstest.Binary()
	if err == nil || !strings.Contains(err.Error(), "nats-server not found") || !strings.Contains(err.Error(), "make deps") {
		t.Fatalf("Binary() with a missing %s = %v, want an error saying nats-server not found and make deps", natstest.EnvBinary, err)
	}
}

func TestBinaryIsPinnedVersion(t *testing.T) {
	bin, err := natstest.Binary()
	if err != nil {
		t.Fatal(err)
	}
	if got := natstest.Version(t.Context(), bin); got != natstest.PinnedVersion {
		t.Fatalf("%s --version = %q, want %q (run make deps)", bin, got, natstest.PinnedVersion)
	}
}

func TestSingleServerKeyValue(t *testing.T) {
	s := natstest.Start(t)
	js := natstest.JetStream(t, s.URLs())
	ctx := t.Context()
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "t", Replicas: s.Replicas(), Storage: jetstream.FileStorage})
	if err != nil {
		t.Fatal(err)
	}
	rev, err := kv.Create(ctx, "k", []byte("v1"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Update(ctx, "k", []byte("v2"), rev+7); err == nil {
		t.Fatal("Update with a wrong revision succeeded, want a compare-and-set failure")
	}

	// kill -9 and restart: the acknowledged value is still there.
	s.Kill()
	s.Restart()
	js = natstest.JetStream(t, s.URLs())
	kv, err = js.KeyValue(ctx, "t")
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	if string(e.Value()) != "v1" || e.Revision() != rev {
		t.Fatalf("after kill -9 and restart: Get = %q rev %d, want %q rev %d", e.Value(), e.Revision(), "v1", rev)
	}
}

func TestClusterSurvivesOneServerKilled(t *testing.T) {
	c := natstest.StartCluster(t)
	if c.Replicas() != 3 {
		t.Fatalf("Replicas() = %d, want 3", c.Replicas())
	}
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	js := natstest.JetStream(t, c.URLs())
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "t", Replicas: 3, Storage: jetstream.FileStorage})
	if err != nil {
		t.Fatal(err)
	}
	info, err := js.Stream(ctx, "KV_t")
	if err != nil {
		t.Fatal(err)
	}
	if got := info.CachedInfo().Config.Replicas; got != 3 {
		t.Fatalf("bucket replicas = %d, want 3", got)
	}
	if _, err := kv.Put(ctx, "before", []byte("1")); err != nil {
		t.Fatal(err)
	}

	victim := c.Servers[0]
	victim.Kill()
	// Two of three replicas are a quorum: writes go on. A write may meet a
	// leader election and time out once; that is not yet a loss, so it is
	// retried until ctx ends.
	putRetry(ctx, t, kv, "during", "2")

	victim.Restart()
	// Read through the restarted server only: it catches up from the others.
	nc, err := nats.Connect(victim.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js2, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	kv2, err := rejoined(ctx, func() (jetstream.KeyValue, error) { return js2.KeyValue(ctx, "t") })
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"before", "during"} {
		e, err := rejoined(ctx, func() (jetstream.KeyValueEntry, error) { return kv2.Get(ctx, k) })
		if err != nil {
			t.Fatalf("Get(%s) through %s after restart: %v", k, victim.Name, err)
		}
		if len(e.Value()) != 1 {
			t.Fatalf("Get(%s) = %q", k, e.Value())
		}
	}
}

// rejoined calls f, a JetStream request through a server that has just
// rejoined its cluster, until it answers something else than "no
// responders". The server answers JetStream's account information
// (Restart's readiness) before its routes have told it where every stream
// and its leader are: a request in that moment gets nats.ErrNoResponders
// (seen twice under load: the bucket lookup and a read). That is the moment
// of rejoining, not a loss, so it is retried every 25 ms until ctx ends;
// any other answer is returned at once.
func rejoined[T any](ctx context.Context, f func() (T, error)) (T, error) {
	for {
		v, err := f()
		if !errors.Is(err, nats.ErrNoResponders) {
			return v, err
		}
		select {
		case <-ctx.Done():
			return v, fmt.Errorf("%w (still, when %w)", err, ctx.Err())
		case <-time.After(25 * time.Millisecond):
		}
	}
}

func putRetry(ctx context.Context, t *testing.T, kv jetstream.KeyValue, key, value string) {
	t.Helper()
	var err error
	for ctx.Err() == nil {
		attempt, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err = kv.Put(attempt, key, []byte(value))
		cancel()
		if err == nil {
			return
		}
	}
	t.Fatal(fmt.Errorf("put %s with one server killed: %w", key, err))
}
