package broker_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/internal/brokertest"
)

// oneName authenticates every client as the same identity, like many
// operator CLIs sharing one token.
type oneName struct{}

func (oneName) Authenticate(context.Context, broker.Credentials) (broker.Identity, error) {
	return broker.Identity{Name: "ops"}, nil
}
func (oneName) Allow(broker.Identity, string, bool) bool { return true }

func TestMaxConnsPerIdentity(t *testing.T) {
	b := brokertest.New(t, broker.Config{Auth: oneName{}, MaxConnsPerIdentity: 2})
	url := brokertest.URL(b)
	c1 := brokertest.Connect(t, url, "cli-1")
	brokertest.Connect(t, url, "cli-2")
	before := b.Stats().ConnectsRejected
	if c, err := brokertest.TryConnect(t, url, "cli-3"); err == nil {
		c.Disconnect(0)
		t.Fatal("third connection of one identity accepted, want refused (max 2)")
	}
	// paho retries a refused MQTT 3.1.1 CONNECT as MQTT 3.1, so one or two.
	if got := b.Stats().ConnectsRejected; got <= before {
		t.Errorf("ConnectsRejected = %d, want more than %d", got, before)
	}
	if st := b.Stats(); st.IdentityConnsRefused != st.ConnectsRejected-before {
		t.Errorf("IdentityConnsRefused = %d, want %d (every refusal was for the cap)", st.IdentityConnsRefused, st.ConnectsRejected-before)
	}
	// An MQTT 5 client learns why: quota exceeded, not bad credentials.
	rc := dialRaw(t, b.Addr())
	if code := rc.connect(v5, "cli-v5", true); code != 0x97 {
		t.Errorf("MQTT 5 CONNACK over the cap: got %#x, want 0x97 quota exceeded", code)
	}
	// Closing one connection frees its place. The count drops when the
	// connection's goroutine ends, which no callback reports: poll, bounded.
	c1.Disconnect(100)
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := brokertest.TryConnect(t, url, "cli-3")
		if err == nil {
			c.Disconnect(0)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("connection still refused 5s after another closed: %v", err)
		}
		time.Sleep(20 * time.Millisecond) // polling: no event for the count dropping
	}
}

func TestMaxTopicLength(t *testing.T) {
	b := brokertest.New(t, broker.Config{MaxTopicLength: 32})
	c := brokertest.Connect(t, brokertest.URL(b), "dev-1")
	long := "state/dev-1/" + strings.Repeat("x", 40)
	tok := c.Subscribe(long, 1, nil)
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	st := tok.(interface{ Result() map[string]byte }).Result()
	if st[long] != 0x80 {
		t.Errorf("SUBACK for a %d-byte filter = %#x, want failure 0x80", len(long), st[long])
	}
	ok := brokertest.Subscribe(t, c, "state/dev-1/short", 1)
	before := b.Stats().PublishesDenied
	brokertest.Publish(t, c, long, 0, []byte("x"))
	brokertest.Publish(t, c, "state/dev-1/short", 1, []byte("y"))
	if m := brokertest.Next(t, ok, 5*time.Second); string(m.Payload) != "y" {
		t.Fatalf("got %s, want y", m)
	}
	if got := b.Stats().PublishesDenied; got != before+1 {
		t.Errorf("PublishesDenied = %d, want %d (the long topic)", got, before+1)
	}
}
