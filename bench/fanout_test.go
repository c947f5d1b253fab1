package bench_test

import (
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/shadow"
)

const (
	// connectWorkers bounds parallel connects, like loadgen.
	connectWorkers = 32
	// fanoutTimeout bounds the wait for one round of deltas.
	fanoutTimeout = 60 * time.Second
	// operatorWorkers is how many goroutines set desired concurrently (the
	// engine groups their commits).
	operatorWorkers = 64
)

// connectDevices connects n paho clients named prefix-0001… to url, each
// subscribed at QoS 1 to its own delta topic, calling onDelta(i, payload)
// for device i. onDelta must not block. Clients are disconnected at cleanup.
func connectDevices(tb testing.TB, url, prefix string, n int, onDelta func(i int, payload []byte)) []device.ID {
	tb.Helper()
	ids := make([]device.ID, n)
	clients := make([]paho.Client, n)
	errs := make([]error, n)
	jobs := make(chan int)
	var wg sync.WaitGroup
	for range min(connectWorkers, n) {
		wg.Go(func() {
			for i := range jobs {
				clients[i], errs[i] = connectDevice(url, ids[i], func(p []byte) { onDelta(i, p) })
			}
		})
	}
	for i := range ids {
		ids[i] = device.MustParseID(fmt.Sprintf("%s-%04d", prefix, i+1))
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	tb.Cleanup(func() {
		var wg sync.WaitGroup
		for _, c := range clients {
			if c != nil {
				wg.Go(func() { c.Disconnect(100) })
			}
		}
		wg.Wait()
	})
	for _, err := range errs {
		if err != nil {
			tb.Fatal(err)
		}
	}
	return ids
}

// connectDevice connects one device and subscribes it to its delta.
func connectDevice(url string, id device.ID, onDelta func([]byte)) (paho.Client, error) {
	opts := paho.NewClientOptions().AddBroker(url).SetClientID(string(id)).
		SetCleanSession(true).SetOrderMatters(false).SetAutoReconnect(false).
		SetConnectTimeout(requestTimeout).SetKeepAlive(60 * time.Second)
	c := paho.NewClient(opts)
	if tok := c.Connect(); !tok.WaitTimeout(requestTimeout) || tok.Error() != nil {
		return c, fmt.Errorf("connect %s: %v (timeout %v)", id, tok.Error(), requestTimeout)
	}
	tok := c.Subscribe(shadow.DeltaTopic(id), 1, func(_ paho.Client, m paho.Message) { onDelta(m.Payload()) })
	if !tok.WaitTimeout(requestTimeout) || tok.Error() != nil {
		return c, fmt.Errorf("subscribe %s: %v (timeout %v)", id, tok.Error(), requestTimeout)
	}
	return c, nil
}

// fanout tracks one round of deltas: which devices have received the
// delta carrying the current round, and when.
type fanout struct {
	round     atomic.Int64
	start     time.Time // set by arm before any Update of the round
	seen      []atomic.Int64
	latency   []time.Duration // device i's delivery latency, written once per round
	remaining atomic.Int64
	done      chan struct{} // closed when remaining reaches 0

	mu      sync.Mutex // guards bad
	bad     int        // deltas that did not parse
	badText string
}

func newFanout(n int) *fanout {
	return &fanout{seen: make([]atomic.Int64, n), latency: make([]time.Duration, n)}
}

// arm starts round r. No delta of round r may arrive before it returns.
func (f *fanout) arm(r int64) {
	f.start = time.Now()
	f.remaining.Store(int64(len(f.seen)))
	f.done = make(chan struct{})
	f.round.Store(r)
}

// deliver handles a delta for device i; it never blocks.
func (f *fanout) deliver(i int, payload []byte) {
	var d struct {
		State struct {
			Round int64 `json:"round"`
		} `json:"state"`
	}
	if err := json.Unmarshal(payload, &d); err != nil {
		f.mu.Lock()
		f.bad++
		f.badText = string(payload)
		f.mu.Unlock()
		return
	}
	r := f.round.Load()
	if d.State.Round != r || !f.seen[i].CompareAndSwap(r-1, r) {
		return // a catch-up or duplicate delta, or one of an earlier round
	}
	f.latency[i] = time.Since(f.start)
	if f.remaining.Add(-1) == 0 {
		close(f.done)
	}
}

// BenchmarkDeltaFanout: N devices (UMBRA_BENCH_CLIENTS, default 1000, 50
// with -short) are connected and subscribed to their delta at QoS 1. Each
// iteration an operator sets desired {"round": r} on all N through
// Engine.Update (in process, 64 concurrent callers, so commits are grouped)
// and the iteration ends when every device has received the delta carrying
// r. Reports the fan-out time for the whole fleet, deltas/s, and the
// per-device delivery latency percentiles measured from the start of the
// round.
func BenchmarkDeltaFanout(b *testing.B) {
	n := numClients(b)
	u := openUmbra(b, b.TempDir())
	f := newFanout(n)
	ids := connectDevices(b, brokerURL(u.brk), "fan", n, f.deliver)
	var round int64
	var total time.Duration
	var lat []time.Duration
	for b.Loop() {
		round++
		f.arm(round)
		body := fmt.Appendf(nil, `{"state":{"desired":{"round":%d}}}`, round)
		if err := setDesired(b, u, ids, body); err != nil {
			b.Fatal(err)
		}
		select {
		case <-f.done:
		case <-time.After(fanoutTimeout):
			f.mu.Lock()
			defer f.mu.Unlock()
			b.Fatalf("round %d: got %d of %d deltas after %v (%d unparsable, last %q), want all",
				round, int64(n)-f.remaining.Load(), n, fanoutTimeout, f.bad, f.badText)
		}
		total += time.Since(f.start)
		lat = append(lat, f.latency...)
	}
	f.mu.Lock()
	if f.bad != 0 {
		b.Errorf("got %d unparsable deltas (last %q), want 0", f.bad, f.badText)
	}
	f.mu.Unlock()
	slices.Sort(lat)
	mean := total / time.Duration(round)
	b.ReportMetric(ms(mean), "fanout-ms")
	b.ReportMetric(float64(n)/mean.Seconds(), "deltas/s")
	b.ReportMetric(ms(lat[len(lat)/2]), "p50-ms")
	b.ReportMetric(ms(lat[len(lat)*99/100]), "p99-ms")
	b.ReportMetric(ms(lat[len(lat)-1]), "max-ms")
}

// setDesired applies body to every device through operatorWorkers
// concurrent Engine.Update calls and returns the first error.
func setDesired(b *testing.B, u *umbra, ids []device.ID, body []byte) error {
	jobs := make(chan device.ID)
	var first atomic.Pointer[error]
	var wg sync.WaitGroup
	for range operatorWorkers {
		wg.Go(func() {
			for id := range jobs {
				if _, err := u.eng.Update(b.Context(), id, body); err != nil {
					err = fmt.Errorf("update %s: %w", id, err)
					first.CompareAndSwap(nil, &err)
				}
			}
		})
	}
	for _, id := range ids {
		jobs <- id
	}
	close(jobs)
	wg.Wait()
	if p := first.Load(); p != nil {
		return *p
	}
	return nil
}
