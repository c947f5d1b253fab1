package broker_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/internal/brokertest"
)

const wait = 5 * time.Second

func TestMain(m *testing.M) {
	if spec := os.Getenv(envIdleClients); spec != "" {
		os.Exit(runIdleClients(spec)) // child process of BenchmarkIdleConnections
	}
	if dir := os.Getenv(envDurableChild); dir != "" {
		os.Exit(runDurableChild(dir)) // child process of TestDurableKill9
	}
	brokertest.Main(m)
}

// events records Config callbacks on buffered channels.
type events struct {
	connects    chan broker.ConnInfo
	disconnects chan disconnect
	subscribes  chan subscribe
}

type disconnect struct {
	clientID string
	err      error
	info     broker.ConnInfo
}

type subscribe struct {
	clientID string
	filters  []string
}

// withEvents sets cfg's callbacks to record into a new events.
func withEvents(cfg *broker.Config) *events {
	ev := &events{
		connects:    make(chan broker.ConnInfo, 64),
		disconnects: make(chan disconnect, 64),
		subscribes:  make(chan subscribe, 64),
	}
	cfg.OnConnect = func(ci broker.ConnInfo) {
		if !strings.HasPrefix(ci.RemoteAddr, "127.0.0.1:") {
			ci.ClientID += " from unexpected " + ci.RemoteAddr
		}
		ev.connects <- ci
	}
	cfg.OnDisconnect = func(ci broker.ConnInfo, err error) { ev.disconnects <- disconnect{ci.ClientID, err, ci} }
	cfg.OnSubscribe = func(id string, f []string) { ev.subscribes <- subscribe{id, f} }
	return ev
}

// recv returns the next value from ch or fails the test after wait.
func recv[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(wait):
		t.Fatalf("no %s within %v", what, wait)
		var zero T
		return zero
	}
}

// eventually polls cond until it is true or wait passes. Use it only where
// there is no event to wait for.
func eventually(cond func() bool) bool {
	deadline := time.Now().Add(wait)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}

// disconnectOf waits for the OnDisconnect of clientID, skipping others.
func (ev *events) disconnectOf(t *testing.T, clientID string) error {
	t.Helper()
	for {
		d := recv(t, ev.disconnects, "disconnect of "+clientID)
		if d.clientID == clientID {
			return d.err
		}
	}
}

func checkMessage(t *testing.T, got brokertest.Message, topic string, payload []byte, qos byte, retained bool) {
	t.Helper()
	want := brokertest.Message{Topic: topic, Payload: payload, QoS: qos, Retained: retained}
	if got.Topic != want.Topic || !bytes.Equal(got.Payload, want.Payload) || got.QoS != want.QoS || got.Retained != want.Retained {
		t.Errorf("got message %v, want %v", got, want)
	}
}

func TestPubSub(t *testing.T) {
	b := brokertest.New(t, broker.Config{})
	urls := map[string]string{"tcp": brokertest.URL(b), "ws": brokertest.WSURL(b)}
	tests := []struct {
		name               string
		transport          string
		subQoS, pubQoS     byte
		wantQoS            byte
		payload            []byte
		subscribeFilterFmt string
	}{
		{name: "tcp qos0", transport: "tcp", subQoS: 0, pubQoS: 0, wantQoS: 0, payload: []byte("a"), subscribeFilterFmt: "t/%s"},
		{name: "tcp qos1", transport: "tcp", subQoS: 1, pubQoS: 1, wantQoS: 1, payload: []byte("b"), subscribeFilterFmt: "t/%s"},
		{name: "tcp pub1 sub0 downgrades", transport: "tcp", subQoS: 0, pubQoS: 1, wantQoS: 0, payload: []byte("c"), subscribeFilterFmt: "t/%s"},
		{name: "tcp qos2", transport: "tcp", subQoS: 2, pubQoS: 2, wantQoS: 2, payload: []byte("d"), subscribeFilterFmt: "t/%s"},
		{name: "tcp pub2 sub1 downgrades", transport: "tcp", subQoS: 1, pubQoS: 2, wantQoS: 1, payload: []byte("d1"), subscribeFilterFmt: "t/%s"},
		{name: "ws qos2", transport: "ws", subQoS: 2, pubQoS: 2, wantQoS: 2, payload: []byte("d2"), subscribeFilterFmt: "t/%s"},
		{name: "tcp wildcard", transport: "tcp", subQoS: 1, pubQoS: 1, wantQoS: 1, payload: []byte("e"), subscribeFilterFmt: "t/+"},
		{name: "tcp empty payload", transport: "tcp", subQoS: 1, pubQoS: 1, wantQoS: 1, payload: []byte{}, subscribeFilterFmt: "t/#"},
		{name: "ws qos0", transport: "ws", subQoS: 0, pubQoS: 0, wantQoS: 0, payload: []byte("f"), subscribeFilterFmt: "t/%s"},
		{name: "ws qos1", transport: "ws", subQoS: 1, pubQoS: 1, wantQoS: 1, payload: bytes.Repeat([]byte("g"), 10000), subscribeFilterFmt: "t/%s"},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			key := fmt.Sprintf("k%d", i)
			topic := "t/" + key
			filter := tc.subscribeFilterFmt
			if strings.Contains(filter, "%s") {
				filter = fmt.Sprintf(filter, key)
			}
			sub := brokertest.Connect(t, urls[tc.transport], "sub-"+key)
			pub := brokertest.Connect(t, urls[tc.transport], "pub-"+key)
			msgs := brokertest.Subscribe(t, sub, filter, tc.subQoS)
			brokertest.Publish(t, pub, topic, tc.pubQoS, tc.payload)
			checkMessage(t, brokertest.Next(t, msgs, wait), topic, tc.payload, tc.wantQoS, false)
		})
	}
}

