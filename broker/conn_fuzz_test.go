package broker_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/internal/brokertest"
)

// fuzzAuth authenticates the clients of FuzzBrokerConn: "probe" and
// "prober" only with a secret the fuzzer cannot know (so fuzz input never
// takes over the clients that check the broker still serves), any other
// client ID with the password "pw-<client ID>" as a device allowed under
// fz/<client ID>/, and user "op" with password "op" as an operator allowed
// everything.
type fuzzAuth struct{ secret string }

func (a fuzzAuth) Authenticate(_ context.Context, c broker.Credentials) (broker.Identity, error) {
	switch {
	case c.ClientID == "probe" || c.ClientID == "prober":
		if string(c.Password) != a.secret {
			return broker.Identity{}, errors.New("wrong secret")
		}
		return broker.Identity{Name: "checker:" + c.ClientID}, nil
	case c.Username == "op" && string(c.Password) == "op":
		return broker.Identity{Name: "op"}, nil
	case string(c.Password) == "pw-"+c.ClientID:
		id, err := device.ParseID(c.ClientID)
		if err != nil {
			return broker.Identity{}, err
		}
		return broker.Identity{Name: c.ClientID, Device: id}, nil
	}
	return broker.Identity{}, errors.New("wrong password")
}

func (fuzzAuth) Allow(id broker.Identity, topic string, _ bool) bool {
	return id.Device == "" || strings.HasPrefix(topic, "fz/"+string(id.Device)+"/")
}

// connectPrefixes are valid CONNECT packets FuzzBrokerConn can put before
// the fuzz input (selected by its first argument modulo the length), so
// that mutations are spent on what follows CONNECT. Index 0 is none.
var connectPrefixes = [][]byte{
	nil,
	fullConnectPacket(v311, "fz-1", "", "fz-1", "pw-fz-1"),
	fullConnectPacket(v5, "fz-1", "", "fz-1", "pw-fz-1"),
	fullConnectPacket(v311, "fz-op", "", "op", "op"),
	fullConnectPacket(v5, "fz-op", "fz/will", "op", "op"),
	persistentConnect(v311, "fz-2", "pw-fz-2"),
}

// persistentConnect is a CONNECT with clean session off (MQTT 5: session
// expiry 60 s) and a password.
func persistentConnect(version byte, clientID, password string) []byte {
	body := connectBody(fullConnectPacket(version, clientID, "", clientID, password))
	body[7] &^= 0x02 // connect flags: clean session off
	if version == v5 {
		// properties: session expiry interval (0x11) = 60
		body = append(append(bytes.Clone(body[:10]), 5, 0x11, 0, 0, 0, 60), body[11:]...)
	}
	return frame(typeConnect<<4, body)
}

// connectBody returns the variable header and payload of the CONNECT
// packet p, built by fullConnectPacket: body[7] holds the connect flags,
// body[8:10] the keepalive.
func connectBody(p []byte) []byte {
	pk, err := readPacket(bufio.NewReader(bytes.NewReader(p)))
	if err != nil || pk.typ != typeConnect {
		panic(fmt.Sprintf("not a CONNECT: % x", p))
	}
	return pk.body
}

