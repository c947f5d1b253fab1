package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/internal/cluster"
	"github.com/umbra-iot/umbra/internal/lbtest"
	"github.com/umbra-iot/umbra/internal/natstest"
	"github.com/umbra-iot/umbra/internal/sim"
	"github.com/umbra-iot/umbra/internal/waitfor"
	"github.com/umbra-iot/umbra/rollout"
	"github.com/umbra-iot/umbra/wire"
)

// killLeaseTTL is the planner lease's TTL in the kill -9 tests: short, so
// a takeover is quick.
const killLeaseTTL = 2 * time.Second

// killCluster is the harness of the kill -9 tests: `umbra serve --nats`
// processes on a three-server NATS cluster (R3, as in production), behind
// one public URL (internal/lbtest), so the download URLs minted by a node
// keep working after it died.
type killCluster struct {
	t   *testing.T
	bin string
	ns  *natstest.Cluster
	lb  *lbtest.LB
}

// killNode is one node process of a killCluster.
type killNode struct {
	id   string
	proc *exec.Cmd
	mqtt string // host:port
	api  rolloutAPI
}

func newKillCluster(t *testing.T) *killCluster {
	t.Helper()
	return &killCluster{t: t, bin: buildUmbra(t), ns: natstest.StartCluster(t), lb: lbtest.New(t)}
}

// start starts node id and adds it to the load balancer, after the others.
func (c *killCluster) start(id string) killNode {
	c.t.Helper()
	cmd, m, h := startServe(c.t, c.bin, c.t.TempDir(), "--mqtt-addr", "127.0.0.1:0", "--ws-addr", "", "--http-addr", "127.0.0.1:0",
		"--insecure-anonymous", "--nats", strings.Join(c.ns.URLs(), ","), "--node-id", id, "--nats-replicas", strconv.Itoa(c.ns.Replicas()),
		"--planner-lease-ttl", killLeaseTTL.String(), "--public-url", c.lb.URL())
	c.lb.Add(h)
	return killNode{id: id, proc: cmd, mqtt: m, api: rolloutAPI{url: "http://" + h}}
}

// startHolder starts node id and waits until it holds the planner lease.
func (c *killCluster) startHolder(id string) killNode {
	c.t.Helper()
	n := c.start(id)
	waitfor.PollExplained(c.t, rolloutCrashWait, "node "+id+" to hold the planner lease", func() string {
		if h := n.planner(c.t); h != id {
			return fmt.Sprintf("holder %q", h)
		}
		return ""
	})
	return n
}

// planner is the planner lease's holder as node n sees it.
func (n killNode) planner(t *testing.T) string {
	t.Helper()
	var st wire.ClusterStatus
	n.api.mustDo(t, "GET", "/v1/cluster", "", http.StatusOK, &st)
	return st.Planner
}

// createRollout creates, through n, a rollout of version to ids in
// batches of batch.
func (n killNode) createRollout(t *testing.T, version string, ids []device.ID, batch int) rollout.Rollout {
	t.Helper()
	var ro rollout.Rollout
	n.api.mustDo(t, "POST", "/v1/rollouts", mustJSON(t, map[string]any{"firmware": version, "devices": ids, "batch_size": batch}),
		http.StatusCreated, &ro)
	return ro
}

// kill kills the node's process with SIGKILL and returns when.
func (n killNode) kill(t *testing.T) time.Time {
	t.Helper()
	if err := n.proc.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	return time.Now()
}

// waitTakeover waits until survivor sees a holder other than dead, and
// checks that it came within cluster.TakeoverBound of killed.
func waitTakeover(t *testing.T, survivor killNode, dead string, killed time.Time) {
	t.Helper()
	var holder string
	waitfor.PollExplained(t, rolloutCrashWait, "another node to hold the planner lease", func() string {
		if holder = survivor.planner(t); holder == "" || holder == dead {
			return fmt.Sprintf("holder %q", holder)
		}
		return ""
	})
	took, bound := time.Since(killed), cluster.TakeoverBound(killLeaseTTL)
	t.Logf("node %s killed; node %s holds the planner lease %v later (bound %v)", dead, holder, took.Round(time.Millisecond), bound)
	if took > bound {
		t.Errorf("takeover after %v, beyond the bound %v", took, bound)
	}
}

