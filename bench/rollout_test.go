package bench_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/firmware"
	"github.com/umbra-iot/umbra/internal/server"
	"github.com/umbra-iot/umbra/internal/sim"
	"github.com/umbra-iot/umbra/rollout"
	"github.com/umbra-iot/umbra/shadow"
)

// Sizes and bounds of the rollout benchmarks (see docs/benchmarks.md §9).
const (
	defaultRolloutDevices = 10_000
	shortRolloutDevices   = 200
	defaultSeedDevices    = 1000
	shortSeedDevices      = 100
	defaultSeedInstall    = 3 * time.Second
	shortSeedInstall      = 100 * time.Millisecond
	// seedTarget is the install time of the seed scenario (issue 5), which
	// BenchmarkRolloutSeed projects its measurement to.
	seedTarget = 30 * time.Second
	// rolloutBatchPercent is the batch size of every benchmark rollout.
	rolloutBatchPercent = 10
	// rolloutImageSize is the size of the benchmark firmware images.
	rolloutImageSize = 16 << 10
	// rolloutRebootTime is how long a simulated device stays offline while
	// "rebooting" into the new image: near zero, as for an instant install.
	rolloutRebootTime = time.Millisecond
	// rolloutWait bounds every wait of one phase (connect, rollout);
	// shortRolloutWait with -short.
	rolloutWait      = 4 * time.Minute
	shortRolloutWait = time.Minute
	// rolloutPoll is the period of the waits that have no event to wait for
	// (shadows existing, the planner's final state).
	rolloutPoll = 10 * time.Millisecond
)

// phaseWait bounds every wait of one phase.
func phaseWait() time.Duration {
	if testing.Short() {
		return shortRolloutWait
	}
	return rolloutWait
}

// envInt is the integer in environment variable name (in [lo, hi]), else
// def, or short with -short.
func envInt(tb testing.TB, name string, def, short, lo, hi int) int {
	tb.Helper()
	if s := os.Getenv(name); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < lo || n > hi {
			tb.Fatalf("%s=%q: want an integer in %d..%d", name, s, lo, hi)
		}
		return n
	}
	if testing.Short() {
		return short
	}
	return def
}

// envDuration is envInt for a duration.
func envDuration(tb testing.TB, name string, def, short, lo, hi time.Duration) time.Duration {
	tb.Helper()
	if s := os.Getenv(name); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d < lo || d > hi {
			tb.Fatalf("%s=%q: want a duration in %v..%v", name, s, lo, hi)
		}
		return d
	}
	if testing.Short() {
		return short
	}
	return def
}

// recorder timestamps, per device and per phase, the notification (the
// first delta the broker publishes that carries the phase's version: the
// planner's or the baseline's desired write reaching the broker) and the
// device's "updated" report of that version (sim.Config.OnEvent, taken when
// the device publishes it). Both callbacks run on other components'
// goroutines and never block beyond mu.
type recorder struct {
	mu       sync.Mutex // guards everything below
	index    map[device.ID]int
	want     []byte // `"version":"<v>"` of the current phase; nil between phases
	version  string
	notified []time.Time
	updated  []time.Time
	left     int           // devices without an updated report in this phase
	done     chan struct{} // closed when left reaches 0
}

func (r *recorder) setIDs(ids []device.ID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.index = make(map[device.ID]int, len(ids))
	for i, id := range ids {
		r.index[id] = i
	}
}

// start begins a phase for version v; the channel closes when every
// device has reported v as updated.
func (r *recorder) start(v string) <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.want = fmt.Appendf(nil, `"version":%q`, v)
	r.version = v
	r.notified = make([]time.Time, len(r.index))
	r.updated = make([]time.Time, len(r.index))
	r.left = len(r.index)
	r.done = make(chan struct{})
	return r.done
}

// stop ends the phase and returns its timestamps (zero: never seen).
func (r *recorder) stop() (notified, updated []time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.want, r.version = nil, ""
	return r.notified, r.updated
}

