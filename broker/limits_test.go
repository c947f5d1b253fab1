package broker_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"testing"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/internal/brokertest"
)

// userAuth authenticates every client as the identity named by its user
// name (a service identity: no device) and allows everything.
type userAuth struct{}

func (userAuth) Authenticate(_ context.Context, c broker.Credentials) (broker.Identity, error) {
	return broker.Identity{Name: c.Username}, nil
}

func (userAuth) Allow(broker.Identity, string, bool) bool { return true }

// sessionConnect encodes a CONNECT with a user name; persistent means
// clean session off (MQTT 3.1.1) or a session expiry of an hour with
// clean start (MQTT 5).
func sessionConnect(version byte, clientID, username string, persistent bool) []byte {
	flags := byte(0x80) // user name
	if !persistent || version == v5 {
		flags |= 0x02
	}
	body := appendString(nil, "MQTT")
	body = append(body, version, flags, 0, 30)
	if version == v5 {
		if persistent {
			body = append(body, 5, 0x11) // properties: session expiry interval
			body = binary.BigEndian.AppendUint32(body, 3600)
		} else {
			body = append(body, 0)
		}
	}
	body = appendString(body, clientID)
	body = appendString(body, username)
	return frame(typeConnect<<4, body)
}

// retainedPublish encodes a retained PUBLISH.
func retainedPublish(version byte, topic string, qos byte, id uint16, payload []byte) []byte {
	pk := publishPacket(version, topic, qos, id, payload)
	pk[0] |= 1
	return pk
}

// ackCode returns the reason code of a PUBACK or PUBREC (0 when absent).
func ackCode(p packet) byte {
	if len(p.body) > 2 {
		return p.body[2]
	}
	return 0
}

// TestRetainedLimit: beyond MaxRetained or MaxRetainedBytes a new
// retained topic is refused (MQTT 5 QoS 1 and 2: 0x97; otherwise
// delivered without being retained), while replacing and clearing
// always work and other clients' messages flow.
func TestRetainedLimit(t *testing.T) {
	tests := []struct {
		name    string
		cfg     broker.Config
		fill    []string // payloads of the retained topics r/0, r/1, … accepted first
		payload string   // of the refused new topic
		later   string   // of the same topic, accepted once there is room
	}{
		{"count", broker.Config{MaxRetained: 2}, []string{"a", "b"}, "c", "d"},
		{"bytes", broker.Config{MaxRetainedBytes: 10}, []string{"123456"}, "12345", "abcde"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := brokertest.New(t, tc.cfg)
			// The watcher subscribes to topics nothing is retained on when it
			// does (mochi sends retained messages after SUBACK, so a message
			// retained right then could arrive twice).
			watcher := brokertest.Connect(t, brokertest.URL(b), "watcher")
			live3 := brokertest.Subscribe(t, watcher, "r/new3", 1)
			live := brokertest.Subscribe(t, watcher, "r/new", 1)
			rc := dialRaw(t, b.Addr())
			if code := rc.connect(v5, "v5pub", true); code != 0 {
				t.Fatalf("CONNACK %#x", code)
			}
			id := uint16(0)
			publish := func(topic, payload string, qos byte) byte {
				t.Helper()
				id++
				rc.write(retainedPublish(v5, topic, qos, id, []byte(payload)))
				if qos == 2 {
					return ackCode(rc.expect(typePubrec))
				}
				return ackCode(rc.expect(typePuback))
			}
			for i, p := range tc.fill {
				if code := publish("r/"+string(rune('0'+i)), p, 1); code != 0 {
					t.Fatalf("retained message %d within the limit: PUBACK %#x", i, code)
				}
			}
			for _, qos := range []byte{1, 2} {
				if code := publish("r/new", tc.payload, qos); code != 0x97 {
					t.Errorf("MQTT 5 QoS %d retained PUBLISH on a new topic over the limit: got code %#x, want 0x97", qos, code)
				}
			}
			// MQTT 3.1.1: acknowledged and delivered, not retained.
			v3 := brokertest.Connect(t, brokertest.URL(b), "v3pub")
			brokertest.PublishRetained(t, v3, "r/new3", 1, []byte(tc.payload))
			checkMessage(t, brokertest.Next(t, live3, brokertest.Timeout), "r/new3", []byte(tc.payload), 1, false)
			if st := b.Stats(); st.Retained != int64(len(tc.fill)) || st.RetainedRefused != 3 {
				t.Errorf("Stats: got %d retained, %d refused; want %d, 3", st.Retained, st.RetainedRefused, len(tc.fill))
			}
			// Replacing (also growing) and clearing work; then there is room.
			if code := publish("r/0", "replaced!", 1); code != 0 {
				t.Errorf("replacing a retained message: PUBACK %#x, want 0", code)
			}
			if code := publish("r/0", "", 1); code != 0 {
				t.Errorf("clearing a retained message: PUBACK %#x, want 0", code)
			}
			if code := publish("r/new", tc.later, 1); code != 0 {
				t.Errorf("a new retained topic after clearing one: PUBACK %#x, want 0", code)
			}
			// The first message on r/new: the refused one was not delivered.
			checkMessage(t, brokertest.Next(t, live, brokertest.Timeout), "r/new", []byte(tc.later), 1, false)
			late := brokertest.Connect(t, brokertest.URL(b), "late")
			m := brokertest.Next(t, brokertest.Subscribe(t, late, "r/new", 1), brokertest.Timeout)
			checkMessage(t, m, "r/new", []byte(tc.later), 1, true)
		})
	}
}

