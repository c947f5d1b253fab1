package heapfloor

import (
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"sync/atomic"
)

// DefaultFloor is umbra serve's floor (--gc-heap-floor): 64 MiB.
const DefaultFloor = 64 << 20

// maxPercent bounds the GOGC a floor may ask for (a nearly empty heap).
const maxPercent = 100_000

// samples are the runtime metrics the percent is computed from.
var samples = []string{"/gc/heap/live:bytes", "/gc/scan/stack:bytes", "/gc/scan/globals:bytes"}

// Floor is a running floor; Stop ends it.
type Floor struct {
	floor uint64
	prev  int // GOGC before Start

	mu      sync.Mutex // guards stopped, percent and s
	stopped bool
	percent int // the GOGC set last
	s       []metrics.Sample
}

// running is set while a Floor runs: GOGC is the process's, so one at a
// time.
var running atomic.Bool

// Start sets GOGC after every garbage collection so that the next
// collection waits for at least floor bytes of allocation (see the package
// documentation). It returns nil, changing nothing, when floor is 0 or
// less, when the environment sets GOGC or GOMEMLIMIT, or while another
// Floor runs (a test starting several servers in one process).
func Start(floor int64) *Floor {
	if floor <= 0 || os.Getenv("GOGC") != "" || os.Getenv("GOMEMLIMIT") != "" || !running.CompareAndSwap(false, true) {
		return nil
	}
	f := &Floor{floor: uint64(floor), percent: 100, s: make([]metrics.Sample, len(samples))}
	for i, name := range samples {
		f.s[i].Name = name
	}
	f.prev = debug.SetGCPercent(100)
	f.tune()
	f.arm()
	return f
}

// arm runs tune after the next garbage collection, and then again after
// every one until Stop: a cleanup of an object nothing refers to runs once
// the collection that found it unreachable has finished.
func (f *Floor) arm() {
	// 16 bytes: smaller pointer-free objects share tiny blocks, whose
	// cleanups may never run.
	runtime.AddCleanup(new([16]byte), func(f *Floor) {
		if f.tune() {
			f.arm()
		}
	}, f)
}

// tune sets GOGC for the heap the last collection left, and reports
// whether the floor still runs.
func (f *Floor) tune() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.stopped {
		return false
	}
	metrics.Read(f.s)
	var base uint64 // what GOGC is a percentage of
	for _, s := range f.s {
		if s.Value.Kind() == metrics.KindUint64 {
			base += s.Value.Uint64()
		}
	}
	p := Percent(base, f.floor)
	if p != f.percent {
		debug.SetGCPercent(p)
		f.percent = p
	}
	return true
}

// Percent is the GOGC that makes a collection wait for floor bytes of
// allocation when the live heap, stacks and globals amount to base bytes:
// 100 (Go's default) when that already waits longer, at most 100,000.
func Percent(base, floor uint64) int {
	if base == 0 {
		return maxPercent
	}
	p := (floor*100 + base - 1) / base // rounded up
	return int(min(max(p, 100), maxPercent))
}

// Stop ends the floor and restores the GOGC from before Start. It may be
// called on a nil Floor.
func (f *Floor) Stop() {
	if f == nil {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.stopped {
		f.stopped = true
		debug.SetGCPercent(f.prev)
		running.Store(false)
	}
}
