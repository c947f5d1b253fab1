package firmware_test

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/device"
)

// BenchmarkConcurrentDownloads measures one round of clients concurrent
// downloads of one image over loopback HTTP (200 × 4 MiB; 20 × 1 MiB with
// -short). It reports throughput (MB/s, from SetBytes), the peak Go heap in
// use sampled every 5 ms during the run, and the process's peak RSS
// (VmHWM, Linux only; it includes the benchmark's own clients).
func BenchmarkConcurrentDownloads(b *testing.B) {
	clients, size := 200, 4<<20
	if testing.Short() {
		clients, size = 20, 1<<20
	}
	e := mustOpen(b, nil)
	data := image(size, 1)
	img := mustUpload(b, e.st, "1.0.0", data)
	urls := make([]string, clients)
	for i := range urls {
		urls[i], _ = e.st.URL(img, device.ID(fmt.Sprintf("dev-%d", i)), 0)
	}
	tr := &http.Transport{MaxIdleConnsPerHost: clients, DisableCompression: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: time.Minute}

	var peakHeap atomic.Uint64
	stop := make(chan struct{})
	var sampler sync.WaitGroup
	sampler.Go(func() {
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peakHeap.Load() {
				peakHeap.Store(ms.HeapInuse)
			}
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	})

	b.SetBytes(int64(clients * size))
	b.ResetTimer()
	for b.Loop() {
		var wg sync.WaitGroup
		errs := make(chan error, clients)
		for _, u := range urls {
			wg.Go(func() {
				resp, err := client.Get(u)
				if err != nil {
					errs <- err
					return
				}
				defer resp.Body.Close()
				n, err := io.Copy(io.Discard, resp.Body)
				if err != nil || resp.StatusCode != http.StatusOK || n != int64(size) {
					errs <- fmt.Errorf("status %d, %d bytes, err %v; want 200, %d bytes", resp.StatusCode, n, err, size)
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	close(stop)
	sampler.Wait()
	b.ReportMetric(float64(peakHeap.Load())/(1<<20), "peak-heap-MiB")
	if rss := peakRSS(); rss > 0 {
		b.ReportMetric(float64(rss)/(1<<20), "peak-rss-MiB")
	}
	wantServed(b, e.st, int64(b.N)*int64(clients*size))
}

// peakRSS returns VmHWM from /proc/self/status in bytes, or 0.
func peakRSS() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				return 0
			}
			return kb << 10
		}
	}
	return 0
}
