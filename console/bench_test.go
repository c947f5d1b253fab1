package console_test

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/identity"
	"github.com/umbra-iot/umbra/internal/server"
	"github.com/umbra-iot/umbra/internal/shadowclient"
)

// benchServer opens a whole Umbra with n enrolled devices that each
// reported a firmware version (two versions, two hw labels).
func benchServer(b *testing.B, n int, anonymous bool) *server.Server {
	b.Helper()
	srv, err := server.Open(b.Context(), server.Config{DataDir: b.TempDir(), MQTTAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0",
		Anonymous: anonymous, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = srv.Close(ctx)
	})
	ctx := b.Context()
	var list []identity.Enrollment
	for i := range n {
		list = append(list, identity.Enrollment{ID: device.ID(fmt.Sprintf("dev-%06d", i)), Labels: map[string]string{"hw": []string{"m1", "m2"}[i%2]}})
	}
	for start := 0; start < n; start += identity.MaxEnrollments {
		if _, err := srv.Identity().EnrollDevices(ctx, list[start:min(n, start+identity.MaxEnrollments)], false); err != nil {
			b.Fatal(err)
		}
	}
	// Reports written concurrently, so the engine groups their commits.
	var wg sync.WaitGroup
	next := atomic.Int64{}
	for range 64 {
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < n; i = int(next.Add(1) - 1) {
				body := fmt.Appendf(nil, `{"state":{"reported":{"firmware":{"version":"1.%d.0","state":"updated"}}}}`, i%3)
				if _, err := srv.Engine().Update(ctx, list[i].ID, body); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	return srv
}

// BenchmarkConsoleFleetPage is the fleet page's first render at a large
// fleet (100,000 enrolled devices that reported; 2,000 with -short): the
// server's time for one page of GET /v1/devices (first page, and a
// selector plus offline filter), and per iteration the time from loading
// the console (signed in: the token is in the tab's sessionStorage) to a
// usable table with the totals.
func BenchmarkConsoleFleetPage(b *testing.B) {
	n := 100_000
	if testing.Short() {
		n = 2_000
	}
	srv := benchServer(b, n, false)
	url := "http://" + srv.HTTPAddr().String()
	tokb, err := os.ReadFile(filepath.Join(srv.DataDir(), server.AdminTokenFile))
	if err != nil {
		b.Fatal(err)
	}
	tok := strings.TrimSpace(string(tokb))
	serverMs := map[string]float64{}
	for name, q := range map[string]string{"first": "limit=100", "filtered": "limit=100&selector=hw%3Dm2&online=false&firmware=1.1.0"} {
		const reqs = 20
		start := time.Now()
		for range reqs {
			req, _ := http.NewRequest("GET", url+"/v1/devices?"+q, nil)
			req.Header.Set("Authorization", "Bearer "+tok)
			resp, err := http.DefaultClient.Do(req)
			if err != nil || resp.StatusCode != 200 {
				b.Fatalf("GET /v1/devices?%s: %v %v", q, resp, err)
			}
			_, _ = bufio.NewReader(resp.Body).WriteTo(discard{})
			resp.Body.Close()
		}
		serverMs[name] = float64(time.Since(start).Microseconds()) / reqs / 1000
	}

	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(chromiumPath(b)), chromedp.NoSandbox, chromedp.WindowSize(1280, 900))
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	tab, cancelTab := chromedp.NewContext(alloc)
	defer cancelTab()
	ready := fmt.Sprintf(`document.querySelector('#fleet-status')?.dataset.matched === '%d' && document.querySelectorAll('#fleet-table tr[data-device]').length === 100`, n)
	wait := chromedp.Poll[chromedp.Void](ready, chromedp.WithPollingInterval(5*time.Millisecond), chromedp.WithPollingTimeout(2*time.Minute))
	if err := chromedp.Do(tab, chromedp.Navigate(url+"/"), chromedp.Evaluate[chromedp.Void](`sessionStorage.setItem('umbra.token', '`+tok+`')`)); err != nil {
		b.Fatal(err)
	}
	i := 0
	var fetchMs float64
	for b.Loop() {
		i++
		if err := chromedp.Do(tab, chromedp.Navigate(fmt.Sprintf("%s/?%d#/fleet", url, i)), wait); err != nil {
			b.Fatal(err)
		}
		ms, err := chromedp.Run(tab, chromedp.Evaluate[string](`document.querySelector('#main').dataset.fleetLoadMs`))
		if err != nil {
			b.Fatal(err)
		}
		var f float64
		fmt.Sscan(ms, &f)
		fetchMs += f
	}
	b.ReportMetric(fetchMs/float64(i), "browser-fetch-ms/page")
	for name, ms := range serverMs {
		b.ReportMetric(ms, "server-ms/page-"+name)
	}
	b.ReportMetric(float64(n), "devices")
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// cpuTime is the process's user and system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkLiveFeed compares the cost of the live feed with 1,000 devices
// reporting (10 reports each per iteration, written to the engine by 16
// goroutines) for: no subscriber, one GET /v1/events stream reading every
// shadow event (the console's feed), and one MQTT subscriber to
// state/+/update/accepted (what `umbra watch` does, with its client,
// internal/shadowclient). It reports the process's CPU time per report
// (server and consumer together, in one process) and checks that the
// consumer received every event (keeps up).
func BenchmarkLiveFeed(b *testing.B) {
	const devices = 1000
	rounds := int64(10)
	if testing.Short() {
		rounds = 2
	}
	srv := benchServer(b, devices, true)
	base := "http://" + srv.HTTPAddr().String()
	for _, mode := range []string{"none", "sse", "mqtt-watch"} {
		b.Run(mode, func(b *testing.B) {
			var got atomic.Int64
			ctx, cancel := context.WithCancel(b.Context())
			defer cancel()
			switch mode {
			case "sse":
				req, _ := http.NewRequestWithContext(ctx, "GET", base+"/v1/events?kinds=shadow", nil)
				resp, err := http.DefaultClient.Do(req)
				if err != nil || resp.StatusCode != 200 {
					b.Fatalf("events: %v %v", resp, err)
				}
				defer resp.Body.Close()
				sc := bufio.NewScanner(resp.Body)
				sc.Buffer(make([]byte, 64<<10), 1<<20)
				sc.Scan() // "retry"
				go func() {
					for sc.Scan() {
						if strings.HasPrefix(sc.Text(), "event: shadow") {
							got.Add(1)
						}
					}
				}()
			case "mqtt-watch":
				c, err := shadowclient.Dial(ctx, shadowclient.Config{Server: "tcp://" + srv.Broker().Addr().String()})
				if err != nil {
					b.Fatal(err)
				}
				defer c.Close()
				go func() {
					_ = c.Watch(ctx, nil, []string{shadowclient.KindAccepted}, func(shadowclient.Event) { got.Add(1) })
				}()
				deadline := time.Now().Add(10 * time.Second)
				for !srv.Broker().HasSubscribers("state/dev-000000/update/accepted") {
					if time.Now().After(deadline) {
						b.Fatal("the watch did not subscribe")
					}
					time.Sleep(time.Millisecond) // no event for a SUBACK seen by the server
				}
			}
			if mode == "sse" {
				// The stream's "ready" is read once the hub counts it.
				deadline := time.Now().Add(10 * time.Second)
				for srv.Broker() != nil && liveConns(b, base) < 1 {
					if time.Now().After(deadline) {
						b.Fatal("the stream did not open")
					}
					time.Sleep(time.Millisecond)
				}
			}
			var cpu, wall time.Duration
			var sent int64
			for b.Loop() {
				before := got.Load()
				c0, t0 := cpuTime(), time.Now()
				var wg sync.WaitGroup
				next := atomic.Int64{}
				for range 16 {
					wg.Go(func() {
						for i := next.Add(1) - 1; i < devices*rounds; i = next.Add(1) - 1 {
							id := device.ID(fmt.Sprintf("dev-%06d", i%devices))
							if _, err := srv.Engine().Update(ctx, id, fmt.Appendf(nil, `{"state":{"reported":{"temp":%d}}}`, i)); err != nil {
								b.Error(err)
								return
							}
						}
					})
				}
				wg.Wait()
				sent += devices * rounds
				if mode != "none" {
					deadline := time.Now().Add(time.Minute)
					for got.Load()-before < devices*rounds {
						if time.Now().After(deadline) {
							b.Fatalf("%s received %d of %d events", mode, got.Load()-before, devices*rounds)
						}
						time.Sleep(time.Millisecond) // the consumer counts; no event to wait on
					}
				}
				cpu += cpuTime() - c0
				wall += time.Since(t0)
			}
			b.ReportMetric(float64(cpu.Microseconds())/float64(sent), "cpu-µs/report")
			b.ReportMetric(float64(sent)/wall.Seconds(), "reports/s")
		})
	}
}

// liveConns reads umbra_console_sse_connections from /metrics.
func liveConns(b *testing.B, base string) int {
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var n int
		if _, err := fmt.Sscanf(sc.Text(), "umbra_console_sse_connections %d", &n); err == nil {
			return n
		}
	}
	return 0
}
