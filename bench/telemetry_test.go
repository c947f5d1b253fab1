package bench_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"runtime/pprof"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/identity"
	"github.com/umbra-iot/umbra/internal/heapfloor"
	"github.com/umbra-iot/umbra/internal/mosquittotest"
	"github.com/umbra-iot/umbra/internal/server"
)

// BenchmarkTelemetryFanIn is issue 11's telemetry fan-in: N devices
// (UMBRA_BENCH_CLIENTS, default 1000, 50 with -short) publish QoS 1
// telemetry on devices/<id>/telemetry, and one integrator subscribed to
// devices/+/telemetry at QoS 1 receives all of it. The loop is closed end
// to end: a device publishes its next message when the integrator has
// received its previous one, so each device has one message in flight, no
// queue grows without bound, and every message is accounted for (one that
// does not arrive within requestTimeout fails the benchmark).
//
// The devices and the integrator are paho clients in a child process (the
// test binary itself), one per broker, so that in both phases clients and
// broker are two processes on the same two cores. Each iteration runs
// Debian's mosquitto (a subprocess, anonymous, with the reference
// benchmark's settings) and then Umbra in this process as umbra serve runs
// it (server.Open: authentication and the default policy on, production
// limits; each device logs in with its own secret, the integrator with an
// integrator token). It reports messages/s received by the integrator,
// latency from publish to receipt (p50, p99), umbra/mosquitto, and CPU:
// the broker's (this process's for Umbra, mosquitto's from /proc), per
// message too, which other load on the machine distorts least; the
// clients'; and the rest of the machine's (others-cpu-cores).
// UMBRA_BENCH_READ_LOOPS=-1 runs Umbra with a goroutine reading each
// connection instead of its read loops, for comparison.
func BenchmarkTelemetryFanIn(b *testing.B) {
	n := numClients(b)
	measure, warmup := window(b)
	b.Cleanup(heapfloor.Start(heapfloor.DefaultFloor).Stop) // as umbra serve runs (--gc-heap-floor)
	mosqAddr, mosqPID := mosquittotest.StartPID(b, mosquittoConf)
	mosq := startFanIn(b, fanInConfig{URL: "tcp://" + mosqAddr, Devices: n})
	srv, err := server.Open(b.Context(), server.Config{DataDir: b.TempDir(), MQTTAddr: "127.0.0.1:0", ReadLoops: readLoops(b)})
	if err != nil {
		b.Fatalf("open umbra: %v", err)
	}
	b.Cleanup(func() { closeWithin(b, "umbra", srv) })
	ids := make([]identity.Enrollment, n)
	for i := range ids {
		ids[i] = identity.Enrollment{ID: device.ID(fanInDevice(i))}
	}
	secrets, err := srv.Identity().EnrollDevices(b.Context(), ids, false)
	if err != nil {
		b.Fatalf("enroll %d devices: %v", n, err)
	}
	token, err := srv.Identity().CreateToken(b.Context(), identity.RoleIntegrator, "fanin")
	if err != nil {
		b.Fatal(err)
	}
	umbra := startFanIn(b, fanInConfig{URL: "tcp://" + srv.Broker().Addr().String(), Devices: n,
		Secrets: secrets, User: "fanin", Password: token})

	selfCPU := func() time.Duration { return cpuTime() }
	mosqCPU := func() time.Duration { return mosquittotest.CPUTime(mosqPID) }
	var m means
	for b.Loop() {
		for _, phase := range []struct {
			name      string
			p         *fanInProc
			brokerCPU func() time.Duration
			inProcess bool // the broker runs in this process: its heap allocations are counted
		}{{"mosquitto", mosq, mosqCPU, false}, {"umbra", umbra, selfCPU, true}} {
			pprof.Do(b.Context(), pprof.Labels("phase", phase.name), func(context.Context) {
				cpu := startCPU(b)
				var before, after runtime.MemStats
				if phase.inProcess {
					runtime.ReadMemStats(&before)
				}
				broker := phase.brokerCPU()
				r := phase.p.run(b, warmup, measure)
				brokerCores := float64(phase.brokerCPU()-broker) / float64(warmup+measure)
				use := cpu.last(b, measure)
				heap := ""
				if phase.inProcess {
					runtime.ReadMemStats(&after)
					msgs := float64(max(r.Received, 1))
					allocs, bytes := float64(after.Mallocs-before.Mallocs)/msgs, float64(after.TotalAlloc-before.TotalAlloc)/msgs
					gcs := float64(after.NumGC-before.NumGC) / (warmup + measure).Seconds()
					heap = fmt.Sprintf("; %.1f allocs and %.0f B per msg, %.1f GCs/s; read-loop handoffs so far %d", allocs, bytes, gcs, srv.Broker().Stats().LoopHandoffs)
					m.add(phase.name+"-allocs/msg", allocs)
					m.add(phase.name+"-B/msg", bytes)
					m.add(phase.name+"-GCs/s", gcs)
				}
				b.Logf("%s: %.0f msgs/s, p50 %.2f ms, p99 %.2f ms, max %.2f ms; broker %.2f cores (%.1f µs/msg), clients %.2f%s; %v",
					phase.name, r.PerSecond, ms(r.P50), ms(r.P99), ms(r.Max), brokerCores, brokerCores/r.PerSecond*1e6, r.CPU, heap, use)
				m.add(phase.name+"-msgs/s", r.PerSecond)
				m.add(phase.name+"-p50-ms", ms(r.P50))
				m.add(phase.name+"-p99-ms", ms(r.P99))
				m.add(phase.name+"-broker-cpu-cores", brokerCores)
				m.add(phase.name+"-broker-cpu-µs/msg", brokerCores/r.PerSecond*1e6)
				m.add(phase.name+"-client-cpu-cores", r.CPU)
				m.add(phase.name+"-others-cpu-cores", max(0, use.Self+use.Others-r.CPU-brokerCores))
			})
		}
	}
	m.add("umbra/mosquitto", m.mean("umbra-msgs/s")/m.mean("mosquitto-msgs/s"))
	m.add("umbra/mosquitto-p99", m.mean("umbra-p99-ms")/m.mean("mosquitto-p99-ms"))
	m.add("umbra/mosquitto-broker-cpu/msg", m.mean("umbra-broker-cpu-µs/msg")/m.mean("mosquitto-broker-cpu-µs/msg"))
	m.report(b)
}

