package natsbridge_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/broker/natsbridge"
	"github.com/umbra-iot/umbra/internal/brokertest"
	"github.com/umbra-iot/umbra/internal/natskv"
	"github.com/umbra-iot/umbra/internal/natstest"
	"github.com/umbra-iot/umbra/internal/waitfor"
)

// sharedRetained makes a node keep its retained messages in the
// cluster's bucket on the NATS server at urls.
func sharedRetained(t *testing.T, urls []string) func(*natsbridge.Config) {
	js := natstest.JetStream(t, urls)
	return func(c *natsbridge.Config) { c.JetStream = js }
}

// awaitRetained waits until n's broker holds want retained messages
// (applied from the bucket: no event reaches the test).
func awaitRetained(t *testing.T, n *node, want int64) {
	t.Helper()
	waitfor.Poll(t, wait, fmt.Sprintf("%d retained messages", want), func() bool { return n.brk.Stats().Retained == want })
}

// lateRetained subscribes a new client of n to filter and returns the
// payloads of the retained messages it gets: want of them, sorted, and
// fails on a further one.
func lateRetained(t *testing.T, n *node, id, filter string, want int) []string {
	t.Helper()
	c := brokertest.Connect(t, n.url, id)
	msgs := brokertest.Subscribe(t, c, filter, 1)
	got := []string{}
	for range want {
		m := brokertest.Next(t, msgs, wait)
		if !m.Retained {
			t.Fatalf("late subscriber got %s live, want only retained messages", m)
		}
		got = append(got, string(m.Payload))
	}
	brokertest.Settle(t, c) // every retained message is queued
	expectNothing(t, msgs)
	slices.Sort(got)
	return got
}

// TestRetainedSharedAcrossNodes: with the shared retained bucket a
// retained message published on any node is served to new subscribers on
// every node, also one started later, although nobody subscribed to it
// there when it was published; clearing it on any node clears it
// everywhere.
func TestRetainedSharedAcrossNodes(t *testing.T) {
	ns := natstest.Start(t)
	a := startNode(t, ns.URL(), "n1", broker.Config{}, sharedRetained(t, ns.URLs()))
	b := startNode(t, ns.URL(), "n2", broker.Config{}, sharedRetained(t, ns.URLs()))
	pubA := brokertest.Connect(t, a.url, "pub-a")
	pubB := brokertest.Connect(t, b.url, "pub-b")
	for i, tc := range []struct {
		name string
		pub  func()
		want []string // on every node, sorted
	}{
		{"published on node 1", func() { brokertest.PublishRetained(t, pubA, "status/dev1", 1, []byte("online")) }, []string{"online"}},
		{"replaced on node 2", func() { brokertest.PublishRetained(t, pubB, "status/dev1", 1, []byte("away")) }, []string{"away"}},
		{"broker's own Publish", func() {
			if err := a.brk.Publish("status/dev1", []byte("by-node-1"), true, 1); err != nil {
				t.Fatal(err)
			}
		}, []string{"by-node-1"}},
		{"cleared on node 2", func() { brokertest.PublishRetained(t, pubB, "status/dev1", 1, nil) }, []string{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.pub()
			for j, n := range []*node{a, b} {
				// Every node applies every change of the bucket, its own too.
				waitfor.Poll(t, wait, "the change applied", func() bool { return n.br.Stats().RetainedApplied == int64(i+1) })
				if got := lateRetained(t, n, fmt.Sprintf("late-%d-%d", i, j), "status/#", len(tc.want)); fmt.Sprint(got) != fmt.Sprint(tc.want) {
					t.Errorf("node %d: retained %q, want %q", j+1, got, tc.want)
				}
			}
		})
	}

	brokertest.PublishRetained(t, pubA, "status/dev2", 1, []byte("late node"))
	awaitRetained(t, b, 1)
	c := startNode(t, ns.URL(), "n3", broker.Config{}, sharedRetained(t, ns.URLs()))
	if got := lateRetained(t, c, "late-c", "status/#", 1); fmt.Sprint(got) != "[late node]" {
		t.Fatalf("node started later: retained %q, want [late node]", got)
	}
}

// TestRetainedLimitsClusterWide: the retained limits hold for the
// cluster's retained messages: a node at MaxRetained, with the other
// node's retained messages, does not retain a new topic (an MQTT 3.1.1
// publisher's message is delivered, not retained; MQTT 5 gets 0x97, as
// on one node) and counts it in Stats.RetainedRefused.
func TestRetainedLimitsClusterWide(t *testing.T) {
	ns := natstest.Start(t)
	cfg := broker.Config{MaxRetained: 2}
	a := startNode(t, ns.URL(), "n1", cfg, sharedRetained(t, ns.URLs()))
	b := startNode(t, ns.URL(), "n2", cfg, sharedRetained(t, ns.URLs()))
	pubA := brokertest.Connect(t, a.url, "pub-a")
	brokertest.PublishRetained(t, pubA, "r/1", 1, []byte("one"))
	brokertest.PublishRetained(t, pubA, "r/2", 1, []byte("two"))
	awaitRetained(t, b, 2)
	if st := b.brk.Stats(); st.RetainedBytes != 6 {
		t.Errorf("node 2 retained bytes %d, want 6 (node 1's two messages)", st.RetainedBytes)
	}
	brokertest.PublishRetained(t, brokertest.Connect(t, b.url, "pub-b"), "r/3", 1, []byte("three"))
	if st := b.brk.Stats(); st.RetainedRefused != 1 || st.Retained != 2 {
		t.Errorf("node 2 stats: %d refused, %d retained; want 1 and 2", st.RetainedRefused, st.Retained)
	}
	if got := lateRetained(t, a, "late-a", "r/#", 2); fmt.Sprint(got) != "[one two]" {
		t.Errorf("node 1 retained %q, want the two of its own", got)
	}
}

