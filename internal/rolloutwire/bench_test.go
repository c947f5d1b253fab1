package rolloutwire_test

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/internal/rolloutwire"
	"github.com/umbra-iot/umbra/rollout"
)

// BenchmarkStatusJSON compares, in one run, the answer of GET
// /v1/rollouts/{id} for a large rollout (1000 batches, 100 failing
// devices) encoded as the planner's Status (the answer before the wire
// split) and converted to its wire form first (the answer now).
func BenchmarkStatusJSON(b *testing.B) {
	t0 := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	st := rollout.Status{Rollout: rollout.Rollout{ID: "r12", Firmware: "2.0.0", State: rollout.StateRunning, Targets: 100_000,
		Started: 500, Created: t0, Updated: t0, Versions: []string{"1.0.0", "1.1.0"}, Policy: rollout.Policy{BatchSize: 100, DeviceTimeout: time.Minute}},
		Counts: map[rollout.DeviceState]int{rollout.DeviceSucceeded: 49_900, rollout.DeviceFailed: 100, rollout.DevicePending: 50_000}}
	for i := range 1000 {
		st.Rollout.Batches = append(st.Rollout.Batches, rollout.Batch{Start: 100 * i, Size: 100, Done: i < 499})
		st.Batches = append(st.Batches, rollout.BatchStatus{Index: i, Start: 100 * i, Size: 100, State: "done",
			Counts: map[rollout.DeviceState]int{rollout.DeviceSucceeded: 100}})
	}
	for i := range 100 {
		st.Failing = append(st.Failing, rollout.DeviceStatus{Device: device.ID(fmt.Sprintf("dev-%06d", i)), Batch: 3,
			State: rollout.DeviceFailed, Attempt: 1, Since: t0, From: "1.0.0", Error: "sha256 mismatch"})
	}
	for _, bc := range []struct {
		name string
		v    func() any
	}{
		{"planner", func() any { return st }},
		{"wire", func() any { return rolloutwire.Status(st) }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := json.Marshal(bc.v()); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