// fanInDevice is the client ID, user name and device ID of device i.
func fanInDevice(i int) string { return fmt.Sprintf("tele-%05d", i+1) }

// fanInChildEnv makes the test binary a fan-in client process
// (fanInChild) instead of running tests; the parent sets it.
const fanInChildEnv = "UMBRA_BENCH_FANIN_PROCESS"

func init() {
	if os.Getenv(fanInChildEnv) != "" {
		os.Exit(fanInChild(os.Stdin, os.Stdout))
	}
}

// fanInConfig is the first line the parent writes to a fan-in process.
type fanInConfig struct {
	URL      string
	Devices  int
	Secrets  []string // device i's password; none if nil
	User     string   // the integrator's user name and password; none if ""
	Password string
}

// fanInRun is a line asking a fan-in process for one run.
type fanInRun struct {
	Warmup, Measure time.Duration
}

// fanInResult is a fan-in process's answer to a run (or its error).
type fanInResult struct {
	Ready         bool          `json:",omitempty"`
	Error         string        `json:",omitempty"`
	PerSecond     float64       // messages received per second in the measurement window
	Received      int64         // messages received in the whole run, warm-up included
	P50, P99, Max time.Duration // publish to receipt
	CPU           float64       // the process's CPU in the measurement window, cores
}

// fanInProc is a running fan-in process.
type fanInProc struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	out    *bufio.Scanner
	exited chan error
}

// startFanIn starts a fan-in process for cfg and waits until its clients
// are connected; it is stopped at cleanup.
func startFanIn(b *testing.B, cfg fanInConfig) *fanInProc {
	b.Helper()
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	p := &fanInProc{cmd: exec.Command(exe), exited: make(chan error, 1)}
	p.cmd.Env = append(os.Environ(), fanInChildEnv+"=1")
	p.cmd.Stderr = os.Stderr
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		b.Fatal(err)
	}
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	p.out = bufio.NewScanner(stdout)
	if err := p.cmd.Start(); err != nil {
		b.Fatalf("start fan-in process: %v", err)
	}
	b.Cleanup(func() {
		_ = p.stdin.Close() // the child disconnects its clients and exits
		done := make(chan error, 1)
		go func() { done <- p.cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				b.Errorf("fan-in process: %v", err)
			}
		case <-time.After(closeTimeout):
			_ = p.cmd.Process.Kill()
			<-done
			b.Errorf("fan-in process did not exit within %v; killed", closeTimeout)
		}
	})
	if r := p.call(b, cfg); !r.Ready {
		b.Fatalf("fan-in process for %s: not ready", cfg.URL)
	}
	return p
}

