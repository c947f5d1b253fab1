//go:build linux

package broker_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/internal/brokertest"
	"github.com/umbra-iot/umbra/internal/waitfor"
)

// TestMochiPatchPacketReader covers mochi patch 20 (PacketReader,
// Client.ParsePacket): a connected plain TCP client is served by a read
// loop (Config.ReadLoops 0 or n), or by its own goroutine (-1), with the
// same behaviour: packets sent together with CONNECT, packets split over
// many segments, many packets in one segment, and the end of the
// connection.
func TestMochiPatchPacketReader(t *testing.T) {
	for _, tc := range []struct {
		loops     int
		wantLoops int64 // Stats.LoopConns with two clients connected
	}{
		{loops: 0, wantLoops: 2},
		{loops: 1, wantLoops: 2},
		{loops: 2, wantLoops: 2},
		{loops: -1, wantLoops: 0},
	} {
		t.Run(fmt.Sprintf("ReadLoops=%d", tc.loops), func(t *testing.T) {
			b := brokertest.New(t, broker.Config{ReadLoops: tc.loops})
			sub := dialRaw(t, b.Addr())
			// CONNECT and SUBSCRIBE in one write: the SUBSCRIBE is read
			// with the CONNECT, before the connection moves to a loop.
			sub.write(append(connectPacket(v311, "loop-sub", true, 30), subscribePacket(v311, 1, "loop/#", 1)...))
			sub.expect(typeConnack)
			sub.expect(typeSuback)

			pub := dialRaw(t, b.Addr())
			if code := pub.connect(v311, "loop-pub", true); code != 0 {
				t.Fatalf("CONNACK code %#x", code)
			}
			waitfor.Poll(t, 5*time.Second, "both clients counted", func() bool { return b.Stats().LoopConns == tc.wantLoops })

			// A PUBLISH written a byte at a time (TCP_NODELAY: a segment
			// each) reaches the loop in pieces.
			payload := bytes.Repeat([]byte("split"), 100)
			for _, c := range publishPacket(v311, "loop/split", 1, 7, payload) {
				pub.write([]byte{c})
			}
			if ack := pub.expect(typePuback); !bytes.Equal(ack.body, []byte{0, 7}) {
				t.Errorf("PUBACK body % x, want 00 07", ack.body)
			}
			p := sub.expect(typePublish)
			topic, id, got := parsePublish(v311, p)
			if topic != "loop/split" || !bytes.Equal(got, payload) {
				t.Errorf("got %q with %d bytes, want loop/split with %d", topic, len(got), len(payload))
			}
			sub.write(pubackPacket(id))

			// Many packets in one write.
			var burst []byte
			for i := range 50 {
				burst = append(burst, publishPacket(v311, fmt.Sprintf("loop/burst/%d", i), 0, 0, []byte{byte(i)})...)
			}
			pub.write(burst)
			for i := range 50 {
				topic, _, got := parsePublish(v311, sub.expect(typePublish))
				if want := fmt.Sprintf("loop/burst/%d", i); topic != want || len(got) != 1 || got[0] != byte(i) {
					t.Fatalf("message %d: got %q %v, want %q", i, topic, got, want)
				}
			}

			// A DISCONNECT ends the connection without its will; a
			// connection that just ends sends it.
			for _, abrupt := range []bool{false, true} {
				c := dialRaw(t, b.Addr())
				id := fmt.Sprintf("loop-will-%v", abrupt)
				c.write(fullConnectPacket(v311, id, "loop/will/"+id, "", ""))
				c.expect(typeConnack)
				if !abrupt {
					c.write([]byte{typeDisconn << 4, 0})
				}
				c.c.Close()
			}
			if topic, _, _ := parsePublish(v311, sub.expect(typePublish)); topic != "loop/will/loop-will-true" {
				t.Errorf("got %q, want only the will of the connection that ended without DISCONNECT", topic)
			}

			pub.c.Close()
			waitfor.Poll(t, 5*time.Second, "the closed client no longer served", func() bool {
				return b.Stats().LoopConns == tc.wantLoops/2 && b.Stats().ClientsConnected == 1
			})
		})
	}
}

