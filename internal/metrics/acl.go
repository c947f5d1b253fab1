package metrics

import "github.com/prometheus/client_golang/prometheus"

func newACLReloads() *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Subsystem: "acl", Name: "reloads_total",
		Help: "Reloads of the topic policy file (umbra serve --acl-file, on SIGHUP), by result: ok (in force), error (the file was bad; the previous policy stays).",
	}, []string{"result"})
}

// AddACLReloads counts n reloads of the topic policy file with result
// "ok" or "error". n 0 makes the series appear with 0.
func (m *Metrics) AddACLReloads(result string, n int) {
	m.aclReloads.WithLabelValues(result).Add(float64(n))
}
