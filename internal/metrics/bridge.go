package metrics

import "github.com/prometheus/client_golang/prometheus"

// BridgeStats is what the metrics read from the cluster bridge
// (broker/natsbridge, cluster mode) at scrape time. Counters only grow;
// Connected, Subscriptions and Sessions are current values.
type BridgeStats struct {
	Connected            bool  // connected to NATS now
	OutMessages          int64 // messages published to other nodes
	OutDropped           int64 // messages not published: outbound buffer full or NATS refused them
	InMessages           int64 // messages from other nodes delivered to local clients
	InDropped            int64 // messages from other nodes dropped (inbound buffer full, undecodable, refused)
	Duplicates           int64 // second copies of a message dropped
	Subscriptions        int64 // NATS subscriptions held for local clients' filters
	SubscriptionsRefused int64 // NATS subscriptions refused for the node's cap
	Sessions             int64 // client sessions held, each with a takeover subscription
	TakeoversSent        int64 // connects that made another node release the client's session
	TakeoversReleased    int64 // sessions released because the client connected to another node
	Reconnects           int64 // reconnections to NATS
}

// RegisterBridge exposes the cluster bridge's counters, read by calling
// stats at every scrape; stats must be cheap and safe for concurrent use.
// It panics if called twice.
func (m *Metrics) RegisterBridge(stats func() BridgeStats) {
	m.reg.MustRegister(&bridgeCollector{stats: stats})
}

type bridgeCollector struct {
	stats func() BridgeStats
}

func bridgeDesc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(namespace+"_cluster_"+name, help, labels, nil)
}

var (
	descBridgeConnected  = bridgeDesc("nats_connected", "1 while the node's cluster bridge is connected to NATS, else 0.")
	descBridgeMessages   = bridgeDesc("messages_total", "MQTT messages carried between nodes, by direction (out: published to other nodes; in: delivered from them).", "direction")
	descBridgeDropped    = bridgeDesc("messages_dropped_total", "MQTT messages between nodes dropped, by direction (out: outbound buffer full or NATS refused; in: inbound buffer full, undecodable or refused).", "direction")
	descBridgeDuplicates = bridgeDesc("duplicates_total", "Second copies of a message from another node, received through overlapping subscriptions and dropped.")
	descBridgeSubs       = bridgeDesc("subscriptions", "NATS subscriptions the node holds for its clients' filters.")
	descBridgeRefused    = bridgeDesc("subscriptions_refused_total", "NATS subscriptions not made because the node holds its maximum.")
	descBridgeSessions   = bridgeDesc("sessions", "Client sessions the node holds, each with a session-takeover subscription.")
	descBridgeTakeovers  = bridgeDesc("takeovers_total", "Session takeovers across nodes, by role (sent: a client connected here and another node released its session; released: the client connected elsewhere).", "role")
	descBridgeReconnects = bridgeDesc("nats_reconnects_total", "Reconnections of the cluster bridge to NATS.")
)

func (c *bridgeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descBridgeConnected, descBridgeMessages, descBridgeDropped, descBridgeDuplicates,
		descBridgeSubs, descBridgeRefused, descBridgeSessions, descBridgeTakeovers, descBridgeReconnects} {
		ch <- d
	}
}

func (c *bridgeCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.stats()
	connected := 0.0
	if s.Connected {
		connected = 1
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge(descBridgeConnected, connected)
	counter(descBridgeMessages, s.OutMessages, "out")
	counter(descBridgeMessages, s.InMessages, "in")
	counter(descBridgeDropped, s.OutDropped, "out")
	counter(descBridgeDropped, s.InDropped, "in")
	counter(descBridgeDuplicates, s.Duplicates)
	gauge(descBridgeSubs, float64(s.Subscriptions))
	counter(descBridgeRefused, s.SubscriptionsRefused)
	gauge(descBridgeSessions, float64(s.Sessions))
	counter(descBridgeTakeovers, s.TakeoversSent, "sent")
	counter(descBridgeTakeovers, s.TakeoversReleased, "released")
	counter(descBridgeReconnects, s.Reconnects)
}
