package natsbridge_test

import (
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/nats-io/nats.go"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/broker/natsbridge"
	"github.com/umbra-iot/umbra/internal/brokertest"
	"github.com/umbra-iot/umbra/internal/natstest"
)

// BenchmarkCrossNodeFanIn measures telemetry fan-in across nodes against
// one node, in the same run: N devices (UMBRA_BENCH_CLIENTS, default 100,
// 20 with -short) publish QoS 1 on devices/<id>/telemetry and one
// integrator subscribed to devices/+/telemetry at QoS 1 receives it all.
// The loop is closed: a device publishes its next message once the
// integrator has its previous one (one message in flight per device), so
// nothing queues and a lost message stalls its device (the run then fails).
// A quarter of the window's length of warm-up precedes each window.
// Phases, each on fresh brokers, in every iteration (in turn first):
//
//   - single: one broker, no bridge (single-node mode);
//   - bridged: devices and integrator on one node whose bridge is
//     connected to NATS (the bridge's cost on the publish path);
//   - cross: devices on node 1, the integrator on node 2, through NATS.
//
// The clients (paho) and brokers run in this process, nats-server in a
// child process. It reports msgs/s and p99 (publish to receipt) per phase,
// and cross/single and bridged/single.
func BenchmarkCrossNodeFanIn(b *testing.B) {
	n, window := 100, 2*time.Second
	if testing.Short() {
		n, window = 20, 300*time.Millisecond
	}
	if v, err := strconv.Atoi(os.Getenv("UMBRA_BENCH_CLIENTS")); err == nil && v > 0 {
		n = v
	}
	if d, err := time.ParseDuration(os.Getenv("UMBRA_BENCH_DURATION")); err == nil && d > 0 {
		window = d
	}
	ns := natstest.Start(b)
	phases := []string{"single", "bridged", "cross"}
	rates, p99s := map[string][]float64{}, map[string][]float64{}
	for b.Loop() {
		round := int(fanInRounds.Add(1)) // across -count runs too
		for k := range phases {
			phase := phases[(k+round)%len(phases)] // each phase takes each place in turn
			var devURL, intURL string
			ready := func() {}
			// The devices publish as fast as the loop lets them; every client
			// is a device without Auth, so the integrator gets a service
			// client's queue and inflight store, as in production.
			cfg := broker.Config{MaxMessageRate: -1, ClientWritesPending: broker.DefaultServiceWritesPending,
				MaxInflight: broker.DefaultServiceInflight,
				Logger:      slog.New(slog.NewTextHandler(b.Output(), &slog.HandlerOptions{Level: slog.LevelError}))}
			switch phase {
			case "single":
				s := brokertest.New(b, cfg)
				devURL, intURL = brokertest.URL(s), brokertest.URL(s)
			case "bridged":
				a := startNode(b, ns.URL(), fmt.Sprintf("r%d-solo", round), cfg)
				devURL, intURL = a.url, a.url
			case "cross":
				a := startNode(b, ns.URL(), fmt.Sprintf("r%d-devices", round), cfg)
				c := startNode(b, ns.URL(), fmt.Sprintf("r%d-integrator", round), cfg)
				devURL, intURL = a.url, c.url
				ready = func() { natsbridge.Settle(b, c.br) }
			}
			rate, p99 := runFanIn(b, devURL, intURL, n, window, ready)
			rates[phase] = append(rates[phase], rate)
			p99s[phase] = append(p99s[phase], p99)
			b.Logf("%s: %.0f msgs/s, p99 %.2f ms (%d devices, %v)", phase, rate, p99, n, window)
		}
	}
	for _, phase := range phases {
		b.ReportMetric(mean(rates[phase]), phase+"-msgs/s")
		b.ReportMetric(mean(p99s[phase]), phase+"-p99-ms")
	}
	b.ReportMetric(mean(rates["cross"])/mean(rates["single"]), "cross/single")
	b.ReportMetric(mean(rates["bridged"])/mean(rates["single"]), "bridged/single")
}

// fanInRounds numbers BenchmarkCrossNodeFanIn's iterations in the process.
var fanInRounds atomic.Int64

func mean(v []float64) float64 {
	s := 0.0
	for _, x := range v {
		s += x
	}
	return s / float64(max(len(v), 1))
}

