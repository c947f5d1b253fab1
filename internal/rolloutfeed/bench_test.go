package rolloutfeed_test

import (
	"testing"
	"time"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/internal/brokertest"
	"github.com/umbra-iot/umbra/internal/rolloutfeed"
	"github.com/umbra-iot/umbra/rollout"
)

// discard is a Publisher that drops everything.
type discard struct{}

func (discard) Publish(string, []byte, bool, byte) error { return nil }

// BenchmarkOnEvent measures what the planner pays per event, under its
// lock: the queue hand-off only.
func BenchmarkOnEvent(b *testing.B) {
	st := newStatuses()
	st.set(status("r1", rollout.StateRunning, map[rollout.DeviceState]int{rollout.DeviceNotified: 1}))
	f := mustOpen(b, rolloutfeed.Config{Publisher: discard{}, Status: st.Status, QueueSize: 1 << 16})
	ev := rollout.Event{Seq: 1, Time: t0, Kind: rollout.EventDeviceFailed, Device: "dev-000001", Reason: "sha256 mismatch"}
	b.ReportAllocs()
	for b.Loop() {
		f.OnEvent("r1", ev)
	}
	b.ReportMetric(float64(f.Dropped()), "dropped")
}

// BenchmarkEventsToSubscriber measures events per second from OnEvent to
// an MQTT subscriber over loopback TCP, each round of 32 events awaited
// before the next so that no queue overflows. The subscription is QoS 0:
// over a sustained QoS 1 stream the paho subscriber's PUBACKs lag behind
// and the broker drops beyond broker.DefaultMaxInflight unacknowledged
// messages ("client store quota reached").
func BenchmarkEventsToSubscriber(b *testing.B) {
	brk := brokertest.New(b, broker.Config{})
	sub := brokertest.Connect(b, brokertest.URL(brk), "integrator")
	msgs := brokertest.Subscribe(b, sub, "rollouts/+/events", 0)
	st := newStatuses()
	st.set(status("r1", rollout.StateRunning, map[rollout.DeviceState]int{rollout.DeviceNotified: 1}))
	f := mustOpen(b, rolloutfeed.Config{Publisher: brk, Status: st.Status})
	ev := rollout.Event{Seq: 1, Time: t0, Kind: rollout.EventDeviceFailed, Device: "dev-000001", Reason: "sha256 mismatch"}
	const round = 32
	start := time.Now()
	n := 0
	for b.Loop() {
		for range round {
			f.OnEvent("r1", ev)
		}
		for range round {
			brokertest.Next(b, msgs, wait)
		}
		n += round
	}
	b.ReportMetric(float64(n)/time.Since(start).Seconds(), "events/s")
	if d := f.Dropped(); d != 0 {
		b.Fatalf("Dropped() = %d, want 0", d)
	}
}
