package shadow_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/internal/brokertest"
	"github.com/umbra-iot/umbra/shadow"
)

// Regression tests for issue 10's cases 8, 9, 10 and 17.

// ordered makes a paho client hand messages to its handlers in arrival
// order, so that a reply published last is a barrier for the ones before.
func ordered(o *mqtt.ClientOptions) { o.SetOrderMatters(true) }

// absentKeys is an update with a clientToken that deletes n keys that do
// not exist, each named prefix plus a number.
func absentKeys(n int, prefix, token string) []byte {
	var b strings.Builder
	b.WriteString(`{"state":{"reported":{`)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `"%s%05d":null`, prefix, i)
	}
	fmt.Fprintf(&b, `}},"clientToken":%q}`, token)
	return []byte(b.String())
}

// mustRead returns id's stored document (version 0 if there is none).
func mustRead(t *testing.T, eng *shadow.Engine, id device.ID) shadow.Document {
	t.Helper()
	doc, err := eng.Read(t.Context(), id)
	if err != nil && shadow.CodeOf(err) != 404 {
		t.Fatalf("read %s: %v", id, err)
	}
	return doc
}

// TestHardening08RetryCacheBounded: the retry cache costs a few hundred
// bytes per entry whatever the request, keeps one entry per device (so a
// device cannot evict the others' entries by sending more), is bounded in
// entries and bytes, and is counted. An update that deletes many absent
// keys gets a reply the size of the request, not 3.4 times it.
func TestHardening08RetryCacheBounded(t *testing.T) {
	t.Run("reply proportionate to the request", func(t *testing.T) {
		h := mustOpen(t, nil)
		if _, err := h.eng.Update(t.Context(), "dev-1", []byte(`{"state":{"reported":{"keep":1}}}`)); err != nil {
			t.Fatal(err)
		}
		req := absentKeys(3900, "k", "t1") // about 55 KB, as in the campaign
		acc, err := h.eng.Update(t.Context(), "dev-1", req)
		if err != nil {
			t.Fatal(err)
		}
		if len(acc) > len(req)+256 {
			t.Errorf("accepted is %d bytes for a %d-byte request, want at most the request + 256", len(acc), len(req))
		}
		var m struct {
			Metadata struct{ Reported map[string]any }
			Version  int
		}
		if err := json.Unmarshal(acc, &m); err != nil {
			t.Fatal(err)
		}
		if len(m.Metadata.Reported) != 0 || m.Version != 2 {
			t.Errorf("accepted has metadata for %d deleted keys and version %d, want none and 2", len(m.Metadata.Reported), m.Version)
		}
		if rep := mustRead(t, h.eng, "dev-1").State.Reported; len(rep) != 1 || rep["keep"] == nil {
			t.Errorf("reported after deleting absent keys = %v, want only keep", rep)
		}
	})

	t.Run("one entry per device", func(t *testing.T) {
		h := mustOpen(t, func(c *shadow.Config) { c.DeviceRate = -1 })
		for i := range 50 {
			if _, err := h.eng.Update(t.Context(), "dev-1", absentKeys(100, "k", fmt.Sprintf("tok-%d", i))); err != nil {
				t.Fatal(err)
			}
		}
		st := h.eng.Stats().RetryCache
		if st.Entries != 1 || st.Bytes > 512 || st.Evictions != 0 {
			t.Errorf("after 50 tokened updates of one device: %+v, want 1 entry of at most 512 bytes and no evictions", st)
		}
		// An update without a token, and a delete, leave nothing to retry.
		h.eng.Update(t.Context(), "dev-1", []byte(`{"state":{"reported":{"a":1}}}`))
		if st := h.eng.Stats().RetryCache; st.Entries != 0 || st.Bytes != 0 {
			t.Errorf("after an update without a token: %+v, want empty", st)
		}
	})

	t.Run("bounded in bytes and entries", func(t *testing.T) {
		for _, tc := range []struct {
			name    string
			entries int
			bytes   int64
		}{
			{"bytes", 1000, 4 << 10},
			{"entries", 10, 1 << 20},
		} {
			t.Run(tc.name, func(t *testing.T) {
				h := mustOpen(t, func(c *shadow.Config) { c.DedupeMaxEntries, c.DedupeMaxBytes = tc.entries, tc.bytes })
				token := strings.Repeat("t", shadow.MaxClientTokenLen)
				const devices = 100
				for i := range devices {
					id := device.ID(fmt.Sprintf("device-%03d", i))
					if _, err := h.eng.Update(t.Context(), id, absentKeys(300, "k", token)); err != nil {
						t.Fatal(err)
					}
				}
				st := h.eng.Stats().RetryCache
				if st.Bytes > tc.bytes || st.Entries > tc.entries || st.Evictions != uint64(devices-st.Entries) || st.Entries == 0 {
					t.Fatalf("after %d devices: %+v, want at most %d bytes and %d entries, the rest evicted", devices, st, tc.bytes, tc.entries)
				}
				// The newest device's retry is still answered from the
				// cache; the oldest one's was evicted and is applied again.
				newest, oldest := device.ID(fmt.Sprintf("device-%03d", devices-1)), device.ID("device-000")
				for _, c := range []struct {
					id   device.ID
					want shadow.Version
				}{{newest, 1}, {oldest, 2}} {
					acc, err := h.eng.Update(t.Context(), c.id, absentKeys(300, "k", token))
					if err != nil {
						t.Fatal(err)
					}
					if v := version(t, acc); v != c.want {
						t.Errorf("retry for %s answered with version %d, want %d", c.id, v, c.want)
					}
				}
				if st := h.eng.Stats().RetryCache; st.Hits != 1 {
					t.Errorf("retry cache hits %d, want 1", st.Hits)
				}
			})
		}
	})

	t.Run("invalid config", func(t *testing.T) {
		for _, mod := range []func(*shadow.Config){
			func(c *shadow.Config) { c.DedupeMaxEntries = -1 },
			func(c *shadow.Config) { c.DedupeMaxBytes = 100 },
			func(c *shadow.Config) { c.MaxReply = 100 },
		} {
			cfg := shadow.Config{Store: storeAt(t, t.TempDir()+"/shadow.db")}
			mod(&cfg)
			if eng, err := shadow.Open(t.Context(), cfg); err == nil {
				eng.Close(t.Context())
				t.Errorf("Open(%+v) succeeded, want an error", cfg)
			}
		}
	})
}

