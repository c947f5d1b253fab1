package broker_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/internal/brokertest"
)

// fakeRelay records what the broker tells its Relay.
type fakeRelay struct {
	mu        sync.Mutex
	interest  map[string]bool
	events    []string // "+filter" / "-filter", in order
	published chan broker.Message
	sessions  map[string]bool
	shared    bool
}

func newFakeRelay() *fakeRelay {
	return &fakeRelay{interest: map[string]bool{}, sessions: map[string]bool{}, published: make(chan broker.Message, 64)}
}

func (r *fakeRelay) Published(m broker.Message) bool {
	select {
	case r.published <- m:
	default:
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.shared
}

func (r *fakeRelay) Interest(filter string, on bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if on {
		r.interest[filter] = true
		r.events = append(r.events, "+"+filter)
	} else {
		delete(r.interest, filter)
		r.events = append(r.events, "-"+filter)
	}
}

func (r *fakeRelay) Connecting(context.Context, string) *broker.SessionState { return nil }

func (r *fakeRelay) Session(clientID string, present bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sessions[clientID] = present
}

// filters returns the filters with interest, sorted.
func (r *fakeRelay) filters() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for f := range r.interest {
		out = append(out, f)
	}
	slices.Sort(out)
	return out
}

func (r *fakeRelay) session(clientID string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.sessions[clientID]
}

// TestMochiPatchFilterInterest: the Relay learns each filter's first and
// last client subscription, from SUBSCRIBE, UNSUBSCRIBE and a clean
// session's end, and at SetRelay those that exist; in-process
// subscriptions are not interest. Unpatched mochi v2.7.9 has no way to
// observe the topic index (third_party/mochi/PATCHES.md, patch 11).
func TestMochiPatchFilterInterest(t *testing.T) {
	s := brokertest.New(t, broker.Config{})
	early := brokertest.Connect(t, brokertest.URL(s), "early")
	brokertest.Subscribe(t, early, "early/#", 0)
	if err := s.Subscribe("inproc/+", func(string, string, []byte) {}); err != nil {
		t.Fatal(err)
	}
	r := newFakeRelay()
	if err := s.SetRelay(r); err != nil {
		t.Fatal(err)
	}
	if got, want := r.filters(), []string{"early/#"}; !slices.Equal(got, want) {
		t.Fatalf("interest at SetRelay: got %q, want %q", got, want)
	}

	c1 := brokertest.Connect(t, brokertest.URL(s), "c1")
	c2 := brokertest.Connect(t, brokertest.URL(s), "c2")
	brokertest.Subscribe(t, c1, "a/+", 0)
	brokertest.Subscribe(t, c2, "a/+", 0)
	brokertest.Subscribe(t, c2, "$share/g/jobs/#", 0)
	if got, want := r.filters(), []string{"$SHARE/g/jobs/#", "a/+", "early/#"}; !slices.Equal(got, want) {
		t.Fatalf("interest after SUBSCRIBEs: got %q, want %q", got, want)
	}
	if tok := c1.Unsubscribe("a/+"); !tok.WaitTimeout(wait) || tok.Error() != nil {
		t.Fatal("unsubscribe")
	}
	if got, want := r.filters(), []string{"$SHARE/g/jobs/#", "a/+", "early/#"}; !slices.Equal(got, want) {
		t.Fatalf("interest after one of two UNSUBSCRIBEs: got %q, want %q", got, want)
	}
	c2.Disconnect(100) // clean session: both filters go
	if !eventually(func() bool { return slices.Equal(r.filters(), []string{"early/#"}) }) {
		t.Fatalf("interest after the last subscriber's clean disconnect: got %q, want [early/#]", r.filters())
	}
	r.mu.Lock()
	events := slices.Clone(r.events)
	r.mu.Unlock()
	if n := len(events); n != 5 { // +early/# +a/+ +$SHARE… -a/+ -$SHARE… (the last two in either order)
		t.Errorf("interest events: got %q, want 5 (first and last subscriber of each filter only)", events)
	}
}

// TestMochiPatchSelectEveryMessage: a message the Relay delivers reaches
// the clients subscribed to its topic but not the in-process subscribers
// (they serve this node's clients), also when the topic has no shared
// subscription. Unpatched mochi v2.7.9 asks the hooks to select
// subscribers only for messages with shared subscribers
// (third_party/mochi/PATCHES.md, patch 12), so the in-process handler
// received it.
func TestMochiPatchSelectEveryMessage(t *testing.T) {
	s := brokertest.New(t, broker.Config{})
	r := newFakeRelay()
	if err := s.SetRelay(r); err != nil {
		t.Fatal(err)
	}
	handled := make(chan string, 8)
	if err := s.Subscribe("cmd/+", func(_, topic string, _ []byte) { handled <- topic }); err != nil {
		t.Fatal(err)
	}
	c := brokertest.Connect(t, brokertest.URL(s), "c")
	msgs := brokertest.Subscribe(t, c, "cmd/+", 1)

	if err := s.Deliver(broker.Message{Topic: "cmd/remote", Payload: []byte("r"), QoS: 1}, ""); err != nil {
		t.Fatal(err)
	}
	checkMessage(t, brokertest.Next(t, msgs, wait), "cmd/remote", []byte("r"), 1, false)
	select {
	case m := <-r.published:
		t.Errorf("a delivered message went back to the Relay: %+v", m)
	default:
	}

	// A local publish reaches both, and the Relay.
	pub := brokertest.Connect(t, brokertest.URL(s), "pub")
	brokertest.Publish(t, pub, "cmd/local", 1, []byte("l"))
	checkMessage(t, brokertest.Next(t, msgs, wait), "cmd/local", []byte("l"), 1, false)
	if topic := recv(t, handled, "handled"); topic != "cmd/local" {
		t.Errorf("in-process handler got %q, want only cmd/local (never cmd/remote)", topic)
	}
	if m := recv(t, r.published, "published"); m.Topic != "cmd/local" || m.QoS != 1 || m.Origin != "pub" {
		t.Errorf("Relay.Published: got %+v, want cmd/local QoS 1 from pub", m)
	}
}

