package natsstore_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/internal/natstest"
	"github.com/umbra-iot/umbra/shadow"
	"github.com/umbra-iot/umbra/shadow/boltstore"
	"github.com/umbra-iot/umbra/shadow/natsstore"
	"github.com/umbra-iot/umbra/shadow/storetest"
)

// defaultBenchWriters is how many devices update their shadows at once,
// unless UMBRA_BENCH_WRITERS says otherwise (1..4096).
const defaultBenchWriters = 64

// benchWriters returns UMBRA_BENCH_WRITERS, else defaultBenchWriters.
func benchWriters(b *testing.B) int {
	s := os.Getenv("UMBRA_BENCH_WRITERS")
	if s == "" {
		return defaultBenchWriters
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > 4096 {
		b.Fatalf("UMBRA_BENCH_WRITERS=%q: want an integer in 1..4096", s)
	}
	return n
}

// finKey is the watched benchmark's marker, written after the run.
var finKey = shadow.Key{Device: "dev-fin"}

// BenchmarkStoreUpdate measures durable shadow updates through a
// shadow.Store, as the engine makes them (read the record, write the next
// one with a compare-and-set on its revision), by benchWriters devices at
// once (UMBRA_BENCH_WRITERS, default 64), on bbolt (the single-node baseline, in the same run), on one
// nats-server and on three (R3). Every acknowledged update is on disk:
// bbolt fsyncs each transaction, the nats-servers run with
// sync_interval: always (and R3 acknowledges on a quorum). It reports
// updates/s, the p99 latency of one update and the nats-servers' CPU per
// update (all servers summed, from /proc).
func BenchmarkStoreUpdate(b *testing.B) {
	for _, tc := range []struct {
		name   string
		target func(b *testing.B) natstest.Target // nil: bbolt
		watch  bool                               // a planner leader's WatchDevices drains the changes meanwhile
	}{
		{"bbolt", nil, false},
		{"nats-1", func(b *testing.B) natstest.Target { return natstest.Start(b) }, false},
		{"nats-R3", func(b *testing.B) natstest.Target { return natstest.StartCluster(b) }, false},
		{"nats-R3-watched", func(b *testing.B) natstest.Target { return natstest.StartCluster(b) }, true},
	} {
		b.Run(tc.name, func(b *testing.B) {
			ctx := b.Context()
			var s storetest.Store
			var servers []*natstest.Server // for their CPU
			var watched atomic.Int64
			fin := make(chan struct{}) // the watch saw the final marker write
			if tc.target == nil {
				bs, err := boltstore.Open(ctx, boltstore.Config{Path: filepath.Join(b.TempDir(), "shadow.db")})
				if err != nil {
					b.Fatal(err)
				}
				s = bs
			} else {
				target := tc.target(b)
				s = openBench(b, target)
				switch t := target.(type) {
				case *natstest.Server:
					servers = []*natstest.Server{t}
				case *natstest.Cluster:
					servers = t.Servers
				}
				if tc.watch {
					// The watch runs on a Store of its own connection, as
					// on the leader node.
					ws := openBench(b, target).(*natsstore.Store)
					wctx, cancel := context.WithCancel(ctx)
					defer cancel()
					ch, err := ws.WatchDevices(wctx)
					if err != nil {
						b.Fatal(err)
					}
					go func() {
						for id := range ch {
							if id == finKey.Device {
								close(fin)
							}
							watched.Add(1)
						}
					}()
				}
			}
			defer s.Close(context.Background())
			writers := benchWriters(b)
			var cpu0 time.Duration
			for _, srv := range servers {
				cpu0 += natstest.ProcUsage(srv.PID()).CPU
			}
			var next atomic.Int64
			lat := make([][]time.Duration, writers)
			var wg sync.WaitGroup
			b.ResetTimer()
			start := time.Now()
			for w := range writers {
				wg.Go(func() {
					k := shadow.Key{Device: device.ID(fmt.Sprintf("dev-%04d", w))}
					for next.Add(1) <= int64(b.N) {
						t0 := time.Now()
						rec, err := s.Get(ctx, k)
						if err == nil {
							err = s.Commit(ctx, shadow.Write{Key: k, Rev: rec.Rev,
								Value: fmt.Appendf(nil, `{"state":{"reported":{"n":%d}},"version":%d}`, t0.UnixNano(), len(lat[w])+1)})
						}
						if err != nil {
							b.Error(err)
							return
						}
						lat[w] = append(lat[w], time.Since(t0))
					}
				})
			}
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			all := slices.Concat(lat...)
			slices.Sort(all)
			if len(all) > 0 {
				b.ReportMetric(float64(len(all))/elapsed.Seconds(), "updates/s")
				b.ReportMetric(float64(all[len(all)*99/100].Microseconds())/1000, "p99-ms")
			}
			if len(servers) > 0 && len(all) > 0 {
				var cpu time.Duration
				for _, srv := range servers {
					cpu += natstest.ProcUsage(srv.PID()).CPU
				}
				// Every nats-server's CPU per update, all servers summed.
				b.ReportMetric(float64((cpu-cpu0).Microseconds())/float64(len(all)), "nats-cpu-µs/update")
			}
			if tc.watch {
				// The watch delivers the changes in order: once it has a
				// marker written after the run, it had every change (a
				// revision superseded before the watch read it is skipped:
				// the bucket keeps one per key, and the planner reads the
				// current report anyway). watched/update < 1 counts those.
				end := time.Now()
				if err := s.Commit(ctx, shadow.Write{Key: finKey, Value: []byte(`{"version":1}`)}); err != nil {
					b.Fatal(err)
				}
				select {
				case <-fin:
					b.ReportMetric(float64(time.Since(end).Microseconds())/1000, "watch-lag-ms")
				case <-time.After(10 * time.Second):
					b.Errorf("the watch did not deliver the marker within 10 s of the last write")
				}
				b.ReportMetric(float64(watched.Load())/float64(len(all)), "watched/update")
			}
		})
	}
}

func openBench(b *testing.B, target natstest.Target) storetest.Store {
	s, err := natsstore.Open(b.Context(), natsstore.Config{JetStream: natstest.JetStream(b, target.URLs()), Replicas: target.Replicas()})
	if err != nil {
		b.Fatal(err)
	}
	return s
}
