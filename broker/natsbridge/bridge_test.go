package natsbridge_test

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/nats-io/nats.go"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/broker/natsbridge"
	"github.com/umbra-iot/umbra/internal/brokertest"
	"github.com/umbra-iot/umbra/internal/metrics"
	"github.com/umbra-iot/umbra/internal/natstest"
	"github.com/umbra-iot/umbra/internal/waitfor"
)

func TestMain(m *testing.M) { brokertest.Main(m) }

// wait bounds every wait for a message or an event.
const wait = 5 * time.Second

// quiet is how long a test listens for a message that must not come,
// after a later marker message has arrived.
const quiet = 200 * time.Millisecond

// disconnect is one OnDisconnect of a node's broker.
type disconnect struct {
	info broker.ConnInfo
	err  error
}

// node is one Umbra node: a broker with its bridge.
type node struct {
	brk         *broker.Server
	br          *natsbridge.Bridge
	url         string
	disconnects chan disconnect
	connects    chan broker.ConnInfo
}

// startNode opens a broker and its bridge to natsURL as node id; both are
// closed at cleanup, the bridge first.
func startNode(t testing.TB, natsURL, id string, cfg broker.Config, mods ...func(*natsbridge.Config)) *node {
	t.Helper()
	n := &node{disconnects: make(chan disconnect, 64), connects: make(chan broker.ConnInfo, 64)}
	cfg.OnDisconnect = func(info broker.ConnInfo, err error) {
		select {
		case n.disconnects <- disconnect{info, err}:
		default:
		}
	}
	cfg.OnConnect = func(info broker.ConnInfo) {
		select {
		case n.connects <- info:
		default:
		}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	cfg.Logger = cfg.Logger.With("node", id)
	n.brk = brokertest.New(t, cfg)
	n.url = brokertest.URL(n.brk)
	bcfg := natsbridge.Config{
		Broker: n.brk, NodeID: id, URL: natsURL, Logger: cfg.Logger,
		ReconnectWait: 50 * time.Millisecond,
	}
	for _, mod := range mods {
		mod(&bcfg)
	}
	br, err := natsbridge.Open(t.Context(), bcfg)
	if err != nil {
		t.Fatalf("open bridge %s: %v", id, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		if err := br.Close(ctx); err != nil {
			t.Errorf("close bridge %s: %v", id, err)
		}
	})
	n.br = br
	return n
}

// startNodes starts count nodes on one nats-server.
func startNodes(t *testing.T, count int) ([]*node, *natstest.Server) {
	t.Helper()
	ns := natstest.Start(t)
	nodes := make([]*node, count)
	for i := range nodes {
		nodes[i] = startNode(t, ns.URL(), fmt.Sprintf("n%d", i+1), broker.Config{})
	}
	return nodes, ns
}

// settle waits until every node's bridge has its subscriptions in NATS.
func settle(t *testing.T, nodes ...*node) {
	t.Helper()
	for _, n := range nodes {
		natsbridge.Settle(t, n.br)
	}
}

// expect receives len(want) messages on ch and fails unless their
// payloads are want, in any order (paho test clients do not keep the
// order: SetOrderMatters(false)).
func expect(t *testing.T, ch <-chan brokertest.Message, want ...string) {
	t.Helper()
	got := make([]string, 0, len(want))
	for range want {
		got = append(got, string(brokertest.Next(t, ch, wait).Payload))
	}
	slices.Sort(got)
	w := slices.Sorted(slices.Values(want))
	if !slices.Equal(got, w) {
		t.Fatalf("got payloads %q, want %q", got, w)
	}
}

// expectNothing fails if a message arrives on one of chs within quiet:
// for copies that must not come, after the messages that must have.
func expectNothing(t *testing.T, chs ...<-chan brokertest.Message) {
	t.Helper()
	timer := time.NewTimer(quiet)
	defer timer.Stop()
	for {
		for _, ch := range chs {
			select {
			case m := <-ch:
				t.Fatalf("got %s, want no further message (a duplicate or an echo)", m)
			default:
			}
		}
		select {
		case <-timer.C:
			return
		case <-time.After(quiet / 20):
		}
	}
}

// TestCrossNodePubSub: a message published on node 1 reaches a wildcard
// subscriber on node 2 once, with its QoS, and a subscriber on node 1
// once: no echo back from NATS, no duplicate through the two NATS
// subscriptions "dev/#" needs, none through the overlapping filters.
func TestCrossNodePubSub(t *testing.T) {
	nodes, _ := startNodes(t, 2)
	a, b := nodes[0], nodes[1]
	for _, qos := range []byte{0, 1} {
		t.Run(fmt.Sprintf("qos%d", qos), func(t *testing.T) {
			topic := fmt.Sprintf("dev/q%d/telemetry", qos)
			subB := brokertest.Connect(t, b.url, fmt.Sprintf("sub-b-%d", qos))
			onB := brokertest.Subscribe(t, subB, "dev/+/telemetry", 1)
			onBAll := brokertest.Subscribe(t, subB, "dev/#", 1) // overlaps: one NATS message, two subscriptions
			subA := brokertest.Connect(t, a.url, fmt.Sprintf("sub-a-%d", qos))
			onA := brokertest.Subscribe(t, subA, "dev/#", 1)
			settle(t, a, b)

			pubA := brokertest.Connect(t, a.url, fmt.Sprintf("pub-a-%d", qos))
			pubB := brokertest.Connect(t, b.url, fmt.Sprintf("pub-b-%d", qos))
			for _, p := range []string{"m1", "m2", "s1"} {
				brokertest.Publish(t, pubA, topic, qos, []byte(p))
			}
			expect(t, onB, "m1", "m2", "s1")
			m := brokertest.Next(t, onBAll, wait) // paho routes by filter: the overlapping one
			if m.QoS != qos {
				t.Errorf("remote delivery QoS: got %d, want %d", m.QoS, qos)
			}
			brokertest.Publish(t, pubB, topic, qos, []byte("s2"))
			expect(t, onA, "m1", "m2", "s1", "s2")
			expect(t, onB, "s2")
			expectNothing(t, onA, onB)
			// A bridge counts a message after it published it to NATS or
			// delivered it to the broker, which can be after a client has it
			// (and node 2 drops a copy after it delivered the first): await
			// the counts.
			waitfor.PollExplained(t, wait, "node 1 to count 3 out and 1 in", func() string {
				if st := a.br.Stats(); st.InMessages < 1 || st.OutMessages < 3 {
					return fmt.Sprintf("stats %+v", st)
				}
				return ""
			})
			waitfor.PollExplained(t, wait, "node 2 to count the 3 copies of the overlapping subscription as duplicates", func() string {
				if st := b.br.Stats(); st.Duplicates < 3 {
					return fmt.Sprintf("stats %+v", st)
				}
				return ""
			})
		})
	}
}

// awaitSubscriptions waits until n's bridge holds want NATS subscriptions
// for its clients' filters and has applied every change.
func awaitSubscriptions(t *testing.T, n *node, want int64) {
	t.Helper()
	natsbridge.Settle(t, n.br)
	if got := n.br.Stats().Subscriptions; got != want {
		t.Fatalf("NATS subscriptions held: got %d, want %d", got, want)
	}
}

// TestInterestFollowsSubscriptions: a node holds NATS subscriptions only
// for its clients' filters, one per subject whatever the number of
// clients, and gives each up with the filter's last subscriber: by
// UNSUBSCRIBE, by a clean session's disconnect.
func TestInterestFollowsSubscriptions(t *testing.T) {
	nodes, _ := startNodes(t, 2)
	a, b := nodes[0], nodes[1]
	awaitSubscriptions(t, b, 0)

	c1 := brokertest.Connect(t, b.url, "c1")
	brokertest.Subscribe(t, c1, "a/#", 0) // "a" and "a.>"
	awaitSubscriptions(t, b, 2)
	c2 := brokertest.Connect(t, b.url, "c2")
	brokertest.Subscribe(t, c2, "a/#", 0) // same filter: nothing new
	brokertest.Subscribe(t, c2, "a", 0)   // same subject as a/#'s parent: nothing new
	awaitSubscriptions(t, b, 2)
	brokertest.Subscribe(t, c2, "x/+/y", 0)
	awaitSubscriptions(t, b, 3)
	awaitSubscriptions(t, a, 0) // interest stays where the subscribers are

	unsubscribe(t, c2, "x/+/y")
	awaitSubscriptions(t, b, 2)
	unsubscribe(t, c2, "a/#", "a")
	awaitSubscriptions(t, b, 2) // c1 still needs them
	c1.Disconnect(100)          // clean session: its subscriptions go
	waitDisconnect(t, b, "c1")
	awaitSubscriptions(t, b, 0)

	// Nothing reaches node 2 for the filters it gave up.
	pub := brokertest.Connect(t, a.url, "pub")
	brokertest.Publish(t, pub, "a/b", 1, []byte("late"))
	if err := pub.Publish("x/1/y", 1, false, []byte("late")); !err.WaitTimeout(wait) {
		t.Fatal("publish not acknowledged")
	}
	natsbridge.Settle(t, a.br)
	natsbridge.Settle(t, b.br)
	if st := b.br.Stats(); st.InMessages != 0 {
		t.Errorf("node 2 received %d messages after its subscribers left, want 0", st.InMessages)
	}
}

func unsubscribe(t *testing.T, c mqtt.Client, filters ...string) {
	t.Helper()
	if tok := c.Unsubscribe(filters...); !tok.WaitTimeout(wait) || tok.Error() != nil {
		t.Fatalf("unsubscribe %q: %v", filters, tok.Error())
	}
}

// waitDisconnect waits for n's OnDisconnect of clientID and returns its
// cause.
func waitDisconnect(t *testing.T, n *node, clientID string) error {
	t.Helper()
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		select {
		case d := <-n.disconnects:
			if d.info.ClientID == clientID {
				return d.err
			}
		case <-timer.C:
			t.Fatalf("no disconnect of %s within %v", clientID, wait)
		}
	}
}

