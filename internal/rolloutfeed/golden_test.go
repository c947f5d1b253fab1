package rolloutfeed_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/umbra-iot/umbra/internal/rolloutfeed"
	"github.com/umbra-iot/umbra/rollout"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// TestPayloadGolden pins the wire format of the events and status topics.
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
	var evs, status []byte
	for range 6 {
		evs = append(append(evs, nextOn(t, pub.ch, "rollouts/r12/events").Payload...), '\n')
	}
	msgs := pub.all()
	for i := len(msgs) - 1; i >= 0; i-- {
		if msgs[i].Topic == "rollouts/r12/status" {
			var buf bytes.Buffer
			if err := json.Indent(&buf, msgs[i].Payload, "", "  "); err != nil {
				t.Fatalf("status %s: %v", msgs[i].Payload, err)
			}
			status = append(buf.Bytes(), '\n')
			break
		}
	}
	golden(t, "events.golden.jsonl", evs)
	golden(t, "status.golden.json", status)
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s:\ngot\n%s\nwant\n%s", name, got, want)
	}
}
