package server

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/internal/cluster"
	"github.com/umbra-iot/umbra/internal/metrics"
	"github.com/umbra-iot/umbra/internal/plannerrpc"
	"github.com/umbra-iot/umbra/rollout"
)

// The rollout planner's wiring.
//
// Single-node mode: one planner on rollout.db, called directly.
//
// Cluster mode (docs/cluster.md, "The planner under the lease"): the
// rollouts are in the shared rollout bucket and exactly one node, the
// holder of the planner lease (cluster.Lease "planner"), runs the planner.
// While it holds the lease it opens the planner from the bucket, answers
// the other nodes' forwarded calls (plannerrpc.Server), feeds the
// planner's Notify from the shared shadow bucket's change feed, and
// publishes the rollout feed. Every node's consumers (the HTTP API, the
// Jobs service, firmware's in-use check, the enrolment hook) call a
// plannerrpc.Client, which calls the local planner on the leader and
// forwards the call to the leader elsewhere.

// plannerLeaseName is the planner lease's key in the lease bucket.
const plannerLeaseName = "planner"

// plannerStepTimeout bounds opening or closing the planner, its RPC
// subscription and its change feed, at each lease change.
const plannerStepTimeout = 10 * time.Second

// openPlanner opens the rollout planner (single-node mode) or the planner
// lease's campaign and the forwarding client (cluster mode); s.rollouts
// is then what every consumer calls.
func (s *Server) openPlanner(ctx context.Context) (err error) {
	if s.stores.nc == nil {
		s.planner, err = rollout.Open(ctx, s.plannerConfig())
		s.rollouts = s.planner
		return err
	}
	replicas := s.cfg.NATSReplicas
	if replicas == 0 {
		replicas = DefaultNATSReplicas
	}
	l := &plannerLeader{s: s, done: make(chan struct{})}
	l.client, err = plannerrpc.NewClient(s.rpcConfig(), func() plannerrpc.Planner {
		if p := l.current(); p != nil {
			return p
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	l.lease, err = cluster.OpenLease(ctx, cluster.LeaseConfig{JetStream: s.stores.js, Name: plannerLeaseName,
		Holder: s.cfg.NodeID, TTL: s.cfg.PlannerLeaseTTL, Replicas: replicas, Logger: s.log})
	if err != nil {
		return err
	}
	s.leader, s.rollouts = l, l.client
	s.metrics.RegisterPlannerRPC(func() metrics.PlannerRPCStats {
		return metrics.PlannerRPCStats{Client: metrics.PlannerRPCSide(l.client.Stats()), Server: metrics.PlannerRPCSide(l.stats.Stats())}
	})
	s.metrics.RegisterPlannerLease(func() metrics.PlannerLeaseStats {
		return metrics.PlannerLeaseStats{OpenFailures: l.openFailures.Load(), Handovers: l.handovers.Load()}
	})
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	l.cancel = cancel
	go func() {
		defer close(l.done)
		l.run(runCtx)
	}()
	return nil
}

// rpcConfig is the planner RPC's configuration (both sides).
func (s *Server) rpcConfig() plannerrpc.Config {
	return plannerrpc.Config{Conn: s.stores.nc, Node: s.cfg.NodeID,
		MaxBody: s.cfg.PlannerRPCMaxBody, MaxInflight: s.cfg.PlannerRPCInflight, MaxStaged: s.cfg.PlannerRPCMaxStaged}
}

// plannerConfig is the planner's configuration: the same on every node
// that runs it.
func (s *Server) plannerConfig() rollout.Config {
	return rollout.Config{
		Store:    s.stores.rollout,
		Shadows:  rollout.EngineShadows(s.eng),
		Firmware: s.fw,
		Logger:   s.log,
		Tick:     s.cfg.RolloutTick,
		Rescan:   s.cfg.RolloutRescan,
		// Targets by label selector or all, and their hardware models:
		// the enrolled devices and every shadow.
		Inventory: rollout.EngineInventory(s.eng, func(ctx context.Context) ([]rollout.EnrolledDevice, error) {
			devs, err := s.ids.ListDevices(ctx)
			if err != nil {
				return nil, err
			}
			out := make([]rollout.EnrolledDevice, len(devs))
			for i, d := range devs {
				out[i] = rollout.EnrolledDevice{ID: d.ID, Labels: d.Labels}
			}
			return out, nil
		}),
		// rollouts/<id>/events and status, and the Jobs notify topics.
		OnEvent:     func(id string, ev rollout.Event) { s.feed.OnEvent(id, ev) },
		OnExecution: func(id device.ID) { s.jobs.ExecutionChanged(id) },
		Start:       s.lns.serving,
	}
}

// localPlanner is the planner running on this node: always in
// single-node mode, while it holds the lease in cluster mode; else nil.
func (s *Server) localPlanner() *rollout.Planner {
	if s.leader != nil {
		return s.leader.current()
	}
	return s.planner
}

// devicesEnrolled hands enrolled devices to the planner (its dynamic
// rollouts), forwarded in cluster mode.
func (s *Server) devicesEnrolled(ctx context.Context, devs []rollout.EnrolledDevice) {
	if s.leader == nil {
		s.planner.DevicesEnrolled(ctx, devs)
		return
	}
	if err := s.leader.client.ForwardEnrolled(ctx, devs); err != nil {
		s.log.Warn("dynamic rollouts: enrolled devices not handed to the planner", "devices", len(devs), "err", err)
	}
}

// syncFeed publishes the status of every rollout the planner holds (the
// retained status topics after a start or a takeover).
func (s *Server) syncFeed(ctx context.Context, p *rollout.Planner) {
	rs, err := p.List(ctx)
	if err != nil {
		s.log.Warn("list rollouts for their status topics", "err", err)
		return
	}
	ids := make([]string, len(rs))
	for i, r := range rs {
		ids[i] = r.ID
	}
	if err := s.feed.Sync(ctx, ids); err != nil {
		s.log.Warn("publish rollout statuses", "err", err)
	}
}

// plannerLeader runs the planner on this node while it holds the lease.
type plannerLeader struct {
	s      *Server
	lease  *cluster.Lease
	client *plannerrpc.Client
	stats  plannerrpc.ServerStats

	cancel context.CancelFunc
	done   chan struct{} // closed when run returned

	openFailures, handovers atomic.Int64 // /metrics

	mu      sync.Mutex // guards planner
	planner *rollout.Planner

	// Owned by run's goroutine.
	rpc       *plannerrpc.Server
	stopWatch context.CancelFunc
	watchDone chan struct{}
}

// current is the planner this node runs, nil when it does not hold the
// lease.
func (l *plannerLeader) current() *rollout.Planner {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.planner
}

// run follows the lease once Open has ended: it starts the planner when
// the lease is gained and stops it when it is lost, until ctx ends. A
// start that fails is retried a second later; after PlannerOpenRetries
// failures in a row the node releases the lease, so that a node that can
// open the planner takes it, and stays out of the campaign for
// PlannerStayOut (the lease campaigns again after it).
func (l *plannerLeader) run(ctx context.Context) {
	select { // every component is open: the planner's callbacks reach them
	case <-l.s.lns.serving:
	case <-ctx.Done():
		return
	}
	retries, stayOut := l.s.cfg.PlannerOpenRetries, l.s.cfg.PlannerStayOut
	if retries == 0 {
		retries = DefaultPlannerOpenRetries
	}
	if stayOut == 0 {
		stayOut = DefaultPlannerStayOut
	}
	changes := l.lease.Changes()
	var retryAt time.Time // after a failed start
	failures := 0         // failed starts in a row while held
	for {
		held := l.lease.Held()
		if !held {
			failures = 0
		}
		if held && l.current() == nil && time.Now().After(retryAt) {
			if err := l.start(ctx); err != nil && ctx.Err() == nil {
				failures++
				l.openFailures.Add(1)
				retryAt = time.Now().Add(time.Second)
				if failures < retries {
					l.s.log.Warn("planner lease held, planner not started; retrying in a second",
						"failure", failures, "of", retries, "err", err)
				} else {
					l.s.log.Warn("planner lease held, planner not started: releasing the lease for another node",
						"failure", failures, "of", retries, "stay_out", stayOut, "err", err)
					l.handOver(ctx, stayOut)
					failures, retryAt = 0, time.Time{}
				}
			} else if err == nil {
				failures = 0
			}
		}
		if !held && l.current() != nil {
			l.stop()
		}
		select {
		case <-ctx.Done():
			l.stop()
			return
		case <-changes:
		// The belief in the lease ends by itself (Held turns false before
		// any message): look again soon, so the planner stops well
		// before another node can gain the lease (TTL/10 of margin).
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// handOver releases the lease after the planner failed to open, and keeps
// this node out of the campaign for stayOut.
func (l *plannerLeader) handOver(ctx context.Context, stayOut time.Duration) {
	rctx, cancel := context.WithTimeout(ctx, plannerStepTimeout)
	defer cancel()
	held, err := l.lease.Release(rctx, stayOut)
	if err != nil {
		// The key expires by itself after the TTL; the node still stays out.
		l.s.log.Warn("release the planner lease", "err", err)
	}
	if held {
		l.handovers.Add(1)
	}
}

// start opens the planner from the shared bucket, serves the other
// nodes' calls and watches the shadows. The watch starts first, so that
// no report falls between the planner's load (whose first pass re-reads
// every device in flight) and the watch: its changes wait in the watch.
func (l *plannerLeader) start(ctx context.Context) (err error) {
	s := l.s
	sctx, cancel := context.WithTimeout(ctx, plannerStepTimeout)
	defer cancel()
	wctx, stopWatch := context.WithCancel(ctx)
	first, err := s.stores.shadowFeed.WatchDevices(wctx)
	if err != nil {
		stopWatch()
		return fmt.Errorf("watch the shadows: %w", err)
	}
	p, err := l.openPlanner(sctx)
	if err != nil {
		stopWatch()
		return fmt.Errorf("open planner: %w", err)
	}
	l.mu.Lock()
	l.planner = p
	l.mu.Unlock()
	l.stopWatch, l.watchDone = stopWatch, make(chan struct{})
	go func() {
		defer close(l.watchDone)
		l.watch(wctx, p, first)
	}()
	defer func() {
		if err != nil {
			l.stop()
		}
	}()
	if l.rpc, err = plannerrpc.Serve(sctx, s.rpcConfig(), p, &l.stats, s.log); err != nil {
		return err
	}
	s.log.Info("planner lease gained: this node runs the rollout planner", "node", s.cfg.NodeID)
	s.syncFeed(sctx, p)
	return nil
}

// openPlanner opens the planner from the shared bucket (after the tests'
// injected fault, if any).
func (l *plannerLeader) openPlanner(ctx context.Context) (*rollout.Planner, error) {
	if f := l.s.cfg.plannerOpenFault; f != nil {
		if err := f(); err != nil {
			return nil, err
		}
	}
	return rollout.Open(ctx, l.s.plannerConfig())
}

// watch feeds p's Notify from the shared shadow bucket's change feed
// (every node's device reports), from ch and then from a new watch after
// each failure, until ctx ends. The planner's rescan
// (Config.RolloutRescan) covers what a failed watch missed.
func (l *plannerLeader) watch(ctx context.Context, p *rollout.Planner, ch <-chan device.ID) {
	for {
		if ch != nil { // nil after a failed watch (ranging over it would block)
			for id := range ch { // closed when ctx ends or the watch fails
				p.Notify(id)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
		var err error
		if ch, err = l.s.stores.shadowFeed.WatchDevices(ctx); err != nil {
			l.s.log.Warn("watch the shadows for the planner", "err", err)
			ch = nil
		}
	}
}

// stop closes what start opened: first the RPC subscription (new calls go
// to the next holder), then the watch, then the planner.
func (l *plannerLeader) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), plannerStepTimeout)
	defer cancel()
	if l.rpc != nil {
		if err := l.rpc.Close(ctx); err != nil {
			l.s.log.Warn("close planner RPC", "err", err)
		}
		l.rpc = nil
	}
	if l.stopWatch != nil {
		l.stopWatch()
		<-l.watchDone
		l.stopWatch = nil
	}
	l.mu.Lock()
	p := l.planner
	l.planner = nil
	l.mu.Unlock()
	if p != nil {
		if err := p.Close(ctx); err != nil {
			l.s.log.Warn("close planner", "err", err)
		}
		l.s.log.Info("planner stopped: this node no longer holds the planner lease", "node", l.s.cfg.NodeID)
	}
}

// Close stops the planner and releases the lease, so that another node
// takes over at once.
func (l *plannerLeader) Close(ctx context.Context) error {
	l.cancel()
	select {
	case <-l.done:
	case <-ctx.Done():
		return fmt.Errorf("planner: %w", ctx.Err())
	}
	return l.lease.Close(ctx)
}

// The rollout feed in cluster mode: the lease holder's feed publishes on
// its broker (the bridge carries the MQTT messages to the other nodes'
// subscribers) and, for the other nodes' web consoles (GET /v1/events,
// fed by what each node publishes), on the NATS subject feedSubject too;
// every node taps what another node relays there into its live feed.

// feedSubject carries the rollout feed's messages between nodes, with
// their MQTT topic in the feedTopicHeader header and the publishing node
// in feedNodeHeader.
const (
	feedSubject     = "umbra.planner.feed"
	feedTopicHeader = "Umbra-Topic"
	feedNodeHeader  = "Umbra-Node"
	// maxFeedMessage bounds a relayed feed message (a status is a few KB).
	maxFeedMessage = 256 << 10
)

// feedPublisher is the rollout feed's Publisher in cluster mode.
type feedPublisher struct {
	tapBroker
	nc   *nats.Conn
	node string
	log  *slog.Logger
}

// Publish publishes on the broker (and the node's live feed), then relays
// the message to the other nodes' live feeds.
func (p feedPublisher) Publish(topic string, payload []byte, retain bool, qos byte) error {
	if err := p.tapBroker.Publish(topic, payload, retain, qos); err != nil {
		return err
	}
	m := nats.NewMsg(feedSubject)
	m.Header.Set(feedTopicHeader, topic)
	m.Header.Set(feedNodeHeader, p.node)
	m.Data = payload
	if err := p.nc.PublishMsg(m); err != nil {
		p.log.Warn("relay the rollout feed to the other nodes", "topic", topic, "err", err)
	}
	return nil
}

// relayFeed taps the rollout feed messages other nodes relay into this
// node's live feed. A message that is not a rollout feed topic, is too
// large or comes from this node is dropped.
func (s *Server) relayFeed() error {
	if s.stores.nc == nil {
		return nil
	}
	sub, err := s.stores.nc.Subscribe(feedSubject, func(m *nats.Msg) {
		topic := m.Header.Get(feedTopicHeader)
		if m.Header.Get(feedNodeHeader) == s.cfg.NodeID || !strings.HasPrefix(topic, "rollouts/") || len(m.Data) > maxFeedMessage {
			return
		}
		s.fleet.tap(topic, m.Data)
	})
	if err != nil {
		return fmt.Errorf("server: relay the rollout feed: %w", err)
	}
	s.feedRelay = sub
	return nil
}
