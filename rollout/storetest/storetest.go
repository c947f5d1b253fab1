package storetest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/rollout"
)

// Opener opens the store kept in dir (empty at first) and returns it with
// the function that closes it. Run opens a dir again after closing it.
type Opener func(tb testing.TB, dir string) (s rollout.Store, close func())

// at is the time of every record the cases write.
var at = time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)

// step is one call of a case.
type step struct {
	create  *rollout.Rollout // Create with targets and first
	targets []device.ID      // with create
	commit  *rollout.Changes // Commit
	reopen  bool             // close the store and open it again
	wantID  string           // the ID Create gives
	wantSeq []uint64         // the Seqs of the events Commit returns
	wantErr error            // the call fails with this (errors.Is); nothing is stored
}

// State is everything a store holds about the rollouts a case wrote, as
// its read methods return it.
type State struct {
	Rollouts []rollout.Stored
	Events   map[string][]rollout.Event
	Errors   map[string]map[int]string
	Jobs     []device.ID // the probed devices that are Jobs devices
}

// probed are the devices whose Jobs mark a case reads back.
var probed = []device.ID{"j1", "j2", "d1"}

// Run runs the contract against the stores open makes.
func Run(t *testing.T, open Opener) {
	t.Run("cases", func(t *testing.T) { runCases(t, open) })
	t.Run("targets from a position", func(t *testing.T) { testTargets(t, open) })
	t.Run("errors of positions", func(t *testing.T) { testErrors(t, open) })
	t.Run("events after a sequence number", func(t *testing.T) { testEvents(t, open) })
	t.Run("unknown rollout", func(t *testing.T) { testNotFound(t, open) })
	t.Run("cancelled context", func(t *testing.T) { testCancelled(t, open) })
}

func record(targets int, state rollout.State) rollout.Rollout {
	return rollout.Rollout{Firmware: "2.0.0", State: state, Targets: targets, Created: at, Updated: at,
		Batches: []rollout.Batch{{Start: 0, Size: targets}}, Policy: rollout.Policy{BatchSize: targets, DeviceTimeout: time.Minute}}
}

func withID(r rollout.Rollout, id string) rollout.Rollout {
	r.ID = id
	return r
}

func event(kind, reason string) rollout.Event {
	return rollout.Event{Time: at, Kind: kind, Reason: reason}
}

func seq(ev rollout.Event, n uint64) rollout.Event {
	ev.Seq = n
	return ev
}

func pos(id string, i int) rollout.Position { return rollout.Position{Rollout: id, Index: i} }

// put is an execution patch that stores rec whatever was there.
func put(rec rollout.ExecRecord) func(rollout.ExecRecord, bool) rollout.ExecRecord {
	return func(rollout.ExecRecord, bool) rollout.ExecRecord { return rec }
}

