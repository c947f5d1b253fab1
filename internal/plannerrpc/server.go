package plannerrpc

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/rollout"
)

// drainWait bounds Close's drain of the subscription: a round trip to
// the NATS server and the answers to the requests it had sent.
const drainWait = time.Second

// Server answers the RPC's requests from a planner: the lease holder runs
// one while it holds the lease.
type Server struct {
	cfg     Config
	planner Planner
	log     *slog.Logger
	sub     *nats.Subscription
	sem     chan struct{}
	n       *counters

	stageMu sync.Mutex // guards stages and staged
	stages  map[string]*stage
	staged  int // device IDs in stages

	ctx     context.Context // the requests'; cancelled by Close after its wait
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	once    sync.Once
	closing atomic.Bool // Close has begun: requests still arriving are answered "moved"

	closeBegun func() // the tests' hook: called by Close before it drains
}

// Serve subscribes to cfg.Subject and answers every request from planner,
// until Close. ctx bounds the subscription's round trip to the server.
// stats, when not nil, are the counters to add to (they outlive one
// Server: a node serves again each time it gains the lease); log nil
// discards.
func Serve(ctx context.Context, cfg Config, planner Planner, stats *ServerStats, log *slog.Logger) (*Server, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if planner == nil {
		return nil, fmt.Errorf("%w: a planner is required", ErrInvalidConfig)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if stats == nil {
		stats = &ServerStats{}
	}
	s := &Server{cfg: cfg, planner: planner, log: log.With("component", "plannerrpc"), sem: make(chan struct{}, cfg.MaxInflight), n: &stats.c,
		stages: map[string]*stage{}}
	s.ctx, s.cancel = context.WithCancel(context.WithoutCancel(ctx))
	sub, err := cfg.Conn.Subscribe(cfg.Subject, s.handle)
	if err != nil {
		s.cancel()
		return nil, fmt.Errorf("plannerrpc: subscribe %s: %w", cfg.Subject, err)
	}
	s.sub = sub
	fctx, cancel := context.WithTimeout(ctx, cfg.Timeout) // FlushWithContext needs a deadline
	defer cancel()
	if err := cfg.Conn.FlushWithContext(fctx); err != nil {
		_ = sub.Unsubscribe()
		s.cancel()
		return nil, fmt.Errorf("plannerrpc: subscribe %s: %w", cfg.Subject, err)
	}
	return s, nil
}

// ServerStats are a node's server-side counters, across the Servers it
// runs (one per lease it gained).
type ServerStats struct{ c counters }

// Stats returns the counters.
func (st *ServerStats) Stats() Stats { return st.c.stats() }

// Close drains the subscription: new requests then go to the next lease
// holder, or get "no responders"; those the NATS server had already sent
// to this node are answered at once with rollout.ErrUnavailable ("the
// lease moved; retry") rather than dropped, which would leave their
// callers waiting for their whole timeout. It then waits for the requests
// running, until ctx ends; then it cancels their contexts and waits for
// them to return. It is idempotent.
func (s *Server) Close(ctx context.Context) error {
	var err error
	s.once.Do(func() {
		s.closing.Store(true)
		if s.closeBegun != nil {
			s.closeBegun()
		}
		// Drained only while connected, and for drainWait at most: the
		// planner stops after this, and must not outlive its lease by
		// more than that.
		closed := s.sub.StatusChanged(nats.SubscriptionClosed) // before Drain, not to miss it
		if !s.cfg.Conn.IsConnected() || s.sub.Drain() != nil {
			if uerr := s.sub.Unsubscribe(); uerr != nil && s.cfg.Conn.IsConnected() {
				err = fmt.Errorf("plannerrpc: unsubscribe: %w", uerr)
			}
		} else {
			t := time.NewTimer(drainWait)
			select {
			case <-closed: // the server has the unsubscription, and every request it sent was answered
			case <-t.C:
				_ = s.sub.Unsubscribe()
			case <-ctx.Done():
				_ = s.sub.Unsubscribe()
			}
			t.Stop()
		}
		done := make(chan struct{})
		go func() { s.wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-ctx.Done():
			s.cancel()
			<-done
		}
		s.cancel()
	})
	return err
}

// handle is the subscription's callback: it refuses what it must at once
// and runs the rest on a goroutine of its own.
func (s *Server) handle(msg *nats.Msg) {
	if msg.Reply == "" { // a publish, not a request: nobody to answer
		s.n.bad.Add(1)
		return
	}
	if s.closing.Load() {
		s.n.unavailable.Add(1)
		s.respond(msg, "", nil, unavailable("this node no longer holds the planner lease (it is moving to another node); retry in a few seconds"))
		return
	}
	if len(msg.Data) > s.cfg.MaxBody {
		s.n.tooLarge.Add(1)
		s.respond(msg, "", nil, fmt.Errorf("%w: planner RPC request of %d bytes, at most %d", rollout.ErrInvalid, len(msg.Data), s.cfg.MaxBody))
		return
	}
	select {
	case s.sem <- struct{}{}:
	default:
		s.n.busy.Add(1)
		s.respond(msg, "", nil, unavailable("the planner's node is running %d forwarded calls; retry later", s.cfg.MaxInflight))
		return
	}
	s.n.inflight.Add(1)
	s.wg.Go(func() {
		defer func() {
			s.n.inflight.Add(-1)
			<-s.sem
		}()
		s.serve(msg)
	})
}

// serve decodes, validates and runs one request, and replies.
func (s *Server) serve(msg *nats.Msg) {
	var req request
	dec := json.NewDecoder(bytes.NewReader(msg.Data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		s.n.bad.Add(1)
		s.respond(msg, "", nil, fmt.Errorf("%w: planner RPC: undecodable request: %v", rollout.ErrInvalid, err))
		return
	}
	if dec.More() {
		s.n.bad.Add(1)
		s.respond(msg, req.Op, nil, fmt.Errorf("%w: planner RPC: more than one JSON value in the request", rollout.ErrInvalid))
		return
	}
	if err := req.validate(); err != nil {
		s.n.bad.Add(1)
		if req.Stage != "" { // a refused part fails its create as a whole
			s.stageMu.Lock()
			if st := s.stages[stageKey(&req)]; st != nil {
				s.dropStage(stageKey(&req), st)
			}
			s.stageMu.Unlock()
		}
		s.log.Warn("planner RPC request refused", "from", req.From, "op", req.Op, "err", err)
		s.respond(msg, req.Op, nil, err)
		return
	}
	timeout := DefaultTimeout
	if req.Timeout > 0 {
		timeout = min(time.Duration(req.Timeout)*time.Millisecond, maxServerTimeout)
	}
	ctx, cancel := context.WithTimeout(s.ctx, timeout)
	defer cancel()
	var rep reply
	var err error
	switch {
	case req.Op == opStage:
		err = s.stagePart(&req, timeout)
	case req.Stage != "":
		if err = s.unstage(&req); err == nil {
			rep, err = s.dispatch(ctx, &req)
		}
	default:
		rep, err = s.dispatch(ctx, &req)
	}
	s.n.ok.Add(1)
	s.respond(msg, req.Op, &rep, err)
}

// stage is the parts of one create (or preview) whose explicit device
// list was too large for one message, staged in memory until the create
// that completes it: nothing is stored, and no rollout exists, before
// that. A stage not completed by the caller's deadline is dropped.
type stage struct {
	devices []device.ID
	parts   int         // parts staged so far
	timer   *time.Timer // drops the stage at the caller's deadline
}

// stageKey scopes a stage to the node that sent it.
func stageKey(req *request) string { return req.From + "\x00" + req.Stage }

// dropStage forgets st. The caller holds stageMu.
func (s *Server) dropStage(key string, st *stage) {
	st.timer.Stop()
	s.staged -= len(st.devices)
	delete(s.stages, key)
	s.n.staged.Store(int64(s.staged))
}

// stagePart adds one part to its stage: part 0 opens it, each next part
// must follow the last. A part out of order drops the stage (its create
// fails as a whole); so does a part beyond MaxStaged.
func (s *Server) stagePart(req *request, timeout time.Duration) error {
	s.stageMu.Lock()
	defer s.stageMu.Unlock()
	key := stageKey(req)
	st := s.stages[key]
	switch {
	case req.Part == 0 && st != nil:
		s.dropStage(key, st)
		return fmt.Errorf("%w: planner RPC %s: stage %q from node %q is already open", rollout.ErrInvalid, req.Op, req.Stage, req.From)
	case req.Part > 0 && st == nil:
		return unavailable("planner RPC %s: stage %q is not on this node (the planner lease moved, or the stage expired): retry the create", req.Op, req.Stage)
	case st != nil && req.Part != st.parts:
		s.dropStage(key, st)
		return fmt.Errorf("%w: planner RPC %s: part %d of stage %q, expected part %d: the staged create is dropped", rollout.ErrInvalid, req.Op, req.Part, req.Stage, st.parts)
	}
	if s.staged+len(req.Devices) > s.cfg.MaxStaged {
		if st != nil {
			s.dropStage(key, st)
		}
		s.n.busy.Add(1)
		return unavailable("the planner's node holds %d device IDs of large creates in progress (at most %d): retry later", s.staged, s.cfg.MaxStaged)
	}
	if st == nil {
		st = &stage{}
		st.timer = time.AfterFunc(timeout, func() { // the caller gave up
			s.stageMu.Lock()
			defer s.stageMu.Unlock()
			if s.stages[key] == st {
				s.dropStage(key, st)
			}
		})
		s.stages[key] = st
	}
	st.devices = append(st.devices, req.Devices...)
	st.parts++
	st.timer.Reset(timeout)
	s.staged += len(req.Devices)
	s.n.staged.Store(int64(s.staged))
	return nil
}

// unstage completes req (a create or preview naming a stage) with its
// staged devices, placed before its own; the stage is gone afterwards,
// whatever the planner answers.
func (s *Server) unstage(req *request) error {
	s.stageMu.Lock()
	defer s.stageMu.Unlock()
	key := stageKey(req)
	st := s.stages[key]
	if st == nil {
		return unavailable("planner RPC %s: stage %q is not on this node (the planner lease moved, or the stage expired): retry the create", req.Op, req.Stage)
	}
	s.dropStage(key, st)
	if st.parts != req.Part {
		return fmt.Errorf("%w: planner RPC %s: stage %q has %d parts, the %s counts %d: the staged create is dropped", rollout.ErrInvalid, req.Op, req.Stage, st.parts, req.Op, req.Part)
	}
	req.Spec.Devices = append(st.devices, req.Spec.Devices...)
	return nil
}

// respond sends rep, or err, as the reply to msg.
func (s *Server) respond(msg *nats.Msg, op string, rep *reply, err error) {
	if rep == nil || err != nil {
		rep = &reply{Err: encodeError(err)}
	}
	rep.V = Version
	b, merr := json.Marshal(rep)
	if merr == nil && len(b) > s.cfg.MaxBody {
		s.n.tooLarge.Add(1)
		b, merr = json.Marshal(reply{V: Version, Err: encodeError(fmt.Errorf(
			"%w: the answer to %s (%d bytes) is larger than the planner RPC allows (%d bytes, --planner-rpc-max-body): ask for less, or ask the planner's node",
			rollout.ErrInvalid, op, len(b), s.cfg.MaxBody))})
	}
	if merr != nil {
		s.log.Error("planner RPC: encode reply", "op", op, "err", merr)
		return
	}
	if err := msg.Respond(b); err != nil {
		s.log.Warn("planner RPC: reply", "op", op, "err", err)
	}
}

// dispatch runs req on the planner.
func (s *Server) dispatch(ctx context.Context, req *request) (reply, error) {
	p := s.planner
	var rep reply
	var err error
	one := func(r rollout.Rollout, e error) { rep.Rollout, err = &r, e }
	switch req.Op {
	case opCreate:
		one(p.Create(ctx, req.Spec.rollout()))
	case opPreview:
		one(p.Preview(ctx, req.Spec.rollout()))
	case opGet:
		var st rollout.Status
		st, err = p.Get(ctx, req.ID)
		rep.Status = &st
	case opList:
		rep.Rollouts, err = p.List(ctx)
	case opDevices:
		rep.Devices, rep.Total, err = p.DevicesPage(ctx, req.ID, req.States, req.Start, req.Limit)
	case opEvents:
		rep.Events, err = p.EventsAfter(ctx, req.ID, req.After)
	case opPause:
		one(p.Pause(ctx, req.ID))
	case opResume:
		one(p.Resume(ctx, req.ID))
	case opAbort:
		one(p.Abort(ctx, req.ID, req.Rollback))
	case opRollback:
		one(p.Rollback(ctx, req.ID))
	case opRetry:
		one(p.Retry(ctx, req.ID))
	case opAddDevices:
		one(p.AddDevices(ctx, req.ID, req.Devices))
	case opMarkJobs:
		err = p.MarkJobs(ctx, req.Device)
	case opNextExecution:
		var x rollout.Execution
		x, rep.Found, err = p.NextExecution(ctx, req.Device)
		rep.Execution = executionOf(x)
	case opDescribe:
		var x rollout.Execution
		x, err = p.DescribeExecution(ctx, req.Device, req.ID, req.Number)
		rep.Execution = executionOf(x)
	case opStartNext:
		var x rollout.Execution
		x, rep.Found, err = p.StartNextExecution(ctx, req.Device, req.Details)
		rep.Execution = executionOf(x)
	case opUpdateExecution:
		u := req.Update
		var x rollout.Execution
		x, err = p.UpdateExecution(ctx, req.Device, req.ID, rollout.ExecutionUpdate{Status: u.Status, Details: u.Details,
			ExpectedVersion: u.ExpectedVersion, CheckVersion: u.CheckVersion, Number: u.Number})
		rep.Execution = executionOf(x)
	case opInUse:
		var used bool
		rep.InUse, used, err = p.InUse(ctx, req.Version)
		if !used {
			rep.InUse = ""
		}
	case opEnrolled:
		devs := make([]rollout.EnrolledDevice, len(req.Enrolled))
		for i, e := range req.Enrolled {
			devs[i] = rollout.EnrolledDevice{ID: e.ID, Labels: e.Labels}
		}
		p.DevicesEnrolled(ctx, devs)
	default: // validate knows every op
		err = fmt.Errorf("%w: planner RPC: unknown operation %q", rollout.ErrInvalid, req.Op)
	}
	return rep, err
}
