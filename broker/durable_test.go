package broker_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/broker/boltstore"
	"github.com/umbra-iot/umbra/internal/brokertest"
)

// storeRig runs brokers one after the other on one broker.db, as
// `umbra serve` does across restarts.
type storeRig struct {
	t     *testing.T
	path  string
	cfg   broker.Config
	b     *broker.Server
	store *boltstore.Store
}

// newStoreRig opens a broker with a Store in a fresh directory.
func newStoreRig(t *testing.T, cfg broker.Config) *storeRig {
	t.Helper()
	r := &storeRig{t: t, path: filepath.Join(t.TempDir(), "broker.db"), cfg: cfg}
	r.start()
	t.Cleanup(func() { r.stop(false) })
	return r
}

func (r *storeRig) start() {
	r.t.Helper()
	st, err := boltstore.Open(r.t.Context(), boltstore.Config{Path: r.path})
	if err != nil {
		r.t.Fatalf("open store: %v", err)
	}
	cfg := r.cfg
	cfg.TCPAddr = "127.0.0.1:0"
	cfg.Store = st
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(r.t.Output(), nil))
	}
	b, err := broker.Open(r.t.Context(), cfg)
	if err != nil {
		st.Close(context.Background())
		r.t.Fatalf("open broker: %v", err)
	}
	r.b, r.store = b, st
}

// stop closes the broker and the store. crash closes the store first, so
// that the broker's last commits fail: the file keeps what the broker had
// committed while running, which is what a kill -9 leaves.
func (r *storeRig) stop(crash bool) {
	if r.b == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), brokertest.Timeout)
	defer cancel()
	if crash {
		r.store.Close(ctx)
	}
	if err := r.b.Close(ctx); err != nil && !crash {
		r.t.Errorf("close broker: %v", err)
	}
	if err := r.store.Close(ctx); err != nil {
		r.t.Errorf("close store: %v", err)
	}
	r.b, r.store = nil, nil
}

// crash stops the broker as a kill -9 would and starts a new one.
func (r *storeRig) crash() {
	r.t.Helper()
	r.stop(true)
	r.start()
}

// restart stops the broker cleanly and starts a new one.
func (r *storeRig) restart() {
	r.t.Helper()
	r.stop(false)
	r.start()
}

// load returns what the store holds, with the broker stopped.
func (r *storeRig) load() broker.StoreState {
	r.t.Helper()
	r.stop(false)
	st, err := boltstore.Open(r.t.Context(), boltstore.Config{Path: r.path})
	if err != nil {
		r.t.Fatal(err)
	}
	defer st.Close(context.Background())
	state, err := st.Load(r.t.Context())
	if err != nil {
		r.t.Fatal(err)
	}
	return state
}

func (r *storeRig) url() string { return brokertest.URL(r.b) }

// persistentPaho connects clientID with clean session off, its messages
// (also those of a restored session, which it does not subscribe again)
// going to the returned channel.
func persistentPaho(t *testing.T, url, clientID string) (mqtt.Client, <-chan brokertest.Message) {
	t.Helper()
	ch := make(chan brokertest.Message, 64)
	c := brokertest.Connect(t, url, clientID, func(o *mqtt.ClientOptions) {
		o.SetCleanSession(false)
		o.SetDefaultPublishHandler(func(_ mqtt.Client, m mqtt.Message) {
			ch <- brokertest.Message{Topic: m.Topic(), Payload: m.Payload(), QoS: m.Qos(), Retained: m.Retained()}
		})
	})
	return c, ch
}

