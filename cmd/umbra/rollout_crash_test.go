package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/internal/sim"
	"github.com/umbra-iot/umbra/internal/waitfor"
	"github.com/umbra-iot/umbra/rollout"
	"github.com/umbra-iot/umbra/wire"
)

// rolloutCrashWait bounds every wait of TestRolloutCrashResume (normally a
// few seconds; generous for -race on two busy cores).
const rolloutCrashWait = 60 * time.Second

// TestRolloutCrashResume is the crash test: `umbra serve` is killed
// with SIGKILL while a rollout is mid-batch (the first batch succeeded, the
// second is under way), restarted on the same ports and data dir, and the
// rollout completes: no batch skipped or started twice, every device runs
// the new version and installed it exactly once, every device was notified
// once per attempt (one download URL per attempt), and the counts add up
// to the targets. It kills at two points of the second batch: as its
// first device starts downloading (the planner is still writing the
// batch's commands), and once half of it is installing.
//
// The server authenticates, as in production: the devices are enrolled
// over HTTP and log in with their secrets, the test uses the operator token
// from the data dir.
func TestRolloutCrashResume(t *testing.T) {
	bin := buildUmbra(t)
	tests := []struct {
		name  string
		state string // kill once enough devices of batch 1 reported this state
		count int
	}{
		{"batch 1 starting", "downloading", 1},
		{"batch 1 half installing", "installing", 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { testRolloutCrash(t, bin, tt.state, tt.count) })
	}
}

