package metrics

import (
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// namespace prefixes every Umbra series.
const namespace = "umbra"

// Histogram buckets. Latencies run from 0.5 ms to about 2 s; batch sizes
// from 1 to 4096 documents.
var (
	latencyBuckets = prometheus.ExponentialBuckets(0.0005, 2, 13)
	batchBuckets   = prometheus.ExponentialBuckets(1, 2, 13)
)

// BrokerStats is what the metrics read from the MQTT broker at scrape
// time. Counters only grow; ClientsConnected is a current value.
type BrokerStats struct {
	ClientsConnected int64 // clients connected now
	MessagesReceived int64 // PUBLISHes received
	MessagesSent     int64 // PUBLISHes written to clients
	MessagesDropped  int64 // dropped because a client's outbound queue was full
	InflightDropped  int64 // QoS 1 messages dropped because a session's inflight store was full
	PublishesDenied  int64 // PUBLISHes refused by authorisation
	SlowConsumers    int64 // clients disconnected for not reading what they were sent
	PendingBytes     int64 // bytes written to clients that their sockets have not taken yet, now
	LoopConns        int64 // connections served by a read loop now
	LoopHandoffs     int64 // packet handlers that blocked a read loop and were handed off

	Subscriptions        int64 // client subscriptions now, offline persistent sessions included
	SubscriptionsRefused int64 // SUBSCRIBE filters refused for a session's subscription cap
	ClientIDsRefused     int64 // CONNECTs refused for an over-long or reserved client ID

	// Retained messages and persistent sessions (broker's Durability).
	Retained            int64         // retained messages now
	RetainedBytes       int64         // payload bytes of clients' retained messages now
	RetainedRefused     int64         // new retained topics refused for the retained limits
	PersistentSessions  int64         // persistent sessions now, connected or not
	SessionsRefused     int64         // CONNECTs refused for the persistent sessions per identity
	QueuedBytes         int64         // payload bytes held for persistent sessions now
	QueueBytesDropped   int64         // messages dropped because a session held its queued bytes limit
	StoreCommits        int64         // commits of broker.db
	StoreErrors         int64         // failed commits of broker.db
	StoreTime           time.Duration // time spent in commits of broker.db
	SubscriptionsDenied int64         // SUBSCRIBE filters refused by authorisation
	RateLimited         int64         // PUBLISHes refused for a client's message rate

	ConnectsRejected     int64 // CONNECTs refused: credentials, will topic, client ID, connections per identity
	IdentityConnsRefused int64 // CONNECTs refused for the connections-per-identity cap
	TLSHandshakesFailed  int64 // TLS handshakes that failed or timed out
	PacketsTooLarge      int64 // clients disconnected for a packet over the size limit
}

// FirmwareSource is what the metrics read from the firmware store at
// scrape time. *firmware.Store satisfies it.
type FirmwareSource interface {
	BytesServed() int64
}

// Metrics is Umbra's Prometheus registry and the metrics pushed into it.
// Create it with New.
type Metrics struct {
	reg *prometheus.Registry

	shadowRequests *prometheus.CounterVec   // op, code
	shadowLatency  *prometheus.HistogramVec // op
	commitLatency  prometheus.Histogram
	commitBatch    prometheus.Histogram
	rollout        *prometheus.GaugeVec   // rollout, state
	evicted        *prometheus.CounterVec // reason
	http           httpMetrics
	aclReloads     *prometheus.CounterVec // result
	jobsRequests   *prometheus.CounterVec // op, result
}

// New returns a Metrics with its own registry holding the shadow, commit
// and rollout metrics and the Go runtime and process collectors. Broker
// and firmware figures appear once RegisterBroker and RegisterFirmware are
// called.
func New() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		shadowRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: "shadow", Name: "requests_total",
			Help: "Shadow requests by operation and result code (200 = accepted).",
		}, []string{"op", "code"}),
		shadowLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Subsystem: "shadow", Name: "request_duration_seconds",
			Help:    "Shadow request latency, from receipt to the response being published.",
			Buckets: latencyBuckets,
		}, []string{"op"}),
		commitLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace, Subsystem: "shadow", Name: "commit_duration_seconds",
			Help:    "Duration of one bbolt commit (including fsync) of the shadow database.",
			Buckets: latencyBuckets,
		}),
		commitBatch: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace, Subsystem: "shadow", Name: "commit_batch_documents",
			Help:    "Documents written by one bbolt commit of the shadow database.",
			Buckets: batchBuckets,
		}),
		rollout: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: namespace, Subsystem: "rollout", Name: "devices",
			Help: "Devices of a rollout by state.",
		}, []string{"rollout", "state"}),
		evicted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: "identity", Name: "sessions_evicted_total",
			Help: "MQTT sessions disconnected because the credential they logged in with ended, by reason: removed (device), rotated (device secret), revoked (token), replaced (admin token), stale (logged in while the credential ended).",
		}, []string{"reason"}),
		http:         newHTTPMetrics(),
		aclReloads:   newACLReloads(),
		jobsRequests: newJobsRequests(),
	}
	m.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.shadowRequests, m.shadowLatency, m.commitLatency, m.commitBatch, m.rollout, m.evicted,
		m.http.requests, m.http.latency, m.aclReloads, m.jobsRequests,
	)
	return m
}

