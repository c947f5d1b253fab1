package server_test

import (
	"testing"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/umbra-iot/umbra/internal/brokertest"
	"github.com/umbra-iot/umbra/internal/identity"
)

// TestHardening04RequestsNeverRetained is issue 10's case 4 on a whole
// Umbra: a device's retained update is applied but never stored, so a
// later subscriber to the request topic does not get it replayed. Before
// the fix the late subscriber got the device's update as a retained
// message.
func TestHardening04RequestsNeverRetained(t *testing.T) {
	r := mustOpenRig(t, true)
	dev := r.connectDevice(t, "dev1")
	accepted := brokertest.Subscribe(t, dev, "state/dev1/update/accepted", 1)
	brokertest.PublishRetained(t, dev, "state/dev1/update", 1, []byte(`{"state":{"reported":{"on":true}}}`))
	brokertest.Next(t, accepted, waitTimeout)

	secret, err := r.Identity().CreateToken(t.Context(), identity.RoleOperator, "ops")
	if err != nil {
		t.Fatal(err)
	}
	op := brokertest.Connect(t, r.mqttURL(), "ops-1", func(o *paho.ClientOptions) { o.SetUsername("ops").SetPassword(secret) })
	msgs := brokertest.Subscribe(t, op, "state/dev1/update", 1)
	// The operator's own request is the first message it sees on the
	// topic, not a stored copy of the device's.
	brokertest.Publish(t, op, "state/dev1/update", 1, []byte(`{"state":{"desired":{"on":false}}}`))
	if m := brokertest.Next(t, msgs, waitTimeout); m.Retained || string(m.Payload) != `{"state":{"desired":{"on":false}}}` {
		t.Errorf("first message on state/dev1/update: %v, want the operator's own request, not retained", m)
	}
	doc, err := r.Engine().Read(t.Context(), "dev1")
	if err != nil || doc.State.Reported["on"] != true {
		t.Errorf("dev1's shadow %+v (%v), want the retained update applied: reported.on true", doc.State, err)
	}
}