// progress returns how many devices were notified and updated so far.
func (r *recorder) progress() (notified, updated int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, t := range r.notified {
		if !t.IsZero() {
			notified++
		}
	}
	return notified, len(r.index) - r.left
}

// delta is the broker's in-process subscriber to every delta topic.
func (r *recorder) delta(_, topic string, payload []byte) {
	now := time.Now()
	id := device.ID(strings.TrimSuffix(strings.TrimPrefix(topic, "state/"), "/update/delta"))
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.want == nil || !bytes.Contains(payload, r.want) {
		return
	}
	if i, ok := r.index[id]; ok && r.notified[i].IsZero() {
		r.notified[i] = now
	}
}

// event is the fleet's sim.Config.OnEvent.
func (r *recorder) event(ev sim.Event) {
	if ev.State != sim.StateUpdated {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.want == nil || ev.Version != r.version {
		return
	}
	if i, ok := r.index[ev.Device]; ok && r.updated[i].IsZero() {
		r.updated[i] = ev.Time
		if r.left--; r.left == 0 {
			close(r.done)
		}
	}
}

// rolloutRig is a whole Umbra in this process (server.Open: engine,
// broker, HTTP API with the firmware downloads, firmware store, planner;
// authentication on, every device enrolled) and a connected simulated
// fleet in a child process (fleetProc).
type rolloutRig struct {
	srv     *server.Server
	fleet   *fleetProc
	ids     []device.ID // sorted: the rollout order
	rec     *recorder
	version int // major of the last uploaded image
}

// openRolloutRig opens the server and n simulated devices (running 1.0.0,
// installing in install ± 20 %), waits until every device is connected
// and has its reported firmware in its shadow, and closes both at cleanup.
func openRolloutRig(b *testing.B, n int, install time.Duration) *rolloutRig {
	b.Helper()
	srv, err := server.Open(b.Context(), server.Config{
		DataDir: b.TempDir(), MQTTAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0",
	})
	if err != nil {
		b.Fatalf("open server: %v", err)
	}
	b.Cleanup(func() { closeWithin(b, "server", srv) })
	rig := &rolloutRig{srv: srv, rec: &recorder{}, version: 1}
	if err := srv.Broker().Subscribe(shadow.DeltaTopic("+"), rig.rec.delta); err != nil {
		b.Fatalf("subscribe to deltas: %v", err)
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(b.Context(), phaseWait())
	defer cancel()
	rig.fleet = startFleet(b, srv, fleetConfig{
		Server:      "tcp://" + srv.Broker().Addr().String(),
		Devices:     n,
		InstallTime: install,
		PublicKey:   string(firmware.MarshalPublicKey(srv.Firmware().PublicKey())),
	}, rig.rec.event)
	rig.fleet.await(b, ctx, rig.fleet.opened, "fleet to open")
	rig.ids = slices.Sorted(slices.Values(rig.fleet.ids))
	rig.rec.setIDs(rig.ids)
	rig.fleet.await(b, ctx, rig.fleet.connected, "devices to connect")
	// No event says that a device's boot report is committed: poll the
	// engine for the devices not seen yet.
	missing := slices.Clone(rig.ids)
	if err := poll(ctx, func() bool {
		missing = slices.DeleteFunc(missing, func(id device.ID) bool {
			doc, err := srv.Engine().Read(ctx, id)
			return err == nil && doc.State.Reported["firmware"] != nil
		})
		return len(missing) == 0
	}); err != nil {
		b.Fatalf("waiting for boot reports: %d of %d devices have no reported firmware: %v", len(missing), n, err)
	}
	b.Logf("%d devices enrolled, connected and reported in %v", n, time.Since(start).Round(time.Millisecond))
	return rig
}

// fleetChildEnv makes the test binary a fleet process (fleetChild) instead
// of running tests; the parent sets it.
const fleetChildEnv = "UMBRA_BENCH_FLEET_PROCESS"

// The fleet runs in a child process, the test binary itself, because one
// process cannot hold both ends of 10,000 loopback connections under a
// 20,000 open-file limit, and so that the memory figures are the
// server's alone.
func init() {
	if os.Getenv(fleetChildEnv) != "" {
		os.Exit(fleetChild(os.Stdin, os.Stdout))
	}
}

// fleetConfig is the first line the parent writes to the fleet process.
type fleetConfig struct {
	Server      string
	Devices     int
	InstallTime time.Duration
	PublicKey   string
}

// fleetMsg is one JSON line from the fleet process.
type fleetMsg struct {
	Kind   string     `json:"kind"` // "enrol", "opened", "connected", "event", "stats" or "error"
	Device device.ID  `json:"device,omitempty"`
	Event  *sim.Event `json:"event,omitempty"`
	Stats  *sim.Stats `json:"stats,omitempty"`
	Error  string     `json:"error,omitempty"`
}

// fleetChild runs a simulated fleet for the parent: it reads a fleetConfig
// line, asks for every device's secret ("enrol", answered by one line),
// reports "opened", "connected" (every device online), every "updated"
// event, and "stats" when asked by a "stats" line; at the end of its input
// it closes the fleet and exits.
func fleetChild(in io.Reader, out io.Writer) int {
	sc := bufio.NewScanner(in)
	var mu sync.Mutex // guards enc
	enc := json.NewEncoder(out)
	send := func(m fleetMsg) {
		mu.Lock()
		defer mu.Unlock()
		_ = enc.Encode(m)
	}
	fail := func(err error) int {
		send(fleetMsg{Kind: "error", Error: err.Error()})
		return 1
	}
	var fc fleetConfig
	if !sc.Scan() {
		return fail(errors.New("fleet: no config line"))
	}
	if err := json.Unmarshal(sc.Bytes(), &fc); err != nil {
		return fail(fmt.Errorf("fleet: config: %w", err))
	}
	var enrolErr error
	tr := &http.Transport{MaxIdleConnsPerHost: sim.DefaultDownloadWorkers}
	defer tr.CloseIdleConnections()
	f, err := sim.Open(context.Background(), sim.Config{
		Server:      fc.Server,
		Devices:     fc.Devices,
		QoS:         1,
		Seed:        1,
		InstallTime: fc.InstallTime,
		RebootTime:  rolloutRebootTime,
		PublicKey:   fc.PublicKey,
		HTTPClient:  &http.Client{Transport: tr, Timeout: time.Minute},
		// sim.Open asks for credentials one device at a time.
		Credentials: func(id device.ID) (string, string) {
			send(fleetMsg{Kind: "enrol", Device: id})
			if !sc.Scan() {
				enrolErr = fmt.Errorf("fleet: no secret for %s", id)
			}
			return string(id), sc.Text()
		},
		OnEvent: func(ev sim.Event) {
			if ev.State == sim.StateUpdated {
				send(fleetMsg{Kind: "event", Event: &ev})
			}
		},
	})
	if err != nil {
		return fail(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
		cctx, ccancel := context.WithTimeout(context.Background(), closeTimeout)
		defer ccancel()
		_ = f.Close(cctx)
	}()
	if enrolErr != nil {
		return fail(enrolErr)
	}
	send(fleetMsg{Kind: "opened"})
	wg.Go(func() {
		if _, err := f.Wait(ctx, func(s sim.Stats) bool { return s.Connected == fc.Devices }); err == nil {
			send(fleetMsg{Kind: "connected"})
		}
	})
	for sc.Scan() {
		if sc.Text() == "stats" {
			st := f.Stats()
			send(fleetMsg{Kind: "stats", Stats: &st})
		}
	}
	return 0
}

// fleetProc is the parent's side of a fleet process.
type fleetProc struct {
	cmd       *exec.Cmd
	opened    chan struct{} // closed when sim.Open returned in the child
	connected chan struct{} // closed when every device is online
	exited    chan struct{} // closed when the child's output ended
	stats     chan sim.Stats

	mu    sync.Mutex     // guards stdin and err
	stdin io.WriteCloser // one line per write
	err   error          // the first failure reported by or about the child

	ids []device.ID // enrolled, in the child's order; complete once opened is closed
}

// startFleet starts the fleet process for cfg, enrolling each device in
// srv's identity store when the child asks for its secret and passing
// every updated event to onEvent. The child is stopped at cleanup.
func startFleet(b *testing.B, srv *server.Server, cfg fleetConfig, onEvent func(sim.Event)) *fleetProc {
	b.Helper()
	exe, err := os.Executable()
	if err != nil {
		b.Fatalf("fleet process: %v", err)
	}
	fp := &fleetProc{cmd: exec.Command(exe), opened: make(chan struct{}), connected: make(chan struct{}),
		exited: make(chan struct{}), stats: make(chan sim.Stats, 1)}
	fp.cmd.Env = append(os.Environ(), fleetChildEnv+"=1")
	fp.cmd.Stderr = os.Stderr
	if fp.stdin, err = fp.cmd.StdinPipe(); err != nil {
		b.Fatalf("fleet process: %v", err)
	}
	stdout, err := fp.cmd.StdoutPipe()
	if err != nil {
		b.Fatalf("fleet process: %v", err)
	}
	if err := fp.cmd.Start(); err != nil {
		b.Fatalf("start fleet process: %v", err)
	}
	line, _ := json.Marshal(cfg)
	fp.writeLine(string(line))
	go fp.read(b.Context(), stdout, srv, onEvent) // ends when the child exits; waited for in stop
	b.Cleanup(func() { fp.stop(b) })
	return fp
}

func (fp *fleetProc) writeLine(line string) {
	fp.mu.Lock()
	defer fp.mu.Unlock()
	if _, err := io.WriteString(fp.stdin, line+"\n"); err != nil && fp.err == nil {
		fp.err = fmt.Errorf("write to fleet process: %w", err)
	}
}

func (fp *fleetProc) fail(err error) {
	fp.mu.Lock()
	defer fp.mu.Unlock()
	if fp.err == nil {
		fp.err = err
	}
}

// read handles the child's messages until its output ends.
func (fp *fleetProc) read(ctx context.Context, stdout io.Reader, srv *server.Server, onEvent func(sim.Event)) {
	defer close(fp.exited)
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		var m fleetMsg
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			fp.fail(fmt.Errorf("fleet process said %q: %w", sc.Text(), err))
			continue
		}
		switch m.Kind {
		case "enrol":
			secret, err := srv.Identity().AddDevice(ctx, m.Device, nil)
			if err != nil {
				fp.fail(fmt.Errorf("enrol %s: %w", m.Device, err))
			}
			fp.ids = append(fp.ids, m.Device)
			fp.writeLine(secret)
		case "opened":
			close(fp.opened)
		case "connected":
			close(fp.connected)
		case "event":
			onEvent(*m.Event)
		case "stats":
			select {
			case fp.stats <- *m.Stats:
			default:
			}
		case "error":
			fp.fail(errors.New(m.Error))
		}
	}
}

// await waits for ch, failing the benchmark if ctx ends or the child
// exits first.
func (fp *fleetProc) await(b *testing.B, ctx context.Context, ch <-chan struct{}, what string) {
	b.Helper()
	select {
	case <-ch:
		return
	case <-ctx.Done():
		b.Fatalf("waiting for %s: %v (fleet %+v)", what, ctx.Err(), fp.Stats())
	case <-fp.exited:
	}
	fp.mu.Lock()
	defer fp.mu.Unlock()
	b.Fatalf("waiting for %s: the fleet process ended: %v", what, fp.err)
}

// Stats asks the child for its fleet's stats (zero if it does not answer
// within a few seconds).
func (fp *fleetProc) Stats() sim.Stats {
	fp.writeLine("stats")
	select {
	case st := <-fp.stats:
		return st
	case <-fp.exited:
	case <-time.After(5 * time.Second):
	}
	return sim.Stats{}
}

// stop ends the child's input, which closes its fleet, and waits for it
// (killing it after closeTimeout).
func (fp *fleetProc) stop(tb testing.TB) {
	fp.mu.Lock()
	_ = fp.stdin.Close()
	fp.mu.Unlock()
	select {
	case <-fp.exited:
	case <-time.After(closeTimeout):
		tb.Errorf("fleet process did not exit within %v: killing it", closeTimeout)
		_ = fp.cmd.Process.Kill()
		<-fp.exited
	}
	if err := fp.cmd.Wait(); err != nil {
		tb.Errorf("fleet process: %v", err)
	}
	fp.mu.Lock()
	defer fp.mu.Unlock()
	if fp.err != nil {
		tb.Errorf("fleet process: %v", fp.err)
	}
}

// upload stores a new random image and returns its version.
func (rig *rolloutRig) upload(b *testing.B) firmware.Image {
	b.Helper()
	rig.version++
	data := make([]byte, rolloutImageSize)
	rand.Read(data)
	img, err := rig.srv.Firmware().Upload(b.Context(),
		firmware.UploadRequest{Version: strconv.Itoa(rig.version) + ".0.0"}, bytes.NewReader(data))
	if err != nil {
		b.Fatalf("upload firmware: %v", err)
	}
	return img
}

// waitPhase waits until every device reported the phase's version; on
// failure it adds the rollout's status when rolloutID is set.
func (rig *rolloutRig) waitPhase(b *testing.B, done <-chan struct{}, what, rolloutID string) {
	b.Helper()
	select {
	case <-done:
	case <-time.After(phaseWait()):
		notified, updated := rig.rec.progress()
		var status string
		if rolloutID != "" {
			st, err := rig.srv.Planner().Get(b.Context(), rolloutID)
			status = fmt.Sprintf("; rollout %s, %d batches started, counts %v, %v", st.State, st.Started, st.Counts, err)
		}
		b.Fatalf("%s: after %v %d of %d devices notified, %d updated, want all updated (fleet %+v)%s",
			what, phaseWait(), notified, len(rig.ids), updated, rig.fleet.Stats(), status)
	}
}

// poll calls cond every rolloutPoll until it returns true or ctx ends:
// only for conditions that no event announces.
func poll(ctx context.Context, cond func() bool) error {
	for !cond() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(rolloutPoll):
		}
	}
	return nil
}