func runCases(t *testing.T, open Opener) {
	created := event(rollout.EventCreated, "2 targets in 1 batches")
	three := record(3, rollout.StateCreated)
	two := record(2, rollout.StateCreated)
	running := withID(three, "r1")
	running.State, running.Started, running.Versions = rollout.StateRunning, 1, []string{"1.0.0"}
	queued := rollout.ExecRecord{Index: 0, Number: 1, Status: rollout.ExecQueued, Version: 1, Queued: at.UnixNano(), Updated: at.UnixNano()}
	started := queued
	started.Status, started.Version, started.Started, started.Details = rollout.ExecInProgress, 2, at.UnixNano(), map[string]string{"step": "download"}
	dev := rollout.Device{State: rollout.DeviceNotified, Attempt: 1, From: 1, At: at.UnixNano()}
	failed := rollout.Device{State: rollout.DeviceFailed, Attempt: 2, At: at.UnixNano() + 1}

	tests := []struct {
		name  string
		steps []step
		want  State
	}{
		{name: "empty"},
		{
			name: "create numbers rollouts from a sequence, every target pending",
			steps: []step{
				{create: &three, targets: []device.ID{"d1", "d2", "d3"}, wantID: "r1"},
				{create: &two, targets: []device.ID{"e1", "e2"}, wantID: "r2"},
			},
			want: State{
				Rollouts: []rollout.Stored{
					{Rollout: withID(three, "r1"), Targets: []device.ID{"d1", "d2", "d3"}, Devices: make([]rollout.Device, 3)},
					{Rollout: withID(two, "r2"), Targets: []device.ID{"e1", "e2"}, Devices: make([]rollout.Device, 2)},
				},
				Events: map[string][]rollout.Event{"r1": {seq(created, 1)}, "r2": {seq(created, 1)}},
			},
		},
		{
			name: "rollout numbers are never reused after a reopen",
			steps: []step{
				{create: &two, targets: []device.ID{"e1", "e2"}, wantID: "r1"},
				{reopen: true},
				{create: &two, targets: []device.ID{"e1", "e2"}, wantID: "r2"},
			},
			want: State{
				Rollouts: []rollout.Stored{
					{Rollout: withID(two, "r1"), Targets: []device.ID{"e1", "e2"}, Devices: make([]rollout.Device, 2)},
					{Rollout: withID(two, "r2"), Targets: []device.ID{"e1", "e2"}, Devices: make([]rollout.Device, 2)},
				},
				Events: map[string][]rollout.Event{"r1": {seq(created, 1)}, "r2": {seq(created, 1)}},
			},
		},
		{
			name: "a commit stores every kind of write at once",
			steps: []step{
				{create: &three, targets: []device.ID{"j1", "d2", "d3"}, wantID: "r1"},
				{commit: &rollout.Changes{
					Rollouts:    []rollout.Rollout{running},
					Devices:     []rollout.DeviceWrite{{Position: pos("r1", 0), Device: dev}, {Position: pos("r1", 2), Device: failed}},
					Errors:      []rollout.ErrorWrite{{Position: pos("r1", 2), Text: "boom"}},
					Events:      []rollout.EventWrite{{Rollout: "r1", Event: event(rollout.EventBatchStarted, "a")}, {Rollout: "r1", Event: event(rollout.EventDeviceFailed, "b")}},
					Intents:     []rollout.IntentWrite{{Position: pos("r1", 1), Command: []byte(`{"version":"2.0.0"}`)}},
					Executions:  []rollout.ExecWrite{{Rollout: "r1", Device: "j1", Patch: put(queued)}},
					JobsDevices: []rollout.JobsMark{{Device: "j1", Since: at}},
				}, wantSeq: []uint64{2, 3}},
			},
			want: State{
				Rollouts: []rollout.Stored{{Rollout: running, Targets: []device.ID{"j1", "d2", "d3"},
					Devices:    []rollout.Device{dev, {}, failed},
					Intents:    map[int][]byte{1: []byte(`{"version":"2.0.0"}`)},
					Executions: map[device.ID]rollout.ExecRecord{"j1": queued}}},
				Events: map[string][]rollout.Event{"r1": {seq(created, 1), seq(event(rollout.EventBatchStarted, "a"), 2), seq(event(rollout.EventDeviceFailed, "b"), 3)}},
				Errors: map[string]map[int]string{"r1": {2: "boom"}},
				Jobs:   []device.ID{"j1"},
			},
		},
		{
			name: "the last write of a record wins; delivered intents go after new ones",
			steps: []step{
				{create: &three, targets: []device.ID{"d1", "d2", "d3"}, wantID: "r1"},
				{commit: &rollout.Changes{
					Intents: []rollout.IntentWrite{{Position: pos("r1", 0), Command: []byte(`{"a":1}`)}, {Position: pos("r1", 1), Command: []byte(`{"b":1}`)}},
				}},
				{commit: &rollout.Changes{
					Devices:   []rollout.DeviceWrite{{Position: pos("r1", 1), Device: failed}, {Position: pos("r1", 1), Device: dev}},
					Errors:    []rollout.ErrorWrite{{Position: pos("r1", 1), Text: "first"}, {Position: pos("r1", 1), Text: "second"}},
					Intents:   []rollout.IntentWrite{{Position: pos("r1", 2), Command: []byte(`{"c":1}`)}, {Position: pos("r1", 1), Command: []byte(`{"b":2}`)}},
					Delivered: []rollout.Position{pos("r1", 0), pos("r1", 2), pos("r1", 0)},
				}},
			},
			want: State{
				Rollouts: []rollout.Stored{{Rollout: withID(three, "r1"), Targets: []device.ID{"d1", "d2", "d3"},
					Devices: []rollout.Device{{}, dev, {}}, Intents: map[int][]byte{1: []byte(`{"b":2}`)}}},
				Events: map[string][]rollout.Event{"r1": {seq(created, 1)}},
				Errors: map[string]map[int]string{"r1": {1: "second"}},
			},
		},
		{
			name: "execution patches see the record stored before, in order",
			steps: []step{
				{create: &two, targets: []device.ID{"j1", "j2"}, wantID: "r1"},
				{commit: &rollout.Changes{Executions: []rollout.ExecWrite{
					{Rollout: "r1", Device: "j1", Patch: func(old rollout.ExecRecord, found bool) rollout.ExecRecord {
						if found {
							return rollout.ExecRecord{Index: 0, Number: 99}
						}
						return queued
					}},
					{Rollout: "r1", Device: "j1", Patch: func(old rollout.ExecRecord, found bool) rollout.ExecRecord {
						if !found || !reflect.DeepEqual(old, queued) {
							return rollout.ExecRecord{Index: 0, Number: 98}
						}
						return started
					}},
				}}},
			},
			want: State{
				Rollouts: []rollout.Stored{{Rollout: withID(two, "r1"), Targets: []device.ID{"j1", "j2"},
					Devices: make([]rollout.Device, 2), Executions: map[device.ID]rollout.ExecRecord{"j1": started}}},
				Events: map[string][]rollout.Event{"r1": {seq(created, 1)}},
			},
		},
		{
			name: "a target list grows; the device records stay",
			steps: []step{
				{create: &two, targets: []device.ID{"d1", "d2"}, wantID: "r1"},
				{commit: &rollout.Changes{Devices: []rollout.DeviceWrite{{Position: pos("r1", 1), Device: dev}}}},
				{commit: &rollout.Changes{
					Rollouts: []rollout.Rollout{withID(three, "r1")},
					Targets:  []rollout.TargetList{{Rollout: "r1", Targets: []device.ID{"d1", "d2", "d9"}}},
					Events:   []rollout.EventWrite{{Rollout: "r1", Event: event(rollout.EventDevicesAdded, "1 devices in 1 batches")}},
				}, wantSeq: []uint64{2}},
			},
			want: State{
				Rollouts: []rollout.Stored{{Rollout: withID(three, "r1"), Targets: []device.ID{"d1", "d2", "d9"},
					Devices: []rollout.Device{{}, dev, {}}}},
				Events: map[string][]rollout.Event{"r1": {seq(created, 1), seq(event(rollout.EventDevicesAdded, "1 devices in 1 batches"), 2)}},
			},
		},
		{
			name: "a Jobs mark is kept once, whatever rollout",
			steps: []step{
				{commit: &rollout.Changes{JobsDevices: []rollout.JobsMark{{Device: "j2", Since: at}, {Device: "j2", Since: at.Add(time.Hour)}}}},
				{reopen: true},
				{commit: &rollout.Changes{JobsDevices: []rollout.JobsMark{{Device: "j2", Since: at.Add(2 * time.Hour)}}}},
			},
			want: State{Jobs: []device.ID{"j2"}},
		},
		{
			name: "a commit that fails leaves nothing, not even a sequence number",
			steps: []step{
				{create: &two, targets: []device.ID{"d1", "d2"}, wantID: "r1"},
				{commit: &rollout.Changes{
					Rollouts:    []rollout.Rollout{withID(record(2, rollout.StateRunning), "r1")},
					Devices:     []rollout.DeviceWrite{{Position: pos("r1", 0), Device: dev}},
					Errors:      []rollout.ErrorWrite{{Position: pos("r1", 0), Text: "lost"}},
					Events:      []rollout.EventWrite{{Rollout: "r1", Event: event(rollout.EventState, "lost")}},
					Intents:     []rollout.IntentWrite{{Position: pos("r1", 1), Command: []byte(`{}`)}},
					Executions:  []rollout.ExecWrite{{Rollout: "r9", Device: "j1", Patch: put(queued)}},
					JobsDevices: []rollout.JobsMark{{Device: "j1", Since: at}},
				}, wantErr: rollout.ErrNotFound},
				{commit: &rollout.Changes{Events: []rollout.EventWrite{{Rollout: "r1", Event: event(rollout.EventState, "kept")}}}, wantSeq: []uint64{2}},
			},
			want: State{
				Rollouts: []rollout.Stored{{Rollout: withID(two, "r1"), Targets: []device.ID{"d1", "d2"}, Devices: make([]rollout.Device, 2)}},
				Events:   map[string][]rollout.Event{"r1": {seq(created, 1), seq(event(rollout.EventState, "kept"), 2)}},
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			s, closeStore := open(t, dir)
			for k, st := range tc.steps {
				if st.reopen {
					closeStore()
					s, closeStore = open(t, dir)
					continue
				}
				if st.create != nil {
					r, first, err := s.Create(t.Context(), *st.create, st.targets, created)
					if !matches(t, k, err, st.wantErr) {
						continue
					}
					if r.ID != st.wantID || first.Seq != 1 || !reflect.DeepEqual(withID(r, ""), *st.create) {
						t.Errorf("step %d: Create = %s (%+v), first event seq %d; want %s, the same record and seq 1", k, r.ID, r, first.Seq, st.wantID)
					}
					continue
				}
				evs, err := s.Commit(t.Context(), st.commit)
				if !matches(t, k, err, st.wantErr) {
					continue
				}
				var seqs []uint64
				for i, ev := range evs {
					seqs = append(seqs, ev.Seq)
					if want := seq(st.commit.Events[i].Event, ev.Seq); !reflect.DeepEqual(ev, want) {
						t.Errorf("step %d: event %d = %+v, want %+v", k, i, ev, want)
					}
				}
				if !slices.Equal(seqs, st.wantSeq) {
					t.Errorf("step %d: Commit gave event seqs %v, want %v", k, seqs, st.wantSeq)
				}
			}
			got := Dump(t, s)
			closeStore()
			s, closeStore = open(t, dir)
			defer closeStore()
			again := Dump(t, s)
			compare(t, "before reopening", got, tc.want)
			compare(t, "after reopening", again, tc.want)
		})
	}
}

