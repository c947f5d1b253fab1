package server_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/umbra-iot/umbra/client"
	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/internal/natstest"
	"github.com/umbra-iot/umbra/internal/server"
	"github.com/umbra-iot/umbra/internal/sim"
	"github.com/umbra-iot/umbra/internal/waitfor"
	"github.com/umbra-iot/umbra/wire"
)

// The cluster rollout benchmark's sizes (docs/benchmarks.md §14).
const (
	defaultClusterRolloutDevices = 10_000
	shortClusterRolloutDevices   = 100
	// clusterRolloutRescan is the nodes' planner rescan (production: 1
	// min). The planner (on the lease's holder) hears every node's reports
	// through a watch of the shadow bucket; the rescan is its safety net,
	// shortened so that a missed report costs seconds, not a minute.
	clusterRolloutRescan      = 5 * time.Second
	shortClusterRolloutRescan = 500 * time.Millisecond
	// clusterRolloutWait bounds each phase (setup, rollout).
	clusterRolloutWait = 15 * time.Minute
	// clusterNodeEnv makes the test binary one Umbra node (clusterNodeMain).
	clusterNodeEnv = "UMBRA_BENCH_CLUSTER_NODE"
)

// clusterNodeConfig is what the parent passes to a node process.
type clusterNodeConfig struct {
	DataDir  string
	NATS     []string
	NodeID   string
	Replicas int
	Rescan   time.Duration
}

func init() {
	if cfg := os.Getenv(clusterNodeEnv); cfg != "" {
		os.Exit(clusterNodeMain(cfg))
	}
}

