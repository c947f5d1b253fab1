package server_test

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/internal/brokertest"
	"github.com/umbra-iot/umbra/internal/sim"
	"github.com/umbra-iot/umbra/rollout"
)

// End-to-end rollout tests: a whole Umbra in-process (broker, shadow engine,
// firmware store, planner) on 127.0.0.1:0 with bbolt in t.TempDir(), and
// simulated devices that are real paho clients: they download the image
// over HTTP through the signed URL, check its sha256 and signature, report
// their progress and reboot into the new version.

const (
	oldVersion = "1.0.0" // what the simulated devices run at start
	newVersion = "1.1.0" // what the rollouts install
)

// TestRolloutE2EBatches: 200 devices in batches of 50 all end on the new
// version, in 4 batches started in order, each batch only once the one
// before had fully succeeded, every device on its first attempt; with
// enrolled devices and on an anonymous server.
func TestRolloutE2EBatches(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name   string
		secure bool
	}{{"enrolled", true}, {"anonymous", false}} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			testRolloutBatches(t, tt.secure)
		})
	}
}

func testRolloutBatches(t *testing.T, secure bool) {
	const n, batch = 200, 50
	u := mustOpenRig(t, secure)
	u.mustUpload(t, newVersion)
	fleet := u.mustOpenFleet(t, sim.Config{Devices: n, IDPrefix: "fleet-", InstallTime: 50 * time.Millisecond})
	ids := fleet.IDs()
	// Anonymous clients share one identity: its connection cap must not
	// apply, or an anonymous server could not serve a fleet.
	waitFleet(t, fleet, "every device to connect", func(st sim.Stats) bool { return st.Connected == n })
	u.waitReported(t, ids, oldVersion) // so that the planner records where each device came from

	ro, err := u.Planner().Create(t.Context(), rollout.Spec{Firmware: newVersion, Devices: ids,
		Policy: rollout.Policy{BatchSize: batch}})
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	if len(ro.Batches) != n/batch {
		t.Fatalf("got %d batches, want %d", len(ro.Batches), n/batch)
	}
	st := u.waitRollout(t, ro.ID, "to succeed", func(st rollout.Status) bool { return !st.State.Active() })
	if st.State != rollout.StateSucceeded || st.Counts[rollout.DeviceSucceeded] != n || st.Started != n/batch {
		t.Fatalf("got state %s (%s), %d batches started, counts %v; want succeeded, %d batches, %d succeeded",
			st.State, st.Reason, st.Started, st.Counts, n/batch, n)
	}
	waitFleet(t, fleet, "every device to run "+newVersion, func(st sim.Stats) bool { return st.Versions[newVersion] == n })

	// Batches started in order, once each.
	var started []int
	startedAt := map[int]time.Time{}
	for _, ev := range u.mustEvents(t, ro.ID) {
		if ev.Kind == rollout.EventBatchStarted {
			started = append(started, ev.Batch)
			startedAt[ev.Batch] = ev.Time
		}
	}
	if want := []int{0, 1, 2, 3}; !slices.Equal(started, want) {
		t.Fatalf("batch_started events for batches %v, want %v", started, want)
	}

	devs := u.rolloutDevices(t, ro.ID)
	for i, id := range ids {
		d := devs[id]
		if d.State != rollout.DeviceSucceeded || d.Attempt != 1 || d.Batch != i/batch || d.From != oldVersion {
			t.Errorf("device %s: got %s attempt %d batch %d from %q, want succeeded attempt 1 batch %d from %q",
				id, d.State, d.Attempt, d.Batch, d.From, i/batch, oldVersion)
		}
		// The gate: batch b+1 started only after every device of batch b
		// succeeded (default success threshold 100%).
		if next, ok := startedAt[d.Batch+1]; ok && d.Since.After(next) {
			t.Errorf("device %s of batch %d succeeded at %v, after batch %d started at %v",
				id, d.Batch, d.Since, d.Batch+1, next)
		}
		rep, _ := u.shadowFirmware(t, id)
		if rep["version"] != newVersion || rep["state"] != "updated" || rep["job"] != rollout.Job(ro.ID, 1) {
			t.Errorf("shadow %s reported.firmware = %v, want version %s state updated job %s", id, rep, newVersion, rollout.Job(ro.ID, 1))
		}
	}
}

