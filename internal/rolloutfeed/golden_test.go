package rolloutfeed_test

import (
	"encoding/json"
	"path/filepath"
	"testing"

	"github.com/umbra-iot/umbra/internal/goldentest"
	"github.com/umbra-iot/umbra/internal/rolloutfeed"
	"github.com/umbra-iot/umbra/rollout"
)

// TestPayloadGolden pins the wire format of the events and status topics.
// Regenerate with: go test ./internal/rolloutfeed -run TestPayloadGolden -update
func TestPayloadGolden(t *testing.T) {
	pub, st := newCapture(), newStatuses()
	st.set(status("r12", rollout.StatePaused, map[rollout.DeviceState]int{
		rollout.DeviceSucceeded: 5, rollout.DeviceFailed: 2, rollout.DeviceTimedOut: 1, rollout.DeviceInstalling: 0,
	}))
	f := mustOpen(t, rolloutfeed.Config{Publisher: pub, Status: st.Status})
	for _, ev := range events(5) {
		f.OnEvent("r12", ev)
	}
	f.OnEvent("r12", rollout.Event{Seq: 6, Time: t0, Kind: rollout.EventState, State: rollout.StatePaused, Reason: "failure threshold: 3 of 8 > 20%"})
	if err := f.Sync(t.Context(), []string{"r12"}); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	var evs []byte
	for range 6 {
		evs = append(append(evs, nextOn(t, pub.ch, "rollouts/r12/events").Payload...), '\n')
	}
	var status json.RawMessage
	msgs := pub.all()
	for i := len(msgs) - 1; i >= 0; i-- {
		if msgs[i].Topic == "rollouts/r12/status" {
			status = msgs[i].Payload
			break
		}
	}
	if status == nil {
		t.Fatal("no message on rollouts/r12/status")
	}
	goldentest.Check(t, filepath.Join("testdata", "events.golden.jsonl"), evs)
	goldentest.CheckJSON(t, filepath.Join("testdata", "status.golden.json"), status)
}