// waitConnect waits for n's OnConnect of clientID.
func waitConnect(t *testing.T, n *node, clientID string) broker.ConnInfo {
	t.Helper()
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		select {
		case info := <-n.connects:
			if info.ClientID == clientID {
				return info
			}
		case <-timer.C:
			t.Fatalf("no connect of %s within %v", clientID, wait)
		}
	}
}

// TestWildcardsAndAwkwardTopics: topics with the bytes NATS subjects
// cannot hold ('.', ' ', '*', '>', '%', non-ASCII, empty levels, '$')
// reach the remote filters that match them, and only those.
func TestWildcardsAndAwkwardTopics(t *testing.T) {
	nodes, _ := startNodes(t, 2)
	a, b := nodes[0], nodes[1]
	cases := []struct {
		filter  string
		match   []string
		nomatch []string
	}{
		{"sensors/+/temp", []string{"sensors/1.2/temp", "sensors/ /temp", "sensors//temp", "sensors/*/temp", "sensors/>/temp"}, []string{"sensors/1/2/temp", "sensors/1/hum"}},
		{"dots/#", []string{"dots", "dots/", "dots/a.b/c", "dots/%41/é"}, []string{"dotsx/a", "dot/s"}},
		{"+/only", []string{"x/only", "/only"}, []string{"$aws/only", "x/y/only"}},
		{"$aws/things/+/shadow", []string{"$aws/things/t.1/shadow"}, []string{"$aws/things/t/other"}},
		{"/leading/#", []string{"/leading", "/leading/x"}, []string{"leading/x"}},
		{"%41", []string{"%41"}, []string{"A"}},
	}
	chans := make([]<-chan brokertest.Message, len(cases))
	sub := brokertest.Connect(t, b.url, "sub")
	for i, c := range cases {
		chans[i] = brokertest.Subscribe(t, sub, c.filter, 1)
	}
	settle(t, a, b)
	pub := brokertest.Connect(t, a.url, "pub")
	for _, c := range cases {
		for _, topic := range append(slices.Clone(c.nomatch), c.match...) {
			brokertest.Publish(t, pub, topic, 1, []byte(topic))
		}
	}
	for i, c := range cases {
		t.Run(c.filter, func(t *testing.T) {
			expect(t, chans[i], c.match...)
		})
	}
	expectNothing(t, chans...)
}