// blockingAuth is an Authenticator whose Allow blocks on the first
// publish to a topic under slow/ until release is closed.
type blockingAuth struct {
	entered, release chan struct{}
	once             sync.Once
}

func (a *blockingAuth) Authenticate(_ context.Context, c broker.Credentials) (broker.Identity, error) {
	return broker.Identity{Name: c.ClientID}, nil
}

func (a *blockingAuth) Allow(_ broker.Identity, topic string, write bool) bool {
	if write && strings.HasPrefix(topic, "slow/") {
		a.once.Do(func() {
			close(a.entered)
			<-a.release
		})
	}
	return true
}

// TestReadLoopHandoff: a packet whose handling blocks holds up only its own
// connection. With one read loop, another client's messages go on through
// the loop while it blocks; the blocked connection's later packets follow
// in order once it returns, and the loop reads it again; the handoff is
// counted. A Subscribe handler (as the shadow engine's, which commits)
// gives the loop away before it runs; anything else that blocks (here an
// Authenticator) is handed off by the loop's monitor.
func TestReadLoopHandoff(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, cfg *broker.Config) (entered, release chan struct{}, register func(*broker.Server))
	}{
		{"subscribe handler", func(t *testing.T, cfg *broker.Config) (chan struct{}, chan struct{}, func(*broker.Server)) {
			entered, release := make(chan struct{}), make(chan struct{})
			var calls atomic.Int32
			return entered, release, func(b *broker.Server) {
				if err := b.Subscribe("slow/#", func(string, string, []byte) {
					if calls.Add(1) == 1 {
						close(entered)
						<-release
					}
				}); err != nil {
					t.Fatal(err)
				}
			}
		}},
		{"authenticator (monitor)", func(t *testing.T, cfg *broker.Config) (chan struct{}, chan struct{}, func(*broker.Server)) {
			a := &blockingAuth{entered: make(chan struct{}), release: make(chan struct{})}
			cfg.Auth = a
			return a.entered, a.release, func(*broker.Server) {}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := broker.Config{ReadLoops: 1}
			entered, release, register := tc.setup(t, &cfg)
			b := brokertest.New(t, cfg)
			register(b)
			released := false
			defer func() {
				if !released {
					close(release)
				}
			}()
			sub := dialRaw(t, b.Addr())
			if code := sub.connect(v311, "handoff-sub", true); code != 0 {
				t.Fatalf("CONNACK code %#x", code)
			}
			sub.write(subscribePacket(v311, 1, "fast/#", 0))
			sub.expect(typeSuback)
			slow, fast := dialRaw(t, b.Addr()), dialRaw(t, b.Addr())
			for id, c := range map[string]*rawConn{"handoff-slow": slow, "handoff-fast": fast} {
				if code := c.connect(v311, id, true); code != 0 {
					t.Fatalf("CONNACK code %#x", code)
				}
			}
			waitfor.Poll(t, 5*time.Second, "three clients in the loop", func() bool { return b.Stats().LoopConns == 3 })

			// The slow client's packet blocks; its next message waits behind it.
			slow.write(append(publishPacket(v311, "slow/1", 0, 0, []byte("s")), publishPacket(v311, "fast/after-slow", 0, 0, []byte("a"))...))
			select {
			case <-entered:
			case <-time.After(5 * time.Second):
				t.Fatal("the slow packet's handling did not start")
			}
			fast.write(publishPacket(v311, "fast/other", 0, 0, []byte("o")))
			if topic, _, _ := parsePublish(v311, sub.expect(typePublish)); topic != "fast/other" {
				t.Fatalf("got %q while the slow packet blocks, want fast/other", topic)
			}
			if st := b.Stats(); st.LoopHandoffs < 1 {
				t.Errorf("Stats.LoopHandoffs %d, want at least 1", st.LoopHandoffs)
			}
			close(release)
			released = true
			if topic, _, _ := parsePublish(v311, sub.expect(typePublish)); topic != "fast/after-slow" {
				t.Fatalf("got %q after the slow packet, want fast/after-slow", topic)
			}
			// The connection is read by the loop again.
			slow.write(publishPacket(v311, "fast/again", 0, 0, []byte("g")))
			if topic, _, _ := parsePublish(v311, sub.expect(typePublish)); topic != "fast/again" {
				t.Fatalf("got %q, want fast/again", topic)
			}
		})
	}
}