// memSample is this process's memory after a GC.
type memSample struct{ heap, rss int64 }

func sampleMem() memSample {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return memSample{heap: int64(ms.HeapInuse), rss: procStatusKB("VmRSS") << 10}
}

// procStatusKB reads a "kB" field of /proc/self/status (0 if unreadable).
func procStatusKB(field string) int64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb
		}
	}
	return 0
}

// resetPeakRSS resets VmHWM to the current RSS (Linux clear_refs 5); it
// reports whether that worked.
func resetPeakRSS() bool {
	return os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) == nil
}

// batchRun is one batch of a planned rollout, from the timestamps.
type batchRun struct {
	started     time.Time     // the planner's batch_started event
	firstNotify time.Time     // first delta of the batch
	lastNotify  time.Time     // last delta of the batch
	lastUpdated time.Time     // last updated report of the batch
	device      time.Duration // slowest device: max(updated − notified)
}

// plannedRun is one rollout through the planner.
type plannedRun struct {
	wall    time.Duration // Create called → the planner's succeeded event
	batches []batchRun
	span    notifySpan
	mem     struct{ heap, rss, peakRSS int64 } // deltas; peakRSS −1 if unknown
	cpu     cpuUse
}

// deviceTime is Σ over batches of the slowest device's own update time:
// the wall time of a perfect planner that notifies a whole batch at once
// and starts the next batch the instant the last device of the previous
// one reports.
func (p plannedRun) deviceTime() time.Duration {
	var sum time.Duration
	for _, bt := range p.batches {
		sum += bt.device
	}
	return sum
}