// TestDurableRetained: retained messages acknowledged before a crash are
// there after it, replaced and cleared ones as they were left.
func TestDurableRetained(t *testing.T) {
	r := newStoreRig(t, broker.Config{})
	pub := brokertest.Connect(t, r.url(), "pub")
	brokertest.PublishRetained(t, pub, "r/keep", 1, []byte("v1"))
	brokertest.PublishRetained(t, pub, "r/clear", 1, []byte("x"))
	brokertest.PublishRetained(t, pub, "r/keep", 1, []byte("v2"))
	brokertest.PublishRetained(t, pub, "r/clear", 1, nil)
	if err := r.b.Publish("r/broker", []byte("own"), true, 1); err != nil {
		t.Fatal(err)
	}
	pub.Disconnect(100)

	r.crash()
	if got := r.b.Stats().Retained; got != 1 {
		t.Errorf("Stats.Retained after the crash: got %d, want 1 (r/keep; r/clear cleared, the broker's own not stored)", got)
	}
	sub := brokertest.Connect(t, r.url(), "sub")
	m := brokertest.Next(t, brokertest.Subscribe(t, sub, "r/#", 1), brokertest.Timeout)
	checkMessage(t, m, "r/keep", []byte("v2"), 1, true)

	// A clean restart keeps it too.
	r.restart()
	if got := r.b.Stats().Retained; got != 1 {
		t.Errorf("Stats.Retained after a clean restart: got %d, want 1", got)
	}
}

// TestDurableSession: a persistent session's subscriptions and the QoS 1
// messages queued for it (acknowledged to their publisher) survive a
// crash, and are delivered when the client reconnects without
// subscribing again.
func TestDurableSession(t *testing.T) {
	r := newStoreRig(t, broker.Config{})
	dev, _ := persistentPaho(t, r.url(), "s1")
	brokertest.Subscribe(t, dev, "q/#", 1)
	brokertest.Subscribe(t, dev, "gone/#", 1)
	if tok := dev.Unsubscribe("gone/#"); !tok.WaitTimeout(brokertest.Timeout) || tok.Error() != nil {
		t.Fatalf("unsubscribe: %v", tok.Error())
	}
	dev.Disconnect(100)
	pub := brokertest.Connect(t, r.url(), "pub")
	for i := range 3 {
		brokertest.Publish(t, pub, "q/1", 1, fmt.Appendf(nil, "m%d", i))
	}
	pub.Disconnect(100)

	r.crash()
	if st := r.b.Stats(); st.PersistentSessions != 1 || st.Inflight != 3 || st.Subscriptions != 1 {
		t.Errorf("Stats after the crash: got %d sessions, %d queued, %d subscriptions; want 1, 3, 1",
			st.PersistentSessions, st.Inflight, st.Subscriptions)
	}
	if !r.b.HasSubscribers("q/2") || r.b.HasSubscribers("gone/1") {
		t.Errorf("HasSubscribers(q/2), (gone/1) after the crash: got %t, %t; want true, false",
			r.b.HasSubscribers("q/2"), r.b.HasSubscribers("gone/1"))
	}
	_, got := persistentPaho(t, r.url(), "s1")
	var payloads []string // paho's handlers run concurrently: order is checked in TestDurableRestore
	for range 3 {
		m := recv(t, got, "queued message")
		checkMessage(t, m, "q/1", m.Payload, 1, false)
		payloads = append(payloads, string(m.Payload))
	}
	if slices.Sort(payloads); !slices.Equal(payloads, []string{"m0", "m1", "m2"}) {
		t.Errorf("queued messages after the crash: got %v, want m0, m1, m2", payloads)
	}
	// The restored subscription delivers new messages.
	if err := r.b.Publish("q/2", []byte("live"), false, 1); err != nil {
		t.Fatal(err)
	}
	checkMessage(t, recv(t, got, "live message"), "q/2", []byte("live"), 1, false)
}

// TestDurableInflight: a message sent to a connected persistent session
// and not acknowledged before a crash is sent again after it, with the
// same packet identifier; one acknowledged before a clean restart is not.
func TestDurableInflight(t *testing.T) {
	r := newStoreRig(t, broker.Config{})
	rc := dialRaw(t, r.b.Addr())
	if code := rc.connect(v311, "r1", false); code != 0 {
		t.Fatalf("CONNACK %d", code)
	}
	rc.write(subscribePacket(v311, 1, "i/#", 1))
	rc.expect(typeSuback)
	if err := r.b.Publish("i/1", []byte("hello"), false, 1); err != nil {
		t.Fatal(err)
	}
	_, id, _ := parsePublish(v311, rc.expect(typePublish))
	if err := broker.Flush(r.b); err != nil { // its packet identifier is written lazily
		t.Fatal(err)
	}

	r.crash()
	if got := r.b.Stats().Inflight; got != 1 {
		t.Fatalf("Stats.Inflight after the crash: got %d, want 1", got)
	}
	rc = dialRaw(t, r.b.Addr())
	rc.write(connectPacket(v311, "r1", false, 30))
	if ack := rc.expect(typeConnack); ack.body[0]&1 != 1 {
		t.Errorf("CONNACK %v: session present not set", ack)
	}
	p := rc.expect(typePublish)
	topic, id2, payload := parsePublish(v311, p)
	if topic != "i/1" || string(payload) != "hello" || id2 != id || p.flags&0x08 == 0 {
		t.Errorf("resent after the crash: got %s %q id %d dup %t, want i/1 \"hello\" id %d dup true",
			topic, payload, id2, p.flags&0x08 != 0, id)
	}
	rc.write(pubackPacket(id2))
	rc.write([]byte{typeDisconn << 4, 0})
	rc.expectClosed()

	r.restart()
	if got := r.b.Stats().Inflight; got != 0 {
		t.Errorf("Stats.Inflight after acknowledging and a clean restart: got %d, want 0", got)
	}
}

