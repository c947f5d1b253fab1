package rolloutfeed_test

import (
	"errors"
	"testing"

	"github.com/umbra-iot/umbra/internal/metrics"
	"github.com/umbra-iot/umbra/internal/rolloutfeed"
	"github.com/umbra-iot/umbra/rollout"
)

// gauges returns the umbra_rollout_devices series of m as
// "rollout/state" → value.
func gauges(t *testing.T, m *metrics.Metrics) map[string]float64 {
	t.Helper()
	fams, err := m.Registry().Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	out := map[string]float64{}
	for _, fam := range fams {
		if fam.GetName() != "umbra_rollout_devices" {
			continue
		}
		for _, s := range fam.GetMetric() {
			var id, state string
			for _, l := range s.GetLabel() {
				switch l.GetName() {
				case "rollout":
					id = l.GetValue()
				case "state":
					state = l.GetValue()
				}
			}
			out[id+"/"+state] = s.GetGauge().GetValue()
		}
	}
	return out
}

func TestMetrics(t *testing.T) {
	m := metrics.New()
	st := newStatuses()
	f := mustOpen(t, rolloutfeed.Config{Publisher: newCapture(), Status: st.Status, Metrics: m, KeepFinished: 1})
	type counts = map[rollout.DeviceState]int
	steps := []struct {
		name   string
		set    []rollout.Status
		remove string
		sync   []string
		want   map[string]float64 // series that must have these values
		gone   []string           // rollouts that must have no series
	}{
		{
			name: "running",
			set:  []rollout.Status{status("r1", rollout.StateRunning, counts{rollout.DevicePending: 3, rollout.DeviceInstalling: 1})},
			sync: []string{"r1"},
			want: map[string]float64{"r1/pending": 3, "r1/installing": 1, "r1/succeeded": 0, "r1/timed_out": 0, "r1/already-installed": 0},
		},
		{
			name: "state emptied drops to zero",
			set:  []rollout.Status{status("r1", rollout.StateRunning, counts{rollout.DeviceSucceeded: 4})},
			sync: []string{"r1"},
			want: map[string]float64{"r1/pending": 0, "r1/installing": 0, "r1/succeeded": 4},
		},
		{
			name: "finished keeps final values",
			set:  []rollout.Status{status("r1", rollout.StateSucceeded, counts{rollout.DeviceSucceeded: 4})},
			sync: []string{"r1"},
			want: map[string]float64{"r1/succeeded": 4, "r1/pending": 0},
		},
		{
			name: "only KeepFinished finished rollouts keep series",
			set:  []rollout.Status{status("r2", rollout.StateAborted, counts{rollout.DeviceCanceled: 2})},
			sync: []string{"r2"},
			want: map[string]float64{"r2/canceled": 2},
			gone: []string{"r1"},
		},
		{
			name: "active rollouts do not count against KeepFinished",
			set:  []rollout.Status{status("r3", rollout.StatePaused, counts{rollout.DeviceFailed: 1})},
			sync: []string{"r3"},
			want: map[string]float64{"r2/canceled": 2, "r3/failed": 1},
		},
		{
			name:   "not found deletes",
			remove: "r3",
			sync:   []string{"r3"},
			want:   map[string]float64{"r2/canceled": 2},
			gone:   []string{"r3"},
		},
	}
	for _, step := range steps {
		t.Run(step.name, func(t *testing.T) {
			for _, s := range step.set {
				st.set(s)
			}
			if step.remove != "" {
				st.remove(step.remove)
			}
			if err := f.Sync(t.Context(), step.sync); err != nil && !errors.Is(err, rollout.ErrNotFound) {
				t.Fatalf("Sync: %v", err)
			}
			got := gauges(t, m)
			for k, want := range step.want {
				if v, ok := got[k]; !ok || v != want {
					t.Errorf("umbra_rollout_devices %s = %v (present %t), want %v", k, v, ok, want)
				}
			}
			for _, id := range step.gone {
				for k := range got {
					if len(k) > len(id) && k[:len(id)+1] == id+"/" {
						t.Errorf("series %s present, want every series of %s deleted", k, id)
					}
				}
			}
		})
	}
}
