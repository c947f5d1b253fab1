package server_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/internal/lbtest"
	"github.com/umbra-iot/umbra/internal/natstest"
	"github.com/umbra-iot/umbra/internal/server"
	"github.com/umbra-iot/umbra/wire"
)

// openFault fails a node's opens of the planner while failing is set, and
// records when it was called.
type openFault struct {
	mu      sync.Mutex // guards the fields below
	failing bool
	calls   []time.Time
}

func (f *openFault) call() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, time.Now())
	if f.failing {
		return errors.New("injected: the rollout bucket cannot be read")
	}
	return nil
}

func (f *openFault) set(failing bool) { f.mu.Lock(); f.failing = failing; f.mu.Unlock() }

// tries returns how many opens were tried, and when the first was.
func (f *openFault) tries() (int, time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.calls) == 0 {
		return 0, time.Time{}
	}
	return len(f.calls), f.calls[0]
}

// want503 checks that a rollout call through r answers 503 with
// Retry-After and the JSON body saying no node runs the planner.
func want503(t *testing.T, r *rig) {
	t.Helper()
	code, h, raw := r.httpCall(t, "GET", "/v1/rollouts", "")
	var e wire.ErrorBody
	if err := json.Unmarshal(raw, &e); err != nil || code != http.StatusServiceUnavailable || e.Code != 503 ||
		!strings.Contains(e.Message, "no node runs the rollout planner") || h.Get("Retry-After") == "" {
		t.Errorf("GET /v1/rollouts = %d (Retry-After %q) %s, want 503 with Retry-After saying no node runs the planner",
			code, h.Get("Retry-After"), raw)
	}
}

// waitServes waits until a rollout call through r succeeds.
func waitServes(t *testing.T, r *rig, what string) {
	t.Helper()
	eventually(t, what, func() string {
		if code, _, raw := r.httpCall(t, "GET", "/v1/rollouts", ""); code != http.StatusOK {
			return fmt.Sprintf("GET /v1/rollouts = %d %s", code, raw)
		}
		return ""
	})
}

// TestClusterModePlannerOpenFailureHandsOver: the planner lease's holder
// whose planner does not open (an injected failure) releases the lease
// after PlannerOpenRetries failures in a row. With another node, that
// node takes the lease within (retries−1) s of the first failure (plus a
// second's margin for a loaded machine and the acquisition) and serves
// the rollout calls of both nodes, while the failed node stays out. Alone,
// the node keeps trying (taking the lease again after its stay-out),
// answers 503 meanwhile, and runs the planner once the failure is gone.
func TestClusterModePlannerOpenFailureHandsOver(t *testing.T) {
	const ttl, retries = 2 * time.Second, 3
	for _, tc := range []struct {
		name    string
		other   bool          // a second node, whose planner opens
		stayOut time.Duration // the failing node's
	}{
		{"another node takes over", true, time.Minute},
		{"the only node keeps trying", false, time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns, lb := natstest.Start(t), lbtest.New(t)
			fault := &openFault{failing: true}
			a := plannerNode(t, ns, lb, "a", ttl, false, func(c *server.Config) {
				c.PlannerOpenRetries, c.PlannerStayOut = retries, tc.stayOut
				server.SetPlannerOpenFault(c, fault.call)
			})
			a.waitPlanner(t, "held by a", func(h string) bool { return h == "a" })
			want503(t, a)

			if tc.other {
				b := plannerNode(t, ns, lb, "b", ttl, false)
				a.waitPlanner(t, "handed to b", func(h string) bool { return h == "b" })
				n, first := fault.tries()
				took, bound := time.Since(first), (retries-1)*time.Second+2*time.Second
				t.Logf("node a failed %d opens; node b holds the lease %v after the first (bound %v)", n, took.Round(time.Millisecond), bound)
				if took > bound {
					t.Errorf("handover took %v after the first failed open, beyond %v", took, bound)
				}
				waitServes(t, b, "node b to serve rollout calls")
				waitServes(t, a, "node a to forward rollout calls to node b")
				if got := a.metric(t, "umbra_planner_handovers_total"); got != 1 {
					t.Errorf("node a: umbra_planner_handovers_total = %v, want 1", got)
				}
				if got := a.metric(t, "umbra_planner_open_failures_total"); got != retries {
					t.Errorf("node a: umbra_planner_open_failures_total = %v, want %d", got, retries)
				}
				if got := b.metric(t, "umbra_planner_open_failures_total"); got != 0 {
					t.Errorf("node b: umbra_planner_open_failures_total = %v, want 0", got)
				}
				if n, _ := fault.tries(); n != retries {
					t.Errorf("node a tried %d opens, want %d (it stays out for %v)", n, retries, tc.stayOut)
				}
				return
			}

			// Alone: it releases, stays out, takes the lease again and
			// fails again; rollout calls answer 503 all along.
			eventually(t, "node a to take the lease again after its stay-out and fail again", func() string {
				if n, _ := fault.tries(); n <= retries {
					return fmt.Sprintf("%d opens tried", n)
				}
				return ""
			})
			want503(t, a)
			if got := a.metric(t, "umbra_planner_handovers_total"); got < 1 {
				t.Errorf("umbra_planner_handovers_total = %v, want at least 1", got)
			}
			fault.set(false)
			waitServes(t, a, "node a to run its planner once the failure is gone")
			a.waitPlanner(t, "held by a", func(h string) bool { return h == "a" })
		})
	}
}

