package bench_test

import (
	"context"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/broker/boltstore"
	"github.com/umbra-iot/umbra/internal/loadgen"
	"github.com/umbra-iot/umbra/internal/metrics"
	"github.com/umbra-iot/umbra/shadow"
	shadowstore "github.com/umbra-iot/umbra/shadow/boltstore"
)

// Bounds shared by every benchmark in this package.
const (
	defaultClients  = 1000
	shortClients    = 50
	defaultDuration = 5 * time.Second
	shortDuration   = 300 * time.Millisecond
	defaultWarmup   = time.Second
	// requestTimeout is how long one request may wait for its response
	// before it counts as an error.
	requestTimeout = 10 * time.Second
	// closeTimeout bounds every Close.
	closeTimeout = 30 * time.Second
)

// numClients is K (or N): UMBRA_BENCH_CLIENTS, else 1000, or 50 with -short.
func numClients(tb testing.TB) int {
	tb.Helper()
	if s := os.Getenv("UMBRA_BENCH_CLIENTS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 20000 {
			tb.Fatalf("UMBRA_BENCH_CLIENTS=%q: want an integer in 1..20000", s)
		}
		return n
	}
	if testing.Short() {
		return shortClients
	}
	return defaultClients
}

// readLoops is the broker's read loops for a benchmark's Umbra:
// UMBRA_BENCH_READ_LOOPS (-1 for a goroutine per connection, to compare),
// else 0, the default of umbra serve.
func readLoops(tb testing.TB) int {
	tb.Helper()
	s := os.Getenv("UMBRA_BENCH_READ_LOOPS")
	if s == "" {
		return 0
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < -1 || n > 1024 {
		tb.Fatalf("UMBRA_BENCH_READ_LOOPS=%q: want -1, 0 or a number of loops up to 1024", s)
	}
	return n
}

// window is the measurement window and warmup of one closed-loop run:
// UMBRA_BENCH_DURATION (1s..2m), else 5s after a 1s warmup, or 300ms and
// no warmup with -short.
func window(tb testing.TB) (measure, warmup time.Duration) {
	tb.Helper()
	if s := os.Getenv("UMBRA_BENCH_DURATION"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d < 100*time.Millisecond || d > 2*time.Minute {
			tb.Fatalf("UMBRA_BENCH_DURATION=%q: want a duration in 100ms..2m", s)
		}
		return d, defaultWarmup
	}
	if testing.Short() {
		return shortDuration, 0
	}
	return defaultDuration, defaultWarmup
}

// loadConfig is the closed loop every round-trip benchmark runs: K clients,
// window 1, QoS 1 requests and response subscriptions, Umbra's shadow
// update payload.
func loadConfig(tb testing.TB, url string, clients int) loadgen.Config {
	measure, warmup := window(tb)
	return loadgen.Config{
		Server: url, Clients: clients, QoS: 1, Window: 1,
		Duration: measure, Warmup: warmup, Timeout: requestTimeout,
	}
}

// runLoad runs one closed loop and fails the benchmark on errors or
// rejections: a benchmark that loses requests measures nothing useful. It
// also returns the CPU used during (about) the measurement window: the
// last Elapsed of the run, which includes the short drain.
func runLoad(b *testing.B, cfg loadgen.Config) (loadgen.Result, cpuUse) {
	b.Helper()
	cpu := startCPU(b)
	r, err := loadgen.Run(b.Context(), cfg)
	use := cpu.last(b, r.Elapsed)
	if err != nil {
		b.Fatalf("loadgen against %s: %v", cfg.Server, err)
	}
	b.Logf("%s: %v; %v", cfg.Server, r, use)
	if r.Errors != 0 || len(r.Rejected) != 0 || r.Requests == 0 {
		b.Errorf("loadgen against %s: got %d requests, %d errors, rejected %v; want requests and no errors or rejections",
			cfg.Server, r.Requests, r.Errors, r.Rejected)
	}
	return r, use
}

// closeWithin closes c with a bounded context and reports failure on tb.
func closeWithin(tb testing.TB, name string, c interface{ Close(context.Context) error }) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	if err := c.Close(ctx); err != nil {
		tb.Errorf("close %s: %v", name, err)
	}
}