// TestQueuedBytesLimit: an offline persistent session holds at most
// MaxQueuedBytes; further messages are dropped and counted, and the
// publisher and other subscribers are unaffected.
func TestQueuedBytesLimit(t *testing.T) {
	b := brokertest.New(t, broker.Config{MaxQueuedBytes: 100})
	dev, _ := persistentPaho(t, brokertest.URL(b), "slow")
	brokertest.Subscribe(t, dev, "qb/#", 1)
	dev.Disconnect(100)
	other := brokertest.Connect(t, brokertest.URL(b), "other")
	live := brokertest.Subscribe(t, other, "qb/#", 1)
	pub := brokertest.Connect(t, brokertest.URL(b), "pub")
	payload := bytes.Repeat([]byte("x"), 40)
	for range 5 {
		brokertest.Publish(t, pub, "qb/1", 1, payload)
		brokertest.Next(t, live, brokertest.Timeout)
	}
	// 0, 40 and 80 bytes held leave room; 120 does not.
	if st := b.Stats(); st.QueuedBytes != 120 || st.QueueBytesDropped != 2 {
		t.Errorf("Stats: got %d queued bytes, %d dropped; want 120, 2", st.QueuedBytes, st.QueueBytesDropped)
	}
	_, got := persistentPaho(t, brokertest.URL(b), "slow")
	for range 3 {
		recv(t, got, "queued message")
	}
	// Acknowledged: there is room again.
	if !eventually(func() bool { return b.Stats().QueuedBytes == 0 }) {
		t.Fatalf("Stats.QueuedBytes after acknowledging: got %d, want 0", b.Stats().QueuedBytes)
	}
	brokertest.Publish(t, pub, "qb/2", 1, payload)
	checkMessage(t, recv(t, got, "message after acknowledging"), "qb/2", payload, 1, false)
}

// TestSessionsPerIdentity: an identity has at most MaxSessionsPerIdentity
// persistent sessions; one more is refused at CONNECT (MQTT 3.1.1 code 3,
// MQTT 5 0x97), while clean sessions, its own sessions and other
// identities are not affected.
func TestSessionsPerIdentity(t *testing.T) {
	b := brokertest.New(t, broker.Config{Auth: userAuth{}, MaxSessionsPerIdentity: 2})
	connect := func(version byte, clientID, user string, persistent bool) byte {
		t.Helper()
		rc := dialRaw(t, b.Addr())
		rc.write(sessionConnect(version, clientID, user, persistent))
		ack := rc.expect(typeConnack)
		if ack.body[1] == 0 {
			rc.write([]byte{typeDisconn << 4, 0})
			rc.expectClosed()
		}
		return ack.body[1]
	}
	steps := []struct {
		version    byte
		client     string
		user       string
		persistent bool
		want       byte
	}{
		{v311, "c1", "team", true, 0},
		{v5, "c2", "team", true, 0},
		{v311, "c3", "team", true, 3},  // server unavailable
		{v5, "c3", "team", true, 0x97}, // quota exceeded
		{v311, "c3", "team", false, 0}, // a clean session
		{v311, "c1", "team", true, 0},  // its own session again
		{v5, "c1", "team", true, 0},    // replaced by a new one (clean start)
		{v311, "c3", "other", true, 0}, // another identity
		{v311, "c1", "team", false, 0}, // ends c1's persistent session
		{v311, "c4", "team", true, 0},  // room again
		{v311, "c3", "team", true, 3},  // c3 belongs to other: a new one for team
	}
	for i, s := range steps {
		if got := connect(s.version, s.client, s.user, s.persistent); got != s.want {
			t.Errorf("step %d: CONNECT v%d %s as %s persistent %t: got CONNACK %#x, want %#x", i, s.version, s.client, s.user, s.persistent, got, s.want)
		}
	}
	if st := b.Stats(); st.SessionsRefused != 3 || st.PersistentSessions != 3 {
		t.Errorf("Stats: got %d refused, %d persistent sessions; want 3, 3", st.SessionsRefused, st.PersistentSessions)
	}
}