func TestWebSocketPaths(t *testing.T) {
	b := brokertest.New(t, broker.Config{})
	base := "ws://" + b.WSAddr().String()
	for _, path := range []string{"/mqtt", "/"} {
		t.Run(path, func(t *testing.T) {
			c := brokertest.Connect(t, base+path, "ws-path-"+strings.Trim(path, "/"))
			msgs := brokertest.Subscribe(t, c, "echo", 0)
			brokertest.Publish(t, c, "echo", 0, []byte(path))
			checkMessage(t, brokertest.Next(t, msgs, wait), "echo", []byte(path), 0, false)
		})
	}
	t.Run("other path", func(t *testing.T) {
		resp, err := http.Get("http://" + b.WSAddr().String() + "/other")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET /other: got status %d, want %d", resp.StatusCode, http.StatusNotFound)
		}
	})
	t.Run("plain http on /mqtt", func(t *testing.T) {
		resp, err := http.Get("http://" + b.WSAddr().String() + "/mqtt")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("GET /mqtt without upgrade: got status %d, want %d", resp.StatusCode, http.StatusBadRequest)
		}
	})
}

func TestMQTT5Client(t *testing.T) {
	var cfg broker.Config
	ev := withEvents(&cfg)
	b := brokertest.New(t, cfg)

	rc := dialRaw(t, b.Addr())
	if code := rc.connect(v5, "v5-client", true); code != 0 {
		t.Fatalf("CONNACK reason: got %#x, want 0", code)
	}
	if id := recv(t, ev.connects, "connect").ClientID; id != "v5-client" {
		t.Errorf("OnConnect: got %q, want v5-client", id)
	}

	// SUBSCRIBE asking QoS 2 is granted QoS 2.
	rc.write(subscribePacket(v5, 1, "v5/in", 2))
	ack := rc.expect(typeSuback)
	if got, want := ack.body, []byte{0, 1, 0, 2}; !bytes.Equal(got, want) { // id, no properties, granted QoS 2
		t.Errorf("SUBACK body: got % x, want % x", got, want)
	}
	recv(t, ev.subscribes, "subscribe")

	// 3.1.1 publisher to 5 subscriber.
	pub := brokertest.Connect(t, brokertest.URL(b), "v3-pub")
	brokertest.Publish(t, pub, "v5/in", 1, []byte("to v5"))
	p := rc.expect(typePublish)
	topic, id, payload := parsePublish(v5, p)
	if topic != "v5/in" || string(payload) != "to v5" || (p.flags>>1)&3 != 1 {
		t.Errorf("PUBLISH to v5 client: got topic %q payload %q qos %d, want v5/in %q 1", topic, payload, (p.flags>>1)&3, "to v5")
	}
	rc.write(pubackPacket(id))

	// 5 publisher to 3.1.1 subscriber, QoS 1 acknowledged.
	msgs := brokertest.Subscribe(t, pub, "v5/out", 1)
	rc.write(publishPacket(v5, "v5/out", 1, 7, []byte("from v5")))
	puback := rc.expect(typePuback)
	if got := puback.body[:2]; !bytes.Equal(got, []byte{0, 7}) {
		t.Errorf("PUBACK packet id: got % x, want 00 07", got)
	}
	checkMessage(t, brokertest.Next(t, msgs, wait), "v5/out", []byte("from v5"), 1, false)

	rc.write(frame(typeDisconn<<4, []byte{0})) // normal disconnection
	if err := ev.disconnectOf(t, "v5-client"); err != nil {
		t.Errorf("OnDisconnect after DISCONNECT: got %v, want nil", err)
	}
}

