package natsbridge_test

import (
	"bufio"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/broker/natsbridge"
	"github.com/umbra-iot/umbra/internal/brokertest"
	"github.com/umbra-iot/umbra/internal/natstest"
)

// TestSessionTakeoverAcrossNodes: a device connected to node 1 connects
// to node 2 with the same client ID. Node 1 drops its connection
// (ErrTakenOver) and its session before node 2 completes the CONNECT, so
// presence sees the old connection end before the new one starts, and
// node 1 gives up the device's NATS interest: a command published on node
// 1 reaches the device on node 2, once.
func TestSessionTakeoverAcrossNodes(t *testing.T) {
	nodes, _ := startNodes(t, 2)
	a, b := nodes[0], nodes[1]
	lost := make(chan error, 1)
	persistent := func(o *mqtt.ClientOptions) {
		o.SetCleanSession(false)
	}
	old := brokertest.Connect(t, a.url, "dev-1", persistent, func(o *mqtt.ClientOptions) {
		o.SetConnectionLostHandler(func(_ mqtt.Client, err error) { lost <- err })
	})
	brokertest.Subscribe(t, old, "dev-1/cmd", 1)
	waitConnect(t, a, "dev-1")
	awaitSubscriptions(t, a, 1)

	dev := brokertest.Connect(t, b.url, "dev-1", persistent)
	connected := waitConnect(t, b, "dev-1")
	var gone disconnect
	select {
	case gone = <-a.disconnects:
	default:
		t.Fatal("node 1 had not ended the old connection when node 2 completed the new one")
	}
	if gone.info.ClientID != "dev-1" || !errors.Is(gone.err, broker.ErrTakenOver) {
		t.Fatalf("node 1 OnDisconnect: %s %v, want dev-1 ErrTakenOver", gone.info.ClientID, gone.err)
	}
	if gone.info.At.After(connected.At) {
		t.Errorf("old connection ended at %v, after the new one connected at %v", gone.info.At, connected.At)
	}
	select {
	case <-lost:
	case <-time.After(wait):
		t.Fatal("the old client was not disconnected")
	}
	settle(t, a, b)
	if st := a.br.Stats(); st.TakeoversReleased != 1 || st.Sessions != 0 {
		t.Errorf("node 1 stats: %+v, want 1 takeover released and no session left", st)
	}
	if st := b.br.Stats(); st.TakeoversSent != 1 || st.Sessions != 1 {
		t.Errorf("node 2 stats: %+v, want 1 takeover sent and 1 session", st)
	}
	awaitSubscriptions(t, a, 0) // the released session's subscription went with it

	// The session moved with the device (TestPersistentSessionMovesWithItsClient);
	// subscribing again changes nothing.
	cmds := brokertest.Subscribe(t, dev, "dev-1/cmd", 1)
	settle(t, a, b)
	op := brokertest.Connect(t, a.url, "operator")
	brokertest.Publish(t, op, "dev-1/cmd", 1, []byte("reboot"))
	expect(t, cmds, "reboot")
	expectNothing(t, cmds)

	// Reconnecting to node 2 is a local takeover: node 2 answers its own
	// request, node 1 releases nothing.
	brokertest.Connect(t, b.url, "dev-1", persistent)
	waitConnect(t, b, "dev-1")
	if st := b.br.Stats(); st.TakeoversSent != 1 {
		t.Errorf("node 2 counted %d takeovers after a reconnect to itself, want still 1", st.TakeoversSent)
	}
	if st := a.br.Stats(); st.TakeoversReleased != 1 {
		t.Errorf("node 1 released %d sessions, want still 1", st.TakeoversReleased)
	}
}

// TestSessionTakeoverReasonCode: an MQTT 5 client whose session another
// node takes over gets DISCONNECT with reason code 0x8E.
func TestSessionTakeoverReasonCode(t *testing.T) {
	nodes, _ := startNodes(t, 2)
	a, b := nodes[0], nodes[1]
	conn, err := net.Dial("tcp", a.brk.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(2 * wait))
	r := bufio.NewReader(conn)
	id := "dev-5"
	connect := append([]byte{0, 4, 'M', 'Q', 'T', 'T', 5, 0x02, 0, 60, 0, 0, byte(len(id))}, id...)
	if _, err := conn.Write(append([]byte{0x10, byte(len(connect))}, connect...)); err != nil {
		t.Fatal(err)
	}
	if typ, body := readPacket(t, r); typ != 0x20 || len(body) < 2 || body[1] != 0 {
		t.Fatalf("CONNACK: type %#x body % x, want success", typ, body)
	}
	waitConnect(t, a, id)
	natsbridge.Settle(t, a.br) // the session's takeover subscription is in NATS

	brokertest.Connect(t, b.url, id)
	typ, body := readPacket(t, r)
	if typ != 0xE0 || len(body) < 1 || body[0] != 0x8E {
		t.Fatalf("got packet type %#x body % x, want DISCONNECT with reason 0x8E (session taken over)", typ, body)
	}
}