// waitRolloutEnd polls rollout id through n until it is no longer active;
// a failure says what diag says.
func waitRolloutEnd(t *testing.T, n killNode, id string, diag func() string) rollout.Status {
	t.Helper()
	var st rollout.Status
	waitfor.PollExplained(t, rolloutCrashWait, "rollout "+id+" to end after the kill", func() string {
		code, _, b := httpDo(t, "GET", n.api.url+"/v1/rollouts/"+id, "", "")
		if code == http.StatusServiceUnavailable {
			return "503: the new holder's planner is loading"
		}
		st = rollout.Status{}
		if code != http.StatusOK || json.Unmarshal(b, &st) != nil {
			t.Fatalf("GET /v1/rollouts/%s: %d %s", id, code, b)
		}
		if !st.State.Active() {
			return ""
		}
		return fmt.Sprintf("still %s, batches started %d, counts %v%s", st.State, st.Started, st.Counts, diag())
	})
	return st
}

// describeSome describes (sim.Fleet.Describe) the first devices of fleets
// that pick chooses, for failure messages.
func describeSome(fleets []*sim.Fleet, pick func(id device.ID, desc string) bool) string {
	var b strings.Builder
	k := 0
	for _, f := range fleets {
		for _, id := range f.IDs() {
			if desc := f.Describe(id); pick(id, desc) {
				if k++; k > 5 {
					b.WriteString("\n  …")
					return b.String()
				}
				b.WriteString("\n  " + desc)
			}
		}
	}
	return b.String()
}

// notInstalled is a waitRolloutEnd diag: the devices of fleets that have
// not reported version installed. It reads rec before it describes: the
// fleet calls rec.add holding a device's lock, which Describe takes.
func notInstalled(rec *reportLog, version string, fleets ...*sim.Fleet) func() string {
	return func() string {
		installed := map[device.ID]bool{}
		rec.mu.Lock()
		for id, evs := range rec.byDevice {
			installed[id] = slices.ContainsFunc(evs, func(e sim.Event) bool { return e.State == "updated" && e.Version == version })
		}
		rec.mu.Unlock()
		return describeSome(fleets, func(id device.ID, _ string) bool { return !installed[id] })
	}
}

// checkRolloutOnce checks, through n, that rollout id of the devices ids
// in batches of batch succeeded with each batch started once, and that
// every device succeeded on attempt 1, installed once (rec) and was sent
// one download URL (deltas).
func checkRolloutOnce(t *testing.T, n killNode, st rollout.Status, ids []device.ID, batch int, version string, rec *reportLog, deltas *deltaLog) {
	t.Helper()
	batches := (len(ids) + batch - 1) / batch
	checkSucceededOnce(t, st, len(ids), batches)
	var evs wire.RolloutEvents
	n.api.mustDo(t, "GET", "/v1/rollouts/"+st.ID+"/events", "", http.StatusOK, &evs)
	var started []int
	for _, ev := range evs.Events {
		if ev.Kind == rollout.EventBatchStarted {
			started = append(started, ev.Batch)
		}
	}
	want := make([]int, batches)
	for i := range want {
		want[i] = i + 1 // numbered from 1
	}
	if !slices.Equal(started, want) {
		t.Errorf("batch_started events for batches %v, want %v", started, want)
	}
	var page wire.RolloutDevices
	n.api.mustDo(t, "GET", fmt.Sprintf("/v1/rollouts/%s/devices?limit=%d", st.ID, len(ids)+1), "", http.StatusOK, &page)
	if len(page.Devices) != len(ids) {
		t.Fatalf("got %d rollout devices, want %d", len(page.Devices), len(ids))
	}
	for _, d := range page.Devices {
		if d.State != wire.DeviceSucceeded || d.Attempt != 1 {
			t.Errorf("device %s: %s attempt %d, want succeeded on attempt 1", d.Device, d.State, d.Attempt)
		}
		rec.check(t, d, st.ID, version)
		if urls := deltas.count(d.Device); urls > 1 {
			t.Errorf("device %s: sent %d different download URLs for its one attempt", d.Device, urls)
		}
	}
}

// killTestImage uploads a firmware image of version, lines times 19
// bytes, through up and returns the fleet's public key, read through down.
func killTestImage(t *testing.T, up, down killNode, version string, lines int) string {
	t.Helper()
	up.api.mustDo(t, "POST", "/v1/firmware?version="+version, strings.Repeat("cluster kill image\n", lines), http.StatusCreated, nil)
	var key wire.PublicKey
	down.api.mustDo(t, "GET", "/v1/firmware/pubkey", "", http.StatusOK, &key)
	return base64.StdEncoding.EncodeToString(key.Key)
}

