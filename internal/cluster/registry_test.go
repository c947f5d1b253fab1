package cluster_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/umbra-iot/umbra/internal/cluster"
	"github.com/umbra-iot/umbra/internal/natstest"
)

func TestRegistry(t *testing.T) {
	s := natstest.Start(t)
	const beat = time.Second
	open := func(id string, conns *atomic.Int64) (*cluster.Registry, jetstream.JetStream, error) {
		nc := natstest.Connect(t, s.URLs())
		js, err := jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		r, err := cluster.OpenRegistry(t.Context(), cluster.RegistryConfig{JetStream: js, Heartbeat: beat,
			Node: cluster.Node{ID: id, Addr: "127.0.0.1:1883", Version: "test"}, Connections: func() int { return int(conns.Load()) }})
		return r, js, err
	}
	var c1, c2 atomic.Int64
	c1.Store(7)
	r1, _, err := open("n1", &c1)
	if err != nil {
		t.Fatal(err)
	}
	r2, _, err := open("n2", &c2)
	if err != nil {
		t.Fatal(err)
	}
	nodes, err := r1.Nodes(t.Context())
	if err != nil || len(nodes) != 2 || nodes[0].ID != "n1" || nodes[0].Connections != 7 || nodes[1].ID != "n2" {
		t.Fatalf("Nodes = %+v, %v; want n1 (7 connections) and n2", nodes, err)
	}

	// A second node with a live node's ID is refused, saying why.
	if _, _, err := open("n1", &c1); !errors.Is(err, cluster.ErrNodeIDInUse) || !strings.Contains(err.Error(), "n1") {
		t.Fatalf("OpenRegistry with a live node's ID = %v, want ErrNodeIDInUse", err)
	}

	// Heartbeats carry the connection count.
	c2.Store(42)
	deadline := time.Now().Add(5 * beat)
	for {
		nodes, err = r1.Nodes(t.Context())
		if err == nil && len(nodes) == 2 && nodes[1].Connections == 42 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("n2's connection count not updated by a heartbeat: %+v, %v", nodes, err)
		}
		time.Sleep(50 * time.Millisecond) // heartbeats are periodic: poll
	}

	// A clean Close deregisters at once.
	if err := r2.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	if nodes, err = r1.Nodes(t.Context()); err != nil || len(nodes) != 1 {
		t.Fatalf("Nodes after n2's Close = %+v, %v; want n1 alone", nodes, err)
	}
	if err := r1.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// TestRegistryForgetsDeadNode: a node that stops heartbeating (its process
// died: its connection closes without deregistering) is gone from the
// list three heartbeats later, and its ID may be registered again.
func TestRegistryForgetsDeadNode(t *testing.T) {
	s := natstest.Start(t)
	const beat = time.Second
	nc := natstest.Connect(t, s.URLs())
	js, _ := jetstream.New(nc)
	if _, err := cluster.OpenRegistry(t.Context(), cluster.RegistryConfig{JetStream: js, Heartbeat: beat, Node: cluster.Node{ID: "dead"}}); err != nil {
		t.Fatal(err)
	}
	js2 := natstest.JetStream(t, s.URLs())
	live, err := cluster.OpenRegistry(t.Context(), cluster.RegistryConfig{JetStream: js2, Heartbeat: beat, Node: cluster.Node{ID: "live"}})
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close(context.Background())
	nc.Close() // the process dies
	deadline := time.Now().Add(3*beat + 3*time.Second)
	for {
		nodes, err := live.Nodes(t.Context())
		if err == nil && len(nodes) == 1 && nodes[0].ID == "live" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("dead node still listed: %+v, %v", nodes, err)
		}
		time.Sleep(100 * time.Millisecond) // expiry is the server's timer: poll
	}
	again, err := cluster.OpenRegistry(t.Context(), cluster.RegistryConfig{JetStream: js2, Heartbeat: beat, Node: cluster.Node{ID: "dead"}})
	if err != nil {
		t.Fatalf("register the dead node's ID again: %v", err)
	}
	again.Close(context.Background())
}

// msgHandler signals seen (without blocking) for each record whose
// message is msg.
type msgHandler struct {
	msg  string
	seen chan struct{}
}

func (h *msgHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *msgHandler) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *msgHandler) WithGroup(string) slog.Handler            { return h }
func (h *msgHandler) Handle(_ context.Context, r slog.Record) error {
	if r.Message == h.msg {
		select {
		case h.seen <- struct{}{}:
		default:
		}
	}
	return nil
}

