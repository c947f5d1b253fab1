package broker_test

import (
	"testing"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/internal/brokertest"
)

// TestMochiPatchSubscriberLookupAllocs bounds the allocations of looking
// up a topic's subscribers, which the broker does for every PUBLISH.
// Unpatched mochi copied every visited topic level's subscriptions into a
// fresh map and gave every matched subscription a map of subscription
// identifiers, also without identifiers (third_party/mochi/PATCHES.md,
// patch 5).
func TestMochiPatchSubscriberLookupAllocs(t *testing.T) {
	b := brokertest.New(t, broker.Config{})
	c := brokertest.Connect(t, brokertest.URL(b), "integrator")
	brokertest.Subscribe(t, c, "devices/+/telemetry", 1)
	brokertest.Subscribe(t, c, "devices/#", 1)
	if err := b.Subscribe("state/+/update", func(string, string, []byte) {}); err != nil {
		t.Fatal(err)
	}
	allocs := testing.AllocsPerRun(200, func() {
		if !b.HasSubscribers("devices/dev-1/telemetry") {
			t.Fatal("no subscribers")
		}
	})
	// Unpatched: 10 (Go 1.26); patched: none, the lookup's own maps stay
	// on the stack. 2 leaves room for another compiler's escape analysis.
	if allocs > 2 {
		t.Errorf("%.0f allocations per subscriber lookup, want at most 2", allocs)
	}
}