// TestRetainedLimitWill: a retained will on a new topic beyond
// MaxRetained is published without being retained, and does not hold a
// place in the limit.
func TestRetainedLimitWill(t *testing.T) {
	b := brokertest.New(t, broker.Config{MaxRetained: 1})
	watcher := brokertest.Connect(t, brokertest.URL(b), "watcher")
	wills := brokertest.Subscribe(t, watcher, "w/#", 1)
	// Without it, willer1's retained will could land between the SUBACK
	// and the retained lookup of w/#, and reach the watcher twice.
	brokertest.Settle(t, watcher)
	for _, id := range []string{"willer1", "willer2"} {
		rc := dialRaw(t, b.Addr())
		pk := fullConnectPacket(v311, id, "w/"+id, "", "")
		pk[9] |= 0x20 // will retain (the flags byte follows "MQTT" and the version)
		rc.write(pk)
		rc.expect(typeConnack)
		rc.c.Close() // no DISCONNECT: the will is published
		m := brokertest.Next(t, wills, brokertest.Timeout)
		checkMessage(t, m, "w/"+id, []byte("gone"), 0, false)
	}
	// The first will took the only place; the second was not retained.
	if !eventually(func() bool { return b.Stats().Retained == 1 }) {
		t.Errorf("Stats.Retained: got %d, want 1", b.Stats().Retained)
	}
	if st := b.Stats(); st.RetainedRefused != 1 {
		t.Errorf("Stats.RetainedRefused: got %d, want 1", st.RetainedRefused)
	}
	late := brokertest.Connect(t, brokertest.URL(b), "late")
	checkMessage(t, brokertest.Next(t, brokertest.Subscribe(t, late, "w/#", 1), brokertest.Timeout), "w/willer1", []byte("gone"), 0, true)
}

// TestRetainedLimitDelayedWill: a delayed retained will that is cancelled
// (its client reconnects in time) leaves no place taken in MaxRetained.
func TestRetainedLimitDelayedWill(t *testing.T) {
	b := brokertest.New(t, broker.Config{MaxRetained: 1})
	body := appendString(nil, "MQTT")
	body = append(body, v5, 0x02|0x04|0x20, 0, 30, 0) // clean start, will, will retain; no properties
	body = appendString(body, "delayed")
	body = append(body, 5, 0x18, 0, 0, 0, 60) // will properties: delay interval 60 s
	body = appendString(body, "w/delayed")
	body = appendString(body, "gone")
	rc := dialRaw(t, b.Addr())
	rc.write(frame(typeConnect<<4, body))
	rc.expect(typeConnack)
	rc.c.Close() // the will waits 60 s
	again := dialRaw(t, b.Addr())
	if code := again.connect(v5, "delayed", true); code != 0 { // cancels the will
		t.Fatalf("CONNACK %#x", code)
	}
	pub := brokertest.Connect(t, brokertest.URL(b), "pub")
	brokertest.PublishRetained(t, pub, "r/new", 1, []byte("kept"))
	if st := b.Stats(); st.Retained != 1 || st.RetainedRefused != 0 {
		t.Errorf("Stats after a cancelled will: got %d retained, %d refused; want 1, 0", st.Retained, st.RetainedRefused)
	}
}
