package metrics

import "github.com/prometheus/client_golang/prometheus"

// RetryCacheStats is what the metrics read from the shadow engine's retry
// cache (the clientToken cache that answers a retried update) at scrape
// time. Entries and Bytes are current values; Evictions and Hits only grow.
type RetryCacheStats struct {
	Entries   int64  // entries now
	Bytes     int64  // estimated heap bytes of the entries now
	Evictions uint64 // entries dropped before they expired because the cache was full
	Hits      uint64 // updates answered from the cache
}

// RegisterRetryCache exposes the retry cache's figures, read by calling
// stats at every scrape; stats must be cheap and safe for concurrent use.
// It panics if called twice.
func (m *Metrics) RegisterRetryCache(stats func() RetryCacheStats) {
	m.reg.MustRegister(&retryCacheCollector{stats: stats})
}

type retryCacheCollector struct {
	stats func() RetryCacheStats
}

var (
	descRetryEntries = prometheus.NewDesc(namespace+"_shadow_retry_cache_entries",
		"Entries in the shadow retry cache now (at most one per device).", nil, nil)
	descRetryBytes = prometheus.NewDesc(namespace+"_shadow_retry_cache_bytes",
		"Estimated heap bytes of the shadow retry cache's entries now.", nil, nil)
	descRetryEvictions = prometheus.NewDesc(namespace+"_shadow_retry_cache_evictions_total",
		"Shadow retry cache entries dropped before they expired because the cache was full (entries or bytes).", nil, nil)
	descRetryHits = prometheus.NewDesc(namespace+"_shadow_retry_cache_hits_total",
		"Shadow updates answered from the retry cache (retries of the last update).", nil, nil)
)

func (c *retryCacheCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descRetryEntries
	ch <- descRetryBytes
	ch <- descRetryEvictions
	ch <- descRetryHits
}

func (c *retryCacheCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.stats()
	ch <- prometheus.MustNewConstMetric(descRetryEntries, prometheus.GaugeValue, float64(s.Entries))
	ch <- prometheus.MustNewConstMetric(descRetryBytes, prometheus.GaugeValue, float64(s.Bytes))
	ch <- prometheus.MustNewConstMetric(descRetryEvictions, prometheus.CounterValue, float64(s.Evictions))
	ch <- prometheus.MustNewConstMetric(descRetryHits, prometheus.CounterValue, float64(s.Hits))
}