// clusterNodeMain runs one node (server.Open, authentication on) until
// its stdin closes; it prints {"mqtt":…,"http":…} once serving.
func clusterNodeMain(raw string) int {
	var nc clusterNodeConfig
	if err := json.Unmarshal([]byte(raw), &nc); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	cfg := server.Config{DataDir: nc.DataDir, MQTTAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", RolloutRescan: nc.Rescan,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))}
	if len(nc.NATS) > 0 {
		cfg.NATS, cfg.NodeID, cfg.NATSReplicas = nc.NATS, nc.NodeID, nc.Replicas
	}
	s, err := server.Open(context.Background(), cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	_ = json.NewEncoder(os.Stdout).Encode(map[string]string{"mqtt": s.Broker().Addr().String(), "http": s.HTTPAddr().String()})
	_, _ = io.Copy(io.Discard, os.Stdin)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.Close(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// nodeProc is a node process seen from the parent.
type nodeProc struct {
	cmd        *exec.Cmd
	stdin      io.WriteCloser
	mqtt, http string
	dir        string
}

// startNodeProc starts a node process and waits until it serves.
func startNodeProc(b *testing.B, nc clusterNodeConfig) *nodeProc {
	b.Helper()
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	raw, _ := json.Marshal(nc)
	p := &nodeProc{cmd: exec.Command(exe), dir: nc.DataDir}
	p.cmd.Env = append(os.Environ(), clusterNodeEnv+"="+string(raw))
	p.cmd.Stderr = os.Stderr
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		b.Fatal(err)
	}
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		b.Fatalf("start node %s: %v", nc.NodeID, err)
	}
	b.Cleanup(func() {
		_ = p.stdin.Close()
		done := make(chan error, 1)
		go func() { done <- p.cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				b.Errorf("node %s: %v", nc.NodeID, err)
			}
		case <-time.After(40 * time.Second):
			_ = p.cmd.Process.Kill()
			b.Errorf("node %s did not exit within 40s: killed", nc.NodeID)
			<-done
		}
	})
	line := make(chan []byte, 1)
	go func() {
		sc := bufio.NewScanner(out)
		if sc.Scan() {
			line <- slices.Clone(sc.Bytes())
		}
		close(line)
		_, _ = io.Copy(io.Discard, out)
	}()
	select {
	case l, ok := <-line:
		var addrs map[string]string
		if !ok || json.Unmarshal(l, &addrs) != nil {
			b.Fatalf("node %s did not start (see its stderr)", nc.NodeID)
		}
		p.mqtt, p.http = "tcp://"+addrs["mqtt"], "http://"+addrs["http"]
	case <-time.After(time.Minute):
		b.Fatalf("node %s did not serve within a minute", nc.NodeID)
	}
	return p
}

// rolloutTimes records, per device, when the rollout's command was seen
// (the first delta carrying the version, on an integrator's subscription
// to every delta on the node that plans) and when the device reported the
// version updated (the simulator's event time, in this process).
type rolloutTimes struct {
	mu       sync.Mutex // guards everything below
	want     []byte     // `"version":"<v>"`
	version  string
	command  map[device.ID]time.Time
	reported map[device.ID]time.Time
	left     int
	done     chan struct{}
}

func newRolloutTimes(ids []device.ID, version string) *rolloutTimes {
	r := &rolloutTimes{want: fmt.Appendf(nil, `"version":%q`, version), version: version,
		command: make(map[device.ID]time.Time, len(ids)), reported: make(map[device.ID]time.Time, len(ids)),
		left: len(ids), done: make(chan struct{})}
	return r
}

func (r *rolloutTimes) delta(_ mqtt.Client, m mqtt.Message) {
	now := time.Now()
	id := device.ID(strings.TrimSuffix(strings.TrimPrefix(m.Topic(), "state/"), "/update/delta"))
	if !bytes.Contains(m.Payload(), r.want) {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, seen := r.command[id]; !seen {
		r.command[id] = now
	}
}

func (r *rolloutTimes) event(ev sim.Event) {
	if ev.State != sim.StateUpdated || ev.Version != r.version {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, seen := r.reported[ev.Device]; !seen {
		r.reported[ev.Device] = ev.Time
		if r.left--; r.left == 0 {
			close(r.done)
		}
	}
}

// latencies returns every device's report − command, sorted, and the
// last report; devices whose command was not seen are counted in missing.
func (r *rolloutTimes) latencies() (lat []time.Duration, last time.Time, missing int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for id, rep := range r.reported {
		if rep.After(last) {
			last = rep
		}
		cmd, ok := r.command[id]
		if !ok {
			missing++
			continue
		}
		lat = append(lat, rep.Sub(cmd))
	}
	slices.Sort(lat)
	return lat, last, missing
}

// clusterRolloutResult is one case's figures.
type clusterRolloutResult struct {
	wall     time.Duration
	p50, p99 time.Duration
}

// BenchmarkClusterRollout rolls a new image out to N simulated devices
// (UMBRA_BENCH_ROLLOUT_DEVICES, default 10,000; 100 with -short) that
// install instantly, in batches of 10 % (50 % with -short), created
// through the HTTP API of the first node, in two cases of one run:
// "bbolt-1node" (the baseline: one node on bbolt) and "nats-R3-3nodes"
// (three nats-servers, R3 buckets, three nodes; the fleet spread over the
// nodes by the simulator's address list). Every Umbra node is a process
// of its own (this test binary re-executed), with authentication on (the
// devices are imported in one bulk import); the fleet runs in the
// benchmark process. The rollout is planned by whichever node holds the
// planner lease (the others forward to it), which hears every node's
// reports through a watch of the shadow bucket; the nodes' planner rescan,
// its safety net, is 5 s (production 1 min; UMBRA_BENCH_ROLLOUT_RESCAN).
// One rollout per iteration (use -benchtime 1x).
//
// Figures: wall-s (create → the rollout's succeeded event), devices/s,
// last-report-s (create → the last device's updated report: the fleet's
// side; wall-s − last-report-s is the planner learning of it),
// p50-ms and p99-ms of command-to-report (the first delta carrying the
// version, seen by an integrator on the first node → the device's updated
// report), and per node and per nats-server the CPU (cores over the
// rollout) and memory (RSS at the end, peak RSS during the rollout), and
// the benchmark process's CPU (fleet-cpu-cores: the simulated fleet). The
// cluster case adds its ratios to the baseline of the same run.
func BenchmarkClusterRollout(b *testing.B) {
	n := envCount(b, "UMBRA_BENCH_ROLLOUT_DEVICES", defaultClusterRolloutDevices, shortClusterRolloutDevices)
	rescan, batch := clusterRolloutRescan, 10.0
	if testing.Short() {
		rescan, batch = shortClusterRolloutRescan, 50
	}
	if s := os.Getenv("UMBRA_BENCH_ROLLOUT_RESCAN"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d < 100*time.Millisecond || d > 10*time.Minute {
			b.Fatalf("UMBRA_BENCH_ROLLOUT_RESCAN=%q: want a duration in 100ms..10m", s)
		}
		rescan = d
	}
	var baseline *clusterRolloutResult
	cases := []struct {
		name  string
		nodes int
		nats  bool
	}{
		{"bbolt-1node", 1, false},
		{"nats-R3-3nodes", 3, true},
	}
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			var natsProcs []*natstest.Server
			var urls []string
			if tc.nats {
				c := natstest.StartCluster(b)
				natsProcs, urls = c.Servers, c.URLs()
			}
			nodes := make([]*nodeProc, tc.nodes)
			for i := range nodes {
				nodes[i] = startNodeProc(b, clusterNodeConfig{DataDir: b.TempDir(), NATS: urls,
					NodeID: fmt.Sprintf("n%d", i+1), Replicas: len(natsProcs), Rescan: rescan})
			}
			r := openClusterFleet(b, nodes, n)
			for b.Loop() {
				res := r.rollout(b, batch, natsProcs)
				if tc.nats && baseline != nil {
					b.ReportMetric(res.wall.Seconds()/baseline.wall.Seconds(), "wall/baseline")
					b.ReportMetric(float64(res.p99)/float64(baseline.p99), "p99/baseline")
				}
				if !tc.nats {
					baseline = &res
				}
			}
		})
	}
}

