package broker_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/internal/brokertest"
)

// TestMochiPatchRetainedScanRace runs retained publishes against wildcard
// SUBSCRIBEs that scan the same topic level. Unpatched mochi v2.7.9 read a
// topic node's retained path without the lock RetainMessage writes it
// under (third_party/mochi/PATCHES.md, patch 1); under -race this test
// reported that data race.
func TestMochiPatchRetainedScanRace(t *testing.T) {
	s := brokertest.New(t, broker.Config{})
	c := brokertest.Connect(t, brokertest.URL(s), "scanner")
	const rounds = 200
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := range rounds {
			// Setting and clearing the retained message writes the node's
			// retained path each time.
			payload := []byte(fmt.Sprint(i))
			if i%2 == 1 {
				payload = nil
			}
			if err := s.Publish("scan/x", payload, true, 0); err != nil {
				t.Errorf("publish %d: %v", i, err)
				return
			}
		}
	})
	for i := range rounds {
		tok := c.Subscribe("scan/+", 0, nil)
		if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatalf("subscribe %d: %v", i, tok.Error())
		}
		tok = c.Unsubscribe("scan/+")
		if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatalf("unsubscribe %d: %v", i, tok.Error())
		}
	}
	wg.Wait()
}

// TestMochiPatchInboundAckKeepsOutbound has a client with a persistent
// session publish at QoS 1 with the packet identifier of a QoS 1 message
// the broker sent it and it has not acknowledged yet. The two flows are
// independent [MQTT-2.2.1-2]: the unacknowledged message must be sent
// again when the client resumes its session. Unpatched mochi put its
// PUBACK in the same inflight store under that identifier, replacing the
// message and deleting it after the write, so it was never sent again
// (third_party/mochi/PATCHES.md, patch 7).
func TestMochiPatchInboundAckKeepsOutbound(t *testing.T) {
	for _, version := range []byte{v311, v5} {
		t.Run(fmt.Sprintf("v%d", version), func(t *testing.T) {
			var cfg broker.Config
			ev := withEvents(&cfg)
			b := brokertest.New(t, cfg)
			rc := dialRaw(t, b.Addr())
			rc.write(persistentConnect(version, "collide", "pw"))
			rc.expect(typeConnack)
			rc.write(subscribePacket(version, 1, "to/collide", 1))
			rc.expect(typeSuback)
			if err := b.Publish("to/collide", []byte("unacked"), false, 1); err != nil {
				t.Fatal(err)
			}
			_, id, payload := parsePublish(version, rc.expect(typePublish))
			if string(payload) != "unacked" {
				t.Fatalf("got payload %q, want %q", payload, "unacked")
			}
			// The client's own QoS 1 PUBLISH, with the same identifier; not
			// acknowledging the broker's message.
			rc.write(publishPacket(version, "from/collide", 1, id, []byte("mine")))
			if ack := rc.expect(typePuback); binary.BigEndian.Uint16(ack.body) != id {
				t.Fatalf("PUBACK for packet %d, want %d", binary.BigEndian.Uint16(ack.body), id)
			}
			if st := b.Stats(); st.Inflight != 1 {
				t.Errorf("Stats.Inflight after the client's PUBLISH: got %d, want 1 (the unacknowledged message)", st.Inflight)
			}
			rc.c.Close()
			ev.disconnectOf(t, "collide")

			again := dialRaw(t, b.Addr())
			again.write(persistentConnect(version, "collide", "pw"))
			again.expect(typeConnack)
			p := again.expect(typePublish)
			topic, rid, payload := parsePublish(version, p)
			if topic != "to/collide" || string(payload) != "unacked" || rid != id || p.flags&0x08 == 0 {
				t.Errorf("resent: topic %q payload %q id %d dup %v, want to/collide unacked %d true",
					topic, payload, rid, p.flags&0x08 != 0, id)
			}
		})
	}
}