// TestRetained: a late subscriber gets both retained messages, once each.
// The broker acknowledges a QoS 1 PUBLISH before it delivers it, so the
// test awaits the delivery of r/client (to an in-process subscriber)
// before the late subscriber subscribes: otherwise the late subscriber
// may get r/client twice, retained and live (issue 10 case 18).
func TestRetained(t *testing.T) {
	b := brokertest.New(t, broker.Config{})
	url := brokertest.URL(b)
	delivered := make(chan string, 8)
	if err := b.Subscribe("r/#", func(_, topic string, _ []byte) { delivered <- topic }); err != nil {
		t.Fatal(err)
	}
	pub := brokertest.Connect(t, url, "retain-pub")
	brokertest.PublishRetained(t, pub, "r/client", 1, []byte("from client"))
	if got := recv(t, delivered, "delivery of r/client"); got != "r/client" {
		t.Fatalf("delivered %s, want r/client", got)
	}
	if err := b.Publish("r/inline", []byte("from broker"), true, 1); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	if got := b.Stats().Retained; got != 2 {
		t.Errorf("Stats.Retained: got %d, want 2", got)
	}

	late := brokertest.Connect(t, url, "retain-late")
	msgs := brokertest.Subscribe(t, late, "r/#", 1)
	got := map[string]brokertest.Message{}
	for range 2 {
		m := brokertest.Next(t, msgs, wait)
		got[m.Topic] = m
	}
	checkMessage(t, got["r/client"], "r/client", []byte("from client"), 1, true)
	checkMessage(t, got["r/inline"], "r/inline", []byte("from broker"), 1, true)

	// An empty retained payload clears the retained message.
	if err := b.Publish("r/inline", nil, true, 0); err != nil {
		t.Fatalf("Publish clear: %v", err)
	}
	checkMessage(t, brokertest.Next(t, msgs, wait), "r/inline", []byte{}, 0, false)
	if got := b.Stats().Retained; got != 1 {
		t.Errorf("Stats.Retained after clear: got %d, want 1", got)
	}
}

func TestPersistentSession(t *testing.T) {
	var cfg broker.Config
	ev := withEvents(&cfg)
	b := brokertest.New(t, cfg)
	url := brokertest.URL(b)

	offline := make(chan brokertest.Message, 16)
	persistent := func(o *mqtt.ClientOptions) {
		o.SetCleanSession(false)
		o.SetDefaultPublishHandler(func(_ mqtt.Client, m mqtt.Message) {
			offline <- brokertest.Message{Topic: m.Topic(), Payload: m.Payload(), QoS: m.Qos(), Retained: m.Retained()}
		})
	}
	dev := brokertest.Connect(t, url, "persist-dev", persistent)
	brokertest.Subscribe(t, dev, "cmd/persist-dev", 1)
	dev.Disconnect(100)
	if err := ev.disconnectOf(t, "persist-dev"); err != nil {
		t.Fatalf("OnDisconnect: got %v, want nil", err)
	}

	pub := brokertest.Connect(t, url, "persist-pub")
	for i := range 3 {
		brokertest.Publish(t, pub, "cmd/persist-dev", 1, fmt.Appendf(nil, "m%d", i))
	}
	if err := b.Publish("cmd/persist-dev", []byte("inline"), false, 1); err != nil {
		t.Fatal(err)
	}
	// PUBACK precedes delivery (see doc.go), so the last message may still
	// be on its way into the session, and mochi counts the disconnect
	// after OnDisconnect ran: poll.
	var st broker.Stats
	if !eventually(func() bool {
		st = b.Stats()
		return st.Inflight == 4 && st.Sessions == 2 && st.ClientsConnected == 1
	}) {
		t.Errorf("Stats while offline: got sessions %d connected %d inflight %d, want 2 1 4",
			st.Sessions, st.ClientsConnected, st.Inflight)
	}
	if !b.HasSubscribers("cmd/persist-dev") {
		t.Errorf("HasSubscribers(cmd/persist-dev) with an offline persistent session: got false, want true")
	}

	dev = brokertest.Connect(t, url, "persist-dev", persistent)
	got := map[string]bool{}
	for range 4 {
		m := recv(t, offline, "queued message")
		if m.QoS != 1 {
			t.Errorf("queued message %v: got QoS %d, want 1", m, m.QoS)
		}
		got[string(m.Payload)] = true
	}
	for _, want := range []string{"m0", "m1", "m2", "inline"} {
		if !got[want] {
			t.Errorf("queued messages: got %v, missing %q", got, want)
		}
	}

	// A clean session discards the stored state.
	dev.Disconnect(100)
	ev.disconnectOf(t, "persist-dev")
	brokertest.Connect(t, url, "persist-dev")
	if b.HasSubscribers("cmd/persist-dev") {
		t.Errorf("HasSubscribers after clean reconnect: got true, want false")
	}
}

func TestSessionExpiry(t *testing.T) {
	var cfg broker.Config
	cfg.SessionExpiry = time.Second
	ev := withEvents(&cfg)
	b := brokertest.New(t, cfg)
	rc := dialRaw(t, b.Addr())
	rc.connect(v311, "expiring", false)
	rc.write(subscribePacket(v311, 1, "exp/#", 1))
	rc.expect(typeSuback)
	rc.c.Close()
	ev.disconnectOf(t, "expiring")
	if err := b.Publish("exp/x", []byte("queued"), false, 1); err != nil {
		t.Fatal(err)
	}
	if st := b.Stats(); st.Sessions != 1 || st.Subscriptions != 1 || st.Inflight != 1 {
		t.Fatalf("Stats after disconnect: got sessions %d subscriptions %d inflight %d, want 1 1 1",
			st.Sessions, st.Subscriptions, st.Inflight)
	}
	// mochi expires sessions from a once-a-second sweep, with no event.
	if !eventually(func() bool { return b.Stats().Sessions == 0 }) {
		t.Errorf("Sessions %v after expiry: got %d, want 0", wait, b.Stats().Sessions)
	}
	if b.HasSubscribers("exp/x") {
		t.Errorf("HasSubscribers(exp/x) after expiry: got true, want false")
	}
	if st := b.Stats(); st.Subscriptions != 0 || st.Inflight != 0 {
		t.Errorf("Stats after expiry: got subscriptions %d inflight %d, want 0 0", st.Subscriptions, st.Inflight)
	}
}