// envCount is the positive integer in environment variable name, else
// def, or short with -short.
func envCount(b *testing.B, name string, def, short int) int {
	b.Helper()
	if s := os.Getenv(name); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 1 || v > 100_000 {
			b.Fatalf("%s=%q: want an integer in 1..100000", name, s)
		}
		return v
	}
	if testing.Short() {
		return short
	}
	return def
}

// clusterFleet is the nodes, the operator's API client on the first node
// and the connected fleet.
type clusterFleet struct {
	nodes   []*nodeProc
	api     *client.Client
	op      [2]string // the operator token's name and secret, for MQTT
	fleet   *sim.Fleet
	ids     []device.ID
	times   sync.Map // the current *rolloutTimes, for the fleet's OnEvent
	version int
}

// openClusterFleet imports n devices through the first node's API and
// connects them, device i to node i mod len(nodes), and waits until
// every one is connected and has reported its firmware.
func openClusterFleet(b *testing.B, nodes []*nodeProc, n int) *clusterFleet {
	b.Helper()
	start := time.Now()
	tok, err := os.ReadFile(filepath.Join(nodes[0].dir, server.AdminTokenFile))
	if err != nil {
		b.Fatal(err)
	}
	token := strings.TrimSpace(string(tok))
	name, secret, _ := strings.Cut(token, ":")
	api, err := client.New(client.Config{URL: nodes[0].http, Token: token, Timeout: 5 * time.Minute})
	if err != nil {
		b.Fatal(err)
	}
	r := &clusterFleet{nodes: nodes, api: api, op: [2]string{name, secret}, version: 1}
	req := wire.ImportRequest{Devices: make([]wire.EnrollRequest, n)}
	width := max(4, len(strconv.Itoa(n))) // the simulator's IDs: <prefix><n, zero-padded>
	for i := range req.Devices {
		req.Devices[i].ID = fmt.Sprintf("cr-%0*d", width, i+1)
	}
	resp, err := api.ImportDevices(b.Context(), req)
	if err != nil {
		b.Fatalf("import %d devices: %v", n, err)
	}
	secrets := make(map[device.ID]string, n)
	for _, d := range resp.Devices {
		secrets[device.ID(d.ID)] = d.Secret
		r.ids = append(r.ids, device.ID(d.ID))
	}
	pk, err := api.FirmwarePublicKey(b.Context())
	if err != nil {
		b.Fatal(err)
	}
	var addrs []string
	for _, p := range nodes {
		addrs = append(addrs, p.mqtt)
	}
	r.fleet, err = sim.Open(b.Context(), sim.Config{
		Server: strings.Join(addrs, ","), Devices: n, IDPrefix: "cr-", QoS: 1, Seed: 1,
		RebootTime: time.Millisecond, PublicKey: pk.PEM,
		Credentials: func(id device.ID) (string, string) { return string(id), secrets[id] },
		OnEvent: func(ev sim.Event) {
			if t, ok := r.times.Load("current"); ok {
				t.(*rolloutTimes).event(ev)
			}
		},
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_ = r.fleet.Close(ctx)
	})
	ctx, cancel := context.WithTimeout(b.Context(), clusterRolloutWait)
	defer cancel()
	if st, err := r.fleet.Wait(ctx, func(st sim.Stats) bool { return st.Connected == n && st.Reports >= uint64(n) }); err != nil {
		b.Fatalf("waiting for %d devices to connect and report: %v (%+v)", n, err, st)
	}
	b.Logf("%d devices imported, connected over %d nodes and reported in %v", n, len(nodes), time.Since(start).Round(time.Millisecond))
	return r
}

