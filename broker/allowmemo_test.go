package broker_test

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/internal/brokertest"
)

// epochAuth allows every topic not in deny, counts the PUBLISH checks it
// answers, and has AllowEpoch: the broker may remember its answers while
// epoch stays.
type epochAuth struct {
	mu     sync.Mutex
	deny   map[string]bool
	epoch  atomic.Uint64
	writes atomic.Int64 // Allow calls for a PUBLISH
}

func (a *epochAuth) Authenticate(_ context.Context, c broker.Credentials) (broker.Identity, error) {
	return broker.Identity{Name: c.ClientID}, nil
}

func (a *epochAuth) Allow(_ broker.Identity, topic string, write bool) bool {
	if write {
		a.writes.Add(1)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return !a.deny[topic]
}

func (a *epochAuth) AllowEpoch() uint64 { return a.epoch.Load() }

// setDeny changes the answer for topic, moving the epoch if bump.
func (a *epochAuth) setDeny(topic string, deny, bump bool) {
	a.mu.Lock()
	a.deny[topic] = deny
	a.mu.Unlock()
	if bump {
		a.epoch.Add(1)
	}
}

// TestPublishAllowMemo: with an Authenticator that has AllowEpoch, the
// broker asks Allow once for a connection's repeated PUBLISHes to the same
// topic, again for another topic, and again after the epoch moved, so a
// changed answer (a revocation, a new policy) applies to the next PUBLISH.
// A denial is never remembered: every denied PUBLISH is asked for and
// counted. Each step's PUBACK (MQTT 5: 0x87 when denied) shows the answer.
func TestPublishAllowMemo(t *testing.T) {
	auth := &epochAuth{deny: map[string]bool{}}
	b := brokertest.New(t, broker.Config{Auth: auth})
	rc := connectV5(t, b.Addr(), "memo")
	id := uint16(0)
	steps := []struct {
		name   string
		change func()
		topic  string
		code   byte  // PUBACK reason code
		asked  int64 // Allow calls for PUBLISHes so far
		denied int64 // Stats.PublishesDenied so far
	}{
		{"first PUBLISH is asked", nil, "t/a", 0, 1, 0},
		{"same topic is remembered", nil, "t/a", 0, 1, 0},
		{"another topic is asked", nil, "t/b", 0, 2, 0},
		{"back to the first topic is asked", nil, "t/a", 0, 3, 0},
		{"a change without a new epoch is not seen", func() { auth.setDeny("t/a", true, false) }, "t/a", 0, 3, 0},
		{"a new epoch is asked and denies", func() { auth.epoch.Add(1) }, "t/a", 0x87, 4, 1},
		{"a denial is asked again", nil, "t/a", 0x87, 5, 2},
		{"allowed again with a new epoch", func() { auth.setDeny("t/a", false, true) }, "t/a", 0, 6, 2},
		{"and remembered again", nil, "t/a", 0, 6, 2},
	}
	for _, st := range steps {
		if st.change != nil {
			st.change()
		}
		id++
		rc.write(publishPacket(v5, st.topic, 1, id, []byte("x")))
		rc.expectAckOf(typePuback, id, st.code)
		if got := auth.writes.Load(); got != st.asked {
			t.Errorf("%s: Allow asked %d times for PUBLISHes, want %d", st.name, got, st.asked)
		}
		if got := b.Stats().PublishesDenied; got != st.denied {
			t.Errorf("%s: PublishesDenied = %d, want %d", st.name, got, st.denied)
		}
	}
}

// connectV5 opens an MQTT 5 connection as clientID and waits for its
// successful CONNACK.
func connectV5(t *testing.T, addr net.Addr, clientID string) *rawConn {
	t.Helper()
	rc := dialRaw(t, addr)
	rc.write(fullConnectPacket(v5, clientID, "", "", ""))
	if code := rc.expect(typeConnack).body[1]; code != 0 {
		t.Fatalf("CONNACK code %#x for %s", code, clientID)
	}
	return rc
}

// TestPublishAllowMemoTakenOver: the memo belongs to the connection, not
// to the client ID: a connection taking over the client ID of one that had
// remembered a topic is asked for its first PUBLISH to that topic.
func TestPublishAllowMemoTakenOver(t *testing.T) {
	auth := &epochAuth{deny: map[string]bool{}}
	b := brokertest.New(t, broker.Config{Auth: auth})
	rc := connectV5(t, b.Addr(), "twin")
	for id := uint16(1); id <= 2; id++ {
		rc.write(publishPacket(v5, "t/a", 1, id, []byte("x")))
		rc.expectAckOf(typePuback, id, 0)
	}
	if got := auth.writes.Load(); got != 1 {
		t.Fatalf("Allow asked %d times, want 1", got)
	}
	rc2 := connectV5(t, b.Addr(), "twin")
	rc2.write(publishPacket(v5, "t/a", 1, 1, []byte("x")))
	rc2.expectAckOf(typePuback, 1, 0)
	if got := auth.writes.Load(); got != 2 {
		t.Errorf("Allow asked %d times after the new connection's PUBLISH, want 2 (a new connection has no memo)", got)
	}
}
