package bench_test

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// cpuInterval is how often a cpuMeter samples.
const cpuInterval = 100 * time.Millisecond

// cpuUse is the CPU used during a measurement window, in cores: by this
// process (generator, broker and engine together) and by everything else
// on the machine (other processes, e.g. mosquitto or concurrent builds).
type cpuUse struct {
	Self, Others float64
}

func (u cpuUse) String() string {
	return fmt.Sprintf("CPU %.2f cores in this process, %.2f in others", u.Self, u.Others)
}

type cpuSample struct {
	at            time.Time
	self, machine time.Duration
}

// cpuMeter samples this process's and the machine's CPU time every
// cpuInterval until stopped, so a rate can be computed over the last part
// of a run (the measurement window, after connects and warmup).
type cpuMeter struct {
	stop chan struct{}
	wg   sync.WaitGroup

	mu      sync.Mutex // guards samples
	samples []cpuSample
}

func startCPU(tb testing.TB) *cpuMeter {
	tb.Helper()
	m := &cpuMeter{stop: make(chan struct{})}
	m.sample(tb)
	m.wg.Go(func() {
		t := time.NewTicker(cpuInterval)
		defer t.Stop()
		for {
			select {
			case <-m.stop:
				return
			case <-t.C:
				m.sample(tb)
			}
		}
	})
	return m
}

func (m *cpuMeter) sample(tb testing.TB) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Errorf("getrusage: %v", err)
		return
	}
	s := cpuSample{at: time.Now(), self: time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), machine: machineBusy()}
	m.mu.Lock()
	m.samples = append(m.samples, s)
	m.mu.Unlock()
}

// last stops the meter and returns the CPU use over the last window before
// now (or over everything sampled, if that is shorter).
func (m *cpuMeter) last(tb testing.TB, window time.Duration) cpuUse {
	close(m.stop)
	m.wg.Wait()
	m.sample(tb)
	m.mu.Lock()
	defer m.mu.Unlock()
	end := m.samples[len(m.samples)-1]
	start := m.samples[0]
	for _, s := range m.samples {
		if end.at.Sub(s.at) < window {
			break
		}
		start = s
	}
	wall := end.at.Sub(start.at)
	if wall <= 0 {
		return cpuUse{}
	}
	self := float64(end.self-start.self) / float64(wall)
	machine := float64(end.machine-start.machine) / float64(wall)
	return cpuUse{Self: self, Others: max(0, machine-self)}
}

// machineBusy is the machine's busy CPU time so far, from the first line of
// /proc/stat (user+nice+system+irq+softirq+steal), or 0 if unreadable.
func machineBusy() time.Duration {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := bytes.Fields(line)
	if len(f) < 9 || string(f[0]) != "cpu" {
		return 0
	}
	var ticks int64
	for _, i := range []int{1, 2, 3, 6, 7, 8} { // skip idle (4) and iowait (5)
		n, err := strconv.ParseInt(string(f[i]), 10, 64)
		if err != nil {
			return 0
		}
		ticks += n
	}
	return time.Duration(ticks) * (time.Second / 100) // USER_HZ is 100 on Linux
}
