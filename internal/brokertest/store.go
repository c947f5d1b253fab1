package brokertest

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/device"
)

// StoreOpener opens the broker.Store kept in dir (empty at first) and
// returns it with the function that closes it. StoreContract opens a dir
// again after closing it, to check that what Apply acknowledged survives.
type StoreOpener func(tb testing.TB, dir string) (s broker.Store, close func())

// StoreContract runs the contract of broker.Store against the stores that
// open makes: the same table of cases for every adapter (bbolt now,
// JetStream in cluster mode). Each case applies its calls, reopens the
// store, and compares Load's result with the state the case expects.
func StoreContract(t *testing.T, open StoreOpener) {
	t.Helper()
	at := time.Unix(1_700_000_000, 0)
	fmt8 := byte(1)
	full := broker.Message{
		Topic: "devices/d1/telemetry", Payload: []byte("21.5"), QoS: 1, Retain: true, Origin: "d1",
		Created: at, Expiry: at.Add(time.Hour),
		Properties: broker.MessageProperties{
			PayloadFormat: fmt8, PayloadFormatSet: true, ContentType: "text/plain", ResponseTopic: "r/1",
			CorrelationData: []byte{0, 1, 2}, User: []broker.UserProperty{{Key: "k", Value: "v"}, {Key: "k", Value: "w"}},
			MessageExpiry: 3600, MessageExpirySet: true, SubscriptionIDs: []int{3, 7},
		},
	}
	plain := broker.Message{Topic: "a/b", Payload: []byte("x"), QoS: 1, Origin: "p", Created: at}
	sess := broker.Session{
		ClientID: "integrator-1", ProtocolVersion: 5, Expiry: 90 * time.Second, ExpirySet: true,
		Identity:     broker.Identity{ClientID: "integrator-1", Name: "team-a", Credential: "gen-7"},
		Disconnected: at,
	}
	dev := broker.Session{ClientID: "d1", ProtocolVersion: 4,
		Identity: broker.Identity{ClientID: "d1", Name: "d1", Device: device.ID("d1")}}
	sub := broker.Subscription{Filter: "devices/+/telemetry", QoS: 2, NoLocal: true, RetainAsPublished: true, RetainHandling: 2, Identifier: 7}
	shared := broker.Subscription{Filter: "$share/g/devices/#", QoS: 1}
	q := func(seq uint64, pid uint16, released bool, m broker.Message) broker.QueuedMessage {
		return broker.QueuedMessage{Seq: seq, PacketID: pid, Released: released, Message: m}
	}
	put := func(m broker.Message) broker.StoreOp { return broker.StoreOp{Kind: broker.OpPutRetained, Message: m} }
	putSess := func(s broker.Session) broker.StoreOp {
		return broker.StoreOp{Kind: broker.OpPutSession, ClientID: s.ClientID, Session: s}
	}
	putSub := func(id string, s broker.Subscription) broker.StoreOp {
		return broker.StoreOp{Kind: broker.OpPutSubscription, ClientID: id, Subscription: s}
	}
	putQ := func(id string, m broker.QueuedMessage) broker.StoreOp {
		return broker.StoreOp{Kind: broker.OpPutQueued, ClientID: id, Queued: m}
	}
	setQ := func(id string, seq uint64, pid uint16, released bool) broker.StoreOp {
		return broker.StoreOp{Kind: broker.OpSetQueuedState, ClientID: id, Queued: broker.QueuedMessage{Seq: seq, PacketID: pid, Released: released}}
	}
	delQ := func(id string, seq uint64) broker.StoreOp {
		return broker.StoreOp{Kind: broker.OpDeleteQueued, ClientID: id, Queued: broker.QueuedMessage{Seq: seq}}
	}

	tests := []struct {
		name  string
		calls [][]broker.StoreOp // one Apply each
		want  broker.StoreState
	}{
		{name: "empty"},
		{
			name:  "retained message with every property",
			calls: [][]broker.StoreOp{{put(full)}},
			want:  broker.StoreState{Retained: []broker.Message{full}},
		},
		{
			name: "retained replaced and cleared, in order within one call",
			calls: [][]broker.StoreOp{
				{put(plain), put(full)},
				{put(withPayload(plain, "y")), {Kind: broker.OpDeleteRetained, Topic: full.Topic}},
			},
			want: broker.StoreState{Retained: []broker.Message{withPayload(plain, "y")}},
		},
		{
			name: "deleting what is not there",
			calls: [][]broker.StoreOp{{
				{Kind: broker.OpDeleteRetained, Topic: "none"}, {Kind: broker.OpDeleteSession, ClientID: "none"},
				{Kind: broker.OpDeleteSubscription, ClientID: "none", Topic: "a"}, delQ("none", 1), setQ("none", 1, 1, false),
			}},
		},
		{
			name: "session with subscriptions and queued messages in sequence order",
			calls: [][]broker.StoreOp{
				{putSess(sess), putSub(sess.ClientID, sub), putSub(sess.ClientID, shared),
					putQ(sess.ClientID, q(9, 0, false, plain)), putQ(sess.ClientID, q(3, 12, false, full))},
				{putSess(dev), putQ(dev.ClientID, q(5, 1, true, plain))},
			},
			want: broker.StoreState{Sessions: []broker.SessionState{
				{Session: dev, Queued: []broker.QueuedMessage{q(5, 1, true, plain)}},
				{Session: sess, Subscriptions: []broker.Subscription{shared, sub},
					Queued: []broker.QueuedMessage{q(3, 12, false, full), q(9, 0, false, plain)}},
			}},
		},
		{
			name: "queued state set, released, reset and deleted",
			calls: [][]broker.StoreOp{
				{putSess(dev), putQ("d1", q(1, 0, false, plain)), putQ("d1", q(2, 0, false, plain)), putQ("d1", q(3, 4, false, plain))},
				{setQ("d1", 1, 9, false), setQ("d1", 2, 10, true), setQ("d1", 3, 0, false), setQ("d1", 77, 1, false)},
				{delQ("d1", 2)},
			},
			want: broker.StoreState{Sessions: []broker.SessionState{
				{Session: dev, Queued: []broker.QueuedMessage{q(1, 9, false, plain), q(3, 0, false, plain)}},
			}},
		},
		{
			name: "putting a session keeps its parts; deleting it removes them",
			calls: [][]broker.StoreOp{
				{putSess(sess), putSub(sess.ClientID, sub), putQ(sess.ClientID, q(1, 1, false, plain)), putSess(dev), putSub("d1", sub)},
				{putSess(withDisconnected(sess, time.Time{}))},
				{{Kind: broker.OpDeleteSession, ClientID: "d1"}},
			},
			want: broker.StoreState{Sessions: []broker.SessionState{
				{Session: withDisconnected(sess, time.Time{}), Subscriptions: []broker.Subscription{sub},
					Queued: []broker.QueuedMessage{q(1, 1, false, plain)}},
			}},
		},
		{
			name: "a session deleted and created again in one call starts empty",
			calls: [][]broker.StoreOp{
				{putSess(dev), putSub("d1", sub), putQ("d1", q(1, 1, false, plain))},
				{{Kind: broker.OpDeleteSession, ClientID: "d1"}, putSess(dev), putSub("d1", shared)},
			},
			want: broker.StoreState{Sessions: []broker.SessionState{{Session: dev, Subscriptions: []broker.Subscription{shared}}}},
		},
		{
			name: "subscription replaced and deleted",
			calls: [][]broker.StoreOp{
				{putSess(dev), putSub("d1", sub), putSub("d1", shared)},
				{putSub("d1", broker.Subscription{Filter: sub.Filter, QoS: 0}),
					{Kind: broker.OpDeleteSubscription, ClientID: "d1", Topic: shared.Filter}},
			},
			want: broker.StoreState{Sessions: []broker.SessionState{
				{Session: dev, Subscriptions: []broker.Subscription{{Filter: sub.Filter}}},
			}},
		},
		{
			name: "reset deletes everything before it",
			calls: [][]broker.StoreOp{
				{put(full), putSess(sess), putSub(sess.ClientID, sub)},
				{{Kind: broker.OpReset}, put(plain), putSess(dev)},
			},
			want: broker.StoreState{Retained: []broker.Message{plain}, Sessions: []broker.SessionState{{Session: dev}}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			s, closeStore := open(t, dir)
			for i, ops := range tc.calls {
				if err := s.Apply(t.Context(), ops); err != nil {
					t.Fatalf("Apply #%d: %v", i, err)
				}
			}
			closeStore()
			s, closeStore = open(t, dir)
			defer closeStore()
			got, err := s.Load(t.Context())
			if err != nil {
				t.Fatalf("Load after reopening: %v", err)
			}
			if g, w := describeState(got), describeState(tc.want); g != w {
				t.Errorf("Load after reopening:\ngot  %s\nwant %s", g, w)
			}
		})
	}
	t.Run("canceled context", func(t *testing.T) {
		s, closeStore := open(t, t.TempDir())
		defer closeStore()
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		if err := s.Apply(ctx, []broker.StoreOp{put(plain)}); err == nil {
			t.Error("Apply with a canceled context: got nil error")
		}
		if got, err := s.Load(t.Context()); err != nil || len(got.Retained) != 0 {
			t.Errorf("Load after a canceled Apply: got %s, %v; want nothing stored", describeState(got), err)
		}
	})
}

