package metrics

import "github.com/prometheus/client_golang/prometheus"

// NamedShadowStats is what the metrics read from the shadow engine about
// named shadows at scrape time.
type NamedShadowStats struct {
	Shadows  int64  // named shadows that exist now
	Rejected uint64 // updates refused because the device had its maximum of named shadows
}

// RegisterNamedShadows exposes the named-shadow figures, read by calling
// stats at every scrape; stats must be cheap and safe for concurrent use.
// It panics if called twice.
func (m *Metrics) RegisterNamedShadows(stats func() NamedShadowStats) {
	m.reg.MustRegister(&namedCollector{stats: stats})
}

type namedCollector struct {
	stats func() NamedShadowStats
}

var (
	descNamedShadows = prometheus.NewDesc(namespace+"_shadow_named_shadows",
		"Named shadows that exist now, over all devices (deleted ones not counted).", nil, nil)
	descNamedRejected = prometheus.NewDesc(namespace+"_shadow_named_limit_rejections_total",
		"Shadow updates refused because they would have created a named shadow beyond the device's limit (--max-named-shadows).", nil, nil)
)

func (c *namedCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descNamedShadows
	ch <- descNamedRejected
}

func (c *namedCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.stats()
	ch <- prometheus.MustNewConstMetric(descNamedShadows, prometheus.GaugeValue, float64(s.Shadows))
	ch <- prometheus.MustNewConstMetric(descNamedRejected, prometheus.CounterValue, float64(s.Rejected))
}
