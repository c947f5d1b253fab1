package rolloutwire_test

import (
	"bytes"
	"encoding/json"
	"slices"
	"testing"

	"github.com/umbra-iot/umbra/internal/rolloutwire"
	"github.com/umbra-iot/umbra/internal/wiretest"
	"github.com/umbra-iot/umbra/rollout"
	"github.com/umbra-iot/umbra/wire"
)

func TestRolloutDropsOnlyBookkeeping(t *testing.T) {
	r := wiretest.Filled[rollout.Rollout](t)
	w0 := rolloutwire.Rollout(r)
	w0.Scheduled, w0.AwaitingApproval = false, false // derived, not copied
	wiretest.SameFields(t, "Rollout", r, w0, rolloutwire.Dropped...)
	// Nothing returned shares memory with the argument.
	w := rolloutwire.Rollout(r)
	w.Batches[0].Size, w.Selector["x"] = -1, "y"
	if r.Batches[0].Size == -1 || r.Selector["x"] == "y" {
		t.Errorf("Rollout shares its batches or selector with its argument")
	}
}

func TestStatusAndDevices(t *testing.T) {
	// Batches are numbered from 1 on the wire, from 0 in the planner: the
	// wire forms are compared with that shift undone.
	st := wiretest.Filled[rollout.Status](t)
	ws := rolloutwire.Status(st)
	for i := range ws.Batches {
		ws.Batches[i].Index--
	}
	for i := range ws.Failing {
		ws.Failing[i].Batch--
	}
	wiretest.SameFields(t, "Status", st, ws, rolloutwire.Dropped...)
	d := wiretest.Filled[rollout.DeviceStatus](t)
	wd := rolloutwire.Device(d)
	wd.Batch--
	wiretest.SameFields(t, "DeviceStatus", d, wd)
	ev := wiretest.Filled[rollout.Event](t)
	ev.Kind = rollout.EventBatchStarted
	we := rolloutwire.Event(ev)
	we.Batch--
	wiretest.SameFields(t, "Event", ev, we)
	// Other events carry no batch.
	ev.Kind = rollout.EventRetry
	if we := rolloutwire.Event(ev); we.Batch != 0 {
		t.Errorf("retry event: batch %d on the wire, want none", we.Batch)
	}
	// nil stays nil (JSON null), empty stays empty ({}).
	if got := rolloutwire.Status(rollout.Status{Counts: map[rollout.DeviceState]int{}}); got.Counts == nil || got.Batches != nil || got.Failing != nil {
		t.Errorf("Status of an empty status = %+v, want empty counts and nil lists", got)
	}
}

func TestPolicyBothWays(t *testing.T) {
	p := wiretest.Filled[rollout.Policy](t)
	if got := rolloutwire.PolicyFrom(rolloutwire.Policy(p)); got != p {
		t.Errorf("PolicyFrom(Policy(p)) = %+v, want %+v", got, p)
	}
	// The same JSON, byte for byte: the wire form is what the API always
	// wrote.
	db, _ := json.Marshal(p)
	wb, _ := json.Marshal(rolloutwire.Policy(p))
	if !bytes.Equal(db, wb) {
		t.Errorf("wire policy JSON\n%s\nwant the planner's\n%s", wb, db)
	}
}

func TestNamesMatch(t *testing.T) {
	var names []wire.DeviceState
	for s := range rollout.DeviceState(255) {
		if _, err := s.MarshalText(); err != nil {
			break
		}
		names = append(names, rolloutwire.DeviceState(s))
	}
	if !slices.Equal(names, wire.DeviceStates) {
		t.Errorf("planner device states %v, wire.DeviceStates %v", names, wire.DeviceStates)
	}
	for _, tc := range []struct{ domain, wire string }{
		{string(rollout.StateCreated), string(wire.RolloutCreated)},
		{string(rollout.StateRunning), string(wire.RolloutRunning)},
		{string(rollout.StatePaused), string(wire.RolloutPaused)},
		{string(rollout.StateSucceeded), string(wire.RolloutSucceeded)},
		{string(rollout.StateFailed), string(wire.RolloutFailed)},
		{string(rollout.StateAborted), string(wire.RolloutAborted)},
		{string(rollout.OnFailurePause), string(wire.OnFailurePause)},
		{string(rollout.OnFailureAbort), string(wire.OnFailureAbort)},
		{string(rollout.OnFailureRollback), string(wire.OnFailureRollback)},
		{rollout.EventCreated, wire.EventCreated},
		{rollout.EventState, wire.EventState},
		{rollout.EventBatchStarted, wire.EventBatchStarted},
		{rollout.EventBatchFinished, wire.EventBatchFinished},
		{rollout.EventDeviceFailed, wire.EventDeviceFailed},
		{rollout.EventRetry, wire.EventRetry},
		{rollout.EventRollback, wire.EventRollback},
		{rollout.EventDevicesAdded, wire.EventDevicesAdded},
		{rollout.EventWaiting, wire.EventWaiting},
	} {
		if tc.domain != tc.wire {
			t.Errorf("planner name %q, wire name %q", tc.domain, tc.wire)
		}
	}
	for _, s := range []rollout.State{rollout.StateCreated, rollout.StateRunning, rollout.StatePaused,
		rollout.StateSucceeded, rollout.StateFailed, rollout.StateAborted} {
		if s.Active() != wire.RolloutState(s).Active() {
			t.Errorf("%s: Active %v in the planner, %v on the wire", s, s.Active(), wire.RolloutState(s).Active())
		}
	}
	for s := range rollout.DeviceState(len(wire.DeviceStates)) {
		w := rolloutwire.DeviceState(s)
		if s.Failure() != w.Failure() || s.Terminal() != w.Terminal() || !w.Valid() {
			t.Errorf("%s: Failure %v, Terminal %v in the planner; on the wire %v, %v (valid %v)", s, s.Failure(), s.Terminal(),
				w.Failure(), w.Terminal(), w.Valid())
		}
	}
}

func TestSummary(t *testing.T) {
	st := rollout.Status{Rollout: rollout.Rollout{ID: "r3", Firmware: "2.0.0", State: rollout.StateRunning,
		Batches: make([]rollout.Batch, 3), Started: 1},
		Counts: map[rollout.DeviceState]int{rollout.DeviceSucceeded: 2, rollout.DeviceFailed: 0}}
	got := rolloutwire.Summary(st)
	if got.Batches != 3 || got.BatchesStarted != 1 || len(got.Counts) != 1 || got.Counts[wire.DeviceSucceeded] != 2 {
		t.Errorf("Summary = %+v, want 3 batches, 1 started, only succeeded counted", got)
	}
}