func testRolloutCrash(t *testing.T, bin, killState string, killCount int) {
	const (
		n       = 60
		batch   = 20
		version = "1.1.0"
	)
	dataDir := t.TempDir()
	proc, mqttAddr, httpAddr := startServe(t, bin, dataDir, "--mqtt-addr", "127.0.0.1:0", "--ws-addr", "", "--http-addr", "127.0.0.1:0")
	api := rolloutAPI{url: "http://" + httpAddr, token: adminToken(t, dataDir)}

	api.mustDo(t, "POST", "/v1/firmware?version="+version, strings.Repeat("crash test image\n", 8192), http.StatusCreated, nil)
	var key wire.PublicKey
	api.mustDo(t, "GET", "/v1/firmware/pubkey", "", http.StatusOK, &key)
	ids := make([]device.ID, n)
	index := map[device.ID]int{}
	secrets := map[device.ID]string{}
	for i := range ids {
		ids[i] = device.ID(fmt.Sprintf("crash-%04d", i+1))
		index[ids[i]] = i
		var sec wire.SecretResponse
		api.mustDo(t, "POST", "/v1/devices", fmt.Sprintf(`{"id":%q}`, ids[i]), http.StatusCreated, &sec)
		secrets[ids[i]] = sec.Secret
	}

	// The fleet runs in this process and lives through the crash; it
	// records every report of every device.
	rec := &reportLog{kick: make(chan struct{}, 1), byDevice: map[device.ID][]sim.Event{}}
	fleet := mustOpenSimFleet(t, sim.Config{
		Server: "tcp://" + mqttAddr, Devices: n, IDPrefix: "crash-", InstallTime: 300 * time.Millisecond,
		QoS: 1, Seed: 1, PublicKey: base64.StdEncoding.EncodeToString(key.Key),
		Credentials: func(id device.ID) (string, string) { return string(id), secrets[id] },
		OnEvent:     rec.add,
	})
	if got := fleet.IDs(); !slices.Equal(got, ids) {
		t.Fatalf("fleet IDs %v, want %v", got, ids)
	}
	waitCtx, cancel := context.WithTimeout(t.Context(), rolloutCrashWait)
	defer cancel()
	if st, err := fleet.Wait(waitCtx, func(st sim.Stats) bool { return st.Connected == n }); err != nil {
		t.Fatalf("fleet: %d of %d devices connected: %v", st.Connected, n, err)
	}
	deltas := &deltaLog{urls: map[device.ID]map[string]bool{}}
	deltas.watch(t, mqttAddr, api.token)

	// Retries let devices whose download the crash interrupted try again;
	// each attempt is a new job.
	var ro rollout.Rollout
	api.mustDo(t, "POST", "/v1/rollouts", mustJSON(t, map[string]any{
		"firmware": version, "devices": ids, "batch_size": batch, "retries": 2, "retry_backoff": "500ms",
	}), http.StatusCreated, &ro)
	if len(ro.Batches) != n/batch {
		t.Fatalf("rollout %s has %d batches, want %d", ro.ID, len(ro.Batches), n/batch)
	}

	// The gate guarantees that batch 0 fully succeeded before any device
	// of batch 1 is notified.
	inBatch1 := 0 // devices of batch 1 that reported on the rollout's job
	rec.waitFor(t, fmt.Sprintf("%d devices of batch 1 to report %s", killCount, killState), func(evs map[device.ID][]sim.Event) bool {
		reached := 0
		inBatch1 = 0
		for id, list := range evs {
			if index[id]/batch != 1 {
				continue
			}
			if slices.ContainsFunc(list, func(e sim.Event) bool { return e.Job != "" }) {
				inBatch1++
			}
			if slices.ContainsFunc(list, func(e sim.Event) bool { return e.State == killState }) {
				reached++
			}
		}
		return reached >= killCount
	})
	if err := proc.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	proc.Wait()
	killedAt := time.Now()
	t.Logf("killed with %d of %d devices of batch 1 under way", inBatch1, batch)

	startServe(t, bin, dataDir, "--mqtt-addr", mqttAddr, "--ws-addr", "", "--http-addr", httpAddr)
	deltas.watch(t, mqttAddr, api.token)
	var st rollout.Status
	// Polling: the status is another process's state.
	waitfor.PollExplained(t, rolloutCrashWait, "rollout "+ro.ID+" to end after the restart", func() string {
		st = rollout.Status{} // decoding into a used value would merge its maps
		api.mustDo(t, "GET", "/v1/rollouts/"+ro.ID, "", http.StatusOK, &st)
		if !st.State.Active() {
			return ""
		}
		return fmt.Sprintf("still %s, batches started %d, counts %v", st.State, st.Started, st.Counts)
	})
	t.Logf("rollout finished %v after the kill", time.Since(killedAt).Round(time.Millisecond))
	checkSucceededOnce(t, st, n, n/batch)
	for _, b := range st.Batches {
		sum := 0
		for _, c := range b.Counts {
			sum += c
		}
		if sum != b.Size || b.Counts[rollout.DeviceSucceeded] != b.Size {
			t.Errorf("batch %d: counts %v, want all %d succeeded", b.Index, b.Counts, b.Size)
		}
	}
	// No batch skipped or started twice across the crash.
	var evs wire.RolloutEvents
	api.mustDo(t, "GET", "/v1/rollouts/"+ro.ID+"/events", "", http.StatusOK, &evs)
	var started []int
	for _, ev := range evs.Events {
		if ev.Kind == rollout.EventBatchStarted {
			started = append(started, ev.Batch)
		}
	}
	if want := []int{1, 2, 3}; !slices.Equal(started, want) { // numbered from 1
		t.Errorf("batch_started events for batches %v, want %v", started, want)
	}

	var page wire.RolloutDevices
	api.mustDo(t, "GET", "/v1/rollouts/"+ro.ID+"/devices?limit=1000", "", http.StatusOK, &page)
	if len(page.Devices) != n {
		t.Fatalf("got %d rollout devices, want %d", len(page.Devices), n)
	}
	waitCtx, cancel = context.WithTimeout(t.Context(), rolloutCrashWait)
	defer cancel()
	if fst, err := fleet.Wait(waitCtx, func(st sim.Stats) bool { return st.Versions[version] == n }); err != nil {
		t.Fatalf("fleet versions %v, want all %d on %s: %v", fst.Versions, n, version, err)
	}
	retried := 0
	for _, d := range page.Devices {
		if d.State != wire.DeviceSucceeded || d.Attempt < 1 {
			t.Errorf("device %s: got %s attempt %d, want succeeded", d.Device, d.State, d.Attempt)
			continue
		}
		if d.Attempt > 1 {
			retried++
		}
		var doc struct {
			State struct {
				Reported struct{ Firmware struct{ Version string } }
				Desired  struct{ Firmware struct{ URL string } }
			}
		}
		api.mustDo(t, "GET", "/v1/devices/"+string(d.Device)+"/shadow", "", http.StatusOK, &doc)
		if doc.State.Reported.Firmware.Version != version {
			t.Errorf("shadow %s reports firmware %q, want %s", d.Device, doc.State.Reported.Firmware.Version, version)
		}
		if u := doc.State.Desired.Firmware.URL; u != "" {
			deltas.addURL(d.Device, u)
		}
		rec.check(t, d, ro.ID, version)
		if urls := deltas.count(d.Device); urls > d.Attempt {
			t.Errorf("device %s: %d different download URLs for %d attempts, want at most one per attempt", d.Device, urls, d.Attempt)
		}
	}
	t.Logf("%d of %d devices needed more than one attempt (the kill cut their download)", retried, n)
}