// TestMochiPatchWillClearRace evicts clients while they disconnect cleanly,
// so that the broker's atomic clearing of the will (Evict) meets mochi's
// clearing of it at the end of the read loop. Unpatched mochi assigned the
// whole Will struct there: `go test -race` reported the two writes
// (seen in TestEvict under load; third_party/mochi/PATCHES.md, patch 15).
// No will may be published: an evicted client's is dropped, a cleanly
// disconnected client's is deleted [MQTT-3.1.2-10].
func TestMochiPatchWillClearRace(t *testing.T) {
	auth := &revocableAuth{revoked: map[string]bool{}}
	b := brokertest.New(t, broker.Config{Auth: auth})
	wills := make(chan string, 64)
	if err := b.Subscribe("wills/#", func(_, topic string, _ []byte) { wills <- topic }); err != nil {
		t.Fatal(err)
	}
	const rounds = 40
	for i := range rounds {
		name := fmt.Sprintf("leaver-%d", i)
		c := brokertest.Connect(t, brokertest.URL(b), name, func(o *mqtt.ClientOptions) {
			o.SetUsername(name).SetPassword("x").SetWill("wills/"+name, "gone", 1, false)
		})
		var wg sync.WaitGroup
		wg.Go(func() { c.Disconnect(250) }) // returns once DISCONNECT is written
		b.Evict(t.Context(), func(id broker.Identity) bool { return id.Name == name })
		wg.Wait()
	}
	// A will published would have been delivered by now to the in-process
	// subscriber; a last client's connect and publish orders after them.
	probe := brokertest.Connect(t, brokertest.URL(b), "probe", func(o *mqtt.ClientOptions) {
		o.SetUsername("probe").SetPassword("x")
	})
	if tok := probe.Publish("wills/probe", 1, false, "end"); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("probe publish: %v", tok.Error())
	}
	if topic := <-wills; topic != "wills/probe" {
		t.Fatalf("a will was published: %s", topic)
	}
}