// FuzzBrokerConn writes fuzz input, after an optional valid CONNECT (see
// connectPrefixes), to the real TCP listener of a broker with
// authentication and ACLs, started once per fuzz process. Seeds include
// what real clients (mosquitto_pub, mosquitto_sub, paho) send. After each
// input, whatever it did:
//   - the broker closes the connection once the client has sent FIN (it
//     never hangs on a half-read packet);
//   - a subscriber connected since the start still receives, and a new
//     client can connect and publish to it;
//   - the connection's goroutines are gone and ClientsConnected is back
//     to the subscriber alone.
//
// A panic anywhere in the broker crashes the fuzz process, which reports
// the input.
func FuzzBrokerConn(f *testing.F) {
	secret := rand.Text()
	var cfg broker.Config
	cfg.Auth = fuzzAuth{secret: secret}
	cfg.MaxPacketSize = 4096
	cfg.ConnectTimeout = time.Second
	cfg.OnConnect = func(broker.ConnInfo) {}
	cfg.OnDisconnect = func(broker.ConnInfo, error) {}
	cfg.OnSubscribe = func(string, []string) {}
	b := brokertest.New(f, cfg)
	if err := b.Subscribe("fz/#", func(string, string, []byte) {}); err != nil {
		f.Fatal(err)
	}

	for _, s := range realClientStreams(f, b) {
		f.Add(uint8(0), s)
		if first, rest, ok := splitFirstPacket(s); ok && first[0]>>4 == typeConnect {
			for i, p := range connectPrefixes[1:] {
				if bytes.HasPrefix(p, first[:1]) {
					f.Add(uint8(i+1), rest)
				}
			}
		}
	}
	for i := range connectPrefixes {
		f.Add(uint8(i), []byte{})
		f.Add(uint8(i), subscribePacket(v311, 1, "fz/#", 1))
		f.Add(uint8(i), subscribePacket(v5, 1, "fz/+/x", 2))
		f.Add(uint8(i), publishPacket(v311, "fz/fz-1/a", 1, 7, []byte("x")))
		f.Add(uint8(i), publishPacket(v5, "fz/fz-1/a", 2, 7, []byte(`{"state":{}}`)))
		f.Add(uint8(i), append(publishPacket(v311, "fz/fz-1/a", 1, 1, nil), 0xe0, 0x00))
		f.Add(uint8(i), []byte{0xc0, 0x00}) // PINGREQ
		f.Add(uint8(i), []byte{0x10, 0xff, 0xff, 0xff, 0x7f})
		f.Add(uint8(i), []byte("GET /mqtt HTTP/1.1\r\n\r\n"))
	}

	probe := dialChecker(f, b, "probe", secret)
	probe.subscribe(f, "probe/#")
	baseline := brokerGoroutines()
	f.Fuzz(func(t *testing.T, prefix uint8, data []byte) {
		input := append(bytes.Clone(connectPrefixes[int(prefix)%len(connectPrefixes)]), data...)
		c, err := net.DialTimeout("tcp", b.Addr().String(), wait)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetWriteDeadline(time.Now().Add(wait))
		_, _ = c.Write(input) // the broker may close first
		_ = c.(*net.TCPConn).CloseWrite()
		if err := closedByServer(c, time.Now().Add(wait)); err != nil {
			t.Fatalf("broker did not close the connection within %v of the client's FIN: %v", wait, err)
		}
		c.Close()

		// Another client connects and publishes; the first subscriber
		// receives it.
		nonce := rand.Text()
		prober := dialChecker(t, b, "prober", secret)
		prober.write(t, publishPacket(v311, "probe/"+nonce, 0, 0, []byte(nonce)))
		prober.write(t, frame(typeDisconn<<4, nil))
		prober.c.Close()
		probe.await(t, nonce)

		// No event reports that the broker has let go of a connection.
		if !poll(wait, func() bool { return brokerGoroutines() <= baseline && b.Stats().ClientsConnected == 1 }) {
			t.Fatalf("after the connections closed: %d broker goroutines (want %d), ClientsConnected %d (want 1, the subscriber)",
				brokerGoroutines(), baseline, b.Stats().ClientsConnected)
		}
	})
}

// poll calls cond every half millisecond until it is true or timeout
// passes; it is eventually for checks made on every fuzz input.
func poll(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(500 * time.Microsecond)
	}
	return true
}

// brokerGoroutines counts the goroutines running broker or mochi code.
func brokerGoroutines() int {
	return goroutinesIn("github.com/umbra-iot/umbra/broker.", "github.com/mochi-mqtt/server")
}

// checker is a raw MQTT 3.1.1 connection with keepalive 0, used by the
// fuzz target with the testing.TB of the moment.
type checker struct {
	c net.Conn
	r *bufio.Reader
}

// dialChecker connects clientID with secret and waits for a successful
// CONNACK.
func dialChecker(tb testing.TB, b *broker.Server, clientID, secret string) *checker {
	tb.Helper()
	c, err := net.DialTimeout("tcp", b.Addr().String(), wait)
	if err != nil {
		tb.Fatalf("dial %s: %v", clientID, err)
	}
	tb.Cleanup(func() { c.Close() })
	ck := &checker{c: c, r: bufio.NewReader(c)}
	body := connectBody(fullConnectPacket(v311, clientID, "", clientID, secret))
	body[8], body[9] = 0, 0 // keepalive 0: the subscriber lives as long as the fuzz process
	ck.write(tb, frame(typeConnect<<4, body))
	ack := ck.expect(tb, typeConnack)
	if len(ack.body) < 2 || ack.body[1] != 0 {
		tb.Fatalf("CONNACK for %s: got %v, want accepted", clientID, ack)
	}
	return ck
}