// runFanIn connects the integrator to intURL, calls ready, connects n
// devices to devURL and runs the closed loop for window; it returns the
// integrator's messages/s and the p99 latency in milliseconds.
func runFanIn(b *testing.B, devURL, intURL string, n int, window time.Duration, ready func()) (float64, float64) {
	b.Helper()
	acks := make([]chan struct{}, n)
	for i := range acks {
		acks[i] = make(chan struct{}, 1)
	}
	integrator := brokertest.Connect(b, intURL, "integrator", func(o *mqtt.ClientOptions) { o.SetOrderMatters(false) })
	tok := integrator.Subscribe("devices/+/telemetry", 1, func(_ mqtt.Client, m mqtt.Message) {
		p := m.Payload()
		if len(p) < 4 {
			return
		}
		i, err := strconv.Atoi(string(p[:4]))
		if err != nil || i >= n {
			return
		}
		select {
		case acks[i] <- struct{}{}:
		default:
		}
	})
	if !tok.WaitTimeout(wait) || tok.Error() != nil {
		b.Fatalf("integrator subscribe: %v", tok.Error())
	}
	ready()
	devs := make([]mqtt.Client, n)
	for i := range devs {
		devs[i] = brokertest.Connect(b, devURL, fmt.Sprintf("dev-%04d", i))
	}
	var received atomic.Int64
	var measuring atomic.Bool // after the warm-up (a quarter of window)
	var mu sync.Mutex
	var lat []time.Duration
	stop := make(chan struct{})
	failed := make(chan string, n)
	var wg sync.WaitGroup
	for i, d := range devs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			topic := fmt.Sprintf("devices/%04d/telemetry", i)
			payload := []byte(fmt.Sprintf("%04d {\"t\":21.5}", i))
			var mine []time.Duration
			defer func() { mu.Lock(); lat = append(lat, mine...); mu.Unlock() }()
			for {
				select {
				case <-stop:
					return
				default:
				}
				t0 := time.Now()
				d.Publish(topic, 1, false, payload)
				select {
				case <-acks[i]:
					if measuring.Load() {
						mine = append(mine, time.Since(t0))
						received.Add(1)
					}
				case <-stop:
					if time.Since(t0) > time.Second {
						failed <- topic // lost: the run's rate would be wrong
					}
					return
				case <-time.After(wait):
					failed <- topic
					return
				}
			}
		}()
	}
	time.Sleep(window / 4) // warm-up; the devices run meanwhile
	measuring.Store(true)
	start := time.Now()
	time.Sleep(window) // the measurement window
	measuring.Store(false)
	elapsed := time.Since(start)
	close(stop)
	wg.Wait()
	close(failed)
	for topic := range failed {
		b.Fatalf("a message on %s did not reach the integrator within %v", topic, wait)
	}
	for _, d := range devs {
		d.Disconnect(0)
	}
	integrator.Disconnect(0)
	slices.Sort(lat)
	p99 := 0.0
	if len(lat) > 0 {
		p99 = float64(lat[len(lat)*99/100]) / float64(time.Millisecond)
	}
	return float64(received.Load()) / elapsed.Seconds(), p99
}

// BenchmarkSubscriptionCost measures what one NATS subscription of the
// bridge costs: heap in this process (nats.go's subscription) and
// resident memory of the nats-server, for N (UMBRA_BENCH_SUBS, default
// 20,000) subscriptions on distinct subjects, as N devices' takeover
// subscriptions or N distinct filters are.
func BenchmarkSubscriptionCost(b *testing.B) {
	n := 20000
	if testing.Short() {
		n = 2000
	}
	if v, err := strconv.Atoi(os.Getenv("UMBRA_BENCH_SUBS")); err == nil && v > 0 {
		n = v
	}
	ns := natstest.Start(b)
	for b.Loop() {
		nc := natstest.Connect(b, ns.URLs())
		ch := make(chan *nats.Msg, 1)
		serverBefore := rss(b, ns.PID())
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		subs := make([]*nats.Subscription, n)
		for i := range subs {
			var err error
			if subs[i], err = nc.ChanSubscribe(fmt.Sprintf("umbra.s.device-%07d", i), ch); err != nil {
				b.Fatal(err)
			}
		}
		if err := nc.Flush(); err != nil {
			b.Fatal(err)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		serverAfter := rss(b, ns.PID())
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/float64(n), "client-B/sub")
		b.ReportMetric(float64(serverAfter-serverBefore)/float64(n), "server-B/sub")
		runtime.KeepAlive(subs)
		nc.Close()
	}
}

// rss returns the resident memory of process pid, in bytes.
func rss(b *testing.B, pid int) int64 {
	b.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatalf("read the nats-server's memory: %v", err)
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				b.Fatalf("VmRSS %q: %v", rest, err)
			}
			return kb << 10
		}
	}
	b.Fatal("no VmRSS in /proc status")
	return 0
}

// BenchmarkConnect measures what the bridge adds to a connect: a device
// connecting and disconnecting in a loop on a broker without a bridge
// (single) and on a node with one (bridged: the takeover request, which
// NATS answers "no responders", and the session's subscription and
// unsubscription), alternately in one run. It reports connects/s and
// bridged/single.
func BenchmarkConnect(b *testing.B) {
	ns := natstest.Start(b)
	quiet := func() broker.Config {
		return broker.Config{Logger: slog.New(slog.NewTextHandler(b.Output(), &slog.HandlerOptions{Level: slog.LevelError}))}
	}
	single := brokertest.New(b, quiet())
	bridged := startNode(b, ns.URL(), "connect-bench", quiet())
	const perRound = 200
	times := map[string]time.Duration{}
	for b.Loop() {
		for _, c := range []struct {
			name, url string
		}{{"single", brokertest.URL(single)}, {"bridged", bridged.url}} {
			start := time.Now()
			for i := range perRound {
				cl := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(c.url).SetClientID(fmt.Sprintf("dev-%d", i)).
					SetAutoReconnect(false).SetConnectTimeout(wait))
				if tok := cl.Connect(); !tok.WaitTimeout(wait) || tok.Error() != nil {
					b.Fatalf("connect to %s: %v", c.name, tok.Error())
				}
				cl.Disconnect(0)
			}
			times[c.name] += time.Since(start)
		}
	}
	rounds := float64(b.N)
	for name, d := range times {
		b.ReportMetric(perRound*rounds/d.Seconds(), name+"-connects/s")
	}
	b.ReportMetric(float64(times["bridged"])/float64(times["single"]), "bridged/single-time")
}