// notifySpan is the spread of a phase's notifications.
type notifySpan struct {
	first, last time.Time
	n           int
}

func spanOf(ts []time.Time) notifySpan {
	var s notifySpan
	for _, t := range ts {
		if t.IsZero() {
			continue
		}
		if s.n == 0 || t.Before(s.first) {
			s.first = t
		}
		if s.n == 0 || t.After(s.last) {
			s.last = t
		}
		s.n++
	}
	return s
}

// rate is notifications per second from the first to the last.
func (s notifySpan) rate() float64 {
	d := s.last.Sub(s.first)
	if s.n < 2 || d <= 0 {
		return 0
	}
	return float64(s.n) / d.Seconds()
}

// runPlanned rolls img out to the whole fleet with the planner (batches of
// rolloutBatchPercent %, otherwise the default policy) and returns the
// figures; it fails the benchmark unless the rollout succeeds.
func (rig *rolloutRig) runPlanned(b *testing.B, img firmware.Image) plannedRun {
	b.Helper()
	v := string(img.Version)
	pl := rig.srv.Planner()
	done := rig.rec.start(v)
	m0 := sampleMem()
	peakOK := resetPeakRSS()
	cpu := startCPU(b)
	start := time.Now()
	r, err := pl.Create(b.Context(), rollout.Spec{Firmware: img.Version, Devices: rig.ids,
		Policy: rollout.Policy{BatchPercent: rolloutBatchPercent}})
	if err != nil {
		b.Fatalf("create rollout: %v", err)
	}
	rig.waitPhase(b, done, "rollout "+r.ID, r.ID)
	// The planner sees the last report after the device sent it: poll its
	// state (there is no in-process event feed in server.Server).
	ctx, cancel := context.WithTimeout(b.Context(), phaseWait())
	defer cancel()
	var st rollout.Status
	if err := poll(ctx, func() bool {
		st, err = pl.Get(ctx, r.ID)
		return err != nil || !st.State.Active()
	}); err != nil {
		b.Fatalf("rollout %s: waiting for the planner: %v (state %s, counts %v)", r.ID, err, st.State, st.Counts)
	}
	if err != nil {
		b.Fatalf("get rollout: %v", err)
	}
	if st.State != rollout.StateSucceeded {
		b.Fatalf("rollout %s: got state %s (%s, counts %v), want succeeded", r.ID, st.State, st.Reason, st.Counts)
	}
	peak := procStatusKB("VmHWM") << 10
	notified, updated := rig.rec.stop()
	evs, err := pl.Events(b.Context(), r.ID)
	if err != nil {
		b.Fatalf("rollout events: %v", err)
	}
	var out plannedRun
	out.batches = make([]batchRun, len(r.Batches))
	var end time.Time
	for _, ev := range evs {
		switch {
		case ev.Kind == rollout.EventBatchStarted && ev.Batch < len(out.batches):
			out.batches[ev.Batch].started = ev.Time
		case ev.Kind == rollout.EventState && ev.State == rollout.StateSucceeded:
			end = ev.Time
		}
	}
	if end.IsZero() {
		b.Fatalf("rollout %s: no succeeded event in %d events", r.ID, len(evs))
	}
	out.wall = end.Sub(start)
	out.cpu = cpu.last(b, out.wall)
	for bi, bt := range r.Batches {
		run := &out.batches[bi]
		s := spanOf(notified[bt.Start : bt.Start+bt.Size])
		run.firstNotify, run.lastNotify = s.first, s.last
		for i := bt.Start; i < bt.Start+bt.Size; i++ {
			if notified[i].IsZero() {
				b.Fatalf("rollout %s: device %s reported %s without a delta seen", r.ID, rig.ids[i], v)
			}
			run.device = max(run.device, updated[i].Sub(notified[i]))
			if updated[i].After(run.lastUpdated) {
				run.lastUpdated = updated[i]
			}
		}
	}
	out.span = spanOf(notified)
	m1 := sampleMem()
	out.mem.heap, out.mem.rss, out.mem.peakRSS = m1.heap-m0.heap, m1.rss-m0.rss, -1
	if peakOK && peak > 0 {
		out.mem.peakRSS = peak - m0.rss
	}
	return out
}