// readPacket reads one MQTT packet: its type byte and its body.
func readPacket(t *testing.T, r *bufio.Reader) (byte, []byte) {
	t.Helper()
	typ, err := r.ReadByte()
	if err != nil {
		t.Fatalf("read packet: %v", err)
	}
	n, shift := 0, 0
	for {
		b, err := r.ReadByte()
		if err != nil {
			t.Fatalf("read length: %v", err)
		}
		n |= int(b&0x7F) << shift
		if b&0x80 == 0 {
			break
		}
		if shift += 7; shift > 21 {
			t.Fatal("bad remaining length")
		}
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		t.Fatalf("read body: %v", err)
	}
	return typ, body
}

// TestSessionTakeoverOfflineSession: a device's persistent session that
// waits offline on node 1 is released when the device connects to node
// 2, so node 1 no longer holds its interest nor queues its messages.
func TestSessionTakeoverOfflineSession(t *testing.T) {
	nodes, _ := startNodes(t, 2)
	a, b := nodes[0], nodes[1]
	persistent := func(o *mqtt.ClientOptions) { o.SetCleanSession(false) }
	old := brokertest.Connect(t, a.url, "dev-7", persistent)
	brokertest.Subscribe(t, old, "dev-7/cmd", 1)
	old.Disconnect(100)
	waitDisconnect(t, a, "dev-7")
	awaitSubscriptions(t, a, 1) // the offline session keeps its filter
	if st := a.br.Stats(); st.Sessions != 1 {
		t.Fatalf("node 1 stats %+v: want the offline session held", st)
	}

	brokertest.Connect(t, b.url, "dev-7", persistent)
	waitConnect(t, b, "dev-7")
	settle(t, a)
	if st := a.br.Stats(); st.Sessions != 0 || st.TakeoversReleased != 1 {
		t.Errorf("node 1 stats %+v: want the offline session released", st)
	}
	awaitSubscriptions(t, a, 0)
}

// TestWillAcrossNodes: the will of a device whose connection to node 1
// breaks reaches a subscriber on node 2.
func TestWillAcrossNodes(t *testing.T) {
	nodes, _ := startNodes(t, 2)
	a, b := nodes[0], nodes[1]
	wills := brokertest.Subscribe(t, brokertest.Connect(t, b.url, "watcher"), "status/+", 1)
	settle(t, a, b)
	conn, err := net.Dial("tcp", a.brk.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	str := func(s string) []byte { return append([]byte{byte(len(s) >> 8), byte(len(s))}, s...) }
	body := []byte{0, 4, 'M', 'Q', 'T', 'T', 4, 0x02 | 0x04 | 0x08, 0, 60} // clean, will, will QoS 1
	body = append(body, str("dev-w")...)
	body = append(body, str("status/dev-w")...)
	body = append(body, str("offline")...)
	if _, err := conn.Write(append([]byte{0x10, byte(len(body))}, body...)); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetDeadline(time.Now().Add(wait))
	if typ, ack := readPacket(t, bufio.NewReader(conn)); typ != 0x20 || len(ack) < 2 || ack[1] != 0 {
		t.Fatalf("CONNACK: type %#x body % x, want success", typ, ack)
	}
	waitConnect(t, a, "dev-w")
	conn.Close() // no DISCONNECT: the will is published
	expect(t, wills, "offline")
}

// TestQuickReconnectIsAnswered: a client that reconnects to the same node
// at once, while the node drops the takeover subscription of its ended
// session, gets its takeover request answered: the node drains the
// subscription, so a request NATS routed to it before the unsubscription
// took effect is still delivered. With an Unsubscribe the request was
// dropped and the connect waited TakeoverTimeout (about one reconnect in
// a hundred in BenchmarkClusterRollout, each 3 s).
func TestQuickReconnectIsAnswered(t *testing.T) {
	ns := natstest.Start(t)
	n := startNode(t, ns.URL(), "n1", broker.Config{}, func(c *natsbridge.Config) { c.TakeoverTimeout = 200 * time.Millisecond })
	const cycles = 300
	for i := range cycles {
		c := dialV5(t, n.brk.Addr(), "quick")
		c.send(t, 0xE0, []byte{0}) // DISCONNECT, normal
		if _, err := c.r.ReadByte(); err == nil {
			t.Fatalf("cycle %d: the broker sent something after DISCONNECT", i)
		}
		c.Close()
	}
	if st := n.br.Stats(); st.TakeoverTimeouts != 0 {
		t.Errorf("%d of %d quick reconnects waited for an unanswered takeover request (stats %+v)", st.TakeoverTimeouts, cycles, st)
	}
}
