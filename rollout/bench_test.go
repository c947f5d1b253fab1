package rollout_test

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/firmware"
	"github.com/umbra-iot/umbra/rollout"
	"github.com/umbra-iot/umbra/rollout/boltstore"
)

// lean devices install at once and keep only their report (no desired
// copy), so the fake's memory stays out of the measurement.
type leanShadows struct {
	mu      sync.Mutex // guards reports
	reports map[device.ID]firmware.Report
	notify  func(device.ID)
}

func (l *leanShadows) SetDesiredFirmware(ctx context.Context, id device.ID, cmd map[string]any, token string) error {
	if cmd == nil {
		return nil
	}
	l.mu.Lock()
	l.reports[id] = firmware.Report{Version: cmd["version"].(string), State: firmware.StateUpdated, Job: token}
	l.mu.Unlock()
	l.notify(id)
	return nil
}

func (l *leanShadows) ReportedFirmware(ctx context.Context, id device.ID) (firmware.Report, bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	r, ok := l.reports[id]
	return r, ok, nil
}

func heapAlloc() uint64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// BenchmarkPlannerMemory measures the planner's memory per targeted device
// while a 100,000-device rollout (2,000 with -short) is held, the
// notification rate (devices/s, from Create to succeeded) when devices
// install instantly, and the size of rollout.db per device afterwards.
func BenchmarkPlannerMemory(b *testing.B) {
	n := 100_000
	if testing.Short() {
		n = 2_000
	}
	targets := ids("device", n)
	for b.Loop() {
		b.StopTimer()
		lean := &leanShadows{reports: make(map[device.ID]firmware.Report, n)}
		gate := make(chan struct{})
		path := filepath.Join(b.TempDir(), "rollout.db")
		st, err := boltstore.Open(b.Context(), boltstore.Config{Path: path})
		if err != nil {
			b.Fatal(err)
		}
		p, err := rollout.Open(b.Context(), rollout.Config{Store: st,
			Shadows: gatedLean{lean, gate, &sync.Once{}}, Firmware: newFakeFirmware("2.0.0"), Tick: 10 * time.Millisecond,
			NotifyPerPass: 4096})
		if err != nil {
			b.Fatal(err)
		}
		lean.notify = p.Notify
		before := heapAlloc()
		b.StartTimer()
		start := time.Now()
		r, err := p.Create(b.Context(), rollout.Spec{Firmware: "2.0.0", Devices: targets,
			Policy: rollout.Policy{BatchPercent: 10}})
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		held := heapAlloc()
		b.StartTimer()
		close(gate)
		waitState(b, p, r.ID, rollout.StateSucceeded)
		elapsed := time.Since(start)
		b.StopTimer()
		b.ReportMetric(float64(held-before)/float64(n), "B/device")
		b.ReportMetric(float64(n)/elapsed.Seconds(), "devices/s")
		if err := p.Close(context.Background()); err != nil {
			b.Fatal(err)
		}
		if err := st.Close(context.Background()); err != nil {
			b.Fatal(err)
		}
		if fi, err := os.Stat(path); err == nil {
			b.ReportMetric(float64(fi.Size())/float64(n), "disk-B/device")
		}
		b.StartTimer()
	}
}

// gatedLean is leanShadows whose first write waits for gate.
type gatedLean struct {
	*leanShadows
	gate chan struct{}
	once *sync.Once
}

func (g gatedLean) SetDesiredFirmware(ctx context.Context, id device.ID, cmd map[string]any, token string) error {
	g.once.Do(func() {
		select {
		case <-g.gate:
		case <-ctx.Done():
		}
	})
	return g.leanShadows.SetDesiredFirmware(ctx, id, cmd, token)
}