// report adds p's figures to m; the per-batch figures are means over the
// batches.
func (p plannedRun) report(m *means, n int) {
	nb := len(p.batches)
	var batch, gate, inBatch time.Duration
	for i, bt := range p.batches {
		batch += bt.lastUpdated.Sub(bt.started)
		inBatch += bt.lastNotify.Sub(bt.firstNotify)
		if i+1 < nb {
			gate += p.batches[i+1].firstNotify.Sub(bt.lastUpdated)
		}
	}
	overhead := p.wall - p.deviceTime()
	m.add("wall-s", p.wall.Seconds())
	m.add("devices/s", float64(n)/p.wall.Seconds())
	m.add("notify/s", p.span.rate())
	if inBatch > 0 {
		m.add("batch-notify/s", float64(n)/inBatch.Seconds())
	}
	m.add("batches", float64(nb))
	m.add("batch-ms", ms(batch/time.Duration(nb)))
	if nb > 1 {
		m.add("gate-ms", ms(gate/time.Duration(nb-1)))
	}
	m.add("device-s", p.deviceTime().Seconds())
	m.add("overhead-s", overhead.Seconds())
	m.add("overhead-ms/batch", ms(overhead/time.Duration(nb)))
	m.add("heap-MB", float64(p.mem.heap)/(1<<20))
	m.add("rss-MB", float64(p.mem.rss)/(1<<20))
	if p.mem.peakRSS >= 0 {
		m.add("peak-rss-MB", float64(p.mem.peakRSS)/(1<<20))
	}
	m.add("cpu-cores", p.cpu.Self)
	m.add("others-cpu-cores", p.cpu.Others)
}