// TestMochiPatchCoalescedWrites queues messages for one client from many
// goroutines at once, as many devices publishing to one integrator do,
// and counts the writes to the client's connection. With
// Options.CoalesceClientWrites (third_party/mochi/PATCHES.md, patch 13),
// which the broker sets, the write loop yields once before it writes the
// last queued packet, the runnable publishers queue theirs, and they go
// out together; unpatched, the write loop, readied by the first send, ran
// next and wrote each message on its own (64 writes for 64 messages; the
// race detector's randomised scheduling order batches some by chance).
// One processor makes the order of the runnable goroutines the
// scheduler's. Without the option, every message still arrives.
func TestMochiPatchCoalescedWrites(t *testing.T) {
	const publishers = 64
	for _, coalesce := range []bool{true, false} {
		t.Run(fmt.Sprintf("coalesce=%v", coalesce), func(t *testing.T) {
			defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
			s := mochi.New(&mochi.Options{InlineClient: true, CoalesceClientWrites: coalesce, Logger: slog.New(slog.DiscardHandler)})
			defer s.Close()
			if err := s.AddHook(new(allowAll), nil); err != nil {
				t.Fatal(err)
			}
			server, client := net.Pipe()
			defer client.Close()
			counted := &writeCounter{Conn: server}
			cl := s.NewClient(counted, "pipe", "coalesced", false)
			s.Clients.Add(cl)
			s.Topics.Subscribe(cl.ID, packets.Subscription{Filter: "coalesce/+"})
			loopDone := make(chan struct{})
			go func() {
				defer close(loopDone)
				cl.WriteLoop()
			}()
			defer func() {
				cl.Stop(nil)
				<-loopDone
			}()
			payload := []byte("01234567")
			const packetLen = 2 + 2 + len("coalesce/x") + 8 // fixed header, topic length and name, payload
			received := make(chan error, 1)
			go func() {
				_, err := io.ReadFull(client, make([]byte, publishers*packetLen))
				received <- err
			}()
			start := make(chan struct{})
			var wg sync.WaitGroup
			for range publishers {
				wg.Go(func() {
					<-start
					if err := s.Publish("coalesce/x", payload, false, 0); err != nil {
						t.Errorf("publish: %v", err)
					}
				})
			}
			close(start)
			wg.Wait()
			select {
			case err := <-received:
				if err != nil {
					t.Fatalf("read the messages: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("messages not received within 10s")
			}
			writes := counted.writes.Load()
			t.Logf("%d messages in %d writes", publishers, writes)
			if coalesce && writes > publishers/4 {
				t.Errorf("%d messages in %d writes, want at most %d", publishers, writes, publishers/4)
			}
		})
	}
}

// writeCounter counts the writes to its connection.
type writeCounter struct {
	net.Conn
	writes atomic.Int64
}

func (w *writeCounter) Write(p []byte) (int, error) {
	w.writes.Add(1)
	return w.Conn.Write(p)
}

// allowAll is a mochi hook that allows every delivery (mochi denies all
// without an ACL hook).
type allowAll struct{ mochi.HookBase }

func (allowAll) ID() string                                  { return "allow-all" }
func (allowAll) Provides(b byte) bool                        { return b == mochi.OnACLCheck }
func (allowAll) OnACLCheck(*mochi.Client, string, bool) bool { return true }

// TestMochiPatchClientQueue drives the client methods mochi patch 14 adds
// (third_party/mochi/PATCHES.md), which the broker uses instead of
// writing mochi's unexported fields with unsafe: SetOutboundCapacity
// (made by the write loop; the packets queued move along; it fails, and
// nothing changes, without a write loop or on a stopped client),
// QueueOutbound and SetStopTime. They do not exist in unpatched mochi.
func TestMochiPatchClientQueue(t *testing.T) {
	const initial = 16
	caps := mochi.NewDefaultServerCapabilities()
	caps.MaximumClientWritesPending = initial
	s := mochi.New(&mochi.Options{Capabilities: caps, Logger: slog.New(slog.DiscardHandler)})
	defer s.Close()
	server, client := net.Pipe()
	defer client.Close()
	cl := s.NewClient(server, "pipe", "queue", false)
	if got := cl.OutboundCapacity(); got != initial {
		t.Fatalf("capacity of a new client's queue: got %d, want %d", got, initial)
	}
	ping := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingresp}}
	if !cl.QueueOutbound(&ping) {
		t.Fatal("QueueOutbound: queue full")
	}

	// No write loop: nobody takes the request.
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
	defer cancel()
	if err := cl.SetOutboundCapacity(ctx, 4096); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("SetOutboundCapacity without a write loop: got %v, want %v", err, context.DeadlineExceeded)
	}
	if got := cl.OutboundCapacity(); got != initial {
		t.Fatalf("capacity after a failed replacement: got %d, want %d", got, initial)
	}

	// The write loop makes the replacement; the queued PINGRESP moves to
	// the new queue (or was written just before) and is written.
	replaced := make(chan error, 1)
	go func() { replaced <- cl.SetOutboundCapacity(t.Context(), 8) }()
	loopDone := make(chan struct{})
	go func() {
		defer close(loopDone)
		cl.WriteLoop()
	}()
	_ = client.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 2)
	if _, err := io.ReadFull(client, buf); err != nil || buf[0] != packets.Pingresp<<4 {
		t.Fatalf("read the queued PINGRESP: %v (got % x)", err, buf)
	}
	if err := <-replaced; err != nil {
		t.Fatalf("SetOutboundCapacity: %v", err)
	}
	if got := cl.OutboundCapacity(); got != 8 {
		t.Fatalf("capacity after the replacement: got %d, want 8", got)
	}

	// A stopped client's queue is not replaced.
	cl.Stop(nil)
	<-loopDone
	if err := cl.SetOutboundCapacity(t.Context(), 64); !errors.Is(err, mochi.ErrConnectionClosed) {
		t.Fatalf("SetOutboundCapacity on a stopped client: got %v, want %v", err, mochi.ErrConnectionClosed)
	}
	if got := cl.OutboundCapacity(); got != 8 {
		t.Fatalf("capacity after a refused replacement: got %d, want 8", got)
	}

	// A restored session's expiry runs from its stored disconnect time.
	cl.SetStopTime(1234567890)
	if got := cl.StopTime(); got != 1234567890 {
		t.Errorf("StopTime after SetStopTime: got %d, want 1234567890", got)
	}
}

