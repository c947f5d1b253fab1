package metrics

import "github.com/prometheus/client_golang/prometheus"

// PlannerRPCSide is one side's counters of the planner RPC
// (internal/plannerrpc.Stats: cluster mode's forwarded planner calls).
type PlannerRPCSide struct {
	Inflight    int64 // calls outstanding (client) or requests running (server)
	OK          int64 // calls answered by the planner (its errors included)
	Unavailable int64 // client: no lease holder, no answer in time, or another protocol version; server: requests that arrived as the lease moved
	Busy        int64 // refused: the in-flight cap was reached
	TooLarge    int64 // refused: a request or a reply over the size cap
	BadRequest  int64 // server: requests refused by validation
	Staged      int64 // server: device IDs held in staged creates now
}

// PlannerRPCStats are both sides of this node's planner RPC: the calls it
// forwards (Client) and those it answers as the planner lease's holder
// (Server).
type PlannerRPCStats struct {
	Client, Server PlannerRPCSide
}

// RegisterPlannerRPC exposes the planner RPC's counters, read by calling
// stats at every scrape; stats must be cheap and safe for concurrent use.
// It panics if called twice.
func (m *Metrics) RegisterPlannerRPC(stats func() PlannerRPCStats) {
	m.reg.MustRegister(&plannerRPCCollector{stats: stats})
}

type plannerRPCCollector struct {
	stats func() PlannerRPCStats
}

var (
	descPlannerRPCInflight = prometheus.NewDesc(namespace+"_planner_rpc_inflight",
		"Forwarded rollout planner calls in progress, by side (client: sent by this node; server: answered by this node as the planner lease's holder).", []string{"side"}, nil)
	descPlannerRPCStaged = prometheus.NewDesc(namespace+"_planner_rpc_staged_devices",
		"Device IDs the planner lease's holder holds in forwarded creates sent in parts and not yet complete.", nil, nil)
	descPlannerRPCCalls = prometheus.NewDesc(namespace+"_planner_rpc_calls_total",
		"Forwarded rollout planner calls, by side and result (ok: the planner answered; unavailable: no lease holder or no answer in time, or, on the server side, a request that arrived as the lease moved; busy: the in-flight cap; too_large: the size cap; bad_request: refused by validation).", []string{"side", "result"}, nil)
)

func (c *plannerRPCCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descPlannerRPCInflight
	ch <- descPlannerRPCCalls
	ch <- descPlannerRPCStaged
}

func (c *plannerRPCCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.stats()
	ch <- prometheus.MustNewConstMetric(descPlannerRPCStaged, prometheus.GaugeValue, float64(s.Server.Staged))
	for _, side := range []struct {
		name string
		s    PlannerRPCSide
	}{{"client", s.Client}, {"server", s.Server}} {
		ch <- prometheus.MustNewConstMetric(descPlannerRPCInflight, prometheus.GaugeValue, float64(side.s.Inflight), side.name)
		for _, r := range []struct {
			name string
			v    int64
		}{{"ok", side.s.OK}, {"unavailable", side.s.Unavailable}, {"busy", side.s.Busy}, {"too_large", side.s.TooLarge}, {"bad_request", side.s.BadRequest}} {
			ch <- prometheus.MustNewConstMetric(descPlannerRPCCalls, prometheus.CounterValue, float64(r.v), side.name, r.name)
		}
	}
}

// PlannerLeaseStats are the planner lease holder's failures to run the
// planner (cluster mode).
type PlannerLeaseStats struct {
	OpenFailures int64 // opens of the planner that failed while this node held the lease
	Handovers    int64 // releases of the lease after PlannerOpenRetries failed opens in a row
}

// RegisterPlannerLease exposes the planner lease's counters, read by
// calling stats at every scrape; stats must be cheap and safe for
// concurrent use. It panics if called twice.
func (m *Metrics) RegisterPlannerLease(stats func() PlannerLeaseStats) {
	m.reg.MustRegister(&plannerLeaseCollector{stats: stats})
}

type plannerLeaseCollector struct {
	stats func() PlannerLeaseStats
}

var (
	descPlannerOpenFailures = prometheus.NewDesc(namespace+"_planner_open_failures_total",
		"Opens of the rollout planner that failed on this node while it held the planner lease.", nil, nil)
	descPlannerHandovers = prometheus.NewDesc(namespace+"_planner_handovers_total",
		"Releases of the planner lease by this node after its planner failed to open several times in a row.", nil, nil)
)

func (c *plannerLeaseCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descPlannerOpenFailures
	ch <- descPlannerHandovers
}

func (c *plannerLeaseCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.stats()
	ch <- prometheus.MustNewConstMetric(descPlannerOpenFailures, prometheus.CounterValue, float64(s.OpenFailures))
	ch <- prometheus.MustNewConstMetric(descPlannerHandovers, prometheus.CounterValue, float64(s.Handovers))
}
