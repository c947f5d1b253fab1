package metrics

import "github.com/prometheus/client_golang/prometheus"

// LiveStats is what the metrics read from the console's live feed (the
// Server-Sent Events of GET /v1/events) at scrape time.
type LiveStats struct {
	Conns           int    // streams open
	RefusedTotal    uint64 // streams refused: --max-sse-connections reached
	RefusedPerToken uint64 // streams refused: --max-sse-connections-per-token reached
	Dropped         uint64 // streams ended because they fell --sse-buffer events behind
	Events          uint64 // events queued to streams
}

// RegisterLive exposes the live feed's gauges and counters, read by
// calling stats at every scrape; stats must be cheap and safe for
// concurrent use. It panics if called twice.
func (m *Metrics) RegisterLive(stats func() LiveStats) {
	m.reg.MustRegister(&liveCollector{stats: stats})
}

type liveCollector struct {
	stats func() LiveStats
}

var (
	descLiveConns = prometheus.NewDesc(namespace+"_console_sse_connections",
		"Server-Sent Events streams of GET /v1/events open.", nil, nil)
	descLiveRefused = prometheus.NewDesc(namespace+"_console_sse_refused_total",
		"Server-Sent Events streams refused (429) by the cap named in cap: total or per_token.", []string{"cap"}, nil)
	descLiveDropped = prometheus.NewDesc(namespace+"_console_sse_dropped_total",
		"Server-Sent Events streams ended because their client fell more than the buffer behind.", nil, nil)
	descLiveEvents = prometheus.NewDesc(namespace+"_console_sse_events_total",
		"Live events queued to Server-Sent Events streams.", nil, nil)
)

func (c *liveCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descLiveConns
	ch <- descLiveRefused
	ch <- descLiveDropped
	ch <- descLiveEvents
}

func (c *liveCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.stats()
	ch <- prometheus.MustNewConstMetric(descLiveConns, prometheus.GaugeValue, float64(s.Conns))
	ch <- prometheus.MustNewConstMetric(descLiveRefused, prometheus.CounterValue, float64(s.RefusedTotal), "total")
	ch <- prometheus.MustNewConstMetric(descLiveRefused, prometheus.CounterValue, float64(s.RefusedPerToken), "per_token")
	ch <- prometheus.MustNewConstMetric(descLiveDropped, prometheus.CounterValue, float64(s.Dropped))
	ch <- prometheus.MustNewConstMetric(descLiveEvents, prometheus.CounterValue, float64(s.Events))
}
