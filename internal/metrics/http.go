package metrics

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// httpMetrics counts the HTTP listener's answers.
type httpMetrics struct {
	requests *prometheus.CounterVec   // route, code
	latency  *prometheus.HistogramVec // route
}

func newHTTPMetrics() httpMetrics {
	return httpMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: "http", Name: "requests_total",
			Help: "HTTP requests answered, by route pattern (\"unmatched\" when no route served it) and status code: refusals such as 403 (cross-origin), 413 (body too large), 415 (content type) and 416 (ranges) count here.",
		}, []string{"route", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Subsystem: "http", Name: "request_duration_seconds",
			Help:    "HTTP request latency by route pattern, from the request to the end of the answer.",
			Buckets: latencyBuckets,
		}, []string{"route"}),
	}
}

// ObserveHTTP records one answered HTTP request: the route pattern that
// served it, its status code and how long it took. Its signature is that
// of httpapi.Config.Observe. Routes are the API's fixed patterns, so the
// series stay few.
func (m *Metrics) ObserveHTTP(route string, code int, d time.Duration) {
	m.http.requests.WithLabelValues(route, strconv.Itoa(code)).Inc()
	m.http.latency.WithLabelValues(route).Observe(d.Seconds())
}