// TestRolloutE2EFailureThreshold: in a fleet where 20% of the devices fail
// every update, the rollout pauses by itself at the failure threshold,
// lists exactly the failing devices with their error, and never notifies a
// device of a batch that did not start.
func TestRolloutE2EFailureThreshold(t *testing.T) {
	t.Parallel()
	tests := []struct {
		mode    sim.FailMode
		wantErr string
	}{
		{sim.FailDownload, "download_failed"},
		{sim.FailInstall, "install_failed"},
	}
	for _, tt := range tests {
		t.Run(string(tt.mode), func(t *testing.T) {
			t.Parallel()
			const n, batch = 100, 25
			u := mustOpenRig(t, true)
			u.mustUpload(t, newVersion)
			healthy := u.mustOpenFleet(t, sim.Config{Devices: n * 4 / 5, IDPrefix: "ok-", InstallTime: 100 * time.Millisecond})
			faulty := u.mustOpenFleet(t, sim.Config{Devices: n / 5, IDPrefix: "bad-", InstallTime: 100 * time.Millisecond,
				FailRate: 1, FailMode: tt.mode})
			// Every fifth target is faulty, so each batch is 20% faulty.
			var targets []device.ID
			bad := map[device.ID]bool{}
			h, f := healthy.IDs(), faulty.IDs()
			for i := range n {
				if i%5 == 4 {
					targets = append(targets, f[i/5])
					bad[f[i/5]] = true
				} else {
					targets = append(targets, h[i-i/5])
				}
			}
			if len(bad) != n/5 || len(targets) != n {
				t.Fatalf("built %d targets with %d faulty, want %d with %d", len(targets), len(bad), n, n/5)
			}

			ro, err := u.Planner().Create(t.Context(), rollout.Spec{Firmware: newVersion, Devices: targets,
				Policy: rollout.Policy{BatchSize: batch, FailurePercent: 10, MinSample: 20}})
			if err != nil {
				t.Fatalf("Create: %v", err)
			}
			st := u.waitRollout(t, ro.ID, "to pause", func(st rollout.Status) bool {
				return st.State != rollout.StateCreated && st.State != rollout.StateRunning
			})
			if st.State != rollout.StatePaused || !strings.Contains(st.Reason, "threshold 10.0%") {
				t.Fatalf("got state %s reason %q, want paused by the failure threshold of 10%%", st.State, st.Reason)
			}
			// Paused: devices already notified finish, nothing new starts.
			st = u.waitRollout(t, ro.ID, "to have no device in flight", func(st rollout.Status) bool { return inFlight(st) == 0 })
			if st.State != rollout.StatePaused || st.Started != 1 {
				t.Fatalf("got state %s with %d batches started, want paused with 1", st.State, st.Started)
			}

			var wantFailing, gotFailing []string
			for _, id := range targets[:batch] {
				if bad[id] {
					wantFailing = append(wantFailing, fmt.Sprintf("%s: failed: %s", id, tt.wantErr))
				}
			}
			for _, d := range st.Failing {
				gotFailing = append(gotFailing, fmt.Sprintf("%s: %s: %s", d.Device, d.State, d.Error))
			}
			slices.Sort(gotFailing)
			if !slices.Equal(gotFailing, wantFailing) {
				t.Errorf("Failing =\n%s\nwant\n%s", strings.Join(gotFailing, "\n"), strings.Join(wantFailing, "\n"))
			}
			if got, want := st.Counts[rollout.DeviceSucceeded], batch*4/5; got != want {
				t.Errorf("got %d succeeded, want %d (the healthy devices of batch 0)", got, want)
			}

			devs := u.rolloutDevices(t, ro.ID)
			for i, id := range targets {
				d := devs[id]
				_, desired := u.shadowFirmware(t, id)
				switch {
				case i < batch:
					if desired == nil || d.Attempt != 1 {
						t.Errorf("device %s of batch 0: desired firmware %v, attempt %d; want a command, attempt 1", id, desired, d.Attempt)
					}
				case desired != nil || d.State != rollout.DevicePending || d.Attempt != 0:
					t.Errorf("device %s of batch %d (not started): desired firmware %v, state %s attempt %d; want none, pending attempt 0",
						id, i/batch, desired, d.State, d.Attempt)
				}
			}
		})
	}
}