// BenchmarkDevicesPage measures one page of 100 devices from the middle of
// a finished 100,000-device rollout (2,000 with -short), against the
// baseline of listing every device (what GET /v1/rollouts/{id}/devices did
// before it paged in the planner).
func BenchmarkDevicesPage(b *testing.B) {
	n := 100_000
	if testing.Short() {
		n = 2_000
	}
	lean := &leanShadows{reports: make(map[device.ID]firmware.Report, n)}
	p, err := rollout.Open(b.Context(), rollout.Config{Store: openStore(b, ""),
		Shadows: lean, Firmware: newFakeFirmware("2.0.0"), Tick: 10 * time.Millisecond, NotifyPerPass: 4096})
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close(context.Background())
	lean.notify = p.Notify
	r, err := p.Create(b.Context(), rollout.Spec{Firmware: "2.0.0", Devices: ids("device", n), Policy: rollout.Policy{BatchPercent: 10}})
	if err != nil {
		b.Fatal(err)
	}
	waitState(b, p, r.ID, rollout.StateSucceeded)
	b.Run("page", func(b *testing.B) {
		for b.Loop() {
			if devs, _, err := p.DevicesPage(b.Context(), r.ID, nil, n/2, 100); err != nil || len(devs) != 100 {
				b.Fatalf("page: %d devices, %v", len(devs), err)
			}
		}
	})
	b.Run("all", func(b *testing.B) {
		for b.Loop() {
			if devs, err := p.Devices(b.Context(), r.ID); err != nil || len(devs) != n {
				b.Fatalf("all: %d devices, %v", len(devs), err)
			}
		}
	})
}

// slowShadows answers every shadow read and write after delay (a NATS
// round trip), and counts the writes; its devices stay silent.
type slowShadows struct {
	delay  time.Duration
	writes atomic.Int64
}

func (s *slowShadows) SetDesiredFirmware(ctx context.Context, id device.ID, cmd map[string]any, token string) error {
	time.Sleep(s.delay) // simulated round trip, not synchronisation
	s.writes.Add(1)
	return nil
}

func (s *slowShadows) ReportedFirmware(ctx context.Context, id device.ID) (firmware.Report, bool, error) {
	time.Sleep(s.delay) // simulated round trip, not synchronisation
	return firmware.Report{}, false, nil
}

// BenchmarkReadDuringPass measures the latency of Get (the status read
// behind GET /v1/rollouts/{id}) while a pass starts the first 1,000-device
// batch of a 5,000-device rollout against a slow shadow store (every
// shadow read and write takes 200 µs, about a NATS round trip). Four
// readers each call Get, then wait 1 ms, until the batch's 1,000 commands
// are written. It reports the p50 and p99 read latency over every
// iteration's reads, and batch-ms, the time from Create to the batch's
// last command written.
func BenchmarkReadDuringPass(b *testing.B) {
	const n, batch, readers = 5000, 1000, 4
	targets := ids("device", n)
	var mu sync.Mutex // guards lat
	var lat []time.Duration
	var took time.Duration
	for b.Loop() {
		sh := &slowShadows{delay: 200 * time.Microsecond}
		p, err := rollout.Open(b.Context(), rollout.Config{Store: openStore(b, ""), Shadows: sh,
			Firmware: newFakeFirmware("2.0.0"), Tick: 10 * time.Millisecond})
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		r, err := p.Create(b.Context(), rollout.Spec{Firmware: "2.0.0", Devices: targets, Policy: rollout.Policy{BatchSize: batch}})
		if err != nil {
			b.Fatal(err)
		}
		deadline := start.Add(time.Minute)
		var wg sync.WaitGroup
		for range readers {
			wg.Go(func() {
				for {
					t0 := time.Now()
					_, err := p.Get(b.Context(), r.ID)
					d := time.Since(t0)
					if err != nil {
						b.Error(err)
						return
					}
					mu.Lock()
					lat = append(lat, d)
					mu.Unlock()
					if sh.writes.Load() >= batch || time.Now().After(deadline) {
						return
					}
					time.Sleep(time.Millisecond) // the readers' pace
				}
			})
		}
		wg.Wait()
		took += time.Since(start)
		if err := p.Close(context.Background()); err != nil {
			b.Fatal(err)
		}
	}
	slices.Sort(lat)
	if len(lat) > 0 {
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
		b.ReportMetric(float64(lat[min(len(lat)-1, len(lat)*99/100)].Microseconds()), "p99-µs")
		b.ReportMetric(float64(len(lat))/float64(b.N), "reads/op")
	}
	b.ReportMetric(float64(took.Milliseconds())/float64(b.N), "batch-ms")
}