// rollout uploads a new image, rolls it out to the whole fleet in batches
// of batch percent through the first node, and reports the figures.
func (r *clusterFleet) rollout(b *testing.B, batch float64, natsProcs []*natstest.Server) clusterRolloutResult {
	b.Helper()
	r.version++
	v := strconv.Itoa(r.version) + ".0.0"
	img := make([]byte, 16<<10)
	rand.Read(img)
	if _, err := r.api.UploadFirmware(b.Context(), wire.ImageUpload{Version: v}, bytes.NewReader(img), int64(len(img))); err != nil {
		b.Fatalf("upload %s: %v", v, err)
	}
	times := newRolloutTimes(r.ids, v)
	r.times.Store("current", times)
	watcher := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(r.nodes[0].mqtt).SetClientID("bench-watcher-" + v).
		SetUsername(r.op[0]).SetPassword(r.op[1]).SetAutoReconnect(false).SetOrderMatters(false))
	if tok := watcher.Connect(); !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
		b.Fatalf("watcher connect: %v", tok.Error())
	}
	defer watcher.Disconnect(100)
	if tok := watcher.Subscribe("state/+/update/delta", 1, times.delta); !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
		b.Fatalf("watcher subscribe: %v", tok.Error())
	}

	pids := make([]int, 0, len(r.nodes)+len(natsProcs))
	for _, p := range r.nodes {
		pids = append(pids, p.cmd.Process.Pid)
	}
	for _, s := range natsProcs {
		pids = append(pids, s.PID())
	}
	pids = append(pids, os.Getpid()) // the fleet (and the watcher), last
	before := make([]natstest.Usage, len(pids))
	for i, pid := range pids {
		natstest.ResetPeakRSS(pid)
		before[i] = natstest.ProcUsage(pid)
	}
	start := time.Now()
	ro, err := r.api.CreateRollout(b.Context(), wire.CreateRollout{Firmware: v, Devices: r.ids, Policy: wire.Policy{BatchPercent: batch}})
	if err != nil {
		b.Fatalf("create rollout: %v", err)
	}
	ctx, cancel := context.WithTimeout(b.Context(), clusterRolloutWait)
	defer cancel()
	select {
	case <-times.done:
	case <-ctx.Done():
		st, _ := r.api.GetRollout(context.Background(), ro.ID)
		b.Fatalf("rollout %s: after %v, %d of %d devices updated; rollout %s, counts %v", ro.ID, clusterRolloutWait,
			len(r.ids)-times.left, len(r.ids), st.State, st.Counts)
	}
	// No event over HTTP says the planner is done: poll.
	var st wire.RolloutStatus
	if !waitfor.Until(clusterRolloutWait, func() bool {
		st, err = r.api.GetRollout(ctx, ro.ID)
		return err == nil && st.State != wire.RolloutRunning && st.State != wire.RolloutCreated
	}) || st.State != wire.RolloutSucceeded {
		b.Fatalf("rollout %s: state %s (%s), counts %v, %v; want succeeded", ro.ID, st.State, st.Reason, st.Counts, err)
	}
	evs, err := r.api.RolloutEvents(b.Context(), ro.ID, 0)
	if err != nil {
		b.Fatal(err)
	}
	var end time.Time
	for _, ev := range evs {
		if ev.Kind == wire.EventState && ev.State == wire.RolloutSucceeded {
			end = ev.Time
		}
	}
	if end.IsZero() {
		b.Fatalf("rollout %s: no succeeded event", ro.ID)
	}
	res := clusterRolloutResult{wall: end.Sub(start)}
	lat, last, missing := times.latencies()
	if len(lat) == 0 || missing > 0 {
		b.Fatalf("rollout %s: %d devices reported without their command seen by the watcher", ro.ID, missing)
	}
	res.p50, res.p99 = lat[len(lat)/2], lat[len(lat)*99/100]
	b.ReportMetric(res.wall.Seconds(), "wall-s")
	b.ReportMetric(float64(len(r.ids))/res.wall.Seconds(), "devices/s")
	b.ReportMetric(last.Sub(start).Seconds(), "last-report-s")
	b.ReportMetric(float64(res.p50.Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(res.p99.Microseconds())/1000, "p99-ms")
	for i, pid := range pids {
		u := natstest.ProcUsage(pid)
		name := fmt.Sprintf("n%d", i+1)
		switch {
		case i == len(pids)-1:
			b.ReportMetric((u.CPU-before[i].CPU).Seconds()/res.wall.Seconds(), "fleet-cpu-cores")
			continue // its memory is the simulator's, not a node's
		case i >= len(r.nodes):
			name = fmt.Sprintf("nats%d", i-len(r.nodes)+1)
		}
		b.ReportMetric((u.CPU-before[i].CPU).Seconds()/res.wall.Seconds(), name+"-cpu-cores")
		b.ReportMetric(float64(u.RSS)/(1<<20), name+"-rss-MB")
		b.ReportMetric(float64(u.PeakRSS)/(1<<20), name+"-peak-rss-MB")
	}
	fs := r.fleet.Stats()
	b.Logf("rollout %s of %d devices: %v; fleet: %d reports, %d rejected, %d resyncs, %d reconnects, per node %+v",
		ro.ID, len(r.ids), res.wall.Round(time.Millisecond), fs.Reports, fs.Rejected, fs.Resyncs, fs.Reconnects, fs.Servers)
	return res
}