// waitBatchDownloading waits until a device of batch b (from 0) of ids
// reports downloading.
func waitBatchDownloading(t *testing.T, rec *reportLog, ids []device.ID, batch, b int) {
	t.Helper()
	index := map[device.ID]int{}
	for i, id := range ids {
		index[id] = i
	}
	rec.waitFor(t, fmt.Sprintf("a device of batch %d to download", b+1), func(evs map[device.ID][]sim.Event) bool {
		for id, list := range evs {
			if index[id]/batch == b && slices.ContainsFunc(list, func(e sim.Event) bool { return e.State == "downloading" }) {
				return true
			}
		}
		return false
	})
}

func newReportLog() *reportLog {
	return &reportLog{kick: make(chan struct{}, 1), byDevice: map[device.ID][]sim.Event{}}
}

func newDeltaLog() *deltaLog { return &deltaLog{urls: map[device.ID]map[string]bool{}} }

// waitFleet waits until cond holds for the fleet's stats.
func waitFleet(t *testing.T, fleet *sim.Fleet, what string, cond func(sim.Stats) bool) sim.Stats {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), rolloutCrashWait)
	defer cancel()
	st, err := fleet.Wait(ctx, cond)
	if err != nil {
		t.Fatalf("waiting for %s: %v; stats %+v%s", what, err, st,
			describeSome([]*sim.Fleet{fleet}, func(_ device.ID, desc string) bool { return strings.Contains(desc, "(online false)") }))
	}
	return st
}

// TestClusterPlannerKill9: three `umbra serve --nats` processes on one
// nats-server; the devices are on nodes b and c, node a holds the planner
// lease. Mid-rollout node a's process is killed with SIGKILL. Another node
// takes the lease within cluster.TakeoverBound and the rollout finishes:
// no batch skipped or started twice, every device installs once on its
// first attempt, and no device is sent two download URLs for one attempt
// (a command re-issued after the takeover is the recorded one).
func TestClusterPlannerKill9(t *testing.T) {
	const (
		perNode = 20
		batch   = 10
		version = "1.1.0"
	)
	c := newKillCluster(t)
	a := c.startHolder("a")
	b, cn := c.start("b"), c.start("c")
	key := killTestImage(t, b, cn, version, 8192)
	rec := newReportLog()
	var (
		ids    []device.ID
		fleets []*sim.Fleet
	)
	for _, f := range []struct{ prefix, mqtt string }{{"b-", b.mqtt}, {"c-", cn.mqtt}} {
		fleet := mustOpenSimFleet(t, sim.Config{Server: "tcp://" + f.mqtt, Devices: perNode, IDPrefix: f.prefix,
			InstallTime: 300 * time.Millisecond, QoS: 1, Seed: 1, PublicKey: key, OnEvent: rec.add})
		ids, fleets = append(ids, fleet.IDs()...), append(fleets, fleet)
		waitFleet(t, fleet, "fleet "+f.prefix+" to connect", func(st sim.Stats) bool { return st.Connected == perNode })
	}
	deltas := newDeltaLog()
	deltas.watch(t, b.mqtt, "") // the bridge brings every node's deltas

	ro := cn.createRollout(t, version, ids, batch)
	// Kill once batch 2 (index 1) is under way: the planner is between
	// commands and reports of a started batch.
	waitBatchDownloading(t, rec, ids, batch, 1)
	killed := a.kill(t)
	waitTakeover(t, b, "a", killed)
	st := waitRolloutEnd(t, b, ro.ID, notInstalled(rec, version, fleets...))
	t.Logf("rollout finished %v after the kill", time.Since(killed).Round(time.Millisecond))
	checkRolloutOnce(t, cn, st, ids, batch, version, rec, deltas)
}