// runDirect is the baseline: the same command the planner would write
// (signed URL, job), written straight into every device's desired state
// by workers concurrent Engine.Update calls, all devices at once, no
// planner. It returns the time from the first write to the last updated
// report and the notification span.
func (rig *rolloutRig) runDirect(b *testing.B, img firmware.Image, workers int) (time.Duration, notifySpan) {
	b.Helper()
	fw, eng := rig.srv.Firmware(), rig.srv.Engine()
	job := fmt.Sprintf("direct-%d/%s", workers, img.Version)
	done := rig.rec.start(string(img.Version))
	start := time.Now()
	var failed atomic.Pointer[error]
	jobs := make(chan device.ID)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for id := range jobs {
				body, err := json.Marshal(map[string]any{
					"state":       map[string]any{"desired": fw.Command(img, id, rollout.DefaultURLTTL, job).Desired()},
					"clientToken": job,
				})
				if err == nil {
					_, err = eng.Update(b.Context(), id, body)
				}
				if err != nil {
					err = fmt.Errorf("write command to %s: %w", id, err)
					failed.CompareAndSwap(nil, &err)
				}
			}
		})
	}
	for _, id := range rig.ids {
		jobs <- id
	}
	close(jobs)
	wg.Wait()
	if p := failed.Load(); p != nil {
		b.Fatal(*p)
	}
	rig.waitPhase(b, done, "direct "+job, "")
	notified, updated := rig.rec.stop()
	return spanOf(updated).last.Sub(start), spanOf(notified)
}

