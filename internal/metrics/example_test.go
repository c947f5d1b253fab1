package metrics_test

import (
	"bufio"
	"fmt"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/umbra-iot/umbra/internal/metrics"
)

// Example wires the push methods the way cmd/umbra does (shadow engine
// hooks and a broker stats adapter) and prints the shadow series of one
// scrape.
func Example() {
	m := metrics.New()
	m.RegisterBroker(func() metrics.BrokerStats { return metrics.BrokerStats{ClientsConnected: 2} })
	m.ObserveShadow("update", 200, 3*time.Millisecond) // shadow.Config.Observe
	m.ObserveShadow("update", 429, time.Millisecond)
	m.ObserveCommit(5*time.Millisecond, 40) // shadow/boltstore.Config.CommitObserved

	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	sc := bufio.NewScanner(rec.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "umbra_shadow_requests_total") || strings.HasPrefix(line, "umbra_devices_connected") {
			fmt.Println(line)
		}
	}
	// Output:
	// umbra_devices_connected 2
	// umbra_shadow_requests_total{code="200",op="update"} 1
	// umbra_shadow_requests_total{code="429",op="update"} 1
}