// TestMochiPatchTakeoverKeepsNewClient: a device that disconnects (clean
// session) and connects again at once with the same client ID must stay
// registered. Unpatched mochi's cleanup of the old connection, once past
// its "taken over?" check, deleted the client registered under the ID,
// by then the new connection: it stayed connected and subscribed, and
// received nothing (third_party/mochi/PATCHES.md, patch 16; seen as
// internal/sim's TestFleetRepeatedRollouts ending with 99 of 100 devices
// updated under load, the simulated devices reboot in 1 ms). The hook
// holds the old connection's cleanup in that window, deterministically.
func TestMochiPatchTakeoverKeepsNewClient(t *testing.T) {
	s := mochi.New(&mochi.Options{InlineClient: true, Logger: slog.New(slog.DiscardHandler)})
	defer s.Close()
	hook := &holdCleanup{held: make(chan struct{}), release: make(chan struct{})}
	if err := s.AddHook(hook, nil); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ended := make(chan struct{}, 2) // one per connection, when the server is done with it
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				_ = s.EstablishConnection("tcp", c)
				ended <- struct{}{}
			}()
		}
	}()
	connect := func(received chan<- string) mqtt.Client {
		opts := mqtt.NewClientOptions().AddBroker("tcp://" + ln.Addr().String()).SetClientID("twin").
			SetCleanSession(true).SetAutoReconnect(false)
		c := mqtt.NewClient(opts)
		if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatalf("connect: %v", tok.Error())
		}
		tok := c.Subscribe("twin/in", 0, func(_ mqtt.Client, m mqtt.Message) { received <- string(m.Payload()) })
		if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatalf("subscribe: %v", tok.Error())
		}
		return c
	}

	old := connect(make(chan string, 1))
	old.Disconnect(0)
	select { // the old connection's cleanup is past its takeover check
	case <-hook.held:
	case <-time.After(10 * time.Second):
		t.Fatal("the old connection's cleanup did not start within 10s")
	}
	received := make(chan string, 1)
	c := connect(received)
	defer c.Disconnect(0)
	close(hook.release)
	select {
	case <-ended: // the old connection's cleanup has finished
	case <-time.After(10 * time.Second):
		t.Fatal("the old connection's cleanup did not end within 10s")
	}
	if cl, ok := s.Clients.Get("twin"); !ok || cl.Closed() {
		t.Fatalf("after the old connection's cleanup, the new one is registered: %v, want true", ok)
	}
	if err := s.Publish("twin/in", []byte("hello"), false, 0); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-received:
		if got != "hello" {
			t.Fatalf("received %q, want hello", got)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the new connection received nothing within 10s")
	}
}

// holdCleanup authenticates and allows everyone, and holds the first
// unsubscription of a client's filters made by a connection's cleanup
// (after the takeover check) until release is closed.
type holdCleanup struct {
	mochi.HookBase
	once          sync.Once
	held, release chan struct{}
}

func (*holdCleanup) ID() string { return "hold-cleanup" }
func (*holdCleanup) Provides(b byte) bool {
	return b == mochi.OnConnectAuthenticate || b == mochi.OnACLCheck || b == mochi.OnUnsubscribed
}
func (*holdCleanup) OnConnectAuthenticate(*mochi.Client, packets.Packet) bool { return true }
func (*holdCleanup) OnACLCheck(*mochi.Client, string, bool) bool              { return true }
func (h *holdCleanup) OnUnsubscribed(cl *mochi.Client, pk packets.Packet) {
	if len(pk.Filters) == 0 { // a takeover's unsubscription of the emptied old client
		return
	}
	h.once.Do(func() {
		close(h.held)
		<-h.release
	})
}