// TestRelayDeliverShared: with the Relay serving shared subscriptions, a
// local publish skips the local shared subscription (the Relay delivers
// it through NATS), and Deliver with the filter reaches one member only.
func TestRelayDeliverShared(t *testing.T) {
	s := brokertest.New(t, broker.Config{})
	r := newFakeRelay()
	r.shared = true
	if err := s.SetRelay(r); err != nil {
		t.Fatal(err)
	}
	m1 := brokertest.Subscribe(t, brokertest.Connect(t, brokertest.URL(s), "m1"), "$share/g/q/+", 1)
	m2 := brokertest.Subscribe(t, brokertest.Connect(t, brokertest.URL(s), "m2"), "$share/g/q/+", 1)
	plain := brokertest.Subscribe(t, brokertest.Connect(t, brokertest.URL(s), "plain"), "q/+", 1)

	pub := brokertest.Connect(t, brokertest.URL(s), "pub")
	brokertest.Publish(t, pub, "q/1", 1, []byte("local"))
	checkMessage(t, brokertest.Next(t, plain, wait), "q/1", []byte("local"), 1, false)
	if err := s.Deliver(broker.Message{Topic: "q/2", Payload: []byte("plain"), QoS: 1}, ""); err != nil {
		t.Fatal(err)
	}
	checkMessage(t, brokertest.Next(t, plain, wait), "q/2", []byte("plain"), 1, false)
	if err := s.Deliver(broker.Message{Topic: "q/3", Payload: []byte("shared"), QoS: 1}, "$SHARE/g/q/+"); err != nil {
		t.Fatal(err)
	}
	var got brokertest.Message
	select {
	case got = <-m1:
	case got = <-m2:
	case <-time.After(wait):
		t.Fatal("shared delivery reached no member")
	}
	checkMessage(t, got, "q/3", []byte("shared"), 1, false)
	// Nothing else: not "local" nor "plain" to the group, not "shared" to
	// the plain subscriber or the other member. A marker through the plain
	// path comes after anything the publishes above could have queued.
	brokertest.Publish(t, pub, "q/4", 1, []byte("marker"))
	checkMessage(t, brokertest.Next(t, plain, wait), "q/4", []byte("marker"), 1, false)
	for name, ch := range map[string]<-chan brokertest.Message{"m1": m1, "m2": m2} {
		select {
		case m := <-ch:
			t.Errorf("member %s got %s too", name, m)
		default:
		}
	}
}

// TestRelayRelease: Release ends a connected client's session with
// ErrTakenOver and drops the session, which the Relay learns.
func TestRelayRelease(t *testing.T) {
	var cfg broker.Config
	ev := withEvents(&cfg)
	s := brokertest.New(t, cfg)
	r := newFakeRelay()
	if err := s.SetRelay(r); err != nil {
		t.Fatal(err)
	}
	c := brokertest.Connect(t, brokertest.URL(s), "dev", func(o *mqtt.ClientOptions) { o.SetCleanSession(false) })
	brokertest.Subscribe(t, c, "dev/cmd", 1)
	recv(t, ev.connects, "connect")
	if !r.session("dev") {
		t.Fatal("Relay.Session not told of dev's session")
	}
	if !s.Release(t.Context(), "dev") {
		t.Fatal("Release(dev) = false, want true")
	}
	if err := ev.disconnectOf(t, "dev"); !errors.Is(err, broker.ErrTakenOver) {
		t.Errorf("OnDisconnect after Release: got %v, want ErrTakenOver", err)
	}
	if r.session("dev") || slices.Contains(r.filters(), "dev/cmd") {
		t.Errorf("after Release: session %t, interest %q; want neither", r.session("dev"), r.filters())
	}
	if !s.HasSubscribers("dev/cmd") || s.HasSubscribers("$SYS/broker/uptime") {
		t.Error("with a Relay, HasSubscribers must be true for every topic but $SYS: other nodes' clients may subscribe")
	}
	if err := s.SetRelay(nil); err != nil {
		t.Fatal(err)
	}
	if s.HasSubscribers("dev/cmd") {
		t.Error("the released persistent session's subscription remains")
	}
	if s.Release(t.Context(), "dev") {
		t.Error("Release of a session already released = true, want false")
	}
}