// call writes req as a line and returns the answer line.
func (p *fanInProc) call(b *testing.B, req any) fanInResult {
	b.Helper()
	line, err := json.Marshal(req)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := p.stdin.Write(append(line, '\n')); err != nil {
		b.Fatalf("write to fan-in process: %v", err)
	}
	if !p.out.Scan() {
		b.Fatalf("fan-in process ended: %v", p.out.Err())
	}
	var r fanInResult
	if err := json.Unmarshal(p.out.Bytes(), &r); err != nil {
		b.Fatalf("fan-in process said %q: %v", p.out.Text(), err)
	}
	if r.Error != "" {
		b.Fatalf("fan-in process: %s", r.Error)
	}
	return r
}

// run runs the closed loop for warmup and measure.
func (p *fanInProc) run(b *testing.B, warmup, measure time.Duration) fanInResult {
	b.Helper()
	return p.call(b, fanInRun{Warmup: warmup, Measure: measure})
}

// fanInChild is the fan-in process: it connects the configured clients,
// answers every run line with its result, and disconnects at end of input.
func fanInChild(in io.Reader, out io.Writer) int {
	sc := bufio.NewScanner(in)
	sc.Buffer(nil, 16<<20) // the secrets of 20,000 devices
	enc := json.NewEncoder(out)
	var cfg fanInConfig
	if !sc.Scan() || json.Unmarshal(sc.Bytes(), &cfg) != nil {
		_ = enc.Encode(fanInResult{Error: "no config line"})
		return 1
	}
	f, err := openFanIn(cfg)
	if f != nil {
		defer f.close()
	}
	if err != nil {
		_ = enc.Encode(fanInResult{Error: err.Error()})
		return 1
	}
	_ = enc.Encode(fanInResult{Ready: true})
	for sc.Scan() {
		var r fanInRun
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			_ = enc.Encode(fanInResult{Error: err.Error()})
			return 1
		}
		res, err := f.run(r.Warmup, r.Measure)
		if err != nil {
			res.Error = err.Error()
		}
		_ = enc.Encode(res)
	}
	return 0
}

// fanIn is a connected fleet and its integrator on one broker.
type fanIn struct {
	integ   paho.Client
	devices []paho.Client
	topics  []string
	got     []chan struct{} // per device: the integrator received its message

	from, until atomic.Int64 // measurement window, Unix ns; read by the integrator's handler
	received    atomic.Int64 // messages received in the current run
	mu          sync.Mutex   // guards lat
	lat         []time.Duration
}