// Handler serves the registry in the Prometheus exposition format; mount
// it on GET /metrics.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// Registry returns the underlying registry, for tests and for components
// that bring their own collectors.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// ObserveShadow records one shadow request: its operation ("update",
// "get", "delete"), result code (200 for accepted, otherwise the rejection
// code) and latency. Its shape matches shadow.Config.Observe once op is
// converted to a string.
func (m *Metrics) ObserveShadow(op string, code int, d time.Duration) {
	m.shadowRequests.WithLabelValues(op, strconv.Itoa(code)).Inc()
	m.shadowLatency.WithLabelValues(op).Observe(d.Seconds())
}

// ObserveCommit records one bbolt commit of n documents that took d. Its
// signature is that of shadow/boltstore.Config.CommitObserved.
func (m *Metrics) ObserveCommit(d time.Duration, n int) {
	m.commitLatency.Observe(d.Seconds())
	m.commitBatch.Observe(float64(n))
}

// SetRolloutDevices sets how many devices of rollout are in state.
func (m *Metrics) SetRolloutDevices(rollout, state string, n int) {
	m.rollout.WithLabelValues(rollout, state).Set(float64(n))
}

// DeleteRollout removes every series of rollout (when it is deleted or
// finished and no longer worth reporting).
func (m *Metrics) DeleteRollout(rollout string) {
	m.rollout.DeletePartialMatch(prometheus.Labels{"rollout": rollout})
}

// AddEvictions counts n MQTT sessions evicted for reason (see the
// umbra_identity_sessions_evicted_total help). n 0 makes the series
// appear with 0.
func (m *Metrics) AddEvictions(reason string, n int) {
	m.evicted.WithLabelValues(reason).Add(float64(n))
}

// RegisterBroker exposes the broker's counters, read by calling stats at
// every scrape; stats must be cheap and safe for concurrent use. It
// panics if called twice.
func (m *Metrics) RegisterBroker(stats func() BrokerStats) {
	m.reg.MustRegister(&brokerCollector{stats: stats})
}

// RegisterFirmware exposes the bytes of firmware images served, read from
// src at every scrape. It panics if called twice.
func (m *Metrics) RegisterFirmware(src FirmwareSource) {
	m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Namespace: namespace, Subsystem: "firmware", Name: "bytes_served_total",
		Help: "Firmware image bytes written to downloading devices.",
	}, func() float64 { return float64(src.BytesServed()) }))
}

// brokerCollector reads one BrokerStats snapshot per scrape, so the
// series of one scrape are consistent with each other.
type brokerCollector struct {
	stats func() BrokerStats
}

