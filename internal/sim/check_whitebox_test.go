package sim

import (
	"testing"
)

// TestMachineBehind checks the inference from a delta that the shadow does
// not hold the device's last report.
func TestMachineBehind(t *testing.T) {
	cmd := signedCommand(testKey, "2.0.0", "job-2")
	last := report{Version: "2.0.0", State: StateUpdated, Job: "job-2"}
	tests := []struct {
		name     string
		reported report // what the shadow holds
		desired  command
		version  int64 // of the delta
		deltaVer int64 // the machine's last applied delta version
		want     bool
	}{
		{name: "shadow holds the last report", reported: last, desired: cmd, version: 9, want: false},
		{name: "overtaken by the rebooting report", reported: report{Version: "1.0.0", State: StateRebooting, Job: "job-2"},
			desired: cmd, version: 9, want: true},
		{name: "other job reported", reported: report{Version: "2.0.0", State: StateUpdated, Job: "job-1"},
			desired: cmd, version: 9, want: true},
		{name: "a new command", reported: last, desired: signedCommand(testKey, "3.0.0", "job-3"), version: 9, want: false},
		{name: "older than the last delta applied", reported: report{Version: "1.0.0", State: StateRebooting, Job: "job-2"},
			desired: cmd, version: 9, deltaVer: 10, want: false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := newMachine(&world{}, "2.0.0")
			m.last, m.deltaVer = last, tc.deltaVer
			ver, got := m.behind(deltaFor(tc.desired, tc.reported, tc.version))
			if got != tc.want {
				t.Errorf("behind = %v, want %v", got, tc.want)
			}
			if got && ver != tc.version {
				t.Errorf("behind version = %d, want %d", ver, tc.version)
			}
		})
	}
	t.Run("no firmware in the delta", func(t *testing.T) {
		m := newMachine(&world{}, "2.0.0")
		if _, got := m.behind([]byte(`{"state":{"led":"on"},"version":3}`)); got {
			t.Errorf("behind = true, want false")
		}
	})
}

// TestMachineShows checks the comparison of a get/accepted document with
// the device's last report.
func TestMachineShows(t *testing.T) {
	last := report{Version: "2.0.0", State: StateUpdated, Job: "job-2"}
	tests := []struct {
		name string
		doc  any
		want bool
	}{
		{name: "same report", doc: map[string]any{"state": map[string]any{"reported": map[string]any{"firmware": last}}, "version": 7}, want: true},
		{name: "stale state", doc: map[string]any{"state": map[string]any{"reported": map[string]any{"firmware": report{Version: "1.0.0", State: StateRebooting, Job: "job-2"}}}, "version": 7}},
		{name: "other job", doc: map[string]any{"state": map[string]any{"reported": map[string]any{"firmware": report{Version: "2.0.0", State: StateUpdated}}}, "version": 7}},
		{name: "no reported firmware", doc: map[string]any{"state": map[string]any{"desired": map[string]any{}}, "version": 7}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := newMachine(&world{}, "2.0.0")
			m.last = last
			got, ver, err := m.shows(mustJSON(tc.doc))
			if err != nil {
				t.Fatalf("shows: %v", err)
			}
			if got != tc.want || ver != 7 {
				t.Errorf("shows = %v, version %d, want %v, version 7", got, ver, tc.want)
			}
		})
	}
	if _, _, err := newMachine(&world{}, "1.0.0").shows([]byte("{")); err == nil {
		t.Errorf("shows(invalid JSON) error = nil, want an error")
	}
}
