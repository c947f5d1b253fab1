package sim_test

import (
	"context"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/internal/sim"
)

// BenchmarkFleetMemory connects an idle fleet to a broker in another
// process and reports what each simulated device costs this process: Go
// heap+stacks and RSS per device, goroutines per device, and the connect
// rate. N is 2,000 (200 with -short); UMBRA_SIM_DEVICES overrides it, e.g.
// UMBRA_SIM_DEVICES=10000 go test -run '^$' -bench FleetMemory ./internal/sim
func BenchmarkFleetMemory(b *testing.B) {
	n := benchDevices()
	url := startBrokerProcess(b).url
	for b.Loop() {
		m0 := memNow()
		start := time.Now()
		f, err := sim.Open(context.Background(), sim.Config{Server: url, Devices: n, QoS: 1, Seed: 1})
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		_, err = f.Wait(ctx, func(s sim.Stats) bool { return s.Connected == n })
		cancel()
		if err != nil {
			b.Fatalf("waiting for %d connections: %v (%+v)", n, err, f.Stats())
		}
		elapsed := time.Since(start)
		m1 := memNow()
		per := func(a, b int64) float64 { return float64(b-a) / float64(n) }
		b.ReportMetric(per(m0.heap, m1.heap), "heap-B/device")
		b.ReportMetric(per(m0.stack, m1.stack), "stack-B/device")
		b.ReportMetric(per(m0.rss, m1.rss), "rss-B/device")
		b.ReportMetric(per(m0.goroutines, m1.goroutines), "goroutines/device")
		b.ReportMetric(float64(n)/elapsed.Seconds(), "connects/s")
		if err := f.Close(context.Background()); err != nil {
			b.Fatal(err)
		}
	}
}

type mem struct{ heap, stack, rss, goroutines int64 }

// BenchmarkFleetUpdate rolls a new firmware version out to a whole
// connected fleet at once (install time 0) through the fake engine and
// firmware server in another process, and reports device updates per
// second from "desired written" to "every device reports the new version".
// N as for BenchmarkFleetMemory.
func BenchmarkFleetUpdate(b *testing.B) {
	n := benchDevices()
	p := startBrokerProcess(b)
	f, err := sim.Open(context.Background(), sim.Config{Server: p.url, Devices: n, QoS: 1, Seed: 1, PublicKey: p.key})
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if _, err := f.Wait(ctx, func(s sim.Stats) bool { return s.Connected == n }); err != nil {
		b.Fatalf("waiting for %d connections: %v", n, err)
	}
	// The engine only knows devices whose boot report it has processed.
	for p.desireAll(b, "1.0.0") < n {
		time.Sleep(10 * time.Millisecond) // no event crosses the process boundary
	}
	version := 1
	for b.Loop() {
		version++
		v := strconv.Itoa(version) + ".0.0"
		start := time.Now()
		p.desireAll(b, v)
		st, err := f.Wait(ctx, func(s sim.Stats) bool { return s.Versions[v] == n })
		if err != nil {
			b.Fatalf("waiting for %d devices on %s: %v (%+v)", n, v, err, st)
		}
		b.ReportMetric(float64(n)/time.Since(start).Seconds(), "updates/s")
		b.ReportMetric(float64(st.Resyncs), "resyncs")
	}
}

func benchDevices() int {
	n := 2000
	if testing.Short() {
		n = 200
	}
	if v, err := strconv.Atoi(os.Getenv("UMBRA_SIM_DEVICES")); err == nil && v > 0 {
		n = v
	}
	return n
}

// memNow returns the Go heap and stacks in use, the process RSS and the
// goroutine count, after a GC.
func memNow() mem {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return mem{int64(ms.HeapInuse), int64(ms.StackInuse), vmRSS(), int64(runtime.NumGoroutine())}
}

// vmRSS reads the resident set size from /proc (0 where unavailable).
func vmRSS() int64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}
