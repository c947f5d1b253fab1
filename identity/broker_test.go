package identity_test

import (
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/identity"
	"github.com/umbra-iot/umbra/internal/brokertest"
	"github.com/umbra-iot/umbra/internal/server/brokerauth"
)

// login returns a paho option setting user name and password.
func login(user, secret string) func(*mqtt.ClientOptions) {
	return func(o *mqtt.ClientOptions) { o.SetUsername(user).SetPassword(secret) }
}

// connectErr tries to connect and returns the connection error.
func connectErr(t *testing.T, url, clientID, user, secret string) error {
	t.Helper()
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(url).SetClientID(clientID).
		SetUsername(user).SetPassword(secret).SetAutoReconnect(false).SetConnectTimeout(brokertest.Timeout))
	tok := c.Connect()
	if !tok.WaitTimeout(brokertest.Timeout) {
		t.Fatalf("connect %s: no CONNACK within %v", clientID, brokertest.Timeout)
	}
	if tok.Error() == nil {
		c.Disconnect(0)
	}
	return tok.Error()
}

// subackCode subscribes c to filter and returns the SUBACK return code.
func subackCode(t *testing.T, c mqtt.Client, filter string) byte {
	t.Helper()
	tok := c.Subscribe(filter, 0, func(mqtt.Client, mqtt.Message) {})
	if !tok.WaitTimeout(brokertest.Timeout) {
		t.Fatalf("subscribe %s: no SUBACK within %v", filter, brokertest.Timeout)
	}
	return tok.(*mqtt.SubscribeToken).Result()[filter]
}

// expect receives len(want) messages from ch and fails unless they are
// want ("topic payload" each), in any order: paho clients with
// SetOrderMatters(false) may hand messages over out of order.
func expect(t *testing.T, who string, ch <-chan brokertest.Message, want ...string) {
	t.Helper()
	missing := make(map[string]int)
	for _, w := range want {
		missing[w]++
	}
	for range want {
		m := brokertest.Next(t, ch, brokertest.Timeout)
		got := m.Topic + " " + string(m.Payload)
		if missing[got] == 0 {
			t.Errorf("%s received %v, want one of %q", who, m, want)
			continue
		}
		missing[got]--
	}
}

// TestBroker runs the store as the Authenticator of a real broker with
// paho clients over loopback TCP.
func TestBroker(t *testing.T) {
	s := mustOpen(t, "", identity.Config{})
	secA := mustAddDevice(t, s, "A")
	secB := mustAddDevice(t, s, "B")
	opSec := mustCreateToken(t, s, identity.RoleOperator, "ops")
	intSec := mustCreateToken(t, s, identity.RoleIntegrator, "dash")
	b := brokertest.New(t, broker.Config{Auth: brokerauth.New(s)})
	url := brokertest.URL(b)

	refused := []struct{ name, clientID, user, secret string }{
		{"unknown device", "C", "C", secA},
		{"wrong secret", "A", "A", secB},
		{"client id of another device", "B", "A", secA},
		{"no credentials", "A", "", ""},
	}
	for _, tc := range refused {
		if err := connectErr(t, url, tc.clientID, tc.user, tc.secret); err == nil {
			t.Errorf("%s: connected, want refused", tc.name)
		}
	}

	a := brokertest.Connect(t, url, "A", login("A", secA))
	devB := brokertest.Connect(t, url, "B", login("B", secB))
	op := brokertest.Connect(t, url, "ops-1", login("ops", opSec))
	integ := brokertest.Connect(t, url, "dash-1", login("dash", intSec))

	for _, f := range []string{"state/B/#", "state/+/update", "#"} {
		if code := subackCode(t, a, f); code < 0x80 {
			t.Errorf("A subscribing %s: SUBACK code %#x, want a failure code", f, code)
		}
	}
	if code := subackCode(t, integ, "$SYS/#"); code < 0x80 {
		t.Errorf("integrator subscribing $SYS: SUBACK code %#x, want a failure code", code)
	}
	aMsgs := brokertest.Subscribe(t, a, "state/A/#", 0)
	opMsgs := brokertest.Subscribe(t, op, "state/#", 0)
	intMsgs := brokertest.Subscribe(t, integ, "state/+/update/accepted", 0)

	// B writes to A's shadow and its own: only its own write gets through,
	// and since B's packets are handled in order, the denied one was seen
	// before the operator receives the allowed one.
	deniedBefore := s.Denied()
	brokertest.Publish(t, devB, "state/A/update", 0, []byte("from B"))
	brokertest.Publish(t, devB, "state/B/update", 0, []byte("B own"))
	expect(t, "operator", opMsgs, "state/B/update B own")

	// A may not forge its own responses.
	brokertest.Publish(t, a, "state/A/update/accepted", 0, []byte("forged"))
	brokertest.Publish(t, a, "state/A/update/delta", 0, []byte("forged"))
	brokertest.Publish(t, a, "state/A/update", 0, []byte("A own"))
	expect(t, "operator", opMsgs, "state/A/update A own")
	expect(t, "A", aMsgs, "state/A/update A own")

	// The integrator's publishes are dropped; its SUBACK shows the broker
	// handled the PUBLISH sent before.
	brokertest.Publish(t, integ, "state/A/update", 0, []byte("from integrator"))
	brokertest.Subscribe(t, integ, "state/+/presence", 0)

	// The engine (in-process) publishes B's and A's accepted documents and
	// the operator sends A a request: A gets only its own messages, the
	// integrator both accepted documents.
	for _, id := range []string{"B", "A"} {
		if err := b.Publish("state/"+id+"/update/accepted", []byte("accepted "+id), false, 0); err != nil {
			t.Fatal(err)
		}
	}
	brokertest.Publish(t, op, "state/A/update", 0, []byte("from operator"))
	expect(t, "integrator", intMsgs, "state/B/update/accepted accepted B", "state/A/update/accepted accepted A")
	expect(t, "A", aMsgs, "state/A/update/accepted accepted A", "state/A/update from operator")
	expect(t, "operator", opMsgs, "state/B/update/accepted accepted B", "state/A/update/accepted accepted A",
		"state/A/update from operator")

	if got := s.Denied() - deniedBefore; got != 4 {
		t.Errorf("Denied: got +%d, want +4 (B→A, two forged responses, integrator)", got)
	}
	select {
	case m := <-aMsgs:
		t.Errorf("A received unexpected %v", m)
	case m := <-intMsgs:
		t.Errorf("integrator received unexpected %v", m)
	case <-time.After(50 * time.Millisecond):
	}
}