func TestMaxPacketSize(t *testing.T) {
	const limit = 1024
	var cfg broker.Config
	cfg.MaxPacketSize = limit
	ev := withEvents(&cfg)
	b := brokertest.New(t, cfg)

	other := brokertest.Connect(t, brokertest.URL(b), "bystander")
	msgs := brokertest.Subscribe(t, other, "big/#", 0)

	// The size counted is 1 header byte + remaining length (2+5 topic +
	// payload); the remaining-length bytes are not counted.
	tests := []struct {
		name    string
		payload int
		wantOK  bool
	}{
		{"at limit", limit - 8, true},
		{"one over", limit - 7, false},
		{"far over", 64 << 10, false},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id := fmt.Sprintf("big-%d", i)
			rc := dialRaw(t, b.Addr())
			if code := rc.connect(v311, id, true); code != 0 {
				t.Fatalf("CONNACK: got %#x, want 0", code)
			}
			before := b.Stats().PacketsTooLarge
			pk := publishPacket(v311, "big/x", 0, 0, make([]byte, tc.payload))
			rc.write(pk)
			if tc.wantOK {
				m := brokertest.Next(t, msgs, wait)
				if len(m.Payload) != tc.payload {
					t.Errorf("delivered payload: got %d bytes, want %d", len(m.Payload), tc.payload)
				}
				return
			}
			rc.expectClosed()
			if err := ev.disconnectOf(t, id); !errors.Is(err, broker.ErrTooLarge) {
				t.Errorf("OnDisconnect: got %v, want %v", err, broker.ErrTooLarge)
			}
			if got := b.Stats().PacketsTooLarge - before; got != 1 {
				t.Errorf("PacketsTooLarge: got +%d, want +1", got)
			}
			// The bystander is unaffected.
			brokertest.Publish(t, other, "big/after", 0, []byte("ok"))
			checkMessage(t, brokertest.Next(t, msgs, wait), "big/after", []byte("ok"), 0, false)
		})
	}
}

func TestGarbageDisconnected(t *testing.T) {
	var cfg broker.Config
	ev := withEvents(&cfg)
	b := brokertest.New(t, cfg)
	other := brokertest.Connect(t, brokertest.URL(b), "steady")
	msgs := brokertest.Subscribe(t, other, "steady", 0)

	tests := []struct {
		name         string
		connectFirst bool
		garbage      []byte
		wantErr      error // OnDisconnect cause; nil: no OnDisconnect (never connected)
	}{
		{name: "http before connect", garbage: []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")},
		{name: "binary before connect", garbage: []byte{0xff, 0xff, 0xff, 0xff, 0xff}},
		{name: "publish before connect", garbage: publishPacket(v311, "steady", 0, 0, []byte("x"))},
		{name: "reserved type after connect", connectFirst: true, garbage: []byte{0x00, 0x00}, wantErr: broker.ErrProtocol},
		{name: "second connect", connectFirst: true, garbage: connectPacket(v311, "again", true, 30), wantErr: broker.ErrProtocol},
		{name: "bad length after connect", connectFirst: true, garbage: []byte{0x30, 0xff, 0xff, 0xff, 0xff, 0x7f}, wantErr: broker.ErrProtocol},
		{name: "truncated publish then close", connectFirst: true, garbage: []byte{0x30, 0x05, 0x00}, wantErr: broker.ErrConnectionLost},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id := fmt.Sprintf("garbage-%d", i)
			rc := dialRaw(t, b.Addr())
			if tc.connectFirst {
				if code := rc.connect(v311, id, true); code != 0 {
					t.Fatalf("CONNACK: got %#x, want 0", code)
				}
			}
			rc.write(tc.garbage)
			if tc.name == "truncated publish then close" {
				rc.c.(*net.TCPConn).CloseWrite()
			}
			rc.expectClosed()
			if tc.wantErr != nil {
				if err := ev.disconnectOf(t, id); !errors.Is(err, tc.wantErr) {
					t.Errorf("OnDisconnect: got %v, want %v", err, tc.wantErr)
				}
			}
			brokertest.Publish(t, other, "steady", 0, []byte(id))
			checkMessage(t, brokertest.Next(t, msgs, wait), "steady", []byte(id), 0, false)
		})
	}
}

