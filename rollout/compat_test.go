package rollout_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/firmware"
	"github.com/umbra-iot/umbra/rollout"
)

// TestOpensFileOfEarlierVersion opens testdata/v0/rollout.db, written by
// the planner of commit 5e0005d (before its bbolt code moved to
// rollout/boltstore), and checks that a planner on it shows exactly what
// that planner showed (planner.golden.json, dumped by it at the end of the
// same run): r1 succeeded and settled (3 devices, one with a previous
// version), r2 paused with a Jobs device's execution in progress, a
// silent device, a failed one with its error and an undelivered intent,
// r3 aborted and settled, r4 dynamic, paused, with a selector and a
// window. Every shadow write fails and the clock stands still, so the
// planner changes nothing while it is looked at.
func TestOpensFileOfEarlierVersion(t *testing.T) {
	dir := t.TempDir()
	raw, err := os.ReadFile(filepath.Join("testdata", "v0", "rollout.db"))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "rollout.db")
	if err := os.WriteFile(path, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	fs := newFakeShadows(silent)
	reports, err := os.ReadFile(filepath.Join("testdata", "v0", "reports.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(reports, &fs.reports); err != nil {
		t.Fatal(err)
	}
	for _, id := range []device.ID{"a", "b", "c", "j1", "s1", "s2", "f1", "x1", "x2", "d1", "d2"} {
		fs.failing[id] = true
	}
	clk := &clock{now: time.Date(2026, 1, 2, 3, 7, 6, 0, time.UTC)}
	p := mustOpen(t, path, fs, newFakeFirmware("1.0.0", "2.0.0"), func(c *rollout.Config) {
		c.Now, c.Tick = clk.Now, time.Hour
	})
	got := dumpPlanner(t, p)
	want, err := os.ReadFile(filepath.Join("testdata", "v0", "planner.golden.json"))
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(want) {
		t.Errorf("planner on the earlier file shows\n%s\nwant\n%s", got, want)
	}
}

// dumpPlanner returns, as indented JSON, what p shows of every rollout
// (List, Get, Devices, Events, a filtered page) and of the executions of
// devices j1 and s1 in r2, and whether versions 1.0.0 and 2.0.0 are in use.
func dumpPlanner(t *testing.T, p *rollout.Planner) []byte {
	t.Helper()
	ctx := t.Context()
	out := map[string]any{}
	list, err := p.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	out["list"] = list
	for _, r := range list {
		st, err := p.Get(ctx, r.ID)
		if err != nil {
			t.Fatal(err)
		}
		ds, err := p.Devices(ctx, r.ID)
		if err != nil {
			t.Fatal(err)
		}
		evs, err := p.Events(ctx, r.ID)
		if err != nil {
			t.Fatal(err)
		}
		page, next, err := p.DevicesPage(ctx, r.ID, []rollout.DeviceState{rollout.DeviceFailed, rollout.DeviceSucceeded, rollout.DeviceNotified}, 1, 2)
		if err != nil {
			t.Fatal(err)
		}
		out[r.ID] = map[string]any{"status": st, "devices": ds, "events": evs, "page": page, "next": next}
	}
	x, ok, err := p.NextExecution(ctx, "j1")
	out["next_j1"] = map[string]any{"x": x, "ok": ok, "err": err}
	d, err := p.DescribeExecution(ctx, "j1", "r2", 0)
	out["describe_j1"] = map[string]any{"x": d, "err": err}
	s, err := p.DescribeExecution(ctx, "s1", "r2", 0)
	out["describe_s1"] = map[string]any{"x": s, "err": err}
	for _, v := range []firmware.Version{"1.0.0", "2.0.0"} {
		id, used, err := p.InUse(ctx, v)
		out["inuse_"+string(v)] = map[string]any{"id": id, "used": used, "err": err}
	}
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return b
}