// openFanIn connects cfg's devices and its integrator, subscribed to
// devices/+/telemetry. A non-nil fanIn is returned for close also with an
// error.
func openFanIn(cfg fanInConfig) (*fanIn, error) {
	n := cfg.Devices
	f := &fanIn{devices: make([]paho.Client, n), topics: make([]string, n), got: make([]chan struct{}, n)}
	opts := func(id, user, pass string) *paho.ClientOptions {
		return paho.NewClientOptions().AddBroker(cfg.URL).SetClientID(id).SetUsername(user).SetPassword(pass).
			SetCleanSession(true).SetAutoReconnect(false).SetConnectTimeout(requestTimeout).SetKeepAlive(60 * time.Second)
	}
	// The integrator's handler runs on paho's reading goroutine
	// (OrderMatters): no goroutine per message.
	f.integ = paho.NewClient(opts("fanin-integrator", cfg.User, cfg.Password).SetOrderMatters(true))
	if tok := f.integ.Connect(); !tok.WaitTimeout(requestTimeout) || tok.Error() != nil {
		return f, fmt.Errorf("connect integrator to %s: %v", cfg.URL, tok.Error())
	}
	if tok := f.integ.Subscribe("devices/+/telemetry", 1, f.receive); !tok.WaitTimeout(requestTimeout) || tok.Error() != nil {
		return f, fmt.Errorf("subscribe integrator: %v", tok.Error())
	}
	errs := make([]error, n)
	jobs := make(chan int)
	var wg sync.WaitGroup
	for range min(connectWorkers, n) {
		wg.Go(func() {
			for i := range jobs {
				id, pw := fanInDevice(i), ""
				if cfg.Secrets != nil {
					pw = cfg.Secrets[i]
				}
				c := paho.NewClient(opts(id, id, pw).SetOrderMatters(false))
				if tok := c.Connect(); !tok.WaitTimeout(requestTimeout) || tok.Error() != nil {
					errs[i] = fmt.Errorf("connect %s to %s: %v", id, cfg.URL, tok.Error())
				}
				f.devices[i], f.topics[i], f.got[i] = c, "devices/"+id+"/telemetry", make(chan struct{}, 1)
			}
		})
	}
	for i := range n {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	return f, errors.Join(errs...)
}

// close disconnects every client.
func (f *fanIn) close() {
	var wg sync.WaitGroup
	for _, c := range append(f.devices, f.integ) {
		if c != nil {
			wg.Go(func() { c.Disconnect(100) })
		}
	}
	wg.Wait()
}

// receive is the integrator's handler: the payload is the device's index
// and its send time.
func (f *fanIn) receive(_ paho.Client, msg paho.Message) {
	now := time.Now().UnixNano()
	p := msg.Payload()
	if len(p) != 16 {
		return
	}
	i := binary.BigEndian.Uint64(p)
	sent := int64(binary.BigEndian.Uint64(p[8:]))
	if i >= uint64(len(f.got)) {
		return
	}
	f.received.Add(1)
	if sent >= f.from.Load() && now < f.until.Load() {
		f.mu.Lock()
		f.lat = append(f.lat, time.Duration(now-sent))
		f.mu.Unlock()
	}
	select {
	case f.got[i] <- struct{}{}:
	default:
	}
}

// run runs the closed loop for warmup and then measure, and returns the
// figures of the messages sent and received inside the measurement window.
func (f *fanIn) run(warmup, measure time.Duration) (fanInResult, error) {
	f.mu.Lock()
	f.lat = f.lat[:0]
	f.mu.Unlock()
	f.received.Store(0)
	start := time.Now()
	stop := start.Add(warmup + measure)
	f.from.Store(start.Add(warmup).UnixNano())
	f.until.Store(stop.UnixNano())
	var cpuFrom, cpuTo time.Duration
	sampled := make(chan struct{})
	t := time.AfterFunc(warmup, func() { cpuFrom = cpuTime(); close(sampled) })
	defer t.Stop()
	var lost atomic.Int64
	var wg sync.WaitGroup
	for i, c := range f.devices {
		wg.Go(func() {
			payload := make([]byte, 16)
			binary.BigEndian.PutUint64(payload, uint64(i))
			for time.Now().Before(stop) {
				binary.BigEndian.PutUint64(payload[8:], uint64(time.Now().UnixNano()))
				c.Publish(f.topics[i], 1, false, payload)
				select {
				case <-f.got[i]:
				case <-time.After(requestTimeout):
					lost.Add(1)
					return
				}
			}
		})
	}
	wg.Wait()
	cpuTo = cpuTime()
	<-sampled
	if n := lost.Load(); n != 0 {
		return fanInResult{}, fmt.Errorf("%d devices' messages did not reach the integrator within %v", n, requestTimeout)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.lat) == 0 {
		return fanInResult{}, errors.New("no message received in the measurement window")
	}
	slices.Sort(f.lat)
	return fanInResult{
		PerSecond: float64(len(f.lat)) / measure.Seconds(),
		Received:  f.received.Load(),
		P50:       f.lat[len(f.lat)/2],
		P99:       f.lat[len(f.lat)*99/100],
		Max:       f.lat[len(f.lat)-1],
		CPU:       float64(cpuTo-cpuFrom) / float64(time.Since(start.Add(warmup))),
	}, nil
}

// cpuTime is this process's CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