var (
	descConnected = prometheus.NewDesc(namespace+"_devices_connected",
		"MQTT clients (devices and operators) connected now.", nil, nil)
	descReceived = prometheus.NewDesc(namespace+"_broker_messages_received_total",
		"PUBLISH packets received by the broker.", nil, nil)
	descSent = prometheus.NewDesc(namespace+"_broker_messages_sent_total",
		"PUBLISH packets written to clients by the broker.", nil, nil)
	descDropped = prometheus.NewDesc(namespace+"_broker_messages_dropped_total",
		"Messages the broker dropped, by reason: queue_full (a client's outbound queue), inflight_full (a session's inflight store: 256 unacknowledged or queued QoS 1 messages per device, 16,384 per service client), queue_bytes (a persistent session holding --max-queued-bytes), denied (refused by authorisation), rate_limited (the client's message rate).",
		[]string{"reason"}, nil)
	descDenied = prometheus.NewDesc(namespace+"_broker_denied_total",
		"Operations refused by authorisation, by op: publish (a PUBLISH, also one to $SYS), subscribe (a SUBSCRIBE filter). The client stays connected.",
		[]string{"op"}, nil)
	descConnRejected = prometheus.NewDesc(namespace+"_broker_connects_rejected_total",
		"MQTT CONNECTs refused: bad credentials, a will topic not allowed, an invalid client ID, or the connections-per-identity cap.", nil, nil)
	descIdentityConns = prometheus.NewDesc(namespace+"_broker_identity_connections_refused_total",
		"MQTT CONNECTs refused because the identity already had --max-connections-per-identity connections (also in connects_rejected).", nil, nil)
	descTLSFailed = prometheus.NewDesc(namespace+"_broker_tls_handshakes_failed_total",
		"MQTT-over-TLS connections closed because the handshake failed or timed out.", nil, nil)
	descTooLarge = prometheus.NewDesc(namespace+"_broker_packets_too_large_total",
		"MQTT clients disconnected for sending a packet over --max-packet-size.", nil, nil)
	descSlow = prometheus.NewDesc(namespace+"_broker_slow_consumers_total",
		"MQTT clients disconnected because they did not read what they were sent (pending bytes over the cap, or a stalled socket).", nil, nil)
	descLoopConns = prometheus.NewDesc(namespace+"_broker_read_loop_connections",
		"MQTT connections (plain TCP, connected) whose packets a read loop reads, rather than a goroutine of their own.", nil, nil)
	descLoopHandoffs = prometheus.NewDesc(namespace+"_broker_read_loop_handoffs_total",
		"Packet handlers that held a read loop for longer than about 2 ms (a shadow commit, a durable queue); another goroutine took over the loop so that its other connections were not held up.", nil, nil)
	descPending = prometheus.NewDesc(namespace+"_broker_pending_bytes",
		"Bytes written to MQTT clients that their sockets have not taken yet.", nil, nil)
	descSubs = prometheus.NewDesc(namespace+"_broker_subscriptions",
		"MQTT client subscriptions, of connected clients and offline persistent sessions.", nil, nil)
	descSubsRefused = prometheus.NewDesc(namespace+"_broker_subscriptions_refused_total",
		"SUBSCRIBE filters refused because the session had reached its subscription cap.", nil, nil)
	descClientIDs = prometheus.NewDesc(namespace+"_broker_client_ids_refused_total",
		"MQTT CONNECTs refused because the client ID was longer than --max-client-id-length or reserved.", nil, nil)
	descRetained = prometheus.NewDesc(namespace+"_broker_retained_messages",
		"Retained messages the broker holds now (the broker's own included).", nil, nil)
	descRetainedBytes = prometheus.NewDesc(namespace+"_broker_retained_bytes",
		"Payload bytes of the retained messages clients hold now (limit --max-retained-bytes).", nil, nil)
	descSessions = prometheus.NewDesc(namespace+"_broker_persistent_sessions",
		"Persistent MQTT sessions now, connected or not.", nil, nil)
	descQueued = prometheus.NewDesc(namespace+"_broker_queued_bytes",
		"Payload bytes held for persistent sessions now: queued while offline or not yet acknowledged.", nil, nil)
	descRefused = prometheus.NewDesc(namespace+"_broker_limit_refusals_total",
		"Operations refused by a broker limit: retained (a new retained topic beyond --max-retained or --max-retained-bytes), sessions_per_identity (a persistent session beyond --max-sessions-per-identity).",
		[]string{"limit"}, nil)
	descCommits = prometheus.NewDesc(namespace+"_broker_store_commits_total",
		"Commits (one transaction and fsync each) of the broker's durable state in broker.db.", nil, nil)
	descCommitErrors = prometheus.NewDesc(namespace+"_broker_store_errors_total",
		"Failed commits of broker.db; each is logged, and the next commit rewrites the whole state.", nil, nil)
	descCommitTime = prometheus.NewDesc(namespace+"_broker_store_commit_seconds_total",
		"Time spent in commits of broker.db.", nil, nil)
)