// openBroker opens Umbra's broker on 127.0.0.1:0 with cfg (zero fields:
// production defaults; no WebSocket listener) and closes it at cleanup.
func openBroker(tb testing.TB, cfg broker.Config) *broker.Server {
	tb.Helper()
	cfg.TCPAddr, cfg.WSAddr = "127.0.0.1:0", ""
	brk, err := broker.Open(tb.Context(), cfg)
	if err != nil {
		tb.Fatalf("open broker: %v", err)
	}
	tb.Cleanup(func() { closeWithin(tb, "broker", brk) })
	return brk
}

func brokerURL(brk *broker.Server) string { return "tcp://" + brk.Addr().String() }

// umbra is the system under test, wired as cmd/umbra/serve.go wires it:
// broker with its durable state in broker.db, shadow engine on a bbolt
// file, engine subscribed to the request filters, delta catch-up on
// subscribe, and the Prometheus metrics hooks.
type umbra struct {
	brk     *broker.Server
	eng     *shadow.Engine
	store   *boltstore.Store // the broker's; nil without one
	shadows *shadowstore.Store
	path    string

	once sync.Once
}

// brokerStore selects whether openUmbraWith gives the broker a Store.
type brokerStore bool

const (
	withBrokerStore    brokerStore = true  // as umbra serve: retained messages and sessions in broker.db
	withoutBrokerStore brokerStore = false // the broker's state in memory only
)

// openUmbra opens Umbra with its data in dir. The per-device rate limit is
// disabled (DeviceRate < 0): a benchmark client sends far more than the
// default 20 requests/s a real device may.
func openUmbra(tb testing.TB, dir string) *umbra {
	tb.Helper()
	return openUmbraWith(tb, dir, withBrokerStore)
}

// openUmbraWith is openUmbra with or without the broker's Store.
func openUmbraWith(tb testing.TB, dir string, store brokerStore) *umbra {
	tb.Helper()
	u := &umbra{path: filepath.Join(dir, "shadow.db")}
	m := metrics.New()
	var eng atomic.Pointer[shadow.Engine]
	cfg := broker.Config{OnSubscribe: func(clientID string, filters []string) {
		if e := eng.Load(); e != nil {
			e.HandleSubscribe(clientID, filters)
		}
	}, RequestFilters: shadow.RequestFilters, ReadLoops: readLoops(tb)}
	if store {
		st, err := boltstore.Open(tb.Context(), boltstore.Config{Path: filepath.Join(dir, "broker.db")})
		if err != nil {
			tb.Fatalf("open broker.db: %v", err)
		}
		u.store, cfg.Store = st, st
	}
	u.brk = openBroker(tb, cfg)
	m.RegisterBroker(func() metrics.BrokerStats {
		s := u.brk.Stats()
		return metrics.BrokerStats{ClientsConnected: s.ClientsConnected}
	})
	shadows, err := shadowstore.Open(tb.Context(), shadowstore.Config{Path: u.path, CommitObserved: m.ObserveCommit})
	if err != nil {
		tb.Fatalf("open shadow.db: %v", err)
	}
	e, err := shadow.Open(tb.Context(), shadow.Config{
		Store:      shadows, // closed by u.close, after the engine
		Publisher:  u.brk,
		DeviceRate: -1,
		Observe:    func(op shadow.Op, code int, d time.Duration) { m.ObserveShadow(string(op), code, d) },
	})
	if err != nil {
		tb.Fatalf("open shadow engine: %v", err)
	}
	u.eng, u.shadows = e, shadows
	eng.Store(e)
	for _, f := range shadow.RequestFilters {
		if err := u.brk.Subscribe(f, e.HandleRequest); err != nil {
			tb.Fatalf("subscribe engine to %s: %v", f, err)
		}
	}
	tb.Cleanup(func() { u.close(tb) })
	return u
}

// close stops device traffic, then closes the engine (and its file). It
// runs once; later calls do nothing.
func (u *umbra) close(tb testing.TB) {
	u.once.Do(func() {
		closeWithin(tb, "broker", u.brk)
		if u.store != nil {
			closeWithin(tb, "broker.db", u.store)
		}
		closeWithin(tb, "shadow engine", u.eng)
		closeWithin(tb, "shadow.db", u.shadows)
	})
}

