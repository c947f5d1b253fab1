package rolloutview_test

import (
	"fmt"
	"os"
	"time"

	"github.com/umbra-iot/umbra/internal/rolloutview"
	"github.com/umbra-iot/umbra/wire"
)

// ExampleRender draws a rollout in its second of three batches, in plain
// ASCII.
func ExampleRender() {
	st := mkStatus(wire.RolloutRunning, "", 2,
		counts{succeeded: 2}, counts{succeeded: 3, installing: 4, failed: 1}, counts{pending: 10}, counts{pending: 10})
	st.Failing = []wire.RolloutDevice{{Device: "lamp-4", Batch: 2, State: wire.DeviceFailed, Attempt: 1, Error: "sha256 mismatch"}}
	rolloutview.Render(os.Stdout, st, rolloutview.Options{Width: 72, Now: t0.Add(5 * time.Minute)})
	// Output:
	// rollout r3  firmware 1.1.0  running  elapsed 5m0s
	// [######!~~~~~........................]  16.7%  5 of 30 on 1.1.0
	// succeeded 5  failed 1  timed out 0
	// in flight 4 (notified 0, downloading 0, installing 4)  pending 20
	//
	// batches: 2 of 4 started
	//   batch 1  done     [##############]  2/2  ok 2
	//   batch 2  running  [#####!!~~~~~~~]  4/8  ok 3, in flight 4, failing 1
	//   batches 3-4 waiting (20 devices)
	//
	// failing devices: 1
	//   DEVICE  STATE   BATCH  ATTEMPT  ERROR
	//   lamp-4  failed  2      1        sha256 mismatch
}

// ExampleLine prints the one-line form used for pipes and logs.
func ExampleLine() {
	st := mkStatus(wire.RolloutRunning, "", 2, counts{succeeded: 20}, counts{succeeded: 10, notified: 8, failed: 2}, counts{pending: 40})
	fmt.Println(rolloutview.Line(st))
	// Output:
	// r3 running 1.1.0 batch 2/3 succeeded=30 in_flight=8 pending=40 failed=2 timed_out=0 (37.5%)
}