func TestConnectTimeout(t *testing.T) {
	b := brokertest.New(t, broker.Config{ConnectTimeout: 100 * time.Millisecond})
	rc := dialRaw(t, b.Addr())
	start := time.Now()
	rc.expectClosed() // nothing sent
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("silent connection closed after %v, want about 100ms", d)
	}
	// A client that connects in time keeps its connection past the timeout.
	c := brokertest.Connect(t, brokertest.URL(b), "in-time")
	msgs := brokertest.Subscribe(t, c, "alive", 0)
	if err := b.Publish("alive", []byte("yes"), false, 0); err != nil {
		t.Fatal(err)
	}
	brokertest.Next(t, msgs, wait)
}

// TestClientID: any client ID MQTT allows up to MaxClientIDLength bytes,
// an assigned one for an empty ID with a clean session (in CONNACK for
// MQTT 5), and a refusal counted in ClientIDsRefused for a reserved or
// over-long one.
func TestClientID(t *testing.T) {
	var cfg broker.Config
	ev := withEvents(&cfg)
	b := brokertest.New(t, cfg)
	tests := []struct {
		name     string
		version  byte
		clientID string
		wantCode byte
	}{
		{"device ID alphabet", v311, "dev-1.a:b_c", 0},
		{"empty is assigned", v311, "", 0},
		{"v5 empty is assigned", v5, "", 0},
		{"slash", v311, "a/b", 0},
		{"wildcards", v311, "a+#", 0},
		{"space", v5, "a b", 0},
		{"non-ASCII", v311, "gerät-ü-€", 0},
		{"mosquitto_pub style", v311, "mosqpub|1234-host", 0},
		{"longest", v311, strings.Repeat("x", broker.DefaultMaxClientIDLength), 0},
		{"too long", v311, strings.Repeat("x", broker.DefaultMaxClientIDLength+1), 0x02},
		{"v5 too long", v5, strings.Repeat("x", 1000), 0x85},
		{"reserved inline", v311, "inline", 0x02},
		{"v5 reserved inline", v5, "inline", 0x85},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := b.Stats()
			rc := dialRaw(t, b.Addr())
			rc.write(connectPacket(tc.version, tc.clientID, true, 30))
			ack := rc.expect(typeConnack)
			if len(ack.body) < 2 || ack.body[1] != tc.wantCode {
				t.Fatalf("CONNACK %v: want code %#x", ack, tc.wantCode)
			}
			after := b.Stats()
			if tc.wantCode != 0 {
				rc.expectClosed()
				after = b.Stats()
				if got := after.ConnectsRejected - before.ConnectsRejected; got != 1 {
					t.Errorf("ConnectsRejected: got +%d, want +1", got)
				}
				if got := after.ClientIDsRefused - before.ClientIDsRefused; got != 1 {
					t.Errorf("ClientIDsRefused: got +%d, want +1", got)
				}
				return
			}
			if after.ClientIDsRefused != before.ClientIDsRefused {
				t.Errorf("ClientIDsRefused grew for an accepted client ID")
			}
			id := recv(t, ev.connects, "connect").ClientID
			switch {
			case tc.clientID != "" && id != tc.clientID:
				t.Errorf("OnConnect client ID: got %q, want %q", id, tc.clientID)
			case id == "":
				t.Errorf("OnConnect client ID: got empty, want an assigned ID")
			case tc.clientID == "" && tc.version == v5 && !bytes.Contains(ack.body, appendString([]byte{0x12}, id)):
				t.Errorf("CONNACK %v: want the assigned client identifier property with %q", ack, id)
			}
		})
	}
	// A smaller cap.
	small := brokertest.New(t, broker.Config{MaxClientIDLength: 8})
	for id, want := range map[string]byte{"12345678": 0, "123456789": 0x02} {
		if code := dialRaw(t, small.Addr()).connect(v311, id, true); code != want {
			t.Errorf("MaxClientIDLength 8: client ID %q: CONNACK code %#x, want %#x", id, code, want)
		}
	}
	// The inline client still works after a client tried to take its ID.
	got := make(chan string, 1)
	if err := b.Subscribe("inline/check", func(_, _ string, p []byte) { got <- string(p) }); err != nil {
		t.Fatal(err)
	}
	if err := b.Publish("inline/check", []byte("ok"), false, 0); err != nil {
		t.Fatal(err)
	}
	if p := recv(t, got, "inline message"); p != "ok" {
		t.Errorf("inline message: got %q, want ok", p)
	}
}

func TestInlineSubscribe(t *testing.T) {
	b := brokertest.New(t, broker.Config{})
	type msg struct{ client, topic, payload string }
	got := make(chan msg, 16)
	if err := b.Subscribe("dev/+/up", func(client, topic string, p []byte) {
		got <- msg{client, topic, string(p)}
	}); err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	// A second handler on the same filter gets the messages too.
	second := make(chan string, 16)
	if err := b.Subscribe("dev/+/up", func(client, _ string, _ []byte) { second <- client }); err != nil {
		t.Fatalf("Subscribe: %v", err)
	}

	c := brokertest.Connect(t, brokertest.URL(b), "dev-7")
	tests := []struct {
		name string
		pub  func()
		want msg
	}{
		{"client qos0", func() { brokertest.Publish(t, c, "dev/7/up", 0, []byte("q0")) }, msg{"dev-7", "dev/7/up", "q0"}},
		{"client qos1", func() { brokertest.Publish(t, c, "dev/7/up", 1, []byte("q1")) }, msg{"dev-7", "dev/7/up", "q1"}},
		{"inline", func() {
			if err := b.Publish("dev/x/up", []byte("in"), false, 1); err != nil {
				t.Fatal(err)
			}
		}, msg{"", "dev/x/up", "in"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.pub()
			if m := recv(t, got, "handler call"); m != tc.want {
				t.Errorf("handler got %+v, want %+v", m, tc.want)
			}
			if id := recv(t, second, "second handler call"); id != tc.want.client {
				t.Errorf("second handler client: got %q, want %q", id, tc.want.client)
			}
		})
	}
}