// TestRolloutE2ETimeoutRetry: a device that stays silent on its first
// attempt times out, is notified again and succeeds on attempt 2; a device
// that is always silent ends timed_out after its retry.
func TestRolloutE2ETimeoutRetry(t *testing.T) {
	t.Parallel()
	u := mustOpenRig(t, false)
	u.mustUpload(t, newVersion)
	mute := u.mustOpenFleet(t, sim.Config{Devices: 1, IDPrefix: "mute-", FailRate: 1, FailMode: sim.FailSilent})
	waitFleet(t, mute, "the silent device to connect", func(st sim.Stats) bool { return st.Connected == 1 })
	muteID := mute.IDs()[0]

	// A hand-written device that ignores its first command.
	const slowID = device.ID("slow-1")
	c := u.connectDevice(t, slowID)
	deltas := brokertest.Subscribe(t, c, "state/"+string(slowID)+"/update/delta", 1)

	// The timeout is 3 × the 1s minimum: the second attempt's round trip
	// (command, report, commit, planner pass) must fit in it on two busy
	// cores under -race.
	const timeout = 3 * rollout.MinDeviceTimeout
	ro, err := u.Planner().Create(t.Context(), rollout.Spec{Firmware: newVersion, Devices: []device.ID{slowID, muteID},
		Policy: rollout.Policy{DeviceTimeout: timeout, Retries: 1, RetryBackoff: 100 * time.Millisecond}})
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	for attempt := 1; attempt <= 2; attempt++ {
		job := nextJob(t, deltas)
		if want := rollout.Job(ro.ID, attempt); job != want {
			t.Fatalf("%s got a command with job %q, want %q", slowID, job, want)
		}
	}
	// Attempt 2: report the new version as running at once.
	brokertest.Publish(t, c, "state/"+string(slowID)+"/update", 1, fmt.Appendf(nil,
		`{"state":{"reported":{"firmware":{"version":%q,"state":"updated","job":%q}}}}`, newVersion, rollout.Job(ro.ID, 2)))

	st := u.waitRollout(t, ro.ID, "to finish", func(st rollout.Status) bool { return !st.State.Active() })
	// One of two devices failed: the only batch ends below the 100% success
	// threshold.
	if st.State != rollout.StateFailed {
		t.Errorf("got state %s (%s), want failed", st.State, st.Reason)
	}
	devs := u.rolloutDevices(t, ro.ID)
	if d := devs[slowID]; d.State != rollout.DeviceSucceeded || d.Attempt != 2 {
		t.Errorf("%s: got %s attempt %d, want succeeded attempt 2", slowID, d.State, d.Attempt)
	}
	if d := devs[muteID]; d.State != rollout.DeviceTimedOut || d.Attempt != 2 {
		t.Errorf("%s: got %s attempt %d, want timed_out attempt 2", muteID, d.State, d.Attempt)
	}
	if len(st.Failing) != 1 || st.Failing[0].Device != muteID {
		t.Errorf("Failing = %+v, want only %s", st.Failing, muteID)
	}

	got := map[string]int{}
	for _, ev := range u.mustEvents(t, ro.ID) {
		switch ev.Kind {
		case rollout.EventRetry, rollout.EventDeviceFailed:
			got[ev.Kind+" "+string(ev.Device)]++
			if !strings.Contains(ev.Reason, "no progress for "+timeout.String()) {
				t.Errorf("event %s of %s: reason %q, want the timeout", ev.Kind, ev.Device, ev.Reason)
			}
		}
	}
	want := map[string]int{"device_retry " + string(slowID): 1, "device_retry " + string(muteID): 1, "device_failed " + string(muteID): 1}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("device events %v, want %v", got, want)
	}
	if st := mute.Stats(); st.Silent != 1 || st.Versions[oldVersion] != 1 {
		t.Errorf("silent fleet: %d silent, versions %v; want 1 silent on %s", st.Silent, st.Versions, oldVersion)
	}
}

// nextJob returns the job of the next firmware command on a delta channel.
func nextJob(t *testing.T, deltas <-chan brokertest.Message) string {
	t.Helper()
	deadline := time.After(waitTimeout)
	for {
		select {
		case m := <-deltas:
			var d struct {
				State struct {
					Firmware struct{ Job string }
				}
			}
			if err := json.Unmarshal(m.Payload, &d); err != nil {
				t.Fatalf("delta %s: %v", m.Payload, err)
			}
			if d.State.Firmware.Job != "" {
				return d.State.Firmware.Job
			}
		case <-deadline:
			t.Fatalf("no firmware command within %v", waitTimeout)
		}
	}
}