// TestDurableCleanSessionDiscards: a clean session replacing a persistent
// one, and a persistent session that expired while the broker was down,
// are gone from the store.
func TestDurableCleanSessionDiscards(t *testing.T) {
	r := newStoreRig(t, broker.Config{SessionExpiry: time.Hour})
	dev, _ := persistentPaho(t, r.url(), "c1")
	brokertest.Subscribe(t, dev, "c/#", 1)
	dev.Disconnect(100)
	clean := brokertest.Connect(t, r.url(), "c1")
	clean.Disconnect(100)
	if !eventually(func() bool { return r.b.Stats().Sessions == 0 }) {
		t.Fatal("the clean session is still registered")
	}
	r.restart()
	if st := r.b.Stats(); st.PersistentSessions != 0 || st.Subscriptions != 0 {
		t.Errorf("after a clean session replaced a persistent one and a restart: got %d sessions, %d subscriptions; want 0, 0",
			st.PersistentSessions, st.Subscriptions)
	}
}

// TestDurableRestore restores a stored state: expired sessions and
// messages are dropped (and deleted from the store), packet identifiers
// are kept, duplicates and never-sent messages renumbered, a released
// QoS 2 message resent as PUBREL.
func TestDurableRestore(t *testing.T) {
	r := newStoreRig(t, broker.Config{SessionExpiry: time.Hour})
	r.stop(false)
	now := time.Now()
	msg := func(p string) broker.Message {
		return broker.Message{Topic: "t/" + p, Payload: []byte(p), QoS: 1, Origin: "x", Created: now}
	}
	expired := msg("expired")
	expired.Expiry = now.Add(-time.Minute)
	retained := msg("kept")
	retained.Retain = true
	// Without Auth every client's identity is its bare client ID: a stored
	// session of another identity would be discarded at reconnect.
	sess := func(id string, disconnected time.Time) broker.Session {
		return broker.Session{ClientID: id, ProtocolVersion: 4, Identity: broker.Identity{ClientID: id},
			Disconnected: disconnected}
	}
	short := sess("short", now.Add(-time.Minute))
	short.ProtocolVersion, short.Expiry, short.ExpirySet = 5, 10*time.Second, true
	q := func(seq uint64, pid uint16, released bool, m broker.Message) broker.StoreOp {
		return broker.StoreOp{Kind: broker.OpPutQueued, ClientID: "fresh",
			Queued: broker.QueuedMessage{Seq: seq, PacketID: pid, Released: released, Message: m}}
	}
	ops := []broker.StoreOp{
		{Kind: broker.OpPutRetained, Message: retained},
		{Kind: broker.OpPutRetained, Message: func() broker.Message { m := expired; m.Retain = true; return m }()},
		{Kind: broker.OpPutSession, Session: sess("old", now.Add(-2*time.Hour))},
		{Kind: broker.OpPutSession, Session: short},
		{Kind: broker.OpPutSession, Session: sess("fresh", now.Add(-time.Minute))},
		{Kind: broker.OpPutSubscription, ClientID: "fresh", Subscription: broker.Subscription{Filter: "t/#", QoS: 1}},
		q(1, 5, false, msg("one")), q(2, 5, false, msg("two")), q(3, 0, false, msg("three")),
		q(4, 0, false, expired), q(5, 9, true, msg("four")),
	}
	st, err := boltstore.Open(t.Context(), boltstore.Config{Path: r.path})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Apply(t.Context(), ops); err != nil {
		t.Fatal(err)
	}
	st.Close(context.Background())

	r.start()
	if s := r.b.Stats(); s.Retained != 1 || s.PersistentSessions != 1 || s.Inflight != 4 || s.Subscriptions != 1 {
		t.Errorf("Stats after restoring: got retained %d, sessions %d, inflight %d, subscriptions %d; want 1, 1, 4, 1",
			s.Retained, s.PersistentSessions, s.Inflight, s.Subscriptions)
	}
	rc := dialRaw(t, r.b.Addr())
	rc.write(connectPacket(v311, "fresh", false, 30))
	if ack := rc.expect(typeConnack); ack.body[0]&1 != 1 {
		t.Errorf("CONNACK %v: session present not set", ack)
	}
	got := map[string]uint16{}
	var order []string
	for range 4 {
		p, err := rc.read()
		if err != nil {
			t.Fatalf("resent messages: got %v after %v", err, got)
		}
		switch p.typ {
		case typePublish:
			_, id, payload := parsePublish(v311, p)
			got[string(payload)] = id
			order = append(order, string(payload))
		case 6: // PUBREL
			got["pubrel"] = binary.BigEndian.Uint16(p.body)
			order = append(order, "pubrel")
		default:
			t.Fatalf("got %v, want PUBLISH or PUBREL", p)
		}
	}
	if got["one"] != 5 || got["pubrel"] != 9 || got["two"] == 0 || got["three"] == 0 ||
		len(got) != 4 || got["two"] == got["three"] || slices.Contains([]uint16{5, 9}, got["two"]) || slices.Contains([]uint16{5, 9}, got["three"]) {
		t.Errorf("resent: got %v, want one=5, pubrel=9 and two, three on other, distinct packet IDs", got)
	}
	if want := []string{"one", "two", "three", "pubrel"}; !slices.Equal(order, want) {
		t.Errorf("resent in order %v, want %v (the order they were queued in)", order, want)
	}
	rc.write([]byte{typeDisconn << 4, 0})
	rc.expectClosed()

	state := r.load()
	if len(state.Retained) != 1 || state.Retained[0].Topic != "t/kept" {
		t.Errorf("stored retained messages: got %v, want t/kept only", state.Retained)
	}
	if len(state.Sessions) != 1 || state.Sessions[0].ClientID != "fresh" {
		t.Fatalf("stored sessions: got %+v, want fresh only", state.Sessions)
	}
	var stored []string
	for _, q := range state.Sessions[0].Queued {
		stored = append(stored, fmt.Sprintf("%d:%d", q.Seq, q.PacketID))
	}
	want := []string{"1:5", fmt.Sprintf("2:%d", got["two"]), fmt.Sprintf("3:%d", got["three"]), "5:9"}
	if !slices.Equal(stored, want) {
		t.Errorf("stored queued messages (seq:packet ID): got %v, want %v", stored, want)
	}
}