// TestClusterNodeKill9MidRollout: three `umbra serve --nats` processes on
// one nats-server; one simulated fleet spread evenly over them (device i
// on node i mod 3, the other nodes its failover addresses); node a holds
// the planner lease. A rollout of 9 batches is created through node c
// and, while batch 2 downloads, a node holding devices is killed with
// SIGKILL: b (not the lease's holder), or a (devices and the lease). Its
// devices reconnect to the live nodes, the rollout finishes (after a takeover when a died):
// each batch started once, every device succeeded on attempt 1, runs the
// new version, installed it once and was sent one download URL. The kill
// comes while the load balancer holds a download mid-way; when a (the
// balancer's first backend) dies the download is cut, and the device
// retries it within its attempt.
func TestClusterNodeKill9MidRollout(t *testing.T) {
	tests := []struct {
		name   string
		victim int // index into the nodes a, b, c
	}{
		{"node with devices", 1},
		{"node with devices and the planner lease", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			const (
				perNode = 30
				n       = 3 * perNode
				batch   = 10
				version = "1.2.0"
			)
			c := newKillCluster(t)
			nodes := []killNode{c.startHolder("a"), c.start("b"), c.start("c")}
			// c survives both cases; other is the third node.
			victim, survivor, other := nodes[tt.victim], nodes[2], nodes[1-tt.victim]
			// 6.3 MB, more than a node's socket buffers hold: the kill of a
			// (the load balancer's first backend) cuts a download under way.
			key := killTestImage(t, other, survivor, version, 330_000)
			var addrs []string
			for _, nd := range nodes {
				addrs = append(addrs, "tcp://"+nd.mqtt)
			}
			rec := newReportLog()
			fleet := mustOpenSimFleet(t, sim.Config{Server: strings.Join(addrs, ","), Devices: n, IDPrefix: "k-",
				InstallTime: 300 * time.Millisecond, QoS: 1, Seed: 1, PublicKey: key, OnEvent: rec.add})
			st := waitFleet(t, fleet, "every device to connect", func(st sim.Stats) bool { return st.Connected == n })
			for i, s := range st.Servers {
				if s.Connected != perNode {
					t.Fatalf("node %s has %d devices before the kill, want %d: %+v", nodes[i].id, s.Connected, perNode, st.Servers)
				}
			}
			ids := fleet.IDs()
			deltas := newDeltaLog()
			deltas.watch(t, survivor.mqtt, "") // the bridge brings every node's deltas

			ro := survivor.createRollout(t, version, ids, batch)
			// Kill while batch 2 downloads, one download held mid-way by
			// the load balancer (released right after the kill).
			waitBatchDownloading(t, rec, ids, batch, 1)
			release := c.lb.Hold()
			defer release()
			ctx, cancel := context.WithTimeout(t.Context(), rolloutCrashWait)
			defer cancel()
			if err := c.lb.WaitHeld(ctx); err != nil {
				t.Fatalf("no download under way: %v", err)
			}
			killed := victim.kill(t)
			release()

			st = waitFleet(t, fleet, "the killed node's devices to reconnect elsewhere", func(st sim.Stats) bool {
				return st.Connected == n && st.Servers[tt.victim].Connected == 0
			})
			t.Logf("node %s killed; all %d devices connected to the live nodes %v later (%d reconnects; per node %+v)",
				victim.id, n, time.Since(killed).Round(time.Millisecond), st.Reconnects, st.Servers)
			// A device rebooting into its new image when the node died
			// finds it gone at its next connect, not as a lost connection.
			if st.Reconnects == 0 || st.Reconnects > perNode {
				t.Errorf("Reconnects = %d, want 1..%d (only the killed node's devices lose their connection)", st.Reconnects, perNode)
			}
			if tt.victim == 0 {
				waitTakeover(t, survivor, victim.id, killed)
			}
			rst := waitRolloutEnd(t, survivor, ro.ID, notInstalled(rec, version, fleet))
			t.Logf("rollout finished %v after the kill", time.Since(killed).Round(time.Millisecond))
			checkRolloutOnce(t, other, rst, ids, batch, version, rec, deltas)
			st = waitFleet(t, fleet, "every device to run "+version, func(st sim.Stats) bool { return st.Versions[version] == n })
			if st.Failed != 0 {
				t.Errorf("%d devices report failed: %+v", st.Failed, st)
			}
			// The held download came through a; its body is cut if a died.
			if cut := st.DownloadRetries > 0; cut != (tt.victim == 0) {
				t.Errorf("%d downloads retried, want some only when a (the load balancer's first backend) is killed", st.DownloadRetries)
			}
			t.Logf("%d downloads retried (cut by the kill)", st.DownloadRetries)
		})
	}
}