// TestRegistryCloseDuringLeaderElection closes a node while its registry
// bucket (R3) has no leader: two of the three NATS servers are killed -9,
// so the removal cannot be applied. Close retries, the two servers come
// back (only after an attempt failed), the bucket elects a leader, and
// Close removes the registration and
// returns nil, long before the registration would have expired (30 s).
// Before Close retried, it returned the "no responders" (or timeout) error
// of its one attempt and the node stayed listed until it expired.
func TestRegistryCloseDuringLeaderElection(t *testing.T) {
	c := natstest.StartCluster(t)
	const beat = 10 * time.Second // the registration expires 30 s after its last heartbeat
	// The node's connection is to the server that stays up.
	js := natstest.JetStream(t, c.Servers[0].URLs())
	retried := make(chan struct{}, 1)
	log := slog.New(&msgHandler{msg: "deregister failed, trying again", seen: retried})
	reg, err := cluster.OpenRegistry(t.Context(), cluster.RegistryConfig{JetStream: js, Heartbeat: beat,
		Replicas: c.Replicas(), Node: cluster.Node{ID: "leaving"}, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(t.Context(), cluster.DefaultRegistryBucket)
	if err != nil {
		t.Fatal(err)
	}
	c.Servers[1].Kill()
	c.Servers[2].Kill()
	// The bucket takes no write now (no quorum, no leader).
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	_, err = kv.Put(ctx, "probe", []byte("x"))
	cancel()
	if err == nil {
		t.Fatal("a write succeeded with two of three servers killed")
	}

	start := time.Now()
	closed := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		closed <- reg.Close(ctx)
	}()
	// The servers come back only after an attempt failed.
	select {
	case <-retried:
	case err := <-closed:
		t.Fatalf("Close returned %v without retrying while the bucket had no leader", err)
	}
	c.Servers[1].Restart()
	c.Servers[2].Restart()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatalf("Close during the election: %v", err)
		}
	case <-time.After(3 * beat):
		t.Fatalf("Close did not return within %v", 3*beat)
	}
	took := time.Since(start)
	if _, err := kv.Get(t.Context(), "n.leaving"); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("after Close (%v) the registration is still there: %v", took, err)
	}
	if took >= 3*beat {
		t.Fatalf("Close took %v: the registration may have expired instead of being removed", took)
	}
	t.Logf("Close removed the registration %v after it started, once the bucket had a leader again", took.Round(time.Millisecond))
}

// TestRegistryCloseAfterLateWrite: the registration moved on since the
// last revision the node saw, as when a heartbeat (or a removal) that
// timed out during a leader election is committed after it. Close removes
// it when it is still this incarnation's (before, the conflict was taken
// as "changed by someone else" and the entry stayed until it expired), and
// leaves another incarnation's alone.
func TestRegistryCloseAfterLateWrite(t *testing.T) {
	s := natstest.Start(t)
	tests := []struct {
		name     string
		rewrite  func(raw []byte) []byte
		wantGone bool
	}{
		{name: "own entry rewritten", rewrite: func(raw []byte) []byte { return raw }, wantGone: true},
		{name: "another incarnation's", rewrite: func(raw []byte) []byte {
			var n map[string]any
			if err := json.Unmarshal(raw, &n); err != nil {
				t.Fatal(err)
			}
			n["token"] = "another"
			out, _ := json.Marshal(n)
			return out
		}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			js, err := jetstream.New(natstest.Connect(t, s.URLs()))
			if err != nil {
				t.Fatal(err)
			}
			id := fmt.Sprintf("late-%d", i)
			reg, err := cluster.OpenRegistry(t.Context(), cluster.RegistryConfig{JetStream: js, Heartbeat: 10 * time.Second,
				Node: cluster.Node{ID: id}})
			if err != nil {
				t.Fatal(err)
			}
			kv, err := js.KeyValue(t.Context(), cluster.DefaultRegistryBucket)
			if err != nil {
				t.Fatal(err)
			}
			e, err := kv.Get(t.Context(), "n."+id)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := kv.Put(t.Context(), "n."+id, tt.rewrite(e.Value())); err != nil {
				t.Fatal(err)
			}
			if err := reg.Close(t.Context()); err != nil {
				t.Fatalf("Close: %v", err)
			}
			_, err = kv.Get(t.Context(), "n."+id)
			if gone := errors.Is(err, jetstream.ErrKeyNotFound); gone != tt.wantGone {
				t.Errorf("after Close: Get error %v; want the registration gone: %v", err, tt.wantGone)
			}
		})
	}
}