func (ck *checker) write(tb testing.TB, p []byte) {
	tb.Helper()
	_ = ck.c.SetWriteDeadline(time.Now().Add(wait))
	if _, err := ck.c.Write(p); err != nil {
		tb.Fatalf("write: %v", err)
	}
}

func (ck *checker) expect(tb testing.TB, typ byte) packet {
	tb.Helper()
	_ = ck.c.SetReadDeadline(time.Now().Add(wait))
	p, err := readPacket(ck.r)
	if err != nil || p.typ != typ {
		tb.Fatalf("read: got %v, %v; want packet type %d", p, err, typ)
	}
	return p
}

// subscribe subscribes to filter with QoS 0 and waits for the SUBACK.
func (ck *checker) subscribe(tb testing.TB, filter string) {
	tb.Helper()
	ck.write(tb, subscribePacket(v311, 1, filter, 0))
	if ack := ck.expect(tb, typeSuback); len(ack.body) < 3 || ack.body[2] != 0 {
		tb.Fatalf("SUBACK for %s: got %v, want QoS 0 granted", filter, ack)
	}
}

// await reads PUBLISHes until one carries nonce; fuzz input may have
// published others to the same topics.
func (ck *checker) await(tb testing.TB, nonce string) {
	tb.Helper()
	for {
		p := ck.expect(tb, typePublish)
		if _, _, payload := parsePublish(v311, p); string(payload) == nonce {
			return
		}
	}
}

// splitFirstPacket splits the first MQTT packet off s.
func splitFirstPacket(s []byte) (first, rest []byte, ok bool) {
	r := bufio.NewReader(bytes.NewReader(s))
	if _, err := readPacket(r); err != nil {
		return nil, nil, false
	}
	n := len(s) - r.Buffered()
	return s[:n], s[n:], true
}

// realClientStreams runs real MQTT clients against b through a recording
// proxy and returns the bytes each connection sent: mosquitto_pub and
// mosquitto_sub (MQTT 3.1.1 and 5, QoS 1, retain, will, persistent
// session, user properties) and paho (subscribe, publish, unsubscribe).
func realClientStreams(tb testing.TB, b *broker.Server) [][]byte {
	tb.Helper()
	rec := newRecorder(tb, b.Addr().String())
	host, port, _ := net.SplitHostPort(rec.ln.Addr().String())
	pub, err := exec.LookPath("mosquitto_pub")
	if err != nil {
		tb.Fatalf("mosquitto_pub not found (%v): run make deps", err)
	}
	sub, err := exec.LookPath("mosquitto_sub")
	if err != nil {
		tb.Fatalf("mosquitto_sub not found (%v): run make deps", err)
	}
	base := []string{"-h", host, "-p", port}
	runs := []struct {
		bin  string
		args []string
	}{
		{pub, []string{"-V", "mqttv311", "-i", "fz-1", "-u", "fz-1", "-P", "pw-fz-1", "-t", "fz/fz-1/a", "-m", `{"state":{"reported":{"on":true}}}`, "-q", "1", "-r"}},
		{pub, []string{"-V", "mqttv5", "-i", "fz-1", "-u", "fz-1", "-P", "pw-fz-1", "-t", "fz/fz-1/b", "-m", "hello", "-q", "1",
			"-D", "publish", "message-expiry-interval", "60", "-D", "publish", "user-property", "k", "v", "-D", "connect", "session-expiry-interval", "30"}},
		{pub, []string{"-V", "mqttv311", "-i", "fz-1", "-u", "fz-1", "-P", "pw-fz-1", "-t", "fz/fz-1/a", "-n", "-r", "-q", "0"}},
		{sub, []string{"-V", "mqttv5", "-i", "fz-2", "-u", "fz-2", "-P", "pw-fz-2", "-t", "fz/fz-2/#", "-t", "fz/fz-2/+/x", "-q", "1", "-E",
			"--will-topic", "fz/fz-2/will", "--will-payload", "bye", "--will-qos", "1"}},
		{sub, []string{"-V", "mqttv311", "-c", "-i", "fz-3", "-u", "fz-3", "-P", "pw-fz-3", "-t", "fz/fz-3/#", "-q", "1", "-E"}},
		{sub, []string{"-V", "mqttv311", "-i", "fz-op", "-u", "op", "-P", "op", "-t", "#", "-t", "$SYS/#", "-E"}},
	}
	for _, r := range runs {
		ctx, cancel := context.WithTimeout(tb.Context(), 2*wait)
		out, err := exec.CommandContext(ctx, r.bin, append(base, r.args...)...).CombinedOutput()
		cancel()
		if err != nil {
			tb.Fatalf("%s %v: %v\n%s", r.bin, r.args, err, out)
		}
	}
	c := brokertest.Connect(tb, "tcp://"+rec.ln.Addr().String(), "fz-4", func(o *mqtt.ClientOptions) {
		o.SetUsername("fz-4").SetPassword("pw-fz-4")
	})
	brokertest.Subscribe(tb, c, "fz/fz-4/#", 1)
	brokertest.Publish(tb, c, "fz/fz-4/x", 1, []byte("paho"))
	if tok := c.Unsubscribe("fz/fz-4/#"); !tok.WaitTimeout(wait) || tok.Error() != nil {
		tb.Fatalf("unsubscribe: %v", tok.Error())
	}
	c.Disconnect(100)
	return rec.streams(tb, len(runs)+1)
}