// BenchmarkShadowUpdate is the headline figure of issue 6: K devices (QoS 1,
// one request in flight each) publish reported updates and wait for
// accepted, against broker + shadow engine with a real bbolt file (every
// accepted update fsynced before it is answered; per-device rate limit
// disabled). In the same iteration the same clients run the same round trip
// against the bare broker with loadgen.Echo (no parsing, no persistence):
// umbra/echo is the share of the transport's capacity Umbra keeps.
//
// commits/s is derived (updates/s ÷ docs/commit) because commits are not
// timestamped against the generator's measurement window; docs/commit and
// commit-ms (mean bbolt Update incl. fsync) are exact over the whole run.
// file-B/shadow is the bbolt file size after the run, divided by the K
// shadows, without compaction; bbolt grows its file in doubling steps, so
// disk-B/shadow (blocks actually allocated) is the better figure. cpu-cores is this process's CPU use in the
// measurement window (generator + broker + engine share the 2 cores);
// others-cpu-cores is the rest of the machine's, to expose interference;
// updates/cpu-s is updates/s per core this process used.
func BenchmarkShadowUpdate(b *testing.B) {
	k := numClients(b)
	var m means
	for b.Loop() {
		// Profile labels separate the two phases in a -cpuprofile:
		// go tool pprof -tagfocus phase=umbra bench.test cpu.out
		pprof.Do(b.Context(), pprof.Labels("phase", "umbra"), func(context.Context) {
			runUmbra(b, k, &m)
		})
		pprof.Do(b.Context(), pprof.Labels("phase", "echo"), func(context.Context) {
			r, cpu := runEcho(b, k)
			m.add("echo-updates/s", r.PerSecond)
			m.add("echo-cpu-cores", cpu.Self)
			m.add("echo-updates/cpu-s", perCPU(r.PerSecond, cpu))
		})
	}
	m.add("umbra/echo", m.mean("updates/s")/m.mean("echo-updates/s"))
	m.add("commits/s", m.mean("updates/s")/m.mean("docs/commit"))
	m.report(b)
}

// BenchmarkShadowUpdateDurable measures what the broker's durable state
// costs the shadow path: the closed loop of BenchmarkShadowUpdate with
// devices that keep persistent sessions (clean session off), so that every
// accepted reply is held for the device's session until its PUBACK, run
// against Umbra with the broker's Store (broker.db, as umbra serve) and,
// in the same iteration, without it (the broker's state in memory).
// store/memory is the ratio of their updates/s. broker-commits/s (over
// the whole run: connects, whose SUBACKs wait for commits, and warmup
// included) and broker-ops/commit show what the committer wrote (replies
// acknowledged within its one-second lazy delay are never written).
//
// The monitored phases add the worst case: an operator's monitor with a
// persistent session subscribed to state/+/update, so that every device's
// update is queued for a persistent session and, with the Store, is on
// disk before its PUBACK. monitored-store/monitored-memory is their ratio.
func BenchmarkShadowUpdateDurable(b *testing.B) {
	k := numClients(b)
	var m means
	for b.Loop() {
		for _, phase := range []struct {
			name    string
			store   brokerStore
			monitor bool
		}{
			{"memory", withoutBrokerStore, false}, {"store", withBrokerStore, false},
			{"monitored-memory", withoutBrokerStore, true}, {"monitored-store", withBrokerStore, true},
		} {
			pprof.Do(b.Context(), pprof.Labels("phase", phase.name), func(context.Context) {
				u := openUmbraWith(b, b.TempDir(), phase.store)
				if phase.monitor {
					monitorUpdates(b, brokerURL(u.brk))
				}
				cfg := loadConfig(b, brokerURL(u.brk), k)
				cfg.Persistent = true
				before, start := u.brk.Stats(), time.Now()
				r, cpu := runLoad(b, cfg)
				after, took := u.brk.Stats(), time.Since(start)
				u.close(b)
				m.add(phase.name+"-updates/s", r.PerSecond)
				m.add(phase.name+"-p99-ms", ms(r.P99))
				m.add(phase.name+"-updates/cpu-s", perCPU(r.PerSecond, cpu))
				if phase.store == withBrokerStore && !phase.monitor {
					commits := after.StoreCommits - before.StoreCommits
					m.add("broker-commits/s", float64(commits)/took.Seconds()) // connects and warmup included
					if commits > 0 {
						m.add("broker-ops/commit", float64(after.StoreOps-before.StoreOps)/float64(commits))
					}
				}
			})
		}
	}
	m.add("store/memory", m.mean("store-updates/s")/m.mean("memory-updates/s"))
	m.add("monitored-store/monitored-memory", m.mean("monitored-store-updates/s")/m.mean("monitored-memory-updates/s"))
	m.report(b)
}