// TestDurableEvict: Evict finds a restored offline session by the
// identity stored with it, and deletes it from the store.
func TestDurableEvict(t *testing.T) {
	r := newStoreRig(t, broker.Config{Auth: roleAuth{}})
	dev, _ := persistentPaho(t, r.url(), "ev1")
	brokertest.Subscribe(t, dev, "e/#", 1)
	dev.Disconnect(100)
	r.crash()
	if n := r.b.Evict(t.Context(), func(id broker.Identity) bool { return id.Name == "ev1" }); n != 1 {
		t.Fatalf("Evict: got %d sessions, want 1", n)
	}
	if st := r.b.Stats(); st.PersistentSessions != 0 || st.Subscriptions != 0 {
		t.Errorf("Stats after Evict: got %d sessions, %d subscriptions; want 0, 0", st.PersistentSessions, st.Subscriptions)
	}
	r.crash() // Evict waited for the store: the deletion survives a crash
	if st := r.b.Stats(); st.PersistentSessions != 0 {
		t.Errorf("Stats after Evict and a crash: got %d sessions, want 0", st.PersistentSessions)
	}
}

// TestDurableExpiry: a session that expires while the broker runs is
// deleted from the store with its subscriptions and queued messages.
func TestDurableExpiry(t *testing.T) {
	r := newStoreRig(t, broker.Config{SessionExpiry: time.Second})
	dev, _ := persistentPaho(t, r.url(), "exp1")
	brokertest.Subscribe(t, dev, "x/#", 1)
	dev.Disconnect(100)
	if err := r.b.Publish("x/1", []byte("queued"), false, 1); err != nil {
		t.Fatal(err)
	}
	// mochi expires sessions from a once-a-second sweep, with no event.
	if !eventually(func() bool { return r.b.Stats().PersistentSessions == 0 }) {
		t.Fatalf("Stats.PersistentSessions after the expiry: got %d, want 0", r.b.Stats().PersistentSessions)
	}
	if state := r.load(); len(state.Sessions) != 0 {
		t.Errorf("stored sessions after the expiry: got %+v, want none", state.Sessions)
	}
}