func withPayload(m broker.Message, p string) broker.Message {
	m.Payload = []byte(p)
	return m
}

func withDisconnected(s broker.Session, at time.Time) broker.Session {
	s.Disconnected = at
	return s
}

// describeState renders a StoreState in a canonical order, times in UTC,
// so that two states compare as strings and a failure shows the
// difference.
func describeState(st broker.StoreState) string {
	var b strings.Builder
	ret := slices.Clone(st.Retained)
	slices.SortFunc(ret, func(a, c broker.Message) int { return strings.Compare(a.Topic, c.Topic) })
	for _, m := range ret {
		fmt.Fprintf(&b, "\n  retained %s", describeMessage(m))
	}
	sess := slices.Clone(st.Sessions)
	slices.SortFunc(sess, func(a, c broker.SessionState) int { return strings.Compare(a.ClientID, c.ClientID) })
	for _, s := range sess {
		id := s.Identity
		fmt.Fprintf(&b, "\n  session %s v%d identity{%s %s %s %s} expiry %v/%t disconnected %s", s.ClientID, s.ProtocolVersion,
			id.ClientID, id.Name, id.Device, id.Credential, s.Expiry, s.ExpirySet, utc(s.Disconnected))
		subs := slices.Clone(s.Subscriptions)
		slices.SortFunc(subs, func(a, c broker.Subscription) int { return strings.Compare(a.Filter, c.Filter) })
		for _, sub := range subs {
			fmt.Fprintf(&b, "\n    sub %+v", sub)
		}
		for _, q := range s.Queued { // order matters
			fmt.Fprintf(&b, "\n    queued %d pid %d released %t %s", q.Seq, q.PacketID, q.Released, describeMessage(q.Message))
		}
	}
	return b.String()
}

func describeMessage(m broker.Message) string {
	p := m.Properties
	if reflect.DeepEqual(p, broker.MessageProperties{}) {
		p = broker.MessageProperties{}
	}
	return fmt.Sprintf("{%s %q qos %d retain %t origin %s created %s expiry %s props %+v}",
		m.Topic, m.Payload, m.QoS, m.Retain, m.Origin, utc(m.Created), utc(m.Expiry), p)
}

func utc(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}
