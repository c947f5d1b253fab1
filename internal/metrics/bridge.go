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
	RetainedStored       int64 // retained publishes written to the shared retained bucket
	RetainedFailed       int64 // retained publishes not written: queue full
	RetainedApplied      int64 // retained messages (and clearings) applied from the shared bucket
	RetainedCorrupt      int64 // records of the shared retained bucket skipped
	HandoffsSent         int64 // persistent sessions handed to another node
	HandoffsReceived     int64 // persistent sessions handed here
	HandoffRefused       int64 // handed-off sessions that could not be decoded
	HandoffDropped       int64 // queued messages left out of handed-off sessions
	HandoffObjects       int64 // handed-off sessions sent through the handoff bucket
	TakeoverTimeouts     int64 // takeover requests that got no answer in time
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
	descRetainedWrites   = bridgeDesc("retained_writes_total", "Retained publishes of this node for the cluster's retained bucket, by result (stored; failed: the write queue was full).", "result")
	descRetainedApplied  = bridgeDesc("retained_applied_total", "Retained messages and clearings applied on this node from the cluster's retained bucket.")
	descHandoffs         = bridgeDesc("session_handoffs_total", "Persistent sessions moved between nodes with their client, by role (sent: handed to the node the client connected to; received: handed here; refused: received but undecodable, the client started fresh).", "role")
	descHandoffDropped   = bridgeDesc("session_handoff_dropped_total", "Queued messages of handed-off sessions left out: the session was over NATS's maximum payload.")
	descHandoffObjects   = bridgeDesc("session_handoff_objects_total", "Handed-off sessions over NATS's maximum payload sent whole through the JetStream object store umbra_handoff.")
	descTakeoverTimeouts = bridgeDesc("takeover_timeouts_total", "Session takeover requests of connecting clients that got no answer within the takeover timeout (the CONNECT went on; a session elsewhere may remain).")
	descRetainedCorrupt  = bridgeDesc("retained_corrupt_total", "Records of the cluster's retained bucket that could not be decoded or applied: skipped.")
)

func (c *bridgeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descBridgeConnected, descBridgeMessages, descBridgeDropped, descBridgeDuplicates,
		descBridgeSubs, descBridgeRefused, descBridgeSessions, descBridgeTakeovers, descBridgeReconnects,
		descRetainedWrites, descRetainedApplied, descRetainedCorrupt, descHandoffs, descHandoffDropped, descHandoffObjects, descTakeoverTimeouts} {
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
	counter(descRetainedWrites, s.RetainedStored, "stored")
	counter(descRetainedWrites, s.RetainedFailed, "failed")
	counter(descRetainedApplied, s.RetainedApplied)
	counter(descRetainedCorrupt, s.RetainedCorrupt)
	counter(descHandoffs, s.HandoffsSent, "sent")
	counter(descHandoffs, s.HandoffsReceived, "received")
	counter(descHandoffs, s.HandoffRefused, "refused")
	counter(descHandoffDropped, s.HandoffDropped)
	counter(descHandoffObjects, s.HandoffObjects)
	counter(descTakeoverTimeouts, s.TakeoverTimeouts)
}

// PresenceStats is what the metrics read from cluster mode's device
// presence (internal/cluster.Presence) at scrape time. Counters only
// grow; Pending and Watching are current values.
type PresenceStats struct {
	Written  int64 // presence records written
	Stale    int64 // events not written: the record describes a newer connection
	Lost     int64 // devices of lost nodes marked disconnected
	Corrupt  int64 // undecodable records skipped
	Errors   int64 // failed writes (retried)
	Pending  int64 // devices whose latest event awaits a retry
	Watching bool  // the presence bucket's change feed is live
}

// RegisterPresence exposes cluster mode's presence counters.
func (m *Metrics) RegisterPresence(stats func() PresenceStats) {
	m.reg.MustRegister(&presenceCollector{stats: stats})
}

type presenceCollector struct {
	stats func() PresenceStats
}

var (
	descPresenceWrites  = bridgeDesc("presence_writes_total", "Device presence events of this node, by result (written to the presence bucket; stale: not written, the bucket holds a newer connection; error: failed, retried).", "result")
	descPresenceLost    = bridgeDesc("presence_lost_total", "Connected devices of lost nodes (or of this node's earlier run) this node marked disconnected.")
	descPresenceCorrupt = bridgeDesc("presence_corrupt_total", "Presence records that could not be decoded: reported and skipped.")
	descPresencePending = bridgeDesc("presence_pending", "Devices whose latest presence event awaits a retry.")
	descPresenceWatch   = bridgeDesc("presence_watching", "1 while the presence bucket's change feed is live, else 0.")
)

func (c *presenceCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descPresenceWrites, descPresenceLost, descPresenceCorrupt, descPresencePending, descPresenceWatch} {
		ch <- d
	}
}

func (c *presenceCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.stats()
	watching := 0.0
	if s.Watching {
		watching = 1
	}
	counter := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	counter(descPresenceWrites, s.Written, "written")
	counter(descPresenceWrites, s.Stale, "stale")
	counter(descPresenceWrites, s.Errors, "error")
	counter(descPresenceLost, s.Lost)
	counter(descPresenceCorrupt, s.Corrupt)
	ch <- prometheus.MustNewConstMetric(descPresencePending, prometheus.GaugeValue, float64(s.Pending))
	ch <- prometheus.MustNewConstMetric(descPresenceWatch, prometheus.GaugeValue, watching)
}