// watchedStore records the ops its Store applied.
type watchedStore struct {
	broker.Store

	mu      sync.Mutex // guards applied
	applied []broker.StoreOp
}

func (w *watchedStore) Apply(ctx context.Context, ops []broker.StoreOp) error {
	err := w.Store.Apply(ctx, ops)
	if err == nil {
		w.mu.Lock()
		w.applied = append(w.applied, ops...)
		w.mu.Unlock()
	}
	return err
}

// has reports whether an op of kind about topic (a retained message's,
// a subscription's filter, a queued message's) has been applied.
func (w *watchedStore) has(kind broker.OpKind, topic string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, op := range w.applied {
		if op.Kind == kind && (op.Message.Topic == topic || op.Subscription.Filter == topic || op.Queued.Message.Topic == topic) {
			return true
		}
	}
	return false
}

// TestDurableBeforeAck: a retained message, a message queued for a
// persistent session (also one an in-process subscriber handles, such as
// a shadow request) and a subscription are in the store when their
// PUBACK or SUBACK arrives.
func TestDurableBeforeAck(t *testing.T) {
	bst, err := boltstore.Open(t.Context(), boltstore.Config{Path: filepath.Join(t.TempDir(), "broker.db")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bst.Close(context.Background()) })
	ws := &watchedStore{Store: bst}
	b := brokertest.New(t, broker.Config{Store: ws})
	if err := b.Subscribe("g/req", func(string, string, []byte) {}); err != nil {
		t.Fatal(err)
	}

	sub := dialRaw(t, b.Addr())
	sub.connect(v311, "ps", false)
	sub.write(subscribePacket(v311, 1, "g/#", 1))
	sub.expect(typeSuback)
	if !ws.has(broker.OpPutSubscription, "g/#") {
		t.Error("SUBACK before the subscription was stored")
	}
	sub.write([]byte{typeDisconn << 4, 0})
	sub.expectClosed()

	pub := dialRaw(t, b.Addr())
	pub.connect(v311, "pub", true)
	for i, topic := range []string{"g/data", "g/req"} {
		pub.write(publishPacket(v311, topic, 1, uint16(i+1), []byte("queued")))
		pub.expect(typePuback)
		if !ws.has(broker.OpPutQueued, topic) {
			t.Errorf("PUBACK before the message on %s queued for the offline session was stored", topic)
		}
	}
	pub.write(retainedPublish(v311, "r/x", 1, 3, []byte("kept")))
	pub.expect(typePuback)
	if !ws.has(broker.OpPutRetained, "r/x") {
		t.Error("PUBACK before the retained message was stored")
	}
}

