package cluster_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/identity"
	"github.com/umbra-iot/umbra/internal/cluster"
	"github.com/umbra-iot/umbra/internal/natstest"
	"github.com/umbra-iot/umbra/internal/waitfor"
)

// liveNodes is a NodeLister whose live nodes the test sets.
type liveNodes struct {
	mu  sync.Mutex
	ids []string
}

func (l *liveNodes) set(ids ...string) { l.mu.Lock(); l.ids = ids; l.mu.Unlock() }

func (l *liveNodes) Nodes(context.Context) ([]cluster.Node, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]cluster.Node, len(l.ids))
	for i, id := range l.ids {
		out[i] = cluster.Node{ID: id}
	}
	return out, nil
}

// presenceNode is one node's Presence with the changes it reported.
type presenceNode struct {
	*cluster.Presence
	changes chan change
}

type change struct {
	id device.ID
	p  identity.Presence
}

func openPresence(t testing.TB, urls []string, node string, live cluster.NodeLister, sweep time.Duration) *presenceNode {
	t.Helper()
	n := &presenceNode{changes: make(chan change, 1024)}
	p, err := cluster.OpenPresence(t.Context(), cluster.PresenceConfig{JetStream: natstest.JetStream(t, urls), Node: node,
		Nodes: live, SweepInterval: sweep, Grace: sweep,
		OnChange: func(id device.ID, p identity.Presence) {
			select { // a wake-up for await, which reads Get; never blocks the watch
			case n.changes <- change{id, p}:
			default:
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close(context.Background()) })
	n.Presence = p
	return n
}

// await waits until n reports for id a presence that ok accepts.
func (n *presenceNode) await(t *testing.T, id device.ID, what string, ok func(identity.Presence) bool) identity.Presence {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		if p, has := n.Get(id); has && ok(p) {
			return p
		}
		select {
		case <-n.changes:
		case <-timeout:
			p, _ := n.Get(id)
			t.Fatalf("%s: presence of %s is %+v, want %s", t.Name(), id, p, what)
		}
	}
}

// awaitStale waits until n has skipped want stale events (an event that
// was not written leaves no change to wait for).
func (n *presenceNode) awaitStale(t *testing.T, want int64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for n.Stats().Stale < want {
		if time.Now().After(deadline) {
			t.Fatalf("stale events = %d, want %d", n.Stats().Stale, want)
		}
		time.Sleep(5 * time.Millisecond) // no event for a write not made: poll
	}
}

func connectedOn(node string) func(identity.Presence) bool {
	return func(p identity.Presence) bool { return p.Connected && p.Node == node }
}

// TestPresenceOrderAcrossNodes: whatever order the nodes' writes land
// in, every node ends with the device's latest connection: a late
// "taken_over" of the node the device left never overwrites the connect
// of the node it moved to.
func TestPresenceOrderAcrossNodes(t *testing.T) {
	ns := natstest.Start(t)
	live := &liveNodes{}
	live.set("a", "b")
	a := openPresence(t, ns.URLs(), "a", live, time.Hour)
	b := openPresence(t, ns.URLs(), "b", live, time.Hour)
	t0 := time.Now()
	for i, tc := range []struct {
		name  string
		steps func(d device.ID)
		stale int64 // events of b skipped
		want  func(identity.Presence) bool
		what  string
	}{
		{"late taken_over after the move", func(d device.ID) {
			b.Connected(d, 1, t0, "10.0.0.1:1")
			a.Connected(d, 1, t0.Add(time.Second), "10.0.0.1:2")
			b.Disconnected(d, 1, t0.Add(time.Second), "taken_over")
		}, 1, connectedOn("a"), "connected on a"},
		{"taken_over written before the move", func(d device.ID) {
			b.Connected(d, 2, t0, "10.0.0.1:1")
			b.Disconnected(d, 2, t0.Add(time.Second), "taken_over")
			b.awaitStale(t, 1) // unchanged: written, not skipped
			b.await(t, d, "disconnected", func(p identity.Presence) bool { return !p.Connected })
			a.Connected(d, 2, t0.Add(time.Second), "10.0.0.1:2")
		}, 1, func(p identity.Presence) bool {
			return p.Connected && p.Node == "a" && p.DisconnectReason == "taken_over"
		}, "connected on a, last disconnect taken_over"},
		{"late disconnect of an earlier connection on one node", func(d device.ID) {
			b.Connected(d, 3, t0, "10.0.0.1:1")
			b.Connected(d, 4, t0.Add(time.Second), "10.0.0.1:2")
			b.Disconnected(d, 3, t0.Add(time.Second), "taken_over")
		}, 2, func(p identity.Presence) bool { return p.Connected && p.Node == "b" && p.RemoteAddr == "10.0.0.1:2" },
			"connected on b, second connection"},
		{"clean disconnect", func(d device.ID) {
			b.Connected(d, 5, t0, "10.0.0.1:1")
			b.Disconnected(d, 5, t0.Add(time.Second), "")
		}, 2, func(p identity.Presence) bool {
			return !p.Connected && p.Node == "b" && p.DisconnectReason == "" && p.DisconnectedAt.Equal(t0.Add(time.Second).UTC())
		}, "disconnected cleanly from b"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := device.ID("dev-" + string(rune('a'+i)))
			tc.steps(d)
			b.awaitStale(t, tc.stale)
			for _, n := range []*presenceNode{a, b} {
				n.await(t, d, tc.what, tc.want)
			}
		})
	}
}