// mustOpenSimFleet opens a simulated fleet that logs warnings into the
// test output and closes it on cleanup.
func mustOpenSimFleet(t *testing.T, cfg sim.Config) *sim.Fleet {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	fleet, err := sim.Open(t.Context(), cfg)
	if err != nil {
		t.Fatalf("sim.Open: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := fleet.Close(ctx); err != nil {
			t.Errorf("fleet Close: %v", err)
		}
	})
	return fleet
}

// rolloutAPI calls the HTTP API with the operator token.
// checkSucceededOnce checks that rollout st of n targets in batches
// succeeded, every batch started, and that no device is counted twice: the
// counts add up to the targets.
func checkSucceededOnce(t *testing.T, st rollout.Status, n, batches int) {
	t.Helper()
	if st.State != rollout.StateSucceeded || st.Counts[rollout.DeviceSucceeded] != n || st.Started != batches {
		t.Fatalf("rollout %s: got %s (%s), %d batches started, counts %v; want succeeded, %d batches, %d succeeded",
			st.ID, st.State, st.Reason, st.Started, st.Counts, batches, n)
	}
	total := 0
	for _, c := range st.Counts {
		total += c
	}
	if total != n {
		t.Errorf("counts %v add up to %d, want %d", st.Counts, total, n)
	}
}

type rolloutAPI struct{ url, token string }

