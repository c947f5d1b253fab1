package metrics

import "github.com/prometheus/client_golang/prometheus"

// JobsStats is what the metrics read from the AWS IoT Jobs service at
// scrape time.
type JobsStats struct {
	NotificationsSent    uint64 // notify and notify-next messages published
	NotificationsDropped uint64 // changes not notified: too many things waiting for one
}

// ObserveJobs records one AWS IoT Jobs request: its operation ("get",
// "start-next", "describe", "update", "unknown") and its result
// ("accepted" or the error code, e.g. "RequestThrottled").
func (m *Metrics) ObserveJobs(op, result string) {
	m.jobsRequests.WithLabelValues(op, result).Inc()
}

// RegisterJobs exposes the Jobs service's notification counters, read by
// calling stats at every scrape; stats must be cheap and safe for
// concurrent use. It panics if called twice.
func (m *Metrics) RegisterJobs(stats func() JobsStats) {
	m.reg.MustRegister(&jobsCollector{stats: stats})
}

func newJobsRequests() *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Subsystem: "jobs", Name: "requests_total",
		Help: "AWS IoT Jobs requests by operation and result (accepted, or the error code such as RequestThrottled).",
	}, []string{"op", "result"})
}

type jobsCollector struct {
	stats func() JobsStats
}

var (
	descJobsSent = prometheus.NewDesc(namespace+"_jobs_notifications_total",
		"AWS IoT Jobs notify and notify-next messages published.", nil, nil)
	descJobsDropped = prometheus.NewDesc(namespace+"_jobs_notifications_dropped_total",
		"AWS IoT Jobs changes not notified because too many things were waiting for a notification.", nil, nil)
)

func (c *jobsCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descJobsSent
	ch <- descJobsDropped
}

func (c *jobsCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.stats()
	ch <- prometheus.MustNewConstMetric(descJobsSent, prometheus.CounterValue, float64(s.NotificationsSent))
	ch <- prometheus.MustNewConstMetric(descJobsDropped, prometheus.CounterValue, float64(s.NotificationsDropped))
}