func TestInlineHandlerOrderAndPanic(t *testing.T) {
	b := brokertest.New(t, broker.Config{})
	got := make(chan string, 128)
	if err := b.Subscribe("order/#", func(_, _ string, p []byte) {
		if string(p) == "panic" {
			panic("handler bug")
		}
		got <- string(p)
	}); err != nil {
		t.Fatal(err)
	}
	c := brokertest.Connect(t, brokertest.URL(b), "orderly")
	brokertest.Publish(t, c, "order/x", 1, []byte("panic"))
	const n = 100
	for i := range n {
		c.Publish("order/x", 0, false, fmt.Appendf(nil, "%d", i)) // QoS 0: no wait
	}
	for i := range n {
		if p, want := recv(t, got, "ordered message"), fmt.Sprint(i); p != want {
			t.Fatalf("message %d: got %q, want %q", i, p, want)
		}
	}
	if got := b.Stats().HandlerPanics; got != 1 {
		t.Errorf("Stats.HandlerPanics: got %d, want 1", got)
	}
}

func TestCallbacks(t *testing.T) {
	var cfg broker.Config
	ev := withEvents(&cfg)
	cfg.Auth = allowAuth{deny: map[string]bool{"secret/#": true}}
	b := brokertest.New(t, cfg)
	url := brokertest.URL(b)

	c := brokertest.Connect(t, url, "cb-1")
	if id := recv(t, ev.connects, "OnConnect").ClientID; id != "cb-1" {
		t.Errorf("OnConnect: got %q, want cb-1", id)
	}

	tok := c.SubscribeMultiple(map[string]byte{"a/#": 1, "secret/#": 1, "b": 0}, nil)
	if !tok.WaitTimeout(wait) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	s := recv(t, ev.subscribes, "OnSubscribe")
	if s.clientID != "cb-1" || strings.Join(sortedCopy(s.filters), ",") != "a/#,b" {
		t.Errorf("OnSubscribe: got %q %v, want cb-1 [a/# b]", s.clientID, s.filters)
	}
	// OnSubscribe runs after the subscription is indexed.
	if !b.HasSubscribers("a/z") || b.HasSubscribers("secret/z") {
		t.Errorf("HasSubscribers(a/z), HasSubscribers(secret/z): got %t %t, want true false",
			b.HasSubscribers("a/z"), b.HasSubscribers("secret/z"))
	}

	c.Disconnect(100)
	if err := ev.disconnectOf(t, "cb-1"); err != nil {
		t.Errorf("OnDisconnect after clean disconnect: got %v, want nil", err)
	}

	rc := dialRaw(t, b.Addr())
	rc.connect(v311, "cb-2", true)
	recv(t, ev.connects, "OnConnect")
	rc.c.Close()
	if err := ev.disconnectOf(t, "cb-2"); !errors.Is(err, broker.ErrConnectionLost) {
		t.Errorf("OnDisconnect after dropped connection: got %v, want %v", err, broker.ErrConnectionLost)
	}

	first := dialRaw(t, b.Addr())
	first.connect(v311, "cb-3", true)
	second := dialRaw(t, b.Addr())
	second.connect(v311, "cb-3", true)
	if err := ev.disconnectOf(t, "cb-3"); !errors.Is(err, broker.ErrTakenOver) {
		t.Errorf("OnDisconnect after takeover: got %v, want %v", err, broker.ErrTakenOver)
	}
	first.expectClosed()
}