// TestMochiPatchNextImmediate checks mochi's Inflight.NextImmediate
// (third_party/mochi/PATCHES.md, patch 17), which the server calls after
// every packet of a client with messages in flight. Unpatched, it took the
// store's read lock and called GetAll, which took it again: a writer
// queueing between the two (a publisher storing the next message for the
// client) deadlocked both, which the concurrent case below reached within
// a few thousand rounds. And it copied and sorted the whole store on each
// call; the cost case shows the call no longer grows with the number of
// messages in flight when none is held for quota.
func TestMochiPatchNextImmediate(t *testing.T) {
	held := func(id uint16, created int64) packets.Packet {
		return packets.Packet{PacketID: id, Created: created, Expiry: -1}
	}
	sent := func(id uint16, created int64) packets.Packet {
		return packets.Packet{PacketID: id, Created: created}
	}
	tests := []struct {
		name   string
		set    []packets.Packet
		delete []uint16
		clone  bool
		want   uint16 // 0: none
	}{
		{name: "empty"},
		{name: "none held", set: []packets.Packet{sent(1, 1), sent(2, 2)}},
		{name: "the oldest held", set: []packets.Packet{sent(1, 1), held(2, 5), held(3, 4), sent(4, 3)}, want: 3},
		{name: "ties by packet id", set: []packets.Packet{held(9, 4), held(7, 4)}, want: 7},
		{name: "held then deleted", set: []packets.Packet{held(2, 5), held(3, 4)}, delete: []uint16{3}, want: 2},
		{name: "all held deleted", set: []packets.Packet{held(2, 5), sent(3, 4)}, delete: []uint16{2, 2}},
		{name: "held replaced by sent", set: []packets.Packet{held(2, 5), sent(2, 6)}},
		{name: "sent replaced by held", set: []packets.Packet{sent(2, 5), held(2, 6)}, want: 2},
		{name: "clone keeps held", set: []packets.Packet{sent(1, 1), held(2, 2)}, clone: true, want: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := mochi.NewInflights()
			for _, pk := range tt.set {
				in.Set(pk)
			}
			for _, id := range tt.delete {
				in.Delete(id)
			}
			if tt.clone {
				in = in.Clone()
			}
			pk, ok := in.NextImmediate()
			if got := map[bool]uint16{true: pk.PacketID}[ok]; got != tt.want || ok != (tt.want != 0) {
				t.Errorf("NextImmediate = %d, %v; want %d, %v", pk.PacketID, ok, tt.want, tt.want != 0)
			}
		})
	}

	t.Run("concurrent writers", func(t *testing.T) {
		in := mochi.NewInflights()
		in.Set(sent(1, 1))
		done, stop := make(chan struct{}), make(chan struct{})
		go func() {
			defer close(done)
			for range 20000 {
				in.NextImmediate()
			}
		}()
		var writer sync.WaitGroup
		writer.Go(func() {
			for i := uint16(2); ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				in.Set(sent(i, int64(i)))
				in.Delete(i)
			}
		})
		select {
		case <-done:
			close(stop)
			writer.Wait()
		case <-time.After(20 * time.Second):
			t.Fatal("NextImmediate did not return 20,000 times in 20 s beside a writer: deadlocked")
		}
	})

	t.Run("cost", func(t *testing.T) {
		in := mochi.NewInflights()
		for i := range uint16(1000) {
			in.Set(sent(i+1, int64(i)))
		}
		if allocs := testing.AllocsPerRun(100, func() { in.NextImmediate() }); allocs != 0 {
			t.Errorf("NextImmediate with 1,000 in flight and none held: %v allocations, want 0", allocs)
		}
	})
}

// packetHook counts the packet-carrying hook calls it gets; it allows
// every connection and topic.
type packetHook struct {
	mochi.HookBase
	id                   string
	read, publish, encod atomic.Int64
}

func (h *packetHook) ID() string { return h.id }
func (h *packetHook) Provides(b byte) bool {
	switch b {
	case mochi.OnConnectAuthenticate, mochi.OnACLCheck, mochi.OnPacketRead, mochi.OnPublish, mochi.OnPacketEncode:
		return true
	}
	return false
}
func (*packetHook) OnConnectAuthenticate(*mochi.Client, packets.Packet) bool { return true }
func (*packetHook) OnACLCheck(*mochi.Client, string, bool) bool              { return true }
func (h *packetHook) OnPacketRead(_ *mochi.Client, pk packets.Packet) (packets.Packet, error) {
	h.read.Add(1)
	return pk, nil
}
func (h *packetHook) OnPublish(_ *mochi.Client, pk packets.Packet) (packets.Packet, error) {
	h.publish.Add(1)
	return pk, nil
}
func (h *packetHook) OnPacketEncode(_ *mochi.Client, pk packets.Packet) packets.Packet {
	h.encod.Add(1)
	return pk
}

// filteredHook is a packetHook with a PacketFilter (mochi patch 18): it
// wants retained PUBLISHes (read and published) and CONNACKs (encoded).
type filteredHook struct{ packetHook }

func (*filteredHook) WantsPacket(event byte, _ *mochi.Client, fh packets.FixedHeader, _ byte) bool {
	if event == mochi.OnPacketEncode {
		return fh.Type == packets.Connack
	}
	return fh.Type == packets.Publish && fh.Retain
}