func (c *brokerCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descConnected
	ch <- descReceived
	ch <- descSent
	ch <- descDropped
	ch <- descSlow
	ch <- descLoopConns
	ch <- descLoopHandoffs
	ch <- descPending
	ch <- descSubs
	ch <- descSubsRefused
	ch <- descClientIDs
	ch <- descRetained
	ch <- descRetainedBytes
	ch <- descSessions
	ch <- descQueued
	ch <- descRefused
	ch <- descCommits
	ch <- descCommitErrors
	ch <- descCommitTime
	ch <- descDenied
	ch <- descConnRejected
	ch <- descIdentityConns
	ch <- descTLSFailed
	ch <- descTooLarge
}

func (c *brokerCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.stats()
	ch <- prometheus.MustNewConstMetric(descConnected, prometheus.GaugeValue, float64(s.ClientsConnected))
	ch <- prometheus.MustNewConstMetric(descReceived, prometheus.CounterValue, float64(s.MessagesReceived))
	ch <- prometheus.MustNewConstMetric(descSent, prometheus.CounterValue, float64(s.MessagesSent))
	ch <- prometheus.MustNewConstMetric(descDropped, prometheus.CounterValue, float64(s.MessagesDropped), "queue_full")
	ch <- prometheus.MustNewConstMetric(descDropped, prometheus.CounterValue, float64(s.InflightDropped), "inflight_full")
	ch <- prometheus.MustNewConstMetric(descDropped, prometheus.CounterValue, float64(s.PublishesDenied), "denied")
	ch <- prometheus.MustNewConstMetric(descSlow, prometheus.CounterValue, float64(s.SlowConsumers))
	ch <- prometheus.MustNewConstMetric(descPending, prometheus.GaugeValue, float64(s.PendingBytes))
	ch <- prometheus.MustNewConstMetric(descLoopConns, prometheus.GaugeValue, float64(s.LoopConns))
	ch <- prometheus.MustNewConstMetric(descLoopHandoffs, prometheus.CounterValue, float64(s.LoopHandoffs))
	ch <- prometheus.MustNewConstMetric(descSubs, prometheus.GaugeValue, float64(s.Subscriptions))
	ch <- prometheus.MustNewConstMetric(descSubsRefused, prometheus.CounterValue, float64(s.SubscriptionsRefused))
	ch <- prometheus.MustNewConstMetric(descClientIDs, prometheus.CounterValue, float64(s.ClientIDsRefused))
	ch <- prometheus.MustNewConstMetric(descDropped, prometheus.CounterValue, float64(s.QueueBytesDropped), "queue_bytes")
	ch <- prometheus.MustNewConstMetric(descRetained, prometheus.GaugeValue, float64(s.Retained))
	ch <- prometheus.MustNewConstMetric(descRetainedBytes, prometheus.GaugeValue, float64(s.RetainedBytes))
	ch <- prometheus.MustNewConstMetric(descSessions, prometheus.GaugeValue, float64(s.PersistentSessions))
	ch <- prometheus.MustNewConstMetric(descQueued, prometheus.GaugeValue, float64(s.QueuedBytes))
	ch <- prometheus.MustNewConstMetric(descRefused, prometheus.CounterValue, float64(s.RetainedRefused), "retained")
	ch <- prometheus.MustNewConstMetric(descRefused, prometheus.CounterValue, float64(s.SessionsRefused), "sessions_per_identity")
	ch <- prometheus.MustNewConstMetric(descCommits, prometheus.CounterValue, float64(s.StoreCommits))
	ch <- prometheus.MustNewConstMetric(descCommitErrors, prometheus.CounterValue, float64(s.StoreErrors))
	ch <- prometheus.MustNewConstMetric(descCommitTime, prometheus.CounterValue, s.StoreTime.Seconds())
	ch <- prometheus.MustNewConstMetric(descDropped, prometheus.CounterValue, float64(s.RateLimited), "rate_limited")
	ch <- prometheus.MustNewConstMetric(descDenied, prometheus.CounterValue, float64(s.PublishesDenied), "publish")
	ch <- prometheus.MustNewConstMetric(descDenied, prometheus.CounterValue, float64(s.SubscriptionsDenied), "subscribe")
	ch <- prometheus.MustNewConstMetric(descConnRejected, prometheus.CounterValue, float64(s.ConnectsRejected))
	ch <- prometheus.MustNewConstMetric(descIdentityConns, prometheus.CounterValue, float64(s.IdentityConnsRefused))
	ch <- prometheus.MustNewConstMetric(descTLSFailed, prometheus.CounterValue, float64(s.TLSHandshakesFailed))
	ch <- prometheus.MustNewConstMetric(descTooLarge, prometheus.CounterValue, float64(s.PacketsTooLarge))
}
