package server_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/internal/brokertest"
	"github.com/umbra-iot/umbra/internal/natstest"
	"github.com/umbra-iot/umbra/internal/server"
)

// benchNodes opens n anonymous nodes: on bbolt when urls is empty, else in
// cluster mode on urls with replicas. They are closed on cleanup.
func benchNodes(b *testing.B, n int, urls []string, replicas int) []*server.Server {
	b.Helper()
	nodes := make([]*server.Server, n)
	for i := range nodes {
		cfg := server.Config{DataDir: b.TempDir(), MQTTAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", Anonymous: true,
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
		if len(urls) > 0 {
			cfg.NATS, cfg.NodeID, cfg.NATSReplicas = urls, fmt.Sprintf("n%d", i+1), replicas
		}
		s, err := server.Open(b.Context(), cfg)
		if err != nil {
			b.Fatalf("server.Open: %v", err)
		}
		b.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			s.Close(ctx)
		})
		nodes[i] = s
	}
	return nodes
}

// BenchmarkClusterShadowUpdate measures durable shadow updates through the
// MQTT path (a device publishes state/<id>/update at QoS 1 and waits for
// its accepted answer) for 200 devices, each one goroutine, spread over the
// nodes: one node on bbolt (the single-node baseline), one node on one
// nats-server (R1), three nodes on a three-server cluster (R3). b.N
// updates in all; run it with -benchtime Nx (each run starts its servers).
func BenchmarkClusterShadowUpdate(b *testing.B) {
	const devices = 200
	cases := []struct {
		name  string
		nodes func(b *testing.B) []*server.Server
	}{
		{"bbolt-1node", func(b *testing.B) []*server.Server { return benchNodes(b, 1, nil, 0) }},
		{"nats-R1-1node", func(b *testing.B) []*server.Server { ns := natstest.Start(b); return benchNodes(b, 1, ns.URLs(), 1) }},
		{"nats-R3-3nodes", func(b *testing.B) []*server.Server {
			c := natstest.StartCluster(b)
			return benchNodes(b, 3, c.URLs(), 3)
		}},
	}
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			nodes := tc.nodes(b)
			var next, refused atomic.Int64
			lat := make([][]time.Duration, devices)
			start := make(chan struct{})
			var wg sync.WaitGroup
			for d := range devices {
				id := fmt.Sprintf("bench-%d", d)
				dev := brokertest.Connect(b, "tcp://"+nodes[d%len(nodes)].Broker().Addr().String(), id)
				accepted := brokertest.Subscribe(b, dev, "state/"+id+"/update/accepted", 1)
				rejected := brokertest.Subscribe(b, dev, "state/"+id+"/update/rejected", 1)
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					for i := 0; next.Add(1) <= int64(b.N); i++ {
						t0 := time.Now()
						tok := dev.Publish("state/"+id+"/update", 1, false, fmt.Sprintf(`{"state":{"reported":{"n":%d}}}`, i))
						if !tok.WaitTimeout(brokertest.Timeout) || tok.Error() != nil {
							refused.Add(1)
							continue
						}
						select {
						case <-accepted:
							lat[d] = append(lat[d], time.Since(t0))
						case <-rejected:
							refused.Add(1)
						case <-time.After(brokertest.Timeout):
							refused.Add(1)
						}
					}
				}()
			}
			b.ResetTimer()
			t0 := time.Now()
			close(start)
			wg.Wait()
			elapsed := time.Since(t0)
			b.StopTimer()
			all := slices.Concat(lat...)
			slices.Sort(all)
			if len(all) == 0 {
				b.Fatalf("no update accepted (%d refused)", refused.Load())
			}
			b.ReportMetric(float64(len(all))/elapsed.Seconds(), "updates/s")
			b.ReportMetric(float64(all[len(all)*99/100].Microseconds())/1000, "p99-ms")
			b.ReportMetric(float64(refused.Load()), "refused")
		})
	}
}

// BenchmarkClusterIdleMemory measures the memory one connected idle device
// (MQTT 3.1.1 CONNECT, no subscriptions) costs a node: the heap in use
// (after GC) and the process RSS before and after 1,000 connections, per
// connection, for a single node on bbolt and a cluster node on one
// nats-server. The devices are raw TCP connections (a few hundred bytes of
// client state each, counted in the figure). Run it with -benchtime 1x.
func BenchmarkClusterIdleMemory(b *testing.B) {
	const conns = 1000
	cases := []struct {
		name string
		urls func(b *testing.B) []string
	}{
		{"single-node", func(*testing.B) []string { return nil }},
		{"cluster-node", func(b *testing.B) []string { return natstest.Start(b).URLs() }},
	}
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			for range b.N {
				node := benchNodes(b, 1, tc.urls(b), 1)[0]
				heap0, rss0 := memNow()
				held := make([]net.Conn, 0, conns)
				for i := range conns {
					c, err := rawConnect(node.Broker().Addr().String(), fmt.Sprintf("idle-%d", i))
					if err != nil {
						b.Fatalf("connect %d: %v", i, err)
					}
					held = append(held, c)
				}
				heap1, rss1 := memNow()
				b.ReportMetric(float64(heap1-heap0)/conns, "heap-B/conn")
				b.ReportMetric(float64(rss1-rss0)/conns, "rss-B/conn")
				for _, c := range held {
					c.Close()
				}
			}
		})
	}
}

// memNow returns the heap in use after a GC and the process's RSS (0 where
// /proc is missing).
func memNow() (heap, rss int64) {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	if f, err := os.ReadFile("/proc/self/statm"); err == nil {
		if fields := strings.Fields(string(f)); len(fields) > 1 {
			pages, _ := strconv.ParseInt(fields[1], 10, 64)
			rss = pages * int64(os.Getpagesize())
		}
	}
	return int64(ms.HeapInuse), rss
}

// rawConnect opens an MQTT 3.1.1 connection as clientID (clean session,
// keep-alive 10 min) and waits for a successful CONNACK.
func rawConnect(addr, clientID string) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	vh := []byte{0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0x02, 0x58, byte(len(clientID) >> 8), byte(len(clientID))}
	body := append(vh, clientID...)
	pkt := append([]byte{0x10, byte(len(body))}, body...)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(pkt); err != nil {
		c.Close()
		return nil, err
	}
	ack := make([]byte, 4)
	if _, err := io.ReadFull(bufio.NewReader(c), ack); err != nil || ack[0] != 0x20 || ack[3] != 0 {
		c.Close()
		return nil, fmt.Errorf("CONNACK %x: %v", ack, err)
	}
	c.SetDeadline(time.Time{})
	return c, nil
}
