package plannerrpc_test

import (
	"testing"

	"github.com/umbra-iot/umbra/internal/plannerrpc"
	"github.com/umbra-iot/umbra/rollout"
)

// BenchmarkGet measures one rollout status read (Get of a rollout of 100
// devices) called on the planner directly and forwarded through a
// plannerrpc.Client to a Server on one local nats-server: the cost a node
// that does not hold the planner lease adds to a call.
func BenchmarkGet(b *testing.B) {
	p := mustPair(b, plannerrpc.Config{})
	r, err := p.client.Create(b.Context(), rollout.Spec{Firmware: "2.0.0", Devices: ids(100), Policy: rollout.Policy{BatchSize: 10}})
	if err != nil {
		b.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		p    plannerrpc.Planner
	}{{"local", p.planner}, {"forwarded", p.client}} {
		b.Run(tc.name, func(b *testing.B) {
			for b.Loop() {
				if _, err := tc.p.Get(b.Context(), r.ID); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
