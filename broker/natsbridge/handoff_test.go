package natsbridge_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"path/filepath"
	"slices"
	"testing"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/nats-io/nats.go"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/broker/boltstore"
	"github.com/umbra-iot/umbra/broker/natsbridge"
	"github.com/umbra-iot/umbra/internal/brokertest"
	"github.com/umbra-iot/umbra/internal/natstest"
	"github.com/umbra-iot/umbra/internal/waitfor"
)

// persistentConnect connects clientID to url with clean session off and
// returns the client, whether the broker had its session (CONNACK
// session present), and every message it receives, subscribed or not
// (the messages of a resumed session arrive before any Subscribe).
func persistentConnect(t *testing.T, url, clientID string) (mqtt.Client, bool, <-chan brokertest.Message) {
	t.Helper()
	msgs := make(chan brokertest.Message, 64)
	o := mqtt.NewClientOptions().AddBroker(url).SetClientID(clientID).SetCleanSession(false).
		SetAutoReconnect(false).SetOrderMatters(false).
		SetDefaultPublishHandler(func(_ mqtt.Client, m mqtt.Message) {
			msgs <- brokertest.Message{Topic: m.Topic(), Payload: append([]byte(nil), m.Payload()...), Retained: m.Retained(), QoS: m.Qos()}
		})
	c := mqtt.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(wait) || tok.Error() != nil {
		t.Fatalf("connect %s: %v", clientID, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c, tok.(*mqtt.ConnectToken).SessionPresent(), msgs
}

// boltNode starts a node whose broker keeps its state in a bbolt file.
func boltNode(t *testing.T, natsURL, id string) (*node, *boltstore.Store) {
	t.Helper()
	st, err := boltstore.Open(t.Context(), boltstore.Config{Path: filepath.Join(t.TempDir(), "broker.db")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close(context.Background()) }) // after the broker's
	return startNode(t, natsURL, id, broker.Config{Store: st}), st
}

// TestPersistentSessionMovesWithItsClient: a clean-session=false client
// that reconnects to another node gets CONNACK session present 1, its
// subscription, and the QoS 1 or 2 messages queued for it while it was
// offline, once each; the old node holds nothing of it any more, and the
// new node's Store holds the session.
func TestPersistentSessionMovesWithItsClient(t *testing.T) {
	ns := natstest.Start(t)
	a, _ := boltNode(t, ns.URL(), "n1")
	b, storeB := boltNode(t, ns.URL(), "n2")
	for i, qos := range []byte{1, 2} {
		t.Run(fmt.Sprintf("qos%d", qos), func(t *testing.T) {
			id, topic := fmt.Sprintf("dev-q%d", qos), fmt.Sprintf("cmd/dev-q%d", qos)
			dev, present, _ := persistentConnect(t, a.url, id)
			if present {
				t.Fatal("first connect: session present")
			}
			brokertest.Subscribe(t, dev, topic, qos)
			dev.Disconnect(100) // offline: node 1 queues for it
			waitDisconnect(t, a, id)
			settle(t, a, b)
			pub := brokertest.Connect(t, b.url, "pub-"+id)
			for _, p := range []string{"c1", "c2", "c3"} {
				brokertest.Publish(t, pub, topic, qos, []byte(p))
			}
			waitfor.Poll(t, wait, "node 1 queues 3 messages", func() bool { return a.brk.Stats().Inflight == 3 })

			_, present, msgs := persistentConnect(t, b.url, id)
			if !present {
				t.Fatal("reconnect to node 2: session present 0, want 1 (the session moved)")
			}
			expect(t, msgs, "c1", "c2", "c3")
			if st := a.br.Stats(); st.HandoffsSent != int64(i+1) || st.Sessions != 0 {
				t.Errorf("node 1 bridge stats %+v, want %d handoffs sent, no session left", st, i+1)
			}
			if st := b.br.Stats(); st.HandoffsReceived != int64(i+1) {
				t.Errorf("node 2 bridge stats %+v, want %d handoffs received", st, i+1)
			}
			if st := a.brk.Stats(); st.Inflight != 0 || st.PersistentSessions != 0 {
				t.Errorf("node 1 broker: %d inflight, %d persistent sessions; want none", st.Inflight, st.PersistentSessions)
			}

			// The subscription moved: a command published on node 1 reaches it.
			awaitSubscriptions(t, b, int64(i+1))
			awaitSubscriptions(t, a, 0)
			settle(t, a, b)
			brokertest.Publish(t, brokertest.Connect(t, a.url, "op-"+id), topic, qos, []byte("c4"))
			expect(t, msgs, "c4")
			expectNothing(t, msgs)

			waitfor.Poll(t, wait, "node 2's Store holds the session", func() bool {
				st, err := storeB.Load(t.Context())
				if err != nil {
					t.Fatal(err)
				}
				i := slices.IndexFunc(st.Sessions, func(s broker.SessionState) bool { return s.ClientID == id })
				return i >= 0 && len(st.Sessions[i].Subscriptions) == 1 && len(st.Sessions[i].Queued) == 0
			})
		})
	}
}

// TestHandedOffSessionRefused: a takeover reply that carries a session
// that cannot be used (undecodable, another format version, another
// client's, an object of the handoff bucket that does not exist) is
// refused and counted; the client connects with a fresh session (session
// present 0) and nothing else changes.
func TestHandedOffSessionRefused(t *testing.T) {
	ns := natstest.Start(t)
	b := startNode(t, ns.URL(), "n2", broker.Config{}, sharedRetained(t, ns.URLs()))
	nc := natstest.Connect(t, ns.URLs())
	for i, tc := range []struct {
		name, version, data, object string
	}{
		{"undecodable", "1", "{not json", ""},
		{"another format version", "2", `{"ClientID":"dev-%d"}`, ""},
		{"another client's session", "1", `{"ClientID":"someone-else"}`, ""},
		{"a missing object of the handoff bucket", "1", "", "no-such-object"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := "dev-" + string(rune('a'+i))
			data := tc.data
			if tc.name == "another format version" {
				data = `{"ClientID":"` + id + `"}`
			}
			sub, err := nc.Subscribe("umbra.s."+id, func(m *nats.Msg) {
				h := nats.Header{"Umbra-Session": []string{tc.version}}
				if tc.object != "" {
					h.Set("Umbra-Session-Object", tc.object)
				}
				_ = m.RespondMsg(&nats.Msg{Subject: m.Reply, Data: []byte(data), Header: h})
			})
			if err != nil {
				t.Fatal(err)
			}
			defer sub.Unsubscribe()
			if err := nc.Flush(); err != nil {
				t.Fatal(err)
			}
			c, present, _ := persistentConnect(t, b.url, id)
			if present {
				t.Error("session present after a refused handoff")
			}
			brokertest.Subscribe(t, c, "cmd/"+id, 1) // the fresh session works
			if st := b.br.Stats(); st.HandoffRefused != int64(i+1) || st.HandoffsReceived != 0 {
				t.Errorf("stats %+v, want %d refused, none received", st, i+1)
			}
		})
	}
}

// TestLargeSessionMovesWhole: a persistent session whose queued messages
// make it larger than one NATS message (nats-server's max_payload, 1 MB)
// moves whole through the JetStream object store umbra_handoff when the
// bridge has JetStream; without it, it keeps its oldest queued messages
// only, and the others are counted as dropped.
func TestLargeSessionMovesWhole(t *testing.T) {
	const count, size = 24, 64 << 10 // 1.5 MiB of payload: about 2 MB of JSON
	ns := natstest.Start(t)
	for i, tc := range []struct {
		name      string
		jetStream bool
	}{
		{"through the handoff bucket", true},
		{"without JetStream: the oldest messages only", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var mods []func(*natsbridge.Config)
			if tc.jetStream {
				js := natstest.JetStream(t, ns.URLs())
				mods = append(mods, func(c *natsbridge.Config) { c.JetStream = js })
			}
			cfg := func() broker.Config {
				st, err := boltstore.Open(t.Context(), boltstore.Config{Path: filepath.Join(t.TempDir(), "broker.db")})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = st.Close(context.Background()) })
				return broker.Config{Store: st, MaxQueuedBytes: 4 << 20}
			}
			a := startNode(t, ns.URL(), fmt.Sprintf("big%d-a", i), cfg(), mods...)
			b := startNode(t, ns.URL(), fmt.Sprintf("big%d-b", i), cfg(), mods...)
			id, topic := fmt.Sprintf("big-dev-%d", i), fmt.Sprintf("cmd/big-dev-%d", i)
			dev, _, _ := persistentConnect(t, a.url, id)
			brokertest.Subscribe(t, dev, topic, 1)
			dev.Disconnect(100)
			waitDisconnect(t, a, id)
			settle(t, a, b)
			pub := brokertest.Connect(t, b.url, "pub-"+id)
			for n := range count {
				payload := bytes.Repeat([]byte{byte('a' + n%26)}, size)
				binary.BigEndian.PutUint32(payload, uint32(n))
				brokertest.Publish(t, pub, topic, 1, payload)
			}
			waitfor.Poll(t, wait, "node 1 queues every message", func() bool { return a.brk.Stats().Inflight == count })

			_, present, msgs := persistentConnect(t, b.url, id)
			if !present {
				t.Fatal("reconnect to node 2: session present 0, want 1")
			}
			sent := a.br.Stats()
			want := count - int(sent.HandoffDropped)
			if tc.jetStream && (sent.HandoffObjects != 1 || sent.HandoffDropped != 0) {
				t.Errorf("node 1 bridge stats %+v, want the session sent through the bucket, nothing dropped", sent)
			}
			if !tc.jetStream && (sent.HandoffObjects != 0 || sent.HandoffDropped == 0) {
				t.Errorf("node 1 bridge stats %+v, want queued messages dropped, no object", sent)
			}
			got := map[uint32]bool{} // the handler runs unordered (SetOrderMatters(false))
			for range want {
				m := brokertest.Next(t, msgs, wait)
				n := binary.BigEndian.Uint32(m.Payload)
				if len(m.Payload) != size || n >= uint32(want) || got[n] {
					t.Fatalf("got message number %d (%d bytes) after %d others, want each of the oldest %d once, %d bytes", n, len(m.Payload), len(got), want, size)
				}
				got[n] = true
			}
			expectNothing(t, msgs)
			if st := b.br.Stats(); st.HandoffsReceived != 1 || st.HandoffRefused != 0 {
				t.Errorf("node 2 bridge stats %+v, want 1 handoff received, none refused", st)
			}
		})
	}
}