func sortedCopy(s []string) []string {
	out := append([]string(nil), s...)
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

func TestSlowSubscriberDoesNotBlockPublisher(t *testing.T) {
	b := brokertest.New(t, broker.Config{ClientWritesPending: 4})
	rc := dialRaw(t, b.Addr())
	rc.connect(v311, "slowpoke", true)
	rc.write(subscribePacket(v311, 1, "flood", 0))
	rc.expect(typeSuback)
	// rc never reads again: once the socket buffers are full, its queue fills.
	payload := make([]byte, 64<<10)
	done := make(chan error, 1)
	go func() {
		for range 1000 { // 64 MB, far beyond loopback socket buffers
			if err := b.Publish("flood", payload, false, 0); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	if err := recv(t, done, "publisher to finish"); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	// Its pending bytes outgrew the device cap (2 × MaxPacketSize): it was
	// disconnected.
	if st := b.Stats(); st.SlowConsumers != 1 || st.PacketsDropped < st.MessagesDropped {
		t.Errorf("Stats: got SlowConsumers %d MessagesDropped %d PacketsDropped %d, want 1 slow consumer",
			st.SlowConsumers, st.MessagesDropped, st.PacketsDropped)
	}
	rc.expectClosedAfterData()
}

func TestPublishSubscribeValidation(t *testing.T) {
	b := brokertest.New(t, broker.Config{MaxPacketSize: 1024})
	calls := atomic.Int64{}
	if err := b.Subscribe("#", func(string, string, []byte) { calls.Add(1) }); err != nil {
		t.Fatal(err)
	}
	pubTests := []struct {
		name    string
		topic   string
		qos     byte
		payload int
		wantErr error
	}{
		{"empty topic", "", 0, 1, broker.ErrInvalidTopic},
		{"plus wildcard", "a/+", 0, 1, broker.ErrInvalidTopic},
		{"hash wildcard", "a/#", 0, 1, broker.ErrInvalidTopic},
		{"sys topic", "$SYS/x", 0, 1, broker.ErrInvalidTopic},
		{"topic too long", strings.Repeat("a", 70000), 0, 1, broker.ErrInvalidTopic},
		{"qos 3", "a", 3, 1, broker.ErrInvalidQoS},
		{"payload over limit", "a", 0, 1025, broker.ErrTooLarge},
	}
	for _, tc := range pubTests {
		t.Run("publish "+tc.name, func(t *testing.T) {
			err := b.Publish(tc.topic, make([]byte, tc.payload), true, tc.qos)
			if !errors.Is(err, tc.wantErr) {
				t.Errorf("Publish: got %v, want %v", err, tc.wantErr)
			}
		})
	}
	if n, r := calls.Load(), b.Stats().Retained; n != 0 || r != 0 {
		t.Errorf("after invalid publishes: got %d handler calls, %d retained, want 0 0", n, r)
	}

	subTests := []struct {
		name    string
		filter  string
		h       broker.HandlerFunc
		wantErr error
	}{
		{"empty filter", "", func(string, string, []byte) {}, broker.ErrInvalidTopic},
		{"hash not last", "a/#/b", func(string, string, []byte) {}, broker.ErrInvalidTopic},
		{"nil handler", "a", nil, broker.ErrNilHandler},
	}
	for _, tc := range subTests {
		t.Run("subscribe "+tc.name, func(t *testing.T) {
			if err := b.Subscribe(tc.filter, tc.h); !errors.Is(err, tc.wantErr) {
				t.Errorf("Subscribe: got %v, want %v", err, tc.wantErr)
			}
		})
	}
}

func TestHasSubscribers(t *testing.T) {
	b := brokertest.New(t, broker.Config{})
	if err := b.Subscribe("state/+/update", func(string, string, []byte) {}); err != nil {
		t.Fatal(err)
	}
	c := brokertest.Connect(t, brokertest.URL(b), "watcher")
	brokertest.Subscribe(t, c, "state/dev-1/#", 0)
	tests := []struct {
		topic string
		want  bool
	}{
		{"state/dev-1/update", true},
		{"state/dev-2/update", true},
		{"state/dev-1/update/accepted", true},
		{"state/dev-2/update/accepted", false},
		{"other", false},
		{"state/+/update", false}, // not a topic name
		{"", false},
	}
	for _, tc := range tests {
		if got := b.HasSubscribers(tc.topic); got != tc.want {
			t.Errorf("HasSubscribers(%q): got %t, want %t", tc.topic, got, tc.want)
		}
	}
}

func TestClose(t *testing.T) {
	var cfg broker.Config
	ev := withEvents(&cfg)
	cfg.TCPAddr, cfg.WSAddr = "127.0.0.1:0", "127.0.0.1:0"
	b, err := broker.Open(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	c := brokertest.Connect(t, brokertest.URL(b), "closing")
	silent := dialRaw(t, b.Addr()) // never sends CONNECT
	ctx := context.Background()
	for i := range 2 {
		if err := b.Close(ctx); err != nil {
			t.Fatalf("Close #%d: %v", i+1, err)
		}
	}
	if err := ev.disconnectOf(t, "closing"); !errors.Is(err, broker.ErrClosed) {
		t.Errorf("OnDisconnect on Close: got %v, want %v", err, broker.ErrClosed)
	}
	silent.expectClosed()
	// paho notices the disconnect asynchronously.
	if !eventually(func() bool { return !c.IsConnectionOpen() }) {
		t.Errorf("paho client still connected after Close")
	}
	if err := b.Publish("x", nil, false, 0); !errors.Is(err, broker.ErrClosed) {
		t.Errorf("Publish after Close: got %v, want %v", err, broker.ErrClosed)
	}
	if err := b.Subscribe("x", func(string, string, []byte) {}); !errors.Is(err, broker.ErrClosed) {
		t.Errorf("Subscribe after Close: got %v, want %v", err, broker.ErrClosed)
	}
	if _, err := net.DialTimeout("tcp", b.Addr().String(), time.Second); err == nil {
		t.Errorf("dial after Close: got nil error, want connection refused")
	}
}

func TestOpenErrors(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	inUse := busy.Addr().String()
	serverTLS := brokertest.NewCA(t, "open errors CA").ServerConfig(t, false)
	tests := []struct {
		name    string
		cfg     broker.Config
		wantErr error
	}{
		{"tcp address in use", broker.Config{TCPAddr: inUse}, syscall.EADDRINUSE},
		{"ws address in use", broker.Config{TCPAddr: "127.0.0.1:0", WSAddr: inUse}, syscall.EADDRINUSE},
		{"bad address", broker.Config{TCPAddr: "127.0.0.1:notaport"}, nil},
		{"tiny packet size", broker.Config{MaxPacketSize: 10}, broker.ErrInvalidConfig},
		{"short session expiry", broker.Config{SessionExpiry: time.Millisecond}, broker.ErrInvalidConfig},
		{"negative connect timeout", broker.Config{ConnectTimeout: -time.Second}, broker.ErrInvalidConfig},
		{"negative writes pending", broker.Config{ClientWritesPending: -1}, broker.ErrInvalidConfig},
		{"negative service writes pending", broker.Config{ServiceWritesPending: -1}, broker.ErrInvalidConfig},
		{"tiny read buffer", broker.Config{ReadBufferSize: 1}, broker.ErrInvalidConfig},
		{"read loops below -1", broker.Config{ReadLoops: -2}, broker.ErrInvalidConfig},
		{"too many read loops", broker.Config{ReadLoops: 5000}, broker.ErrInvalidConfig},
		{"negative client ID length", broker.Config{MaxClientIDLength: -1}, broker.ErrInvalidConfig},
		{"client ID length over MQTT's", broker.Config{MaxClientIDLength: 65536}, broker.ErrInvalidConfig},
		{"tls address without config", broker.Config{TLSAddr: "127.0.0.1:0"}, broker.ErrInvalidConfig},
		{"tls config without address", broker.Config{TLSConfig: serverTLS}, broker.ErrInvalidConfig},
		{"tls config without certificate", broker.Config{TLSAddr: "127.0.0.1:0", TLSConfig: &tls.Config{}}, broker.ErrInvalidConfig},
		{"tls address in use", broker.Config{TCPAddr: "127.0.0.1:0", TLSAddr: inUse, TLSConfig: serverTLS}, syscall.EADDRINUSE},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			b, err := broker.Open(t.Context(), tc.cfg)
			if err == nil {
				b.Close(t.Context())
				t.Fatalf("Open: got nil error, want an error")
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Errorf("Open: got %v, want %v", err, tc.wantErr)
			}
			if !strings.HasPrefix(err.Error(), "broker: ") {
				t.Errorf("Open error %q: want prefix %q", err, "broker: ")
			}
			if d := time.Since(start); d > time.Second {
				t.Errorf("Open took %v to fail, want fast", d)
			}
		})
	}
	// The first listener of a failed Open was released.
	t.Run("tcp released after ws failure", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		if _, err := broker.Open(t.Context(), broker.Config{TCPAddr: addr, WSAddr: inUse}); err == nil {
			t.Fatal("Open: got nil error, want address in use")
		}
		ln, err = net.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("listen on the failed Open's TCP address: %v", err)
		}
		ln.Close()
	})
}