// TestPresenceNodeLost: the devices of a node that leaves the registry
// without writing their disconnects are marked disconnected (node_lost)
// by the live nodes' sweep; a node that
// restarts marks its earlier incarnation's devices "server restart".
func TestPresenceNodeLost(t *testing.T) {
	ns := natstest.Start(t)
	live := &liveNodes{}
	live.set("a", "c")
	const sweep = 200 * time.Millisecond
	a := openPresence(t, ns.URLs(), "a", live, sweep)
	c := openPresence(t, ns.URLs(), "c", live, time.Hour)
	c.Connected("dev-lost", 1, time.Now(), "10.0.0.3:1")
	a.await(t, "dev-lost", "connected on c", connectedOn("c"))

	start := time.Now()
	live.set("a") // c's registration expired: it died
	p := a.await(t, "dev-lost", "disconnected, node_lost", func(p identity.Presence) bool {
		return !p.Connected && p.DisconnectReason == cluster.ReasonNodeLost && p.Node == "c"
	})
	t.Logf("node_lost %v after the node left the registry (sweep %v)", time.Since(start), sweep)
	if p.DisconnectedAt.Before(start) {
		t.Errorf("node_lost at %v, before the node was lost (%v)", p.DisconnectedAt, start)
	}
	// Counted once the write is acknowledged, which may come after the
	// watch delivered it.
	waitfor.Poll(t, 10*time.Second, "one lost device counted", func() bool { return a.Stats().Lost == 1 })

	// Node a's own devices, left connected by an incarnation that died,
	// are marked at its restart.
	a.Connected("dev-restart", 1, time.Now(), "10.0.0.4:1")
	a2 := openPresence(t, ns.URLs(), "a", live, time.Hour)
	a2.await(t, "dev-restart", "disconnected, server restart", func(p identity.Presence) bool {
		return !p.Connected && p.DisconnectReason == identity.ReasonServerRestart
	})
}

// TestPresenceCorruptRecordSkipped: an undecodable record and a key that
// is no device ID are reported (Stats.Corrupt) and skipped at Open and
// when they change; every other record is read, and the device's next
// connect replaces its corrupt record.
func TestPresenceCorruptRecordSkipped(t *testing.T) {
	ns := natstest.Start(t)
	live := &liveNodes{}
	live.set("a")
	a := openPresence(t, ns.URLs(), "a", live, time.Hour)
	a.Connected("dev-good", 1, time.Now(), "10.0.0.1:1")
	kv, err := natstest.JetStream(t, ns.URLs()).KeyValue(t.Context(), cluster.DefaultPresenceBucket)
	if err != nil {
		t.Fatal(err)
	}
	for key, val := range map[string]string{"p.dev-bad": "{not json", "p.=ZZ": `{"connected":true}`} {
		if _, err := kv.Put(t.Context(), key, []byte(val)); err != nil {
			t.Fatal(err)
		}
	}
	b := openPresence(t, ns.URLs(), "b", live, time.Hour)
	b.await(t, "dev-good", "connected on a", connectedOn("a"))
	if _, ok := b.Get("dev-bad"); ok {
		t.Error("a corrupt record was read as a presence")
	}
	if st := b.Stats(); st.Corrupt != 2 {
		t.Errorf("b stats %+v, want 2 corrupt", st)
	}
	deadline := time.Now().Add(10 * time.Second)
	for a.Stats().Corrupt != 2 { // a saw them change
		if time.Now().After(deadline) {
			t.Fatalf("a stats %+v, want 2 corrupt", a.Stats())
		}
		time.Sleep(5 * time.Millisecond) // counted on the watch: poll
	}
	b.Connected("dev-bad", 1, time.Now(), "10.0.0.2:1")
	a.await(t, "dev-bad", "connected on b", connectedOn("b"))
}

// TestPresenceWrittenAfterNATSReturns: events of a node cut off from NATS
// wait (Stats.Pending) and are written, in order, once NATS is back: the
// device's last event, a disconnect, is what every node then reports.
func TestPresenceWrittenAfterNATSReturns(t *testing.T) {
	ns := natstest.Start(t)
	live := &liveNodes{}
	live.set("a", "b")
	a := openPresence(t, ns.URLs(), "a", live, time.Hour)
	b := openPresence(t, ns.URLs(), "b", live, time.Hour)
	ns.Kill()
	at := time.Now()
	a.Connected("dev-away", 1, at, "10.0.0.1:1")
	a.Disconnected("dev-away", 1, at.Add(time.Second), "connection_lost")
	if st := a.Stats(); st.Pending != 1 {
		t.Errorf("stats while NATS is down %+v, want 1 pending", st)
	}
	ns.Restart()
	for _, n := range []*presenceNode{a, b} {
		n.await(t, "dev-away", "disconnected, connection_lost", func(p identity.Presence) bool {
			return !p.Connected && p.Node == "a" && p.DisconnectReason == "connection_lost"
		})
	}
	waitfor.Poll(t, 10*time.Second, "nothing pending", func() bool { return a.Stats().Pending == 0 })
}

// TestPresenceForgottenDevice: Forget deletes a removed device's record
// on every node, and the removed device's late disconnect does not write
// it again.
func TestPresenceForgottenDevice(t *testing.T) {
	ns := natstest.Start(t)
	live := &liveNodes{}
	live.set("a", "b")
	a := openPresence(t, ns.URLs(), "a", live, time.Hour)
	b := openPresence(t, ns.URLs(), "b", live, time.Hour)
	a.Connected("dev-gone", 1, time.Now(), "10.0.0.1:1")
	b.await(t, "dev-gone", "connected on a", connectedOn("a"))
	if err := a.Forget(t.Context(), "dev-gone"); err != nil {
		t.Fatal(err)
	}
	a.Disconnected("dev-gone", 1, time.Now(), "not_authorized")
	a.awaitStale(t, 1)
	for _, n := range []*presenceNode{a, b} {
		waitfor.Poll(t, 10*time.Second, "the record deleted", func() bool { _, ok := n.Get("dev-gone"); return !ok })
	}
}