// TestSharedSubscriptionOnceAcrossNodes: a shared subscription with
// members on three nodes gets each message once in the whole cluster,
// whichever node published it, while a plain subscriber gets every one.
func TestSharedSubscriptionOnceAcrossNodes(t *testing.T) {
	nodes, _ := startNodes(t, 3)
	var members []<-chan brokertest.Message
	for i, n := range nodes {
		c := brokertest.Connect(t, n.url, fmt.Sprintf("worker-%d", i))
		members = append(members, brokertest.Subscribe(t, c, "$share/workers/jobs/#", 1))
	}
	watcher := brokertest.Connect(t, nodes[2].url, "watcher")
	all := brokertest.Subscribe(t, watcher, "jobs/#", 1)
	settle(t, nodes...)

	const perNode = 10
	var want []string
	for i, n := range nodes {
		pub := brokertest.Connect(t, n.url, fmt.Sprintf("pub-%d", i))
		for j := range perNode {
			p := fmt.Sprintf("job-%d-%d", i, j)
			want = append(want, p)
			brokertest.Publish(t, pub, fmt.Sprintf("jobs/%d", j), 1, []byte(p))
		}
	}
	expect(t, all, want...)

	got := map[string]int{}
	perMember := make([]int, len(members))
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	for len(got) < len(want) {
		select {
		case m := <-members[0]:
			got[string(m.Payload)]++
			perMember[0]++
		case m := <-members[1]:
			got[string(m.Payload)]++
			perMember[1]++
		case m := <-members[2]:
			got[string(m.Payload)]++
			perMember[2]++
		case <-deadline.C:
			t.Fatalf("shared subscription got %d distinct messages of %d within %v", len(got), len(want), wait)
		}
	}
	expectNothing(t, members...)
	for p, n := range got {
		if n != 1 {
			t.Errorf("%s delivered %d times to the shared subscription, want once", p, n)
		}
	}
	t.Logf("messages per member: %v", perMember)
}