// replyObserver subscribes an ordered client to id's update and get
// replies.
type replyObserver struct {
	c                      mqtt.Client
	accepted, rejected     <-chan brokertest.Message
	getAccepted, getReject <-chan brokertest.Message
}

func observe(t *testing.T, url string, id device.ID) *replyObserver {
	c := brokertest.Connect(t, url, string(id), ordered)
	return &replyObserver{
		c:           c,
		accepted:    brokertest.Subscribe(t, c, shadow.AcceptedTopic(id), 1),
		rejected:    brokertest.Subscribe(t, c, shadow.RejectedTopic(id), 1),
		getAccepted: brokertest.Subscribe(t, c, shadow.Topic(id, "get/accepted"), 1),
		getReject:   brokertest.Subscribe(t, c, shadow.Topic(id, "get/rejected"), 1),
	}
}

// onlyReply waits for the reply to an update just published and checks
// that it is the only one: a get published afterwards is answered after
// any other reply to the update would have been delivered.
func (o *replyObserver) onlyReply(t *testing.T, id device.ID) brokertest.Message {
	t.Helper()
	var reply brokertest.Message
	select {
	case reply = <-o.accepted:
	case reply = <-o.rejected:
	case <-time.After(wait):
		t.Fatalf("no accepted or rejected within %v", wait)
	}
	brokertest.Publish(t, o.c, shadow.Topic(id, "get"), 1, []byte(`{"clientToken":"barrier"}`))
	select {
	case <-o.getAccepted:
	case <-o.getReject:
	case <-time.After(wait):
		t.Fatalf("no answer to the barrier get within %v", wait)
	}
	if n := len(o.accepted) + len(o.rejected); n != 0 {
		t.Errorf("%d more replies to one update, want exactly one", n)
	}
	return reply
}

