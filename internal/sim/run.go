package sim

import (
	"context"
	"encoding/json"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/umbra-iot/umbra/device"
)

// Event is one change of a device's reported firmware state.
type Event struct {
	Time    time.Time `json:"time"`
	Device  device.ID `json:"device"`
	State   string    `json:"state"`
	Version string    `json:"version"`
	Error   string    `json:"error,omitempty"`
	Job     string    `json:"job,omitempty"`
}

// eventLine and statsLine are the JSON lines Run writes.
type eventLine struct {
	Kind string `json:"kind"` // "device"
	Event
}

type statsLine struct {
	Kind          string         `json:"kind"` // "stats"
	Time          time.Time      `json:"time"`
	Devices       int            `json:"devices"`
	Connected     int            `json:"connected"`
	Updating      int            `json:"updating"`
	Updated       int            `json:"updated"`
	Failed        int            `json:"failed"`
	Silent        int            `json:"silent"`
	Versions      map[string]int `json:"versions"`
	Reports       uint64         `json:"reports"`
	Rejected      uint64         `json:"rejected"`
	Deltas        uint64         `json:"deltas"`
	Downloads     uint64         `json:"downloads"`
	Resyncs       uint64         `json:"resyncs,omitempty"`
	Reconnects    uint64         `json:"reconnects"`
	Servers       []ServerStats  `json:"servers"`
	DroppedEvents uint64         `json:"dropped_events,omitempty"`
}

// Run opens a fleet, runs it until ctx is done and closes it. When events
// is non-nil it receives JSON lines: one {"kind":"device",…} per Event and
// one {"kind":"stats",…} every StatsInterval and at the end. Events are
// buffered and dropped (and counted) rather than slowing the fleet.
// Cancelling ctx is the normal way to stop, so Run then returns nil.
func Run(ctx context.Context, cfg Config, events io.Writer) error {
	var w *lineWriter
	if events != nil {
		w = &lineWriter{out: events, ch: make(chan any, 4096)}
		next := cfg.OnEvent
		cfg.OnEvent = func(e Event) {
			w.send(eventLine{Kind: "device", Event: e})
			if next != nil {
				next(e)
			}
		}
	}
	f, err := Open(ctx, cfg)
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	if w != nil {
		wg.Go(w.run)
	}
	tick := time.NewTicker(f.cfg.StatsInterval)
	defer tick.Stop()
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-tick.C:
			w.stats(f.Stats())
		}
	}
	closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	err = f.Close(closeCtx)
	if w != nil {
		w.stats(f.Stats())
		close(w.ch)
		wg.Wait()
	}
	return err
}

// lineWriter writes JSON lines from one goroutine.
type lineWriter struct {
	out     io.Writer
	ch      chan any
	dropped atomic.Uint64
}

func (w *lineWriter) send(v any) {
	select {
	case w.ch <- v:
	default:
		w.dropped.Add(1)
	}
}

func (w *lineWriter) stats(st Stats) {
	if w == nil {
		return
	}
	w.send(statsLine{
		Kind: "stats", Time: time.Now(), Devices: st.Devices, Connected: st.Connected,
		Updating: st.Updating, Updated: st.Updated, Failed: st.Failed, Silent: st.Silent,
		Versions: st.Versions, Reports: st.Reports, Rejected: st.Rejected, Deltas: st.Deltas,
		Downloads: st.Downloads, Resyncs: st.Resyncs, DroppedEvents: w.dropped.Load(),
		Reconnects: st.Reconnects, Servers: st.Servers,
	})
}

func (w *lineWriter) run() {
	enc := json.NewEncoder(w.out)
	for v := range w.ch {
		if err := enc.Encode(v); err != nil {
			for range w.ch { // keep draining so senders never block
			}
			return
		}
	}
}
