package broker_test

import (
	"fmt"
	"testing"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/internal/brokertest"
)

// TestSharedSubscriptions: the members of a shared subscription group
// ($share/<group>/<filter>) receive the matching messages in turn, each
// exactly once; another group and an ordinary subscription get every
// message; and while a member's persistent session is offline, the
// connected members share its turns instead of it queueing them.
func TestSharedSubscriptions(t *testing.T) {
	var cfg broker.Config
	ev := withEvents(&cfg)
	b := brokertest.New(t, cfg)
	url := brokertest.URL(b)
	const filter = "$share/workers/devices/+/telemetry"
	persistent := func(o *mqtt.ClientOptions) { o.SetCleanSession(false) }
	var workers []mqtt.Client
	var members []<-chan brokertest.Message
	for i := range 3 {
		c := brokertest.Connect(t, url, fmt.Sprintf("worker-%d", i), persistent)
		workers = append(workers, c)
		members = append(members, brokertest.Subscribe(t, c, filter, 1))
	}
	audit := brokertest.Subscribe(t, brokertest.Connect(t, url, "auditor"), "$share/audit/devices/#", 1)
	all := brokertest.Subscribe(t, brokertest.Connect(t, url, "plain"), "devices/+/telemetry", 1)
	pub := brokertest.Connect(t, url, "dev-1")

	seen := map[string]bool{}
	round := func(n, from int, members []<-chan brokertest.Message) {
		t.Helper()
		for i := range n {
			brokertest.Publish(t, pub, fmt.Sprintf("devices/dev-%d/telemetry", i%5), 1, fmt.Appendf(nil, "m%d", from+i))
		}
		// Every copy of a message is handed out in one pass: once the
		// ordinary subscriber has all n, the members have theirs.
		for range n {
			brokertest.Next(t, all, wait)
			brokertest.Next(t, audit, wait)
		}
		for i, ch := range members {
			for range n / len(members) {
				m := brokertest.Next(t, ch, wait)
				if seen[string(m.Payload)] {
					t.Errorf("member %d: %s delivered twice", i, m.Payload)
				}
				seen[string(m.Payload)] = true
			}
		}
	}
	round(30, 0, members) // 10 each

	// worker-0 goes offline, its session stays: workers 1 and 2 get 5 each
	// of the next 10, so worker-0 queued none.
	workers[0].Disconnect(100)
	if err := ev.disconnectOf(t, "worker-0"); err != nil {
		t.Fatalf("worker-0 disconnect: %v", err)
	}
	round(10, 30, members[1:])
	if len(seen) != 40 {
		t.Errorf("distinct messages received by the group: %d, want 40", len(seen))
	}
}
