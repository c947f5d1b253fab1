package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"os/exec"
	"slices"
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
		ttl     = 2 * time.Second
	)
	bin := buildUmbra(t)
	ns := natstest.Start(t)
	// The nodes' public URL, in front of all of them: the download URLs
	// minted by the planner's node keep working after it died.
	lb := lbtest.New(t)
	node := func(id string) (proc *exec.Cmd, mqttAddr string, api rolloutAPI) {
		cmd, m, h := startServe(t, bin, t.TempDir(), "--mqtt-addr", "127.0.0.1:0", "--ws-addr", "", "--http-addr", "127.0.0.1:0",
			"--insecure-anonymous", "--nats", strings.Join(ns.URLs(), ","), "--node-id", id, "--nats-replicas", "1",
			"--planner-lease-ttl", ttl.String(), "--public-url", lb.URL())
		lb.Add(h)
		return cmd, m, rolloutAPI{url: "http://" + h}
	}
	planner := func(api rolloutAPI) string {
		var st wire.ClusterStatus
		api.mustDo(t, "GET", "/v1/cluster", "", http.StatusOK, &st)
		return st.Planner
	}
	procA, _, apiA := node("a")
	waitfor.PollExplained(t, rolloutCrashWait, "node a to hold the planner lease", func() string {
		if h := planner(apiA); h != "a" {
			return fmt.Sprintf("holder %q", h)
		}
		return ""
	})
	_, mqttB, apiB := node("b")
	_, mqttC, apiC := node("c")

	apiB.mustDo(t, "POST", "/v1/firmware?version="+version, strings.Repeat("cluster kill image\n", 8192), http.StatusCreated, nil)
	var key wire.PublicKey
	apiC.mustDo(t, "GET", "/v1/firmware/pubkey", "", http.StatusOK, &key)
	rec := &reportLog{kick: make(chan struct{}, 1), byDevice: map[device.ID][]sim.Event{}}
	var ids []device.ID
	for _, f := range []struct{ prefix, mqtt string }{{"b-", mqttB}, {"c-", mqttC}} {
		fleet := mustOpenSimFleet(t, sim.Config{Server: "tcp://" + f.mqtt, Devices: perNode, IDPrefix: f.prefix,
			InstallTime: 300 * time.Millisecond, QoS: 1, Seed: 1, PublicKey: base64.StdEncoding.EncodeToString(key.Key), OnEvent: rec.add})
		ids = append(ids, fleet.IDs()...)
		waitCtx, cancel := context.WithTimeout(t.Context(), rolloutCrashWait)
		st, err := fleet.Wait(waitCtx, func(st sim.Stats) bool { return st.Connected == perNode })
		cancel()
		if err != nil {
			t.Fatalf("fleet %s: %d of %d devices connected: %v", f.prefix, st.Connected, perNode, err)
		}
	}
	n := len(ids)
	index := map[device.ID]int{}
	for i, id := range ids {
		index[id] = i
	}
	deltas := &deltaLog{urls: map[device.ID]map[string]bool{}}
	deltas.watch(t, mqttB, "") // the bridge brings every node's deltas

	var ro rollout.Rollout
	apiC.mustDo(t, "POST", "/v1/rollouts", mustJSON(t, map[string]any{"firmware": version, "devices": ids, "batch_size": batch}),
		http.StatusCreated, &ro)
	// Kill once batch 2 (index 1) is under way: the planner is between
	// commands and reports of a started batch.
	rec.waitFor(t, "a device of batch 2 to download", func(evs map[device.ID][]sim.Event) bool {
		for id, list := range evs {
			if index[id]/batch == 1 && slices.ContainsFunc(list, func(e sim.Event) bool { return e.State == "downloading" }) {
				return true
			}
		}
		return false
	})
	if err := procA.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()

	var holder string
	waitfor.PollExplained(t, rolloutCrashWait, "another node to hold the planner lease", func() string {
		if holder = planner(apiB); holder != "b" && holder != "c" {
			return fmt.Sprintf("holder %q", holder)
		}
		return ""
	})
	took := time.Since(killed)
	t.Logf("node a killed; node %s holds the planner lease %v later (bound %v)", holder, took.Round(time.Millisecond), cluster.TakeoverBound(ttl))
	if took > cluster.TakeoverBound(ttl) {
		t.Errorf("takeover after %v, beyond the bound %v", took, cluster.TakeoverBound(ttl))
	}

	var st rollout.Status
	waitfor.PollExplained(t, rolloutCrashWait, "rollout "+ro.ID+" to end after the kill", func() string {
		code, _, b := httpDo(t, "GET", apiB.url+"/v1/rollouts/"+ro.ID, "", "")
		if code == http.StatusServiceUnavailable {
			return "503: the new holder's planner is loading"
		}
		st = rollout.Status{}
		if code != http.StatusOK || json.Unmarshal(b, &st) != nil {
			t.Fatalf("GET /v1/rollouts/%s: %d %s", ro.ID, code, b)
		}
		if !st.State.Active() {
			return ""
		}
		return fmt.Sprintf("still %s, batches started %d, counts %v", st.State, st.Started, st.Counts)
	})
	t.Logf("rollout finished %v after the kill", time.Since(killed).Round(time.Millisecond))
	checkSucceededOnce(t, st, n, n/batch)
	var evs wire.RolloutEvents
	apiC.mustDo(t, "GET", "/v1/rollouts/"+ro.ID+"/events", "", http.StatusOK, &evs)
	var started []int
	for _, ev := range evs.Events {
		if ev.Kind == rollout.EventBatchStarted {
			started = append(started, ev.Batch)
		}
	}
	if want := []int{1, 2, 3, 4}; !slices.Equal(started, want) { // numbered from 1
		t.Errorf("batch_started events for batches %v, want %v", started, want)
	}
	var page wire.RolloutDevices
	apiB.mustDo(t, "GET", "/v1/rollouts/"+ro.ID+"/devices?limit=1000", "", http.StatusOK, &page)
	if len(page.Devices) != n {
		t.Fatalf("got %d rollout devices, want %d", len(page.Devices), n)
	}
	for _, d := range page.Devices {
		if d.State != wire.DeviceSucceeded || d.Attempt != 1 {
			t.Errorf("device %s: %s attempt %d, want succeeded on attempt 1", d.Device, d.State, d.Attempt)
		}
		rec.check(t, d, ro.ID, version)
		if urls := deltas.count(d.Device); urls > 1 {
			t.Errorf("device %s: sent %d different download URLs for its one attempt", d.Device, urls)
		}
	}
}
