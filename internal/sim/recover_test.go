package sim_test

import (
	"log/slog"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/internal/sim"
)

// await waits up to timeout for cond (called with e.mu held) to hold after
// an update; unlike waitFor it may run off the test goroutine.
func (e *engine) await(timeout time.Duration, cond func() bool) bool {
	deadline := time.After(timeout)
	for {
		e.mu.Lock()
		ok, changed := cond(), e.changed
		e.mu.Unlock()
		if ok {
			return true
		}
		select {
		case <-changed:
		case <-deadline:
			return false
		}
	}
}

func isReport(fw map[string]any, state, version string) bool {
	return fw["state"] == state && fw["version"] == version
}

// TestFleetRecoversFinalReport makes the shadow miss a device's final
// report after a reboot ("updated" with the new version) in each way it
// can, and checks that the device reports again until the shadow shows it.
func TestFleetRecoversFinalReport(t *testing.T) {
	tests := []struct {
		name string
		// intercept gets the engine and the reports; see engine.intercept.
		intercept func(e *engine, id string, fw map[string]any) int
		// stale says whether the history must hold a stale report after
		// the final one (it was overtaken).
		stale bool
	}{
		{
			// The broker acknowledges a PUBLISH before its handler runs,
			// and a reconnect with the same client ID does not wait for
			// the old connection's handler: the "rebooting" report sent
			// just before the reboot can reach the shadow after the
			// "updated" report sent on the new connection. Hold it until
			// then (or 5s, if the broker serialises the two).
			name: "overtaken by the report sent before the reboot",
			intercept: func(e *engine, id string, fw map[string]any) int {
				if isReport(fw, sim.StateRebooting, "1.0.0") {
					e.await(5*time.Second, func() bool { return isReport(e.reported[id], sim.StateUpdated, "2.0.0") })
				}
				return 0
			},
			stale: true,
		},
		{
			name: "rejected as rate limited",
			intercept: func() func(*engine, string, map[string]any) int {
				var n atomic.Int32
				return func(_ *engine, _ string, fw map[string]any) int {
					if isReport(fw, sim.StateUpdated, "2.0.0") && n.Add(1) <= 2 {
						return 429
					}
					return 0
				}
			}(),
		},
		{
			name: "lost",
			intercept: func() func(*engine, string, map[string]any) int {
				var n atomic.Int32
				return func(_ *engine, _ string, fw map[string]any) int {
					if isReport(fw, sim.StateUpdated, "2.0.0") && n.Add(1) == 1 {
						return -1
					}
					return 0
				}
			}(),
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			eng, fw, url := newRig(t)
			f := mustOpen(t, sim.Config{Server: url, Devices: 1, QoS: 1, Seed: 1, PublicKey: fw.publicKey(),
				RebootTime: time.Millisecond,
				Logger:     slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))})
			wait(t, f, "connected", func(s sim.Stats) bool { return s.Connected == 1 })
			id := string(f.IDs()[0])
			eng.waitFor(t, "boot report", func() bool { return eng.reported[id] != nil })
			eng.setIntercept(func(id string, fw map[string]any) int { return tc.intercept(eng, id, fw) })

			eng.setDesired(id, fw.command(id, "2.0.0", "job-2", "9999999999"))
			eng.waitFor(t, "the shadow to show updated@2.0.0 last", func() bool {
				h := eng.history[id]
				if len(h) == 0 || !isReport(h[len(h)-1], sim.StateUpdated, "2.0.0") {
					return false
				}
				// With a stale report expected, wait until it was applied.
				return !tc.stale || slices.ContainsFunc(h, func(fw map[string]any) bool {
					return isReport(fw, sim.StateRebooting, "1.0.0")
				})
			})
			if got := eng.lastJob(id); got != "job-2" {
				t.Errorf("reported job = %v, want job-2", got)
			}
			st := f.Stats()
			h := eng.states(id)
			overtaken := slices.Index(h, "rebooting@1.0.0") > slices.Index(h, "updated@2.0.0")
			switch {
			case tc.stale && !overtaken:
				t.Logf("the broker applied the reports in order: nothing to recover")
			case st.Resent == 0:
				t.Errorf("stats Resent = 0, want ≥ 1 (history %q)", h)
			}
			t.Logf("history %q, stats %+v", h, st)
		})
	}
}