// TestNATSLossAndRecovery: when the nats-server dies (kill -9), local
// delivery goes on, shared subscriptions are served locally, and once it
// is back the bridges reconnect by themselves, resubscribe, and messages
// cross again.
func TestNATSLossAndRecovery(t *testing.T) {
	nodes, ns := startNodes(t, 2)
	a, b := nodes[0], nodes[1]
	onB := brokertest.Subscribe(t, brokertest.Connect(t, b.url, "sub-b"), "t/#", 1)
	onA := brokertest.Subscribe(t, brokertest.Connect(t, a.url, "sub-a"), "t/#", 1)
	sharedA := brokertest.Subscribe(t, brokertest.Connect(t, a.url, "worker-a"), "$share/w/t/#", 1)
	settle(t, a, b)
	pub := brokertest.Connect(t, a.url, "pub")
	brokertest.Publish(t, pub, "t/1", 1, []byte("before"))
	expect(t, onB, "before")
	expect(t, onA, "before")
	expect(t, sharedA, "before")

	ns.Kill()
	awaitConnected(t, false, a, b)
	brokertest.Publish(t, pub, "t/1", 1, []byte("during"))
	expect(t, onA, "during")     // local delivery does not wait for NATS
	expect(t, sharedA, "during") // nor does the local shared subscription

	ns.Restart()
	awaitConnected(t, true, a, b)
	settle(t, a, b)
	brokertest.Publish(t, pub, "t/1", 1, []byte("after"))
	expect(t, onA, "after")
	expect(t, sharedA, "after")
	m := brokertest.Next(t, onB, wait)
	if string(m.Payload) == "during" { // nats.go may have kept it in its reconnect buffer
		m = brokertest.Next(t, onB, wait)
	}
	if string(m.Payload) != "after" {
		t.Fatalf("node 2 after the restart: got %s, want after", m)
	}
	for _, n := range nodes {
		if st := n.br.Stats(); st.Reconnects < 1 {
			t.Errorf("stats %+v: want a reconnect counted", st)
		}
	}
}

// awaitConnected waits until every node's bridge reports connected (or
// not): nats.go notices a dead server within its ping interval or at
// once on a closed socket.
func awaitConnected(t *testing.T, want bool, nodes ...*node) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for _, n := range nodes {
		for n.br.Stats().Connected != want {
			if time.Now().After(deadline) {
				t.Fatalf("bridge connected %t, want %t within 20s", !want, want)
			}
			time.Sleep(10 * time.Millisecond) // no event to wait on from outside the bridge
		}
	}
}