// recorder is a TCP proxy that records what clients send.
type recorder struct {
	ln   net.Listener
	wg   sync.WaitGroup
	mu   sync.Mutex // guards sent
	sent [][]byte   // one per finished connection
	done chan struct{}
}

func newRecorder(tb testing.TB, target string) *recorder {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	r := &recorder{ln: ln, done: make(chan struct{}, 64)}
	r.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			r.wg.Go(func() { r.relay(c, target) })
		}
	})
	tb.Cleanup(func() {
		ln.Close()
		r.wg.Wait()
	})
	return r
}

// relay copies c to and from target, recording what c sends.
func (r *recorder) relay(c net.Conn, target string) {
	defer c.Close()
	s, err := net.DialTimeout("tcp", target, wait)
	if err != nil {
		return
	}
	defer s.Close()
	var sent bytes.Buffer
	var wg sync.WaitGroup
	wg.Go(func() {
		_, _ = io.Copy(c, s)
		c.Close()
	})
	_, _ = io.Copy(s, io.TeeReader(c, &sent))
	s.Close()
	wg.Wait()
	r.mu.Lock()
	r.sent = append(r.sent, sent.Bytes())
	r.mu.Unlock()
	r.done <- struct{}{}
}

// streams waits for n connections to finish and returns what they sent.
func (r *recorder) streams(tb testing.TB, n int) [][]byte {
	tb.Helper()
	for i := range n {
		select {
		case <-r.done:
		case <-time.After(wait):
			tb.Fatalf("recorder: %d of %d connections finished within %v", i, n, wait)
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.sent
}

// TestRealClientStreams checks the seeds of FuzzBrokerConn: every
// recorded connection starts with a CONNECT and is a sequence of whole
// MQTT packets.
func TestRealClientStreams(t *testing.T) {
	b := brokertest.New(t, broker.Config{Auth: fuzzAuth{secret: rand.Text()}})
	streams := realClientStreams(t, b)
	if len(streams) != 7 {
		t.Fatalf("got %d recorded connections, want 7", len(streams))
	}
	types := map[byte]bool{}
	for i, s := range streams {
		first, rest, ok := splitFirstPacket(s)
		if !ok || first[0]>>4 != typeConnect {
			t.Errorf("stream %d (%s): does not start with CONNECT", i, hex.EncodeToString(s[:min(len(s), 16)]))
			continue
		}
		for len(rest) > 0 {
			var p []byte
			if p, rest, ok = splitFirstPacket(rest); !ok {
				t.Errorf("stream %d: trailing bytes % x are not a packet", i, rest)
				break
			}
			types[p[0]>>4] = true
		}
	}
	for _, typ := range []byte{typePublish, typeSubscribe, 10 /* UNSUBSCRIBE */, typeDisconn} {
		if !types[typ] {
			t.Errorf("no recorded packet of type %d, want the seeds to cover it", typ)
		}
	}
}