// TestMochiPatchPacketFilter: a hook with mochi patch 18's PacketFilter
// gets only the packets it wants, through OnPacketRead, OnPublish and
// OnPacketEncode, alone or next to a hook that wants every packet (which
// still gets them all); and the packets it does not want are processed as
// usual (each PUBLISH acknowledged). Without the patch the filter is never
// asked and the hook gets every packet.
func TestMochiPatchPacketFilter(t *testing.T) {
	for _, withPlain := range []bool{false, true} {
		t.Run(fmt.Sprintf("plain hook too=%v", withPlain), func(t *testing.T) {
			s := mochi.New(&mochi.Options{Logger: slog.New(slog.DiscardHandler)})
			defer s.Close()
			filtered := &filteredHook{packetHook{id: "filtered"}}
			plain := &packetHook{id: "plain"}
			if err := s.AddHook(filtered, nil); err != nil {
				t.Fatal(err)
			}
			if withPlain {
				if err := s.AddHook(plain, nil); err != nil {
					t.Fatal(err)
				}
			}
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			served := make(chan error, 1)
			go func() {
				c, err := ln.Accept()
				if err != nil {
					served <- err
					return
				}
				served <- s.EstablishConnection("t", c)
			}()
			rc := dialRaw(t, ln.Addr())
			rc.write(connectPacket(v311, "filter", true, 30))
			if code := rc.expect(typeConnack).body[1]; code != 0 {
				t.Fatalf("CONNACK code %#x", code)
			}
			rc.write(publishPacket(v311, "f/plain", 1, 1, []byte("x")))
			rc.expectAckOf(typePuback, 1, 0)
			rc.write(retainedPublish(v311, "f/retained", 1, 2, []byte("x")))
			rc.expectAckOf(typePuback, 2, 0)
			for _, c := range []struct {
				hook                 string
				got                  *atomic.Int64
				event                string
				want, wantWithPlain0 int64
			}{
				{"filtered", &filtered.read, "OnPacketRead", 1, 1},
				{"filtered", &filtered.publish, "OnPublish", 1, 1},
				{"filtered", &filtered.encod, "OnPacketEncode", 1, 1},
				{"plain", &plain.read, "OnPacketRead", 3, 0},    // CONNECT and both PUBLISHes
				{"plain", &plain.publish, "OnPublish", 2, 0},    // both PUBLISHes
				{"plain", &plain.encod, "OnPacketEncode", 3, 0}, // CONNACK and both PUBACKs
			} {
				want := c.wantWithPlain0
				if withPlain {
					want = c.want
				}
				if got := c.got.Load(); got != want {
					t.Errorf("%s hook: %d %s calls, want %d", c.hook, got, c.event, want)
				}
			}
			rc.c.Close()
			select {
			case <-served:
			case <-time.After(10 * time.Second):
				t.Fatal("connection not ended within 10s of the client's close")
			}
		})
	}
}

// TestMochiPatchNotRetained covers mochi patch 19 (packets.Mods.NotRetained)
// through Server.DeliverLive: a relayed retained message reaches an MQTT 5
// subscriber with Retain As Published with its retain flag, and is not
// stored as the topic's retained message, where Deliver stores it.
func TestMochiPatchNotRetained(t *testing.T) {
	b := brokertest.New(t, broker.Config{})
	rc := dialRaw(t, b.Addr())
	if code := rc.connect(v5, "rap-sub", true); code != 0 {
		t.Fatalf("CONNACK code %#x", code)
	}
	rc.write(subscribePacket(v5, 1, "nr/+", 0x08|1)) // QoS 1, Retain As Published
	rc.expect(typeSuback)
	for _, tc := range []struct {
		name         string
		deliver      func(broker.Message, string) error
		topic        string
		wantRetained int64 // Stats().Retained afterwards
	}{
		{"DeliverLive", b.DeliverLive, "nr/live", 0},
		{"Deliver", b.Deliver, "nr/stored", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.deliver(broker.Message{Topic: tc.topic, Payload: []byte("x"), QoS: 1, Retain: true}, ""); err != nil {
				t.Fatal(err)
			}
			p := rc.expect(typePublish)
			topic, id, _ := parsePublish(v5, p)
			if topic != tc.topic || p.flags&1 == 0 {
				t.Errorf("got %q with flags %#x, want %q with the retain flag", topic, p.flags, tc.topic)
			}
			rc.write(pubackPacket(id))
			if got := b.Stats().Retained; got != tc.wantRetained {
				t.Errorf("Stats().Retained = %d, want %d", got, tc.wantRetained)
			}
		})
	}
}
