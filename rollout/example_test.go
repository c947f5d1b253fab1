package rollout_test

import (
	"fmt"
	"time"

	"github.com/umbra-iot/umbra/firmware"
	"github.com/umbra-iot/umbra/rollout"
)

// ExampleStep runs the pure decision core by hand: a canary of one device,
// then the rest, with every device installing at once.
func ExampleStep() {
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	p := rollout.Policy{FirstBatch: 1, SuccessThreshold: 100, OnFailure: rollout.OnFailurePause,
		DeviceTimeout: 30 * time.Minute, RetryBackoff: 30 * time.Second}
	r := &rollout.Rollout{ID: "r1", Firmware: "1.2.0", State: rollout.StateCreated, Policy: p, Targets: 3,
		Batches: []rollout.Batch{{Start: 0, Size: 1}, {Start: 1, Size: 2}}}
	devs := make([]rollout.Device, r.Targets)
	for r.State.Active() {
		for _, a := range rollout.Step(now, r, devs) {
			rollout.Apply(now, r, devs, a)
			fmt.Println(a)
			if a.Kind == rollout.ActNotify { // the device reports success
				rep := firmware.Report{Version: "1.2.0", State: firmware.StateUpdated, Job: a.Job}
				devs[a.Index], _ = rollout.Observe(now, r, devs[a.Index], rep)
			}
		}
	}
	// Output:
	// transition(running, rollback=false, "started")
	// start_batch(0)
	// notify(0, r1/1)
	// batch_finished(0, "1/1 succeeded, 0 failed")
	// start_batch(1)
	// notify(1, r1/1)
	// notify(2, r1/1)
	// batch_finished(1, "2/2 succeeded, 0 failed")
	// transition(succeeded, rollback=false, "3 succeeded, 0 already installed, 0 failed")
}