// TestPlannerHandoverConfigRefused: negative planner handover settings
// are refused before anything is created.
func TestPlannerHandoverConfigRefused(t *testing.T) {
	for _, tc := range []struct {
		name string
		set  func(*server.Config)
	}{
		{"negative retries", func(c *server.Config) { c.PlannerOpenRetries = -1 }},
		{"negative stay-out", func(c *server.Config) { c.PlannerStayOut = -time.Second }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "data")
			cfg := server.Config{DataDir: dir, MQTTAddr: "127.0.0.1:0", Anonymous: true, Logger: testLogger(t)}
			tc.set(&cfg)
			s, err := server.Open(t.Context(), cfg)
			if !errors.Is(err, server.ErrInvalidConfig) || !strings.Contains(err.Error(), "PlannerOpenRetries") {
				if s != nil {
					s.Close(t.Context())
				}
				t.Fatalf("Open = %v, want ErrInvalidConfig naming the planner handover settings", err)
			}
			if _, err := os.Stat(dir); !os.IsNotExist(err) {
				t.Errorf("the data dir was created (%v)", err)
			}
		})
	}
}

// TestClusterModeLargeCreateThroughNonHolder: a rollout of 60,000 explicit
// devices (2.3 MB of IDs, over --planner-rpc-max-body) created through a
// node that does not hold the planner lease is sent in parts and has
// every device.
func TestClusterModeLargeCreateThroughNonHolder(t *testing.T) {
	ns, lb := natstest.Start(t), lbtest.New(t)
	a := plannerNode(t, ns, lb, "a", 2*time.Second, false)
	a.waitPlanner(t, "held by a", func(h string) bool { return h == "a" })
	b := plannerNode(t, ns, lb, "b", 2*time.Second, false)
	a.mustUpload(t, newVersion)
	ids := make([]string, 60_000)
	for i := range ids {
		ids[i] = fmt.Sprintf("sensor-%029d", i)
	}
	body, _ := json.Marshal(map[string]any{"firmware": newVersion, "devices": ids, "batch_size": 1000,
		"start_at": time.Now().Add(time.Hour).UTC().Format(time.RFC3339)}) // no batch starts: the test reads the targets
	start := time.Now()
	code, _, raw := b.httpCall(t, "POST", "/v1/rollouts", string(body))
	if code != http.StatusCreated {
		t.Fatalf("POST /v1/rollouts of %d devices (%d bytes) through node b: %d %.300s", len(ids), len(body), code, raw)
	}
	t.Logf("created through node b in %v", time.Since(start).Round(time.Millisecond))
	var ro wire.Rollout
	if err := json.Unmarshal(raw, &ro); err != nil {
		t.Fatal(err)
	}
	if ro.Targets != len(ids) {
		t.Errorf("the rollout has %d targets, want %d", ro.Targets, len(ids))
	}
	seen := map[string]bool{}
	for cursor := "0"; cursor != ""; {
		code, _, raw := b.httpCall(t, "GET", fmt.Sprintf("/v1/rollouts/%s/devices?limit=1000&cursor=%s", ro.ID, cursor), "")
		var page wire.RolloutDevices
		if err := json.Unmarshal(raw, &page); err != nil || code != http.StatusOK {
			t.Fatalf("devices from %s: %d %.300s", cursor, code, raw)
		}
		for _, d := range page.Devices {
			seen[string(d.Device)] = true
		}
		cursor = page.Next
	}
	if len(seen) != len(ids) {
		t.Errorf("the rollout lists %d devices, want %d", len(seen), len(ids))
	}
	for _, id := range ids {
		if !seen[id] {
			t.Fatalf("device %s is not in the rollout", id)
		}
	}
}