// matches checks a call's error against want, and reports whether the
// call succeeded (its answer is to be checked).
func matches(t *testing.T, step int, err, want error) bool {
	t.Helper()
	switch {
	case want == nil && err != nil:
		t.Errorf("step %d: %v", step, err)
	case want != nil && !errors.Is(err, want):
		t.Errorf("step %d: error %v, want %v", step, err, want)
	}
	return err == nil && want == nil
}

func compare(t *testing.T, when string, got, want State) {
	t.Helper()
	norm := func(s State) string {
		for i := range s.Rollouts {
			if len(s.Rollouts[i].Intents) == 0 {
				s.Rollouts[i].Intents = nil
			}
			if len(s.Rollouts[i].Executions) == 0 {
				s.Rollouts[i].Executions = nil
			}
		}
		for id, e := range s.Errors {
			if len(e) == 0 {
				delete(s.Errors, id)
			}
		}
		if len(s.Errors) == 0 {
			s.Errors = nil
		}
		b, err := json.MarshalIndent(s, "", " ")
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	if g, w := norm(got), norm(want); g != w {
		t.Errorf("%s:\ngot  %s\nwant %s", when, g, w)
	}
}

// Dump reads everything s holds about its rollouts through its read
// methods, and the Jobs marks of the probed devices.
func Dump(t testing.TB, s rollout.Store) State {
	t.Helper()
	ctx := t.Context()
	rs, err := s.Rollouts(ctx)
	if err != nil {
		t.Fatalf("Rollouts: %v", err)
	}
	slices.SortFunc(rs, func(a, b rollout.Rollout) int { return compareIDs(a.ID, b.ID) })
	var st State
	for _, r := range rs {
		got, err := s.Load(ctx, r.ID)
		if err != nil {
			t.Fatalf("Load(%s): %v", r.ID, err)
		}
		if one, err := s.Rollout(ctx, r.ID); err != nil || !reflect.DeepEqual(one, r) || !reflect.DeepEqual(got.Rollout, r) {
			t.Errorf("Rollout(%s) = %+v, %v and Load's record %+v; want Rollouts' %+v", r.ID, one, err, got.Rollout, r)
		}
		st.Rollouts = append(st.Rollouts, got)
		evs, err := s.Events(ctx, r.ID, 0)
		if err != nil {
			t.Fatalf("Events(%s): %v", r.ID, err)
		}
		if st.Events == nil {
			st.Events = map[string][]rollout.Event{}
		}
		st.Events[r.ID] = evs
		errs, err := s.Errors(ctx, r.ID, nil)
		if err != nil {
			t.Fatalf("Errors(%s): %v", r.ID, err)
		}
		if st.Errors == nil {
			st.Errors = map[string]map[int]string{}
		}
		st.Errors[r.ID] = errs
		for dev, rec := range got.Executions {
			one, found, err := s.Execution(ctx, r.ID, dev)
			if err != nil || !found || !reflect.DeepEqual(one, rec) {
				t.Errorf("Execution(%s, %s) = %+v, %t, %v; want Load's %+v", r.ID, dev, one, found, err, rec)
			}
		}
	}
	for _, dev := range probed {
		ok, err := s.JobsDevice(ctx, dev)
		if err != nil {
			t.Fatalf("JobsDevice(%s): %v", dev, err)
		}
		if ok {
			st.Jobs = append(st.Jobs, dev)
		}
	}
	return st
}

// compareIDs orders "r2" before "r10".
func compareIDs(a, b string) int {
	if len(a) != len(b) {
		return len(a) - len(b)
	}
	return strings.Compare(a, b)
}

// seeded opens a store in a new dir holding rollout r1 with n targets
// t0…, the records of the even positions, and the errors of those
// divisible by 3.
func seeded(t *testing.T, open Opener, n int) (rollout.Store, []device.ID, []rollout.Device) {
	t.Helper()
	s, closeStore := open(t, t.TempDir())
	t.Cleanup(closeStore)
	targets := make([]device.ID, n)
	devs := make([]rollout.Device, n)
	c := &rollout.Changes{}
	for i := range targets {
		targets[i] = device.ID(fmt.Sprintf("t%d", i))
		if i%2 == 0 {
			devs[i] = rollout.Device{State: rollout.DeviceSucceeded, Attempt: 1, At: int64(i)}
			c.Devices = append(c.Devices, rollout.DeviceWrite{Position: pos("r1", i), Device: devs[i]})
		}
		if i%3 == 0 {
			c.Errors = append(c.Errors, rollout.ErrorWrite{Position: pos("r1", i), Text: fmt.Sprintf("e%d", i)})
		}
	}
	if _, _, err := s.Create(t.Context(), record(n, rollout.StateRunning), targets, event(rollout.EventCreated, "")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Commit(t.Context(), c); err != nil {
		t.Fatal(err)
	}
	return s, targets, devs
}

func testTargets(t *testing.T, open Opener) {
	const n = 10
	s, targets, devs := seeded(t, open, n)
	for start := 0; start <= n+2; start++ {
		for _, limit := range []int{1, 3, n + 5} {
			var got []string
			err := s.Targets(t.Context(), "r1", start, func(i int, id device.ID, d rollout.Device) bool {
				got = append(got, fmt.Sprintf("%d:%s:%+v", i, id, d))
				return len(got) < limit
			})
			if err != nil {
				t.Fatalf("Targets from %d: %v", start, err)
			}
			var want []string
			for i := start; i < n && len(want) < limit; i++ {
				want = append(want, fmt.Sprintf("%d:%s:%+v", i, targets[i], devs[i]))
			}
			if !slices.Equal(got, want) {
				t.Errorf("Targets from %d, stopping after %d: %v, want %v", start, limit, got, want)
			}
		}
	}
}

func testErrors(t *testing.T, open Opener) {
	s, _, _ := seeded(t, open, 10)
	tests := []struct {
		which []int
		want  map[int]string
	}{
		{nil, map[int]string{0: "e0", 3: "e3", 6: "e6", 9: "e9"}},
		{[]int{}, map[int]string{}},
		{[]int{1, 3, 9, 42}, map[int]string{3: "e3", 9: "e9"}},
	}
	for _, tc := range tests {
		got, err := s.Errors(t.Context(), "r1", tc.which)
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Errors(%v) = %v, %v; want %v", tc.which, got, err, tc.want)
		}
	}
}

func testEvents(t *testing.T, open Opener) {
	s, _, _ := seeded(t, open, 2)
	c := &rollout.Changes{}
	for i := range 5 {
		c.Events = append(c.Events, rollout.EventWrite{Rollout: "r1", Event: event(rollout.EventState, fmt.Sprint(i))})
	}
	if _, err := s.Commit(t.Context(), c); err != nil {
		t.Fatal(err)
	}
	for _, after := range []uint64{0, 1, 4, 6, 7, 1<<64 - 1} {
		evs, err := s.Events(t.Context(), "r1", after)
		if err != nil {
			t.Fatalf("Events after %d: %v", after, err)
		}
		var got []uint64
		for _, ev := range evs {
			got = append(got, ev.Seq)
		}
		var want []uint64
		for n := after + 1; n <= 6 && n > after; n++ {
			want = append(want, n)
		}
		if !slices.Equal(got, want) {
			t.Errorf("Events after %d: seqs %v, want %v", after, got, want)
		}
	}
}

func testNotFound(t *testing.T, open Opener) {
	s, _, _ := seeded(t, open, 2)
	ctx := t.Context()
	const id = "r404"
	calls := map[string]func() error{
		"Rollout": func() error { _, err := s.Rollout(ctx, id); return err },
		"Load":    func() error { _, err := s.Load(ctx, id); return err },
		"Targets": func() error {
			return s.Targets(ctx, id, 0, func(int, device.ID, rollout.Device) bool { return true })
		},
		"Errors":    func() error { _, err := s.Errors(ctx, id, nil); return err },
		"Events":    func() error { _, err := s.Events(ctx, id, 0); return err },
		"Execution": func() error { _, _, err := s.Execution(ctx, id, "j1"); return err },
		"Commit": func() error {
			_, err := s.Commit(ctx, &rollout.Changes{Devices: []rollout.DeviceWrite{{Position: pos(id, 0)}}})
			return err
		},
	}
	for name, call := range calls {
		if err := call(); !errors.Is(err, rollout.ErrNotFound) {
			t.Errorf("%s(%s) = %v, want ErrNotFound", name, id, err)
		}
	}
	if _, found, err := s.Execution(ctx, "r1", "nobody"); err != nil || found {
		t.Errorf("Execution of a device without one = %t, %v; want false, nil", found, err)
	}
}

func testCancelled(t *testing.T, open Opener) {
	dir := t.TempDir()
	s, closeStore := open(t, dir)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, _, err := s.Create(ctx, record(1, rollout.StateCreated), []device.ID{"d1"}, event(rollout.EventCreated, "")); !errors.Is(err, context.Canceled) {
		t.Errorf("Create with a cancelled ctx = %v, want context.Canceled", err)
	}
	if _, err := s.Commit(ctx, &rollout.Changes{JobsDevices: []rollout.JobsMark{{Device: "j1", Since: at}}}); !errors.Is(err, context.Canceled) {
		t.Errorf("Commit with a cancelled ctx = %v, want context.Canceled", err)
	}
	closeStore()
	s, closeStore = open(t, dir)
	defer closeStore()
	compare(t, "after cancelled calls", Dump(t, s), State{})
	if r, _, err := s.Create(t.Context(), record(1, rollout.StateCreated), []device.ID{"d1"}, event(rollout.EventCreated, "")); err != nil || r.ID != "r1" {
		t.Errorf("Create after a cancelled one = %s, %v; want r1", r.ID, err)
	}
}
