package bench_test

import (
	"fmt"
	"testing"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/shadow"
)

// BenchmarkAWSTreeGate measures what the AWS IoT topic tree costs a fleet
// that never subscribes on $aws (issue 12): per reported update, the engine
// builds the $aws spelling of the accepted and documents topics and asks
// the broker whether anyone subscribed to them (broker.HasSubscribers),
// and publishes nothing there. The broker holds the engine's request
// filters and 1,000 devices' state/ subscriptions, as in
// BenchmarkShadowUpdate; one op is one update's two checks. Compare with
// BenchmarkShadowUpdate's CPU time per update, 1/(updates/cpu-s).
func BenchmarkAWSTreeGate(b *testing.B) {
	brk := openBroker(b, broker.Config{})
	for _, f := range shadow.RequestFilters {
		if err := brk.Subscribe(f, func(string, string, []byte) {}); err != nil {
			b.Fatal(err)
		}
	}
	ids := make([]device.ID, 1000)
	for i := range ids {
		ids[i] = device.ID(fmt.Sprintf("dev-%04d", i))
		if err := brk.Subscribe(shadow.AcceptedTopic(ids[i]), func(string, string, []byte) {}); err != nil {
			b.Fatal(err)
		}
	}
	i := 0
	for b.Loop() {
		id := ids[i%len(ids)]
		i++
		for _, suffix := range []string{"update/accepted", "update/documents"} {
			if brk.HasSubscribers(shadow.TreeAWS.Topic(id, "", suffix)) {
				b.Fatal("a $aws topic has subscribers")
			}
		}
	}
}