// mustDo sends body to path and decodes the answer into out (if not nil),
// failing unless the status is want.
func (a rolloutAPI) mustDo(t *testing.T, method, path, body string, want int, out any) {
	t.Helper()
	code, _, b := httpDo(t, method, a.url+path, a.token, body)
	if code != want {
		t.Fatalf("%s %s: got %d %s, want %d", method, path, code, b, want)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: decode %s: %v", method, path, b, err)
		}
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// reportLog records every firmware report of the simulated devices.
type reportLog struct {
	kick     chan struct{} // signalled (without blocking) on every report
	mu       sync.Mutex    // guards byDevice
	byDevice map[device.ID][]sim.Event
}

// add is sim.Config.OnEvent: it must not block.
func (r *reportLog) add(ev sim.Event) {
	r.mu.Lock()
	r.byDevice[ev.Device] = append(r.byDevice[ev.Device], ev)
	r.mu.Unlock()
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// waitFor waits until cond holds for the reports so far.
func (r *reportLog) waitFor(t *testing.T, what string, cond func(map[device.ID][]sim.Event) bool) {
	t.Helper()
	deadline := time.After(rolloutCrashWait)
	for {
		r.mu.Lock()
		ok := cond(r.byDevice)
		r.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-r.kick:
		case <-deadline:
			t.Fatalf("no report within %v: waiting for %s", rolloutCrashWait, what)
		}
	}
}

// check verifies device d's reports: it installed version exactly once,
// reported only jobs of its attempts, started each attempt once, and
// failed every attempt before its last. A
// device repeats its last report on every reconnection, so consecutive
// identical reports count once.
func (r *reportLog) check(t *testing.T, d wire.RolloutDevice, rolloutID, version string) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	installs := 0
	downloads := map[string]int{}
	failed := map[string]bool{}
	var prev sim.Event
	for _, ev := range r.byDevice[d.Device] {
		same := ev.State == prev.State && ev.Version == prev.Version && ev.Job == prev.Job && ev.Error == prev.Error
		prev = ev
		if ev.Job == "" || same {
			continue // a report before the rollout, or a repeat
		}
		attempt := 0
		if a, ok := strings.CutPrefix(ev.Job, rolloutID+"/"); ok {
			attempt, _ = strconv.Atoi(a)
		}
		if attempt < 1 || attempt > d.Attempt || ev.Job != rollout.Job(rolloutID, attempt) {
			t.Errorf("device %s reported job %q, want one of its %d attempts of %s", d.Device, ev.Job, d.Attempt, rolloutID)
		}
		switch ev.State {
		case "updated":
			if ev.Version == version {
				installs++
			}
		case "downloading":
			downloads[ev.Job]++
		case "failed":
			failed[ev.Job] = true
		}
	}
	// A retry needs a reason: every earlier attempt failed.
	for a := 1; a < d.Attempt; a++ {
		if !failed[rollout.Job(rolloutID, a)] {
			t.Errorf("device %s is at attempt %d but reported no failure of attempt %d; reports %v", d.Device, d.Attempt, a, r.byDevice[d.Device])
		}
	}
	if installs != 1 {
		t.Errorf("device %s installed %s %d times, want once; reports %v", d.Device, version, installs, r.byDevice[d.Device])
	}
	for job, k := range downloads {
		if k != 1 {
			t.Errorf("device %s started job %s %d times, want once; reports %v", d.Device, job, k, r.byDevice[d.Device])
		}
	}
}

// deltaLog collects the download URLs of the firmware commands every
// device was sent, as an operator watching state/+/update/delta sees them.
type deltaLog struct {
	mu   sync.Mutex // guards urls
	urls map[device.ID]map[string]bool
}

func (l *deltaLog) addURL(id device.ID, u string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.urls[id] == nil {
		l.urls[id] = map[string]bool{}
	}
	l.urls[id][u] = true
}

func (l *deltaLog) count(id device.ID) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.urls[id])
}

// watch subscribes an operator client (the admin token "name:secret" as
// user name and password) to every device's delta until the test ends or
// the server dies.
func (l *deltaLog) watch(t *testing.T, mqttAddr, token string) {
	t.Helper()
	user, pass, _ := strings.Cut(token, ":")
	c := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + mqttAddr).
		SetClientID(fmt.Sprintf("crash-watch-%d", time.Now().UnixNano())).SetUsername(user).SetPassword(pass).
		SetOrderMatters(false).SetAutoReconnect(false).SetConnectTimeout(5 * time.Second))
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect delta watcher: %v", tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	tok := c.Subscribe("state/+/update/delta", 1, func(_ paho.Client, m paho.Message) {
		var d struct {
			State struct{ Firmware struct{ URL string } }
		}
		if json.Unmarshal(m.Payload(), &d) != nil || d.State.Firmware.URL == "" {
			return
		}
		if parts := strings.Split(m.Topic(), "/"); len(parts) == 4 {
			l.addURL(device.ID(parts[1]), d.State.Firmware.URL)
		}
	})
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe delta watcher: %v", tok.Error())
	}
}
