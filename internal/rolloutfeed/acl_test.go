package rolloutfeed_test

import (
	"encoding/json"
	"testing"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/identity"
	"github.com/umbra-iot/umbra/identity/identitytest"
	"github.com/umbra-iot/umbra/internal/brokertest"
	"github.com/umbra-iot/umbra/internal/rolloutfeed"
	"github.com/umbra-iot/umbra/internal/server/brokerauth"
	"github.com/umbra-iot/umbra/rollout"
	"github.com/umbra-iot/umbra/wire"
)

// TestACL runs the feed behind the identity store's ACL: integrators and
// operators read the rollout topics, devices may not, and nobody may
// forge them.
func TestACL(t *testing.T) {
	ids := identitytest.Open(t, "", identity.Config{})
	secret := func(s string, err error) string {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	devSec := secret(ids.AddDevice(t.Context(), "dev-1", nil))
	opSec := secret(ids.CreateToken(t.Context(), identity.RoleOperator, "ops"))
	intSec := secret(ids.CreateToken(t.Context(), identity.RoleIntegrator, "dash"))
	b := brokertest.New(t, broker.Config{Auth: brokerauth.New(ids)})
	url := brokertest.URL(b)
	login := func(user, secret string) func(*mqtt.ClientOptions) {
		return func(o *mqtt.ClientOptions) { o.SetUsername(user).SetPassword(secret) }
	}
	dev := brokertest.Connect(t, url, "dev-1", login("dev-1", devSec))
	op := brokertest.Connect(t, url, "ops-1", login("ops", opSec))

	st := newStatuses()
	want := status("r1", rollout.StateRunning, map[rollout.DeviceState]int{rollout.DeviceNotified: 2})
	st.set(want)
	f := mustOpen(t, rolloutfeed.Config{Publisher: b, Status: st.Status})
	if err := f.Sync(t.Context(), []string{"r1"}); err != nil {
		t.Fatalf("Sync: %v", err)
	}

	for _, filter := range []string{rolloutfeed.Filter, "rollouts/r1/status", "rollouts/+/events"} {
		tok := dev.Subscribe(filter, 1, func(mqtt.Client, mqtt.Message) {})
		if !tok.WaitTimeout(wait) {
			t.Fatalf("device subscribe %s: no SUBACK", filter)
		}
		if code := tok.(*mqtt.SubscribeToken).Result()[filter]; code < 0x80 {
			t.Errorf("device subscribing %s: SUBACK code %#x, want a failure code", filter, code)
		}
	}
	// Forged statuses are dropped: the operator's and the device's
	// retained publishes never replace the feed's. A denied QoS 1 PUBLISH
	// of an MQTT 3.1.1 client is acknowledged and dropped, and its PUBACK
	// shows the PUBLISH was handled.
	denied := ids.Denied()
	brokertest.PublishRetained(t, op, "rollouts/r1/status", 1, []byte(`{"forged":true}`))
	brokertest.Subscribe(t, op, "state/+/presence", 0)
	brokertest.PublishRetained(t, dev, "rollouts/r1/status", 1, []byte(`{"forged":true}`))
	brokertest.Subscribe(t, dev, "state/dev-1/#", 0)
	if got := ids.Denied() - denied; got != 2 {
		t.Errorf("Denied() grew by %d, want 2 (operator and device forging a status)", got)
	}

	for _, who := range []struct{ name, user, secret string }{{"integrator", "dash", intSec}, {"operator", "ops", opSec}} {
		t.Run(who.name, func(t *testing.T) {
			c := brokertest.Connect(t, url, who.name+"-late", login(who.user, who.secret))
			msgs := brokertest.Subscribe(t, c, rolloutfeed.Filter, 1)
			m := brokertest.Next(t, msgs, wait)
			var got wire.RolloutSummary
			if err := json.Unmarshal(m.Payload, &got); err != nil || m.Topic != "rollouts/r1/status" || got.ID != "r1" {
				t.Fatalf("got %v (%v), want the feed's retained status of r1", m, err)
			}
			f.OnEvent("r1", rollout.Event{Seq: 9, Kind: rollout.EventRetry, Device: "dev-1"})
			if m := nextOn(t, msgs, "rollouts/r1/events"); m.Retained {
				t.Errorf("event %v retained, want not", m)
			}
		})
	}
}
