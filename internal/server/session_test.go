package server_test

import (
	"fmt"
	"testing"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/umbra-iot/umbra/identity"
	"github.com/umbra-iot/umbra/internal/brokertest"
)

// topicLog is a paho default publish handler that records every topic a
// client receives (inherited subscriptions arrive there: the client has
// no route for them). It never blocks.
type topicLog chan string

func (l topicLog) handler(_ paho.Client, m paho.Message) {
	select {
	case l <- m.Topic():
	default:
	}
}

// TestHardening03SessionBelongsToIdentity is issue 10's case 3 with the
// real identity store: an integrator (read-only token) opens a persistent
// session as client ID devC before devC is enrolled, subscribed to devB's
// topics, and disconnects; devB's updates are queued for it. Then devC is
// enrolled and connects with a persistent session: it must start fresh
// and never receive devB's messages. Before the fix it inherited the
// session: the queued devB messages were resent to it.
func TestHardening03SessionBelongsToIdentity(t *testing.T) {
	r := mustOpenRig(t, true)
	url := r.mqttURL()
	secret, err := r.Identity().CreateToken(t.Context(), identity.RoleIntegrator, "integ")
	if err != nil {
		t.Fatal(err)
	}
	persistent := func(o *paho.ClientOptions) { o.SetCleanSession(false) }
	spy := brokertest.Connect(t, url, "devC", persistent, func(o *paho.ClientOptions) {
		o.SetUsername("integ").SetPassword(secret)
	})
	brokertest.Subscribe(t, spy, "state/devB/update/accepted", 1)
	spy.Disconnect(100)
	for i := range 3 {
		body := fmt.Sprintf(`{"state":{"reported":{"n":%d}}}`, i)
		if _, err := r.Engine().Update(t.Context(), "devB", []byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "devB's replies to be queued for the offline session", func() string {
		if st := r.Broker().Stats(); st.Inflight == 0 {
			return fmt.Sprintf("Stats %+v", st)
		}
		return ""
	})

	user, pass := r.credentials(t, "devC") // enrols devC
	got := make(topicLog, 64)
	dev := brokertest.Connect(t, url, "devC", persistent, func(o *paho.ClientOptions) {
		o.SetUsername(user).SetPassword(pass).SetDefaultPublishHandler(got.handler)
	})
	if _, err := r.Engine().Update(t.Context(), "devB", []byte(`{"state":{"reported":{"n":99}}}`)); err != nil {
		t.Fatal(err)
	}
	// A sentinel on devC's own topics: everything inherited would arrive
	// before it.
	own := brokertest.Subscribe(t, dev, "state/devC/update/accepted", 1)
	brokertest.Publish(t, dev, "state/devC/update", 1, []byte(`{"state":{"reported":{"up":true}}}`))
	brokertest.Next(t, own, waitTimeout)
	close(got)
	for topic := range got {
		t.Errorf("devC received %s: it inherited the integrator's session", topic)
	}
}

// TestHardening04RequestsNeverRetained is issue 10's case 4 on a whole
// Umbra: a device's retained request, on every request topic tree
// (classic, named, $aws), is applied but never stored, so a later
// subscriber to the request topic does not get it replayed. Before the
// fix the late subscriber got the device's update as a retained message.
func TestHardening04RequestsNeverRetained(t *testing.T) {
	r := mustOpenRig(t, true)
	dev := r.connectDevice(t, "dev1")
	secret, err := r.Identity().CreateToken(t.Context(), identity.RoleOperator, "ops")
	if err != nil {
		t.Fatal(err)
	}
	op := brokertest.Connect(t, r.mqttURL(), "ops-1", func(o *paho.ClientOptions) { o.SetUsername("ops").SetPassword(secret) })
	for _, request := range []string{"state/dev1/update", "state/dev1/shadow/lamp/update", "$aws/things/dev1/shadow/update"} {
		t.Run(request, func(t *testing.T) {
			accepted := brokertest.Subscribe(t, dev, request+"/accepted", 1)
			brokertest.PublishRetained(t, dev, request, 1, []byte(`{"state":{"reported":{"on":true}}}`))
			brokertest.Next(t, accepted, waitTimeout)

			msgs := brokertest.Subscribe(t, op, request, 1)
			// The operator's own request is the first message it sees on
			// the topic, not a stored copy of the device's.
			brokertest.Publish(t, op, request, 1, []byte(`{"state":{"desired":{"on":false}}}`))
			if m := brokertest.Next(t, msgs, waitTimeout); m.Retained || string(m.Payload) != `{"state":{"desired":{"on":false}}}` {
				t.Errorf("first message on %s: %v, want the operator's own request, not retained", request, m)
			}
		})
	}
	doc, err := r.Engine().Read(t.Context(), "dev1")
	if err != nil || doc.State.Reported["on"] != true {
		t.Errorf("dev1's shadow %+v (%v), want the retained update applied: reported.on true", doc.State, err)
	}
	if st := r.Broker().Stats(); st.RetainIgnored != 3 {
		t.Errorf("Stats.RetainIgnored %d, want 3", st.RetainIgnored)
	}
}