// TestDurableQoS2: a QoS 2 message sent to a persistent session keeps its
// packet identifier across a crash (it is on disk before it is sent), and
// one the client has acknowledged with PUBREC is finished with PUBREL
// after the crash.
func TestDurableQoS2(t *testing.T) {
	r := newStoreRig(t, broker.Config{})
	sub := dialRaw(t, r.b.Addr())
	sub.connect(v311, "q2s", false)
	sub.write(subscribePacket(v311, 1, "q2/#", 2))
	sub.expect(typeSuback)
	// Three acknowledged messages first: the next packet identifiers are
	// not the ones a restored message would get anew.
	for i := range 3 {
		if err := r.b.Publish("q2/warm", []byte{byte(i)}, false, 1); err != nil {
			t.Fatal(err)
		}
		_, id, _ := parsePublish(v311, sub.expect(typePublish))
		sub.write(pubackPacket(id))
	}
	pub := dialRaw(t, r.b.Addr())
	pub.connect(v311, "q2p", true)
	ids := map[string]uint16{}
	send := func(id uint16, payload string) {
		t.Helper()
		pub.write(publishPacket(v311, "q2/x", 2, id, []byte(payload)))
		pub.expectAck(typePubrec, id)
		pub.write(ackPacket(typePubrel, id))
		pub.expectAck(typePubcomp, id)
		_, sid, got := parsePublish(v311, sub.expect(typePublish))
		if string(got) != payload {
			t.Fatalf("subscriber got %q, want %q", got, payload)
		}
		ids[payload] = sid
	}
	send(1, "first")
	sub.write(ackPacket(typePubrec, ids["first"])) // "first" moves to PUBREL
	sub.expectAck(typePubrel, ids["first"])
	if err := broker.Flush(r.b); err != nil { // the PUBREC is written lazily
		t.Fatal(err)
	}
	// "second" is sent and not acknowledged: its packet identifier was
	// written before it was sent, with no Flush.
	send(2, "second")

	r.crash()
	sub = dialRaw(t, r.b.Addr())
	sub.write(connectPacket(v311, "q2s", false, 30))
	sub.expect(typeConnack)
	got := map[string]uint16{}
	for range 2 {
		p, err := sub.read()
		if err != nil {
			t.Fatalf("after the crash: %v (got %v)", err, got)
		}
		switch p.typ {
		case typePublish:
			_, id, payload := parsePublish(v311, p)
			got[string(payload)] = id
		case typePubrel:
			got["pubrel"] = binary.BigEndian.Uint16(p.body)
		}
	}
	if got["second"] != ids["second"] || got["pubrel"] != ids["first"] || len(got) != 2 {
		t.Errorf("after the crash: got %v, want second resent with packet ID %d and PUBREL %d", got, ids["second"], ids["first"])
	}
}

// TestDurableOwnership: a restored session still belongs to the identity
// that created it: the same identity resumes it with its queued message,
// another one with the same client ID starts fresh.
func TestDurableOwnership(t *testing.T) {
	r := newStoreRig(t, broker.Config{Auth: userAuth{}})
	for _, id := range []string{"own1", "own2"} {
		rc := dialRaw(t, r.b.Addr())
		rc.write(sessionConnect(v311, id, "alice", true))
		rc.expect(typeConnack)
		rc.write(subscribePacket(v311, 1, "o/#", 1))
		rc.expect(typeSuback)
		rc.write([]byte{typeDisconn << 4, 0})
		rc.expectClosed()
	}
	if err := r.b.Publish("o/1", []byte("for alice"), false, 1); err != nil {
		t.Fatal(err)
	}
	if err := broker.Flush(r.b); err != nil {
		t.Fatal(err)
	}
	r.crash()

	alice := dialRaw(t, r.b.Addr())
	alice.write(sessionConnect(v311, "own1", "alice", true))
	if ack := alice.expect(typeConnack); ack.body[0]&1 != 1 {
		t.Errorf("alice's CONNACK %v: session present not set", ack)
	}
	if _, _, payload := parsePublish(v311, alice.expect(typePublish)); string(payload) != "for alice" {
		t.Errorf("alice got %q, want her queued message", payload)
	}
	mallory := dialRaw(t, r.b.Addr())
	mallory.write(sessionConnect(v311, "own2", "mallory", true))
	if ack := mallory.expect(typeConnack); ack.body[0]&1 != 0 {
		t.Errorf("mallory's CONNACK %v: got alice's session", ack)
	}
	mallory.write(subscribePacket(v311, 1, "m/#", 1))
	mallory.expect(typeSuback)
	if err := r.b.Publish("m/1", []byte("sentinel"), false, 1); err != nil {
		t.Fatal(err)
	}
	if _, _, payload := parsePublish(v311, mallory.expect(typePublish)); string(payload) != "sentinel" {
		t.Errorf("mallory's first message: got %q, want the sentinel, not alice's queued message", payload)
	}
}