// TestSubscriptionCap: a node holds at most MaxSubscriptions NATS
// subscriptions; a filter beyond it is refused and counted, and gets
// nothing from other nodes, while local delivery to it goes on. When a
// subscription is given up, a waiting filter takes its place.
func TestSubscriptionCap(t *testing.T) {
	ns := natstest.Start(t)
	a := startNode(t, ns.URL(), "n1", broker.Config{})
	b := startNode(t, ns.URL(), "n2", broker.Config{}, func(c *natsbridge.Config) { c.MaxSubscriptions = 2 })
	c := brokertest.Connect(t, b.url, "c")
	brokertest.Subscribe(t, c, "one", 0)
	brokertest.Subscribe(t, c, "two", 0)
	over := brokertest.Subscribe(t, c, "three", 0)
	awaitSubscriptions(t, b, 2)
	if st := b.br.Stats(); st.SubscriptionsRefused != 1 {
		t.Fatalf("stats %+v: want 1 subscription refused", st)
	}
	pubB := brokertest.Connect(t, b.url, "pub-b")
	brokertest.Publish(t, pubB, "three", 0, []byte("local"))
	expect(t, over, "local")

	unsubscribe(t, c, "one") // room: the waiting filter gets it
	awaitSubscriptions(t, b, 2)
	settle(t, a)
	pubA := brokertest.Connect(t, a.url, "pub-a")
	brokertest.Publish(t, pubA, "three", 0, []byte("remote"))
	expect(t, over, "remote")
}

// The wiring exposes Stats in /metrics by conversion: the two types must
// keep the same fields.
var _ = metrics.BridgeStats(natsbridge.Stats{})

// TestRetainedAcrossNodes: a retained message crosses with its flag; the
// node that receives it keeps it, so a later subscriber there gets it as
// retained, and clearing it on the publisher's node clears it there too.
func TestRetainedAcrossNodes(t *testing.T) {
	nodes, _ := startNodes(t, 2)
	a, b := nodes[0], nodes[1]
	watcher := brokertest.Subscribe(t, brokertest.Connect(t, b.url, "watcher"), "status/#", 1)
	settle(t, a, b)
	pub := brokertest.Connect(t, a.url, "pub")
	brokertest.PublishRetained(t, pub, "status/dev1", 1, []byte("online"))
	expect(t, watcher, "online")

	late := brokertest.Subscribe(t, brokertest.Connect(t, b.url, "late"), "status/dev1", 1)
	m := brokertest.Next(t, late, wait)
	if string(m.Payload) != "online" || !m.Retained {
		t.Fatalf("late subscriber on node 2: got %s, want the retained online", m)
	}

	brokertest.PublishRetained(t, pub, "status/dev1", 1, nil) // clear
	expect(t, watcher, "")
	later := brokertest.Subscribe(t, brokertest.Connect(t, b.url, "later"), "status/#", 1)
	brokertest.Publish(t, pub, "status/marker", 1, []byte("marker"))
	expect(t, later, "marker") // and no retained online before it
}

// readOnly lets every client connect and publish, and read anything but
// topics under secret/.
type readOnly struct{}

func (readOnly) Authenticate(_ context.Context, c broker.Credentials) (broker.Identity, error) {
	return broker.Identity{Name: c.ClientID, Device: "d"}, nil
}

func (readOnly) Allow(_ broker.Identity, topic string, write bool) bool {
	return write || !strings.HasPrefix(topic, "secret/")
}

// TestReceivingNodeACL: the receiving node's ACL decides what its
// clients get from other nodes, message by message, as for its own.
func TestReceivingNodeACL(t *testing.T) {
	ns := natstest.Start(t)
	a := startNode(t, ns.URL(), "n1", broker.Config{})
	b := startNode(t, ns.URL(), "n2", broker.Config{Auth: readOnly{}})
	all := brokertest.Subscribe(t, brokertest.Connect(t, b.url, "reader"), "#", 1)
	settle(t, a, b)
	pub := brokertest.Connect(t, a.url, "pub")
	brokertest.Publish(t, pub, "secret/key", 1, []byte("secret"))
	brokertest.Publish(t, pub, "public/news", 1, []byte("public"))
	expect(t, all, "public")
	expectNothing(t, all)
}