// TestHardening09EveryUpdateGetsOneReply: an update whose full accepted
// message would not fit in an MQTT packet is still answered, exactly once,
// and so is its retry. Deleting 3,000 absent keys now gets the full reply
// (no metadata for deleted keys); a reply still too large (keys that JSON
// escapes to six times their size) gets the documented short form.
func TestHardening09EveryUpdateGetsOneReply(t *testing.T) {
	url, eng := startStack(t, nil)
	tests := []struct {
		name    string
		id      device.ID
		payload []byte
		short   bool
	}{
		{"3000 absent keys", "dev-a", absentKeys(3000, "gone-", "del-1"), false},
		{"escaped keys over the packet limit", "dev-b", absentKeys(450, strings.Repeat("<", 120), "del-2"), true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if len(tc.payload) > shadow.DefaultMaxPayload {
				t.Fatalf("request is %d bytes, over the %d-byte limit", len(tc.payload), shadow.DefaultMaxPayload)
			}
			if _, err := eng.Update(t.Context(), tc.id, []byte(`{"state":{"reported":{"keep":true}}}`)); err != nil {
				t.Fatal(err)
			}
			o := observe(t, url, tc.id)
			brokertest.Publish(t, o.c, shadow.UpdateTopic(tc.id), 1, tc.payload)
			first := o.onlyReply(t, tc.id)
			var w struct {
				State        map[string]any
				Version      int
				ClientToken  string
				StateOmitted bool
			}
			if err := json.Unmarshal(first.Payload, &w); err != nil {
				t.Fatalf("decode %s: %v", first, err)
			}
			if first.Topic != shadow.AcceptedTopic(tc.id) || w.Version != 2 || w.ClientToken == "" || w.StateOmitted != tc.short || (w.State == nil) != tc.short {
				t.Fatalf("reply on %s: version %d token %q stateOmitted %t state present %t (%d bytes), want accepted version 2 with the token, short form %t",
					first.Topic, w.Version, w.ClientToken, w.StateOmitted, w.State != nil, len(first.Payload), tc.short)
			}
			// The retry gets the same single answer and is not applied.
			brokertest.Publish(t, o.c, shadow.UpdateTopic(tc.id), 1, tc.payload)
			if again := o.onlyReply(t, tc.id); !bytes.Equal(again.Payload, first.Payload) {
				t.Errorf("retry answered %.200s…, want the first answer %.200s…", again.Payload, first.Payload)
			}
			if doc := mustRead(t, eng, tc.id); doc.Version != 2 || len(doc.State.Reported) != 1 {
				t.Errorf("stored version %d reported %v, want version 2 with only keep", doc.Version, doc.State.Reported)
			}
		})
	}
}

