package broker_test

import (
	"errors"
	"testing"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/internal/brokertest"
)

// TestHardening04RequestsNeverRetained is issue 10's case 4: a retained
// PUBLISH (or will) on a request topic was stored and replayed to later
// subscribers, so a request could be applied again. With RequestFilters
// the retain flag of a request is dropped: it is delivered and handled,
// never stored. Before the fix the late subscriber got the requests.
func TestHardening04RequestsNeverRetained(t *testing.T) {
	b := brokertest.New(t, broker.Config{RequestFilters: []string{"state/+/update", "state/+/get", "state/+/delete"}})
	url := brokertest.URL(b)
	handled := make(chan string, 16)
	if err := b.Subscribe("state/#", func(_, topic string, _ []byte) { handled <- topic }); err != nil {
		t.Fatal(err)
	}
	dev := brokertest.Connect(t, url, "d1")
	for _, m := range []struct {
		topic string
		qos   byte
	}{{"state/d1/update", 1}, {"state/d1/update", 0}, {"state/d1/get", 1}} {
		brokertest.PublishRetained(t, dev, m.topic, m.qos, []byte(`{"state":{}}`))
		if got := recv(t, handled, "the request's delivery"); got != m.topic {
			t.Fatalf("handled %s, want %s", got, m.topic)
		}
	}
	// A retained will on a request topic is delivered, not retained.
	rc := dialRaw(t, b.Addr())
	connect := fullConnectPacket(v311, "d2", "state/d2/update", "", "")
	connect[9] |= 0x20 // will retain (the flags byte follows "MQTT" and the version)
	rc.write(connect)
	rc.expect(typeConnack)
	rc.c.Close() // no DISCONNECT: the will is sent
	if got := recv(t, handled, "the will's delivery"); got != "state/d2/update" {
		t.Fatalf("handled %s, want the will on state/d2/update", got)
	}
	// Nor is an in-process request.
	if err := b.Publish("state/d1/delete", []byte("{}"), true, 1); err != nil {
		t.Fatal(err)
	}
	recv(t, handled, "the in-process request's delivery")
	if err := b.Publish("state/d1/update/accepted", []byte("reply"), true, 1); err != nil { // not a request: retained
		t.Fatal(err)
	}
	recv(t, handled, "the reply's delivery")
	if st := b.Stats(); st.Retained != 1 || st.RetainIgnored != 5 {
		t.Errorf("Stats.Retained %d, RetainIgnored %d; want 1 (the reply), 5", st.Retained, st.RetainIgnored)
	}

	late := brokertest.Connect(t, url, "late")
	msgs := brokertest.Subscribe(t, late, "state/#", 1)
	checkMessage(t, brokertest.Next(t, msgs, wait), "state/d1/update/accepted", []byte("reply"), 1, true)
	brokertest.Publish(t, dev, "state/d1/sentinel", 1, []byte("live"))
	checkMessage(t, brokertest.Next(t, msgs, wait), "state/d1/sentinel", []byte("live"), 1, false)
}

func TestRequestFiltersInvalid(t *testing.T) {
	_, err := broker.Open(t.Context(), broker.Config{TCPAddr: "127.0.0.1:0", RequestFilters: []string{"state/#/x"}})
	if !errors.Is(err, broker.ErrInvalidConfig) {
		t.Fatalf("Open with an invalid request filter: %v, want ErrInvalidConfig", err)
	}
}