func TestStats(t *testing.T) {
	b := brokertest.New(t, broker.Config{})
	sub := brokertest.Connect(t, brokertest.URL(b), "stats-sub")
	pub := brokertest.Connect(t, brokertest.URL(b), "stats-pub")
	msgs := brokertest.Subscribe(t, sub, "s/#", 1)
	before := b.Stats()
	for i := range 5 {
		brokertest.Publish(t, pub, "s/x", 1, []byte{byte(i)})
	}
	for range 5 {
		brokertest.Next(t, msgs, wait)
	}
	// mochi counts a message as sent after writing it, so the subscriber
	// may see it first: poll.
	var st broker.Stats
	eventually(func() bool { st = b.Stats(); return st.MessagesSent-before.MessagesSent >= 5 })
	if st.ClientsConnected != 2 || st.Sessions != 2 || st.Subscriptions != 1 {
		t.Errorf("Stats: got connected %d sessions %d subscriptions %d, want 2 2 1",
			st.ClientsConnected, st.Sessions, st.Subscriptions)
	}
	if d := st.MessagesReceived - before.MessagesReceived; d != 5 {
		t.Errorf("MessagesReceived: got +%d, want +5", d)
	}
	if d := st.MessagesSent - before.MessagesSent; d != 5 {
		t.Errorf("MessagesSent: got +%d, want +5", d)
	}
	if st.BytesReceived <= before.BytesReceived || st.PacketsSent <= before.PacketsSent {
		t.Errorf("byte and packet counters did not grow: before %+v, after %+v", before, st)
	}
	if st.PacketsDropped != 0 {
		t.Errorf("PacketsDropped: got %d, want 0", st.PacketsDropped)
	}
}