// TestRetainedBucketBadRecords: a record of the retained bucket that
// cannot be decoded, or whose topic is invalid, is counted and skipped by
// a node that opens on it, which loads every other record; a retained
// message the node held that the bucket no longer has is cleared.
func TestRetainedBucketBadRecords(t *testing.T) {
	ns := natstest.Start(t)
	a := startNode(t, ns.URL(), "n1", broker.Config{}, sharedRetained(t, ns.URLs()))
	brokertest.PublishRetained(t, brokertest.Connect(t, a.url, "pub-a"), "good/1", 1, []byte("kept"))
	awaitRetained(t, a, 1)
	js := natstest.JetStream(t, ns.URLs())
	kv, err := js.KeyValue(t.Context(), natsbridge.DefaultRetainedBucket)
	if err != nil {
		t.Fatal(err)
	}
	for key, val := range map[string]string{"r.bad": "{not json", "r.bad2": `{"Topic":"a/+/b","Payload":"eA=="}`} {
		if _, err := kv.Put(t.Context(), key, []byte(val)); err != nil {
			t.Fatal(err)
		}
	}

	// A broker that joined the cluster before (so the bucket is the truth
	// for it: see TestRetainedSeededAtFirstJoin) and holds a retained
	// message the cluster does not.
	if _, err := kv.Put(t.Context(), "joined."+natskv.HashToken("n2"), []byte("{}")); err != nil {
		t.Fatal(err)
	}
	b := startNode(t, ns.URL(), "n2", broker.Config{}, func(c *natsbridge.Config) {
		// Before the bridge opens (as if restored from its Store).
		if err := c.Broker.Retain(broker.Message{Topic: "stale/1", Payload: []byte("gone"), QoS: 1}); err != nil {
			t.Fatal(err)
		}
	}, sharedRetained(t, ns.URLs()))
	if got := lateRetained(t, b, "late-b", "#", 1); fmt.Sprint(got) != "[kept]" {
		t.Fatalf("node 2 retained %q, want [kept] alone", got)
	}
	if st := b.br.Stats(); st.RetainedCorrupt != 2 {
		t.Errorf("node 2 bridge stats %+v, want 2 corrupt records", st)
	}
	waitfor.Poll(t, wait, "node 1 counts the bad records", func() bool { return a.br.Stats().RetainedCorrupt == 2 })
}

// TestRetainedSeededAtFirstJoin: a node that joins the cluster's retained
// bucket for the first time, such as a single broker moved into a
// cluster with the retained messages of its broker.db, adds those the
// bucket never had; the cluster's own messages and the topics cleared in
// it win. A node that joined before takes the bucket as it is.
func TestRetainedSeededAtFirstJoin(t *testing.T) {
	ns := natstest.Start(t)
	a := startNode(t, ns.URL(), "n1", broker.Config{}, sharedRetained(t, ns.URLs()))
	pub := brokertest.Connect(t, a.url, "pub-a")
	brokertest.PublishRetained(t, pub, "shared/a", 1, []byte("cluster"))
	brokertest.PublishRetained(t, pub, "cleared/x", 1, []byte("soon gone"))
	brokertest.PublishRetained(t, pub, "cleared/x", 1, nil)
	waitfor.Poll(t, wait, "node 1 applied its changes", func() bool { return a.br.Stats().RetainedApplied == 3 })

	js := natstest.JetStream(t, ns.URLs())
	kv, err := js.KeyValue(t.Context(), natsbridge.DefaultRetainedBucket)
	if err != nil {
		t.Fatal(err)
	}
	own := []broker.Message{ // as restored from the node's broker.db before its bridge opens
		{Topic: "own/1", Payload: []byte("mine"), QoS: 1},
		{Topic: "shared/a", Payload: []byte("old copy"), QoS: 1},
		{Topic: "cleared/x", Payload: []byte("old copy"), QoS: 1},
	}
	for _, tc := range []struct {
		name, node   string
		joinedBefore bool
		want         []string // retained payloads on every node afterwards, sorted
	}{
		{"first join adds what the bucket never had", "n2", false, []string{"cluster", "mine"}},
		{"a node that joined before takes the bucket", "n3", true, []string{"cluster", "mine"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.joinedBefore {
				if _, err := kv.Put(t.Context(), "joined."+natskv.HashToken(tc.node), []byte("{}")); err != nil {
					t.Fatal(err)
				}
			}
			n := startNode(t, ns.URL(), tc.node, broker.Config{}, func(c *natsbridge.Config) {
				for _, m := range own {
					if tc.joinedBefore {
						m.Topic = "late/" + m.Topic // topics only this node has: cleared at its start
					}
					if err := c.Broker.Retain(m); err != nil {
						t.Fatal(err)
					}
				}
			}, sharedRetained(t, ns.URLs()))
			for j, m := range []*node{a, n} {
				waitfor.Poll(t, wait, "the retained messages applied", func() bool { return m.brk.Stats().Retained == int64(len(tc.want)) })
				if got := lateRetained(t, m, fmt.Sprintf("late-%s-%d", tc.node, j), "#", len(tc.want)); fmt.Sprint(got) != fmt.Sprint(tc.want) {
					t.Errorf("node %d retained %q, want %q", j+1, got, tc.want)
				}
			}
			e, err := kv.Get(t.Context(), "joined."+natskv.HashToken(tc.node))
			if err != nil {
				t.Fatalf("the join of %s is not recorded: %v", tc.node, err)
			}
			if !tc.joinedBefore && !strings.Contains(string(e.Value()), `"seeded":1`) {
				t.Errorf("join record %s, want seeded 1", e.Value())
			}
		})
	}
}