// TestRolloutE2EOfflineDevice: devices that are offline when their batch
// starts are notified all the same (the command waits in their shadow) and
// update when they connect, from the catch-up delta.
func TestRolloutE2EOfflineDevice(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		earlierRun bool   // the devices reported 1.0.0 before going offline
		wantFrom   string // the version the planner saw before notifying
	}{
		{name: "shadow from an earlier run", earlierRun: true, wantFrom: oldVersion},
		{name: "no shadow yet", wantFrom: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			u := mustOpenRig(t, true)
			u.mustUpload(t, newVersion)
			online := u.mustOpenFleet(t, sim.Config{Devices: 4, IDPrefix: "on-"})
			lateCfg := sim.Config{Devices: 2, IDPrefix: "late-"}
			var late []device.ID
			if tt.earlierRun {
				f := u.mustOpenFleet(t, lateCfg)
				late = f.IDs()
				u.waitReported(t, late, oldVersion)
				closeFleet(t, f)
			} else {
				late = simIDs(lateCfg.IDPrefix, lateCfg.Devices)
			}

			ro, err := u.Planner().Create(t.Context(), rollout.Spec{Firmware: newVersion, Devices: append(online.IDs(), late...)})
			if err != nil {
				t.Fatalf("Create: %v", err)
			}
			// The online devices update; the offline ones are notified and wait.
			u.waitRollout(t, ro.ID, "to update the online devices", func(st rollout.Status) bool {
				return st.Counts[rollout.DeviceSucceeded] == 4 && st.Counts[rollout.DeviceNotified] == len(late)
			})
			for _, id := range late {
				if _, desired := u.shadowFirmware(t, id); desired["version"] != newVersion {
					t.Fatalf("offline %s: desired firmware %v, want the command for %s", id, desired, newVersion)
				}
			}
			if st, _ := u.Planner().Get(t.Context(), ro.ID); st.State != rollout.StateRunning {
				t.Fatalf("got state %s (%s) while devices are offline, want running", st.State, st.Reason)
			}

			u.mustOpenFleet(t, lateCfg)
			st := u.waitRollout(t, ro.ID, "to succeed", func(st rollout.Status) bool { return !st.State.Active() })
			if st.State != rollout.StateSucceeded || st.Counts[rollout.DeviceSucceeded] != 4+len(late) {
				t.Fatalf("got state %s (%s) counts %v, want succeeded with %d devices", st.State, st.Reason, st.Counts, 4+len(late))
			}
			devs := u.rolloutDevices(t, ro.ID)
			for _, id := range late {
				if d := devs[id]; d.State != rollout.DeviceSucceeded || d.Attempt != 1 || d.From != tt.wantFrom {
					t.Errorf("%s: got %s attempt %d from %q, want succeeded attempt 1 from %q", id, d.State, d.Attempt, d.From, tt.wantFrom)
				}
				if rep, _ := u.shadowFirmware(t, id); rep["version"] != newVersion {
					t.Errorf("%s: reported.firmware %v, want version %s", id, rep, newVersion)
				}
			}
		})
	}
}

// TestRolloutE2ECatchUpOnSubscribe: a device offline when it was notified
// gets its command in the delta the service sends when it subscribes,
// without asking for it.
func TestRolloutE2ECatchUpOnSubscribe(t *testing.T) {
	t.Parallel()
	u := mustOpenRig(t, true)
	u.mustUpload(t, newVersion)
	const id = device.ID("hand-1")
	c := u.connectDevice(t, id)
	brokertest.Publish(t, c, "state/"+string(id)+"/update", 1,
		[]byte(`{"state":{"reported":{"firmware":{"version":"`+oldVersion+`","state":"updated"}}}}`))
	u.waitReported(t, []device.ID{id}, oldVersion)
	c.Disconnect(100)

	ro, err := u.Planner().Create(t.Context(), rollout.Spec{Firmware: newVersion, Devices: []device.ID{id}})
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	u.waitRollout(t, ro.ID, "to notify the offline device", func(st rollout.Status) bool { return st.Counts[rollout.DeviceNotified] == 1 })

	c = u.connectDevice(t, id)
	deltas := brokertest.Subscribe(t, c, "state/"+string(id)+"/update/delta", 1)
	if job, want := nextJob(t, deltas), rollout.Job(ro.ID, 1); job != want {
		t.Fatalf("catch-up delta carries job %q, want %q", job, want)
	}
	brokertest.Publish(t, c, "state/"+string(id)+"/update", 1, fmt.Appendf(nil,
		`{"state":{"reported":{"firmware":{"version":%q,"state":"updated","job":%q}}}}`, newVersion, rollout.Job(ro.ID, 1)))
	st := u.waitRollout(t, ro.ID, "to succeed", func(st rollout.Status) bool { return !st.State.Active() })
	d := u.rolloutDevices(t, ro.ID)[id]
	if st.State != rollout.StateSucceeded || d.State != rollout.DeviceSucceeded || d.Attempt != 1 || d.From != oldVersion {
		t.Errorf("got rollout %s, device %s attempt %d from %q; want succeeded, succeeded attempt 1 from %s",
			st.State, d.State, d.Attempt, d.From, oldVersion)
	}
}