// BenchmarkRollout rolls a new image out to N simulated devices
// (UMBRA_BENCH_ROLLOUT_DEVICES, default 10,000, 200 with -short) that
// install instantly, in batches of 10 %, through the whole Umbra
// (server.Open, every device enrolled) with the fleet in a child process; one
// rollout per iteration (use -benchtime 1x). In the same iteration the
// baseline writes the same commands straight into the desired states
// (Engine.Update, no planner): with one writer, as the planner's pass
// writes, and with operatorWorkers (64) concurrent writers.
//
// Figures (definitions in docs/benchmarks.md §9): wall-s (Create → the
// planner's succeeded event), devices/s, notify/s (first to last
// notification), batch-notify/s (notifications over the time spent
// notifying within batches), batch-ms (batch started → its last device
// updated), gate-ms (last device of a batch updated → first notification
// of the next), device-s (Σ over batches of the slowest device's own update
// time), overhead-s = wall-s − device-s, heap/RSS deltas of the server
// process over the rollout, and planner/direct-1 (the headline) and
// planner/direct-64.
func BenchmarkRollout(b *testing.B) {
	n := envInt(b, "UMBRA_BENCH_ROLLOUT_DEVICES", defaultRolloutDevices, shortRolloutDevices, 1, 100_000)
	rig := openRolloutRig(b, n, 0)
	var m means
	for b.Loop() {
		p := rig.runPlanned(b, rig.upload(b))
		p.report(&m, n)
		for _, workers := range []int{1, operatorWorkers} {
			wall, span := rig.runDirect(b, rig.upload(b), workers)
			prefix := "direct-" + strconv.Itoa(workers)
			m.add(prefix+"-wall-s", wall.Seconds())
			m.add(prefix+"-notify/s", span.rate())
			m.add("planner/"+prefix, p.wall.Seconds()/wall.Seconds())
		}
	}
	st := rig.fleet.Stats()
	b.Logf("fleet: %d reports, %d rejected, %d resyncs, %d downloads", st.Reports, st.Rejected, st.Resyncs, st.Downloads)
	m.report(b)
}