// monitorUpdates connects an operator's monitor with a persistent session
// subscribed to every shadow update at QoS 1; it reads and acknowledges
// them until the broker closes.
func monitorUpdates(tb testing.TB, url string) {
	tb.Helper()
	opts := paho.NewClientOptions().AddBroker(url).SetClientID("monitor").
		SetCleanSession(false).SetOrderMatters(false).SetAutoReconnect(false).
		SetConnectTimeout(requestTimeout).SetKeepAlive(60 * time.Second)
	c := paho.NewClient(opts)
	if tok := c.Connect(); !tok.WaitTimeout(requestTimeout) || tok.Error() != nil {
		tb.Fatalf("connect monitor: %v", tok.Error())
	}
	tb.Cleanup(func() { c.Disconnect(0) })
	tok := c.Subscribe(shadow.UpdateFilter, 1, func(paho.Client, paho.Message) {})
	if !tok.WaitTimeout(requestTimeout) || tok.Error() != nil {
		tb.Fatalf("subscribe monitor: %v", tok.Error())
	}
}

// runUmbra runs the closed loop of k clients against a fresh Umbra and adds
// its figures to m.
func runUmbra(b *testing.B, k int, m *means) {
	u := openUmbra(b, b.TempDir())
	before := u.eng.Stats()
	r, cpu := runLoad(b, loadConfig(b, brokerURL(u.brk), k))
	after := u.eng.Stats()
	u.close(b)
	fi, err := os.Stat(u.path)
	if err != nil {
		b.Fatalf("stat shadow database: %v", err)
	}
	commits := after.Commits - before.Commits
	if commits == 0 {
		b.Fatalf("engine made no commits during the run")
	}
	docs := after.DocumentsWritten - before.DocumentsWritten
	commitTime := (after.CommitTime - before.CommitTime) / time.Duration(commits)
	b.Logf("engine: %d commits of %.1f documents on average, %.2f ms each on average",
		commits, float64(docs)/float64(commits), ms(commitTime))
	m.add("updates/s", r.PerSecond)
	m.add("p50-ms", ms(r.P50))
	m.add("p99-ms", ms(r.P99))
	m.add("p999-ms", ms(r.P999))
	m.add("docs/commit", float64(docs)/float64(commits))
	m.add("commit-ms", ms(commitTime))
	m.add("file-B/shadow", float64(fi.Size())/float64(k))
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		m.add("disk-B/shadow", float64(st.Blocks*512)/float64(k)) // bbolt grows the file sparsely
	}
	m.add("cpu-cores", cpu.Self)
	m.add("others-cpu-cores", cpu.Others)
	m.add("updates/cpu-s", perCPU(r.PerSecond, cpu))
}

// runEcho runs the closed loop of k clients against a bare broker whose
// in-process loadgen.Echo answers every update.
func runEcho(b *testing.B, k int) (loadgen.Result, cpuUse) {
	// Updates are requests here too: never retained, never refused by the
	// message rate (the shadow engine's device rate is off in benchmarks).
	brk := openBroker(b, broker.Config{RequestFilters: shadow.RequestFilters})
	defer closeWithin(b, "echo broker", brk)
	if err := brk.Subscribe(shadow.UpdateFilter, loadgen.Echo(brk, 1)); err != nil {
		b.Fatalf("subscribe echo: %v", err)
	}
	return runLoad(b, loadConfig(b, brokerURL(brk), k))
}

// perCPU is rate per CPU-second of this process: a figure that interference
// from other processes on the machine distorts less than the rate itself.
func perCPU(rate float64, u cpuUse) float64 {
	if u.Self <= 0 {
		return 0
	}
	return rate / u.Self
}

// means accumulates per-iteration figures by unit and reports their means
// with b.ReportMetric.
type means struct {
	units []string // in order of first add
	sum   map[string]float64
	n     map[string]int
}

func (m *means) add(unit string, v float64) {
	if m.sum == nil {
		m.sum, m.n = map[string]float64{}, map[string]int{}
	}
	if _, ok := m.n[unit]; !ok {
		m.units = append(m.units, unit)
	}
	m.sum[unit] += v
	m.n[unit]++
}

func (m *means) mean(unit string) float64 {
	if m.n[unit] == 0 {
		return 0
	}
	return m.sum[unit] / float64(m.n[unit])
}

func (m *means) report(b *testing.B) {
	for _, u := range m.units {
		b.ReportMetric(m.mean(u), u)
	}
}

// ms converts d to float milliseconds for ReportMetric.
func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
