package rolloutwire_test

import (
	"bytes"
	"encoding/json"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/internal/rolloutwire"
	"github.com/umbra-iot/umbra/rollout"
	"github.com/umbra-iot/umbra/wire"
)

// fill sets every exported field of the struct v points to to a non-zero
// value, recursively, so that a field the conversion forgets shows up.
func fill(t *testing.T, v reflect.Value, n *int) {
	t.Helper()
	*n++
	switch v.Kind() {
	case reflect.Struct:
		if v.Type() == reflect.TypeFor[time.Time]() {
			v.Set(reflect.ValueOf(time.Date(2026, 11, 23, 12, 0, *n, 0, time.UTC)))
			return
		}
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				fill(t, v.Field(i), n)
			}
		}
	case reflect.String:
		v.SetString("s" + string(rune('a'+*n%26)))
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Int, reflect.Int64, reflect.Int32, reflect.Int16, reflect.Int8:
		if v.Type() == reflect.TypeFor[time.Duration]() {
			v.SetInt(int64(*n) * int64(time.Minute))
			return
		}
		v.SetInt(int64(*n))
	case reflect.Uint, reflect.Uint64, reflect.Uint32, reflect.Uint16, reflect.Uint8:
		v.SetUint(uint64(*n % 8)) // small: a valid DeviceState
	case reflect.Float64, reflect.Float32:
		v.SetFloat(float64(*n) + 0.5)
	case reflect.Slice:
		s := reflect.MakeSlice(v.Type(), 1, 1)
		fill(t, s.Index(0), n)
		v.Set(s)
	case reflect.Map:
		m := reflect.MakeMap(v.Type())
		k, e := reflect.New(v.Type().Key()).Elem(), reflect.New(v.Type().Elem()).Elem()
		fill(t, k, n)
		fill(t, e, n)
		m.SetMapIndex(k, e)
		v.Set(m)
	default:
		t.Fatalf("fill: unhandled kind %s of %s", v.Kind(), v.Type())
	}
}

func filled[T any](t *testing.T) T {
	t.Helper()
	var v T
	n := 0
	fill(t, reflect.ValueOf(&v).Elem(), &n)
	return v
}

// fields decodes v's JSON object into its raw fields.
func fields(t *testing.T, v any) map[string]json.RawMessage {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// sameFields checks that the wire JSON has the domain JSON's fields but
// dropped, with the same values.
func sameFields(t *testing.T, what string, domain, wireForm any, dropped []string) {
	t.Helper()
	d, w := fields(t, domain), fields(t, wireForm)
	for _, k := range dropped {
		if _, ok := d[k]; !ok {
			t.Errorf("%s: dropped field %q is not in the planner's JSON any more: update rolloutwire.Dropped", what, k)
		}
		if _, ok := w[k]; ok {
			t.Errorf("%s: bookkeeping field %q is on the wire", what, k)
		}
		delete(d, k)
	}
	for k, v := range d {
		if got, ok := w[k]; !ok {
			t.Errorf("%s: field %q (%s) is missing from the wire form: convert it, or list it in rolloutwire.Dropped", what, k, v)
		} else if !bytes.Equal(got, v) {
			t.Errorf("%s: field %q = %s on the wire, want %s", what, k, got, v)
		}
	}
	for k := range w {
		if _, ok := d[k]; !ok {
			t.Errorf("%s: field %q is on the wire but not in the planner's JSON", what, k)
		}
	}
}

func TestRolloutDropsOnlyBookkeeping(t *testing.T) {
	r := filled[rollout.Rollout](t)
	sameFields(t, "Rollout", r, rolloutwire.Rollout(r), rolloutwire.Dropped)
	// Nothing returned shares memory with the argument.
	w := rolloutwire.Rollout(r)
	w.Batches[0].Size, w.Selector["x"] = -1, "y"
	if r.Batches[0].Size == -1 || r.Selector["x"] == "y" {
		t.Errorf("Rollout shares its batches or selector with its argument")
	}
}

func TestStatusAndDevices(t *testing.T) {
	st := filled[rollout.Status](t)
	sameFields(t, "Status", st, rolloutwire.Status(st), rolloutwire.Dropped)
	d := filled[rollout.DeviceStatus](t)
	sameFields(t, "DeviceStatus", d, rolloutwire.Device(d), nil)
	ev := filled[rollout.Event](t)
	sameFields(t, "Event", ev, rolloutwire.Event(ev), nil)
	// nil stays nil (JSON null), empty stays empty ({}).
	if got := rolloutwire.Status(rollout.Status{Counts: map[rollout.DeviceState]int{}}); got.Counts == nil || got.Batches != nil || got.Failing != nil {
		t.Errorf("Status of an empty status = %+v, want empty counts and nil lists", got)
	}
}

func TestPolicyBothWays(t *testing.T) {
	p := filled[rollout.Policy](t)
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
		if s.Failure() != rolloutwire.DeviceState(s).Failure() {
			t.Errorf("%s: Failure %v in the planner, %v on the wire", s, s.Failure(), rolloutwire.DeviceState(s).Failure())
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