// TestReadLoopKeepalive: the loop's monitor ends a connection silent for
// longer than its keepalive and a half; one that pings stays.
func TestReadLoopKeepalive(t *testing.T) {
	var cfg broker.Config
	ev := withEvents(&cfg)
	b := brokertest.New(t, cfg)
	silent, pinging := dialRaw(t, b.Addr()), dialRaw(t, b.Addr())
	for id, c := range map[string]*rawConn{"ka-silent": silent, "ka-pinging": pinging} {
		c.write(connectPacket(v311, id, true, 1)) // keepalive 1 s: silent for 1.5 s ends it
		c.expect(typeConnack)
	}
	waitfor.Poll(t, 5*time.Second, "both clients in a loop", func() bool { return b.Stats().LoopConns == 2 })
	start := time.Now()
	stop, stopped := make(chan struct{}), make(chan struct{})
	t.Cleanup(func() { close(stop); <-stopped })
	go func() {
		defer close(stopped)
		for {
			select {
			case <-stop:
				return
			case <-time.After(300 * time.Millisecond):
			}
			if _, err := pinging.c.Write([]byte{0xc0, 0}); err != nil { // PINGREQ
				return
			}
		}
	}()
	silent.expectClosed()
	if d := time.Since(start); d < time.Second {
		t.Errorf("silent client closed after %v, before its keepalive", d)
	}
	if err := ev.disconnectOf(t, "ka-silent"); err == nil {
		t.Error("OnDisconnect of the silent client without a cause")
	}
	waitfor.Poll(t, 5*time.Second, "the pinging client alone connected", func() bool { return b.Stats().ClientsConnected == 1 })
}

// TestMochiPatchLengthFourBytes covers mochi patch 21: a remaining length
// longer than four bytes is malformed [MQTT-1.5.5-1], and ends the
// connection, whether a read loop (ParsePacket) or the connection's
// goroutine (DecodeLength) reads it. Before, continuation bytes that added
// nothing to the value (0x80) were read without end.
func TestMochiPatchLengthFourBytes(t *testing.T) {
	for _, loops := range []int{0, -1} {
		t.Run(fmt.Sprintf("ReadLoops=%d", loops), func(t *testing.T) {
			var cfg broker.Config
			cfg.ReadLoops = loops
			ev := withEvents(&cfg)
			b := brokertest.New(t, cfg)
			rc := dialRaw(t, b.Addr())
			if code := rc.connect(v311, "long-length", true); code != 0 {
				t.Fatalf("CONNACK code %#x", code)
			}
			rc.write([]byte{0x30, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80})
			rc.expectClosed()
			if err := ev.disconnectOf(t, "long-length"); !errors.Is(err, broker.ErrProtocol) {
				t.Errorf("OnDisconnect: got %v, want %v", err, broker.ErrProtocol)
			}
		})
	}
}