// TestForeignMessagesDropped: messages under the prefix that no Umbra
// node of this version sent (no header, another version, a subject that
// decodes to no topic) are dropped and counted; nothing is delivered or
// retained for them.
func TestForeignMessagesDropped(t *testing.T) {
	nodes, ns := startNodes(t, 2)
	a, b := nodes[0], nodes[1]
	all := brokertest.Subscribe(t, brokertest.Connect(t, b.url, "reader"), "#", 1)
	settle(t, a, b)
	nc := natstest.Connect(t, ns.URLs())
	foreign := []*nats.Msg{
		{Subject: "umbra.m.status.x", Data: []byte("no header")},
		{Subject: "umbra.m.status.x", Data: []byte("v2"), Header: nats.Header{"Umbra-Msg": {"2 x/1 1 1 1 1"}}},
		{Subject: "umbra.m.status.%zz", Data: []byte("bad subject"), Header: nats.Header{"Umbra-Msg": {"1 x/1 1 1 1 1"}}},
	}
	for _, m := range foreign {
		if err := nc.PublishMsg(m); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	pub := brokertest.Connect(t, a.url, "pub")
	brokertest.Publish(t, pub, "status/y", 1, []byte("valid")) // after the foreign ones, on another connection
	expect(t, all, "valid")
	expectNothing(t, all)
	if got := b.br.Stats().InDropped; got != int64(len(foreign)) {
		t.Errorf("InDropped = %d, want %d", got, len(foreign))
	}
	late := brokertest.Subscribe(t, brokertest.Connect(t, b.url, "late"), "status/#", 1)
	brokertest.Publish(t, pub, "status/z", 1, []byte("marker"))
	expect(t, late, "marker") // no retained message came of the foreign ones
}

// TestNATSClusterServerKilled: nodes connected to different servers of a
// three-server NATS cluster exchange messages through its routes; when
// the server one node uses is killed (kill -9), the node reconnects to
// another by itself and messages cross again.
func TestNATSClusterServerKilled(t *testing.T) {
	c := natstest.StartCluster(t)
	urls := strings.Join(c.URLs(), ",")
	a := startNode(t, urls, "n1", broker.Config{})
	b := startNode(t, urls, "n2", broker.Config{})
	onB := brokertest.Subscribe(t, brokertest.Connect(t, b.url, "sub"), "fleet/#", 1)
	settle(t, a, b)
	pub := brokertest.Connect(t, a.url, "pub")
	crossed := func(payload string) {
		t.Helper()
		// The routes spread node 2's interest to node 1's server a moment
		// after node 2's own server has it: publish until it arrives.
		deadline := time.Now().Add(20 * time.Second)
		for {
			brokertest.Publish(t, pub, "fleet/x", 1, []byte(payload))
			select {
			case m := <-onB:
				if string(m.Payload) == payload {
					return
				}
			case <-time.After(200 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				t.Fatalf("%q did not cross within 20s", payload)
			}
		}
	}
	crossed("before")

	var victim *natstest.Server
	for _, s := range c.Servers {
		if s.URL() == a.br.ConnectedURL() {
			victim = s
		}
	}
	if victim == nil {
		t.Fatalf("node 1's server %s is not in the cluster", a.br.ConnectedURL())
	}
	victim.Kill()
	deadline := time.Now().Add(20 * time.Second)
	for a.br.ConnectedURL() == victim.URL() || !a.br.Stats().Connected {
		if time.Now().After(deadline) {
			t.Fatal("node 1 did not reconnect to another NATS server within 20s")
		}
		time.Sleep(10 * time.Millisecond) // no event to wait on from outside the bridge
	}
	crossed("after")
}

// TestNoBroadcast: with three nodes, a node none of whose clients
// subscribed holds no NATS subscription for messages and receives none of
// the traffic between the other two.
func TestNoBroadcast(t *testing.T) {
	nodes, _ := startNodes(t, 3)
	a, b, c := nodes[0], nodes[1], nodes[2]
	onB := brokertest.Subscribe(t, brokertest.Connect(t, b.url, "sub"), "telemetry/#", 1)
	brokertest.Connect(t, c.url, "idle") // connected, subscribed to nothing
	settle(t, nodes...)
	pub := brokertest.Connect(t, a.url, "pub")
	want := make([]string, 20)
	for i := range want {
		want[i] = fmt.Sprintf("m%d", i)
		brokertest.Publish(t, pub, fmt.Sprintf("telemetry/dev%d", i), 1, []byte(want[i]))
	}
	expect(t, onB, want...)
	settle(t, nodes...)
	if st := c.br.Stats(); st.Subscriptions != 0 || st.InMessages+st.InDropped+st.Duplicates != 0 {
		t.Errorf("idle node stats %+v: want no message subscription and no message received", st)
	}
}