// TestHardening09GetTooLargeForMQTT: a get whose document would not fit in
// an MQTT packet is rejected with 413 instead of never being answered;
// nothing stored changes and HTTP (the engine's Get) still reads it.
func TestHardening09GetTooLargeForMQTT(t *testing.T) {
	url, eng := startStack(t, func(c *shadow.Config) { c.MaxReply = 1024 })
	id := device.ID("big-doc")
	big := fmt.Sprintf(`{"state":{"desired":{"blob":%q},"reported":{"blob":"y"}}}`, strings.Repeat("x", 1500))
	if _, err := eng.Update(t.Context(), id, []byte(big)); err != nil {
		t.Fatal(err)
	}
	before := mustRead(t, eng, id)
	o := observe(t, url, id)
	brokertest.Publish(t, o.c, shadow.Topic(id, "get"), 1, []byte(`{"clientToken":"g1"}`))
	select {
	case m := <-o.getReject:
		if w := decode(t, m); w.Code != 413 || w.ClientToken != "g1" || !strings.Contains(w.Message, "HTTP") {
			t.Errorf("get of a large document = %+v, want 413 with token g1 pointing to HTTP", w)
		}
	case m := <-o.getAccepted:
		t.Fatalf("get answered with %d bytes over the 1024-byte reply limit", len(m.Payload))
	case <-time.After(wait):
		t.Fatal("get of a large document: no answer")
	}
	if after := mustRead(t, eng, id); after.Version != before.Version || after.Updated != before.Updated {
		t.Errorf("document changed by a rejected get: version %d → %d", before.Version, after.Version)
	}
	if b, err := eng.Get(t.Context(), id, nil); err != nil || len(b) <= 1024 {
		t.Errorf("Get over the API = %d bytes, %v; want the full document", len(b), err)
	}
}

// rawClient is a bare MQTT 3.1.1 connection, for packets paho cannot send
// (one SUBSCRIBE with the same filter many times).
type rawClient struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func dialRaw(t *testing.T, url, clientID string) *rawClient {
	t.Helper()
	c, err := net.DialTimeout("tcp", strings.TrimPrefix(url, "tcp://"), wait)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	rc := &rawClient{t: t, c: c, r: bufio.NewReader(c)}
	rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 4,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 30, ClientIdentifier: clientID}})
	if pk := rc.next(); pk.FixedHeader.Type != packets.Connack {
		t.Fatalf("got packet type %d, want CONNACK", pk.FixedHeader.Type)
	}
	return rc
}

func (rc *rawClient) send(pk packets.Packet) {
	rc.t.Helper()
	var buf bytes.Buffer
	var err error
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectEncode(&buf)
	case packets.Subscribe:
		err = pk.SubscribeEncode(&buf)
	case packets.Publish:
		err = pk.PublishEncode(&buf)
	case packets.Puback:
		err = pk.PubackEncode(&buf)
	}
	if err == nil {
		_ = rc.c.SetWriteDeadline(time.Now().Add(wait))
		_, err = rc.c.Write(buf.Bytes())
	}
	if err != nil {
		rc.t.Fatalf("send packet type %d: %v", pk.FixedHeader.Type, err)
	}
}

// next reads the next packet, decoding (and acknowledging) PUBLISH.
func (rc *rawClient) next() packets.Packet {
	rc.t.Helper()
	_ = rc.c.SetReadDeadline(time.Now().Add(wait))
	var pk packets.Packet
	hb, err := rc.r.ReadByte()
	if err == nil {
		err = pk.FixedHeader.Decode(hb)
	}
	if err == nil {
		pk.FixedHeader.Remaining, _, err = packets.DecodeLength(rc.r)
	}
	body := make([]byte, pk.FixedHeader.Remaining)
	if err == nil {
		_, err = io.ReadFull(rc.r, body)
	}
	if err == nil && pk.FixedHeader.Type == packets.Publish {
		pk.ProtocolVersion = 4
		err = pk.PublishDecode(body)
	}
	if err != nil {
		rc.t.Fatalf("read packet: %v", err)
	}
	if pk.FixedHeader.Type == packets.Publish && pk.FixedHeader.Qos > 0 {
		rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID})
	}
	return pk
}