// TestReadLoopBacklog: a client that is sent more than its socket takes
// gets all of it through the backlog's writer, which waits for the socket
// to become writable through the read loop (EPOLLOUT): here the client
// reads nothing until the broker holds a backlog for it. Its SUBSCRIBE
// comes with CONNECT, so the backlog may start before the connection joins
// the loop.
func TestReadLoopBacklog(t *testing.T) {
	const n, size = 160, 100 << 10 // 16 MB of retained messages: more than loopback sockets buffer
	b := brokertest.New(t, broker.Config{MaxPendingBytes: 64 << 20, ClientWritesPending: 2 * n})
	payload := bytes.Repeat([]byte{'r'}, size)
	for i := range n {
		if err := b.Publish(fmt.Sprintf("backlog/%d", i), payload, true, 0); err != nil {
			t.Fatal(err)
		}
	}
	c := dialRaw(t, b.Addr())
	c.write(append(connectPacket(v311, "backlog-sub", true, 30), subscribePacket(v311, 1, "backlog/#", 0)...))
	waitfor.Poll(t, 10*time.Second, "a backlog for the client", func() bool { return b.Stats().PendingBytes > 0 })
	c.expect(typeConnack)
	c.expect(typeSuback)
	for range n {
		topic, _, p := parsePublish(v311, c.expect(typePublish))
		if len(p) != size {
			t.Fatalf("%s: %d bytes, want %d", topic, len(p), size)
		}
	}
	waitfor.Poll(t, 5*time.Second, "the backlog written", func() bool { return b.Stats().PendingBytes == 0 })
	if st := b.Stats(); st.SlowConsumers != 0 || st.LoopConns != 1 || st.MessagesDropped != 0 {
		t.Errorf("Stats.SlowConsumers %d, LoopConns %d, MessagesDropped %d: want 0, 1, 0", st.SlowConsumers, st.LoopConns, st.MessagesDropped)
	}
}

// TestDeferredDeliveryOrder: each publisher's messages reach a subscriber
// in order and none is lost, whether the read loop writes them at the end
// of its batch (deferred), the subscriber's write loop writes them (when
// it has messages queued: here also the broker's own, published from
// another goroutine), or a handoff comes in between (a Subscribe handler
// that waits, on every 25th message of each publisher).
func TestDeferredDeliveryOrder(t *testing.T) {
	const publishers, each = 8, 300
	// One loop: every delivery of a batch from the same loop; two: a
	// subscriber gets deferred deliveries from both.
	for _, loops := range []int{1, 2} {
		t.Run(fmt.Sprintf("ReadLoops=%d", loops), func(t *testing.T) {
			b := brokertest.New(t, broker.Config{ReadLoops: loops, ClientWritesPending: 1 << 14, MaxPendingBytes: 64 << 20, MaxMessageRate: -1})
			if err := b.Subscribe("order/+/slow", func(string, string, []byte) { time.Sleep(3 * time.Millisecond) }); err != nil {
				t.Fatal(err)
			}
			sub := dialRaw(t, b.Addr())
			if code := sub.connect(v311, "order-sub", true); code != 0 {
				t.Fatalf("CONNACK code %#x", code)
			}
			sub.write(subscribePacket(v311, 1, "order/#", 0))
			sub.expect(typeSuback)
			pubs := make([]*rawConn, publishers)
			for i := range pubs {
				pubs[i] = dialRaw(t, b.Addr())
				if code := pubs[i].connect(v311, fmt.Sprintf("order-pub-%d", i), true); code != 0 {
					t.Fatalf("CONNACK code %#x", code)
				}
			}
			var wg sync.WaitGroup
			wg.Go(func() { // the broker's own messages keep the subscriber's write loop busy at times
				for i := range each {
					_ = b.Publish("order/broker/x", []byte(strconv.Itoa(i)), false, 0)
				}
			})
			for p, c := range pubs {
				wg.Go(func() {
					for i := range each {
						topic := fmt.Sprintf("order/%d/x", p)
						if i%25 == 0 {
							topic = fmt.Sprintf("order/%d/slow", p)
						}
						c.write(publishPacket(v311, topic, 0, 0, []byte(strconv.Itoa(i))))
					}
				})
			}
			next := map[string]int{}
			for got := 0; got < (publishers+1)*each; got++ {
				topic, _, payload := parsePublish(v311, sub.expect(typePublish))
				from := strings.Split(topic, "/")[1]
				n, err := strconv.Atoi(string(payload))
				if err != nil {
					t.Fatalf("payload %q on %s", payload, topic)
				}
				if n != next[from] {
					t.Fatalf("from %s: got message %d, want %d (out of order or lost)", from, n, next[from])
				}
				next[from]++
			}
			wg.Wait()
			if st := b.Stats(); st.MessagesDropped != 0 || st.LoopHandoffs == 0 {
				t.Errorf("Stats.MessagesDropped %d, LoopHandoffs %d: want 0 and some", st.MessagesDropped, st.LoopHandoffs)
			}
		})
	}
}
