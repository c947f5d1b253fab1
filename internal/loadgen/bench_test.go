package loadgen_test

import (
	"strconv"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/internal/loadgen"
)

// BenchmarkEcho is the baseline round trip: K closed-loop clients (window
// 1, QoS 1) against a bare in-process broker with the Echo responder.
// -short runs 200ms; otherwise 3s after a 500ms warmup.
func BenchmarkEcho(b *testing.B) {
	for _, clients := range []int{10, 100, 1000} {
		b.Run("clients="+strconv.Itoa(clients), func(b *testing.B) {
			_, url := echoBroker(b)
			cfg := loadgen.Config{Server: url, Clients: clients, QoS: 1, Duration: 3 * time.Second,
				Warmup: 500 * time.Millisecond, ConnectRate: 0}
			if testing.Short() {
				cfg.Duration, cfg.Warmup = 200*time.Millisecond, 0
			}
			for b.Loop() {
				r, err := loadgen.Run(b.Context(), cfg)
				if err != nil {
					b.Fatal(err)
				}
				if r.Errors != 0 {
					b.Errorf("%d errors", r.Errors)
				}
				b.ReportMetric(r.PerSecond, "req/s")
				b.ReportMetric(float64(r.P50.Microseconds()), "p50-µs")
				b.ReportMetric(float64(r.P99.Microseconds()), "p99-µs")
				b.ReportMetric(float64(r.P999.Microseconds()), "p99.9-µs")
			}
		})
	}
}