// TestHardening10OneCatchUpDeltaPerSubscribe: one SUBSCRIBE packet naming
// a device's delta 5,000 times (through several filter shapes) gets one
// catch-up delta, not one per filter.
func TestHardening10OneCatchUpDeltaPerSubscribe(t *testing.T) {
	url, eng := startStack(t, nil)
	id := device.ID("devA")
	if _, err := eng.Update(t.Context(), id, []byte(`{"state":{"desired":{"fw":"2"},"reported":{"fw":"1"}}}`)); err != nil {
		t.Fatal(err)
	}
	before := mustRead(t, eng, id)
	rc := dialRaw(t, url, "devA")
	sub := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, ProtocolVersion: 4, PacketID: 1}
	shapes := []string{"state/devA/update/delta", "state/devA/update/+", "state/devA/update/#", "state/devA/#"}
	for i := range 5000 {
		f := shapes[0]
		if i < len(shapes) {
			f = shapes[i]
		}
		sub.Filters = append(sub.Filters, packets.Subscription{Filter: f, Qos: 1})
	}
	rc.send(sub)
	deltas, sawSuback := 0, false
	for !sawSuback {
		pk := rc.next()
		switch pk.FixedHeader.Type {
		case packets.Suback:
			sawSuback = true
		case packets.Publish:
			deltas++
		}
	}
	// Barrier: the get's answer is queued after every catch-up delta.
	rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "state/devA/get", Payload: []byte(`{}`)})
	for {
		pk := rc.next()
		if pk.FixedHeader.Type != packets.Publish {
			continue
		}
		if pk.TopicName == shadow.Topic(id, "get/accepted") {
			break
		}
		if pk.TopicName == shadow.DeltaTopic(id) {
			deltas++
		}
	}
	if deltas != 1 {
		t.Errorf("one SUBSCRIBE with 5,000 delta filters got %d catch-up deltas, want 1", deltas)
	}
	if after := mustRead(t, eng, id); after.Version != before.Version {
		t.Errorf("subscribing changed the document: version %d → %d", before.Version, after.Version)
	}
}

// TestHardening17CatchUpOnlyToSubscriber: an integrator subscribing 50
// times to a device's delta gets its own catch-up deltas; the device gets
// none of them.
func TestHardening17CatchUpOnlyToSubscriber(t *testing.T) {
	url, eng := startStack(t, nil)
	id := device.ID("devB")
	if _, err := eng.Update(t.Context(), id, []byte(`{"state":{"desired":{"fw":"2"},"reported":{"fw":"1"}}}`)); err != nil {
		t.Fatal(err)
	}
	before := mustRead(t, eng, id)
	dev := brokertest.Connect(t, url, string(id), ordered)
	devDelta := brokertest.Subscribe(t, dev, shadow.DeltaTopic(id), 1)
	if d := decode(t, brokertest.Next(t, devDelta, wait)); d.Version != 1 || d.State["fw"] != "2" {
		t.Fatalf("device's own catch-up delta = %+v, want version 1 fw 2", d)
	}
	devGet := brokertest.Subscribe(t, dev, shadow.Topic(id, "get/accepted"), 1)

	integrator := brokertest.Connect(t, url, "integrator-1", ordered)
	got := make(chan brokertest.Message, 64)
	const subscribes = 50
	for range subscribes {
		tok := integrator.Subscribe(shadow.DeltaTopic(id), 1, func(_ mqtt.Client, m mqtt.Message) {
			got <- brokertest.Message{Topic: m.Topic(), Payload: m.Payload()}
		})
		if !tok.WaitTimeout(wait) || tok.Error() != nil {
			t.Fatalf("integrator subscribe: %v", tok.Error())
		}
	}
	for range subscribes {
		brokertest.Next(t, got, wait) // one per SUBSCRIBE, to the integrator
	}
	// Every catch-up was queued before its SUBACK; the device's get answer
	// comes after anything they could have sent it.
	brokertest.Publish(t, dev, shadow.Topic(id, "get"), 1, nil)
	brokertest.Next(t, devGet, wait)
	if n := len(devDelta); n != 0 {
		t.Errorf("device received %d deltas caused by another client's subscriptions, want 0", n)
	}
	if after := mustRead(t, eng, id); after.Version != before.Version {
		t.Errorf("subscribing changed the document: version %d → %d", before.Version, after.Version)
	}
}