// BenchmarkRolloutSeed is issue 5's seed scenario, projected: N devices
// (UMBRA_BENCH_SEED_DEVICES, default 1,000, 100 with -short) that take T
// ± 20 % to install (UMBRA_BENCH_SEED_INSTALL, default 3s, 100ms with
// -short; up to 30s), in batches of 10 %. It reports wall/(batches×T),
// wall/device-s (1 = no planner overhead), the overhead per batch, and
// the projection for T = 30s:
//
//	projected-30s-s = batches × (device-s/batches × 30s/T + overhead/batch)
func BenchmarkRolloutSeed(b *testing.B) {
	n := envInt(b, "UMBRA_BENCH_SEED_DEVICES", defaultSeedDevices, shortSeedDevices, 1, 100_000)
	install := envDuration(b, "UMBRA_BENCH_SEED_INSTALL", defaultSeedInstall, shortSeedInstall, 10*time.Millisecond, seedTarget)
	rig := openRolloutRig(b, n, install)
	var m means
	for b.Loop() {
		p := rig.runPlanned(b, rig.upload(b))
		nb := len(p.batches)
		dev, overhead := p.deviceTime(), p.wall-p.deviceTime()
		m.add("wall-s", p.wall.Seconds())
		m.add("batches", float64(nb))
		m.add("install-s", install.Seconds())
		m.add("wall/(batches*T)", p.wall.Seconds()/(float64(nb)*install.Seconds()))
		m.add("device-s", dev.Seconds())
		m.add("wall/device-s", p.wall.Seconds()/dev.Seconds())
		m.add("overhead-ms/batch", ms(overhead/time.Duration(nb)))
		scale := float64(seedTarget) / float64(install)
		projected := time.Duration(float64(dev)*scale) + overhead
		m.add("projected-30s-s", projected.Seconds())
		m.add("cpu-cores", p.cpu.Self)
	}
	m.report(b)
}
