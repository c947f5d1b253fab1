package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/rollout"
)

// Planner is what the service needs of the rollout planner;
// *rollout.Planner satisfies it.
type Planner interface {
	MarkJobs(ctx context.Context, id device.ID) error
	NextExecution(ctx context.Context, id device.ID) (rollout.Execution, bool, error)
	DescribeExecution(ctx context.Context, id device.ID, jobID string, number int) (rollout.Execution, error)
	StartNextExecution(ctx context.Context, id device.ID, details map[string]string) (rollout.Execution, bool, error)
	UpdateExecution(ctx context.Context, id device.ID, jobID string, u rollout.ExecutionUpdate) (rollout.Execution, error)
}

// Publisher is how the service reaches devices; *broker.Server satisfies
// it. Publish sends a notification to every subscriber; SendTo sends a
// reply to the requesting client alone, whether or not it subscribed to
// the reply topic (AWS IoT Jobs does so).
type Publisher interface {
	Publish(topic string, payload []byte, retain bool, qos byte) error
	SendTo(clientID, topic string, payload []byte, qos byte) error
}

// Defaults of Config.
const (
	DefaultDeviceRate       = 10
	DefaultMaxNotifications = 1 << 16
)

// Config configures a Service. Zero values mean the documented defaults.
type Config struct {
	// Planner, Firmware (which mints job documents: *firmware.Store) and
	// Publisher are required.
	Planner   Planner
	Firmware  rollout.Firmware
	Publisher Publisher
	// DeviceRate and DeviceBurst are a per-thing token bucket over its
	// Jobs requests: beyond it a request is rejected RequestThrottled.
	// Default 10 requests per second, a burst of twice the rate; a
	// negative DeviceRate disables the limit.
	DeviceRate  float64
	DeviceBurst int
	// MaxNotifications bounds the devices whose notifications wait to be
	// sent; beyond it a change is dropped (counted in Stats). Default 65536.
	MaxNotifications int
	// Observe, when set, is called once per request with its operation and
	// its result: "accepted" or the error code.
	Observe func(op Op, result string)
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Logger receives the service's logs; nil discards them.
	Logger *slog.Logger
}

func (c *Config) setDefaults() error {
	if c.Planner == nil || c.Firmware == nil || c.Publisher == nil {
		return errors.New("jobs: Config.Planner, Firmware and Publisher are required")
	}
	if c.DeviceBurst < 0 || c.MaxNotifications < 0 {
		return errors.New("jobs: negative Config value")
	}
	if c.DeviceRate == 0 {
		c.DeviceRate = DefaultDeviceRate
	}
	if c.DeviceBurst == 0 {
		c.DeviceBurst = max(int(2*c.DeviceRate), 1)
	}
	if c.MaxNotifications == 0 {
		c.MaxNotifications = DefaultMaxNotifications
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Stats are the service's counters.
type Stats struct {
	NotificationsSent    uint64 // notify and notify-next messages published
	NotificationsDropped uint64 // changes not notified: too many devices waiting
	Throttled            uint64 // requests rejected RequestThrottled
}

// Service serves the AWS IoT Jobs device API on $aws/things/<thing>/jobs/.
type Service struct {
	cfg    Config
	log    *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	wake   chan struct{}
	once   sync.Once

	mu      sync.Mutex // guards pending, buckets and closed
	pending map[device.ID]struct{}
	buckets map[device.ID]*bucket
	closed  bool

	sent, dropped, throttled atomic.Uint64
}

// bucket is a thing's token bucket.
type bucket struct {
	tokens float64
	last   time.Time
}

// Open starts the service's notification goroutine.
func Open(ctx context.Context, cfg Config) (*Service, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	s := &Service{cfg: cfg, log: cfg.Logger.With("component", "jobs"), wake: make(chan struct{}, 1),
		pending: map[device.ID]struct{}{}, buckets: map[device.ID]*bucket{}}
	s.ctx, s.cancel = context.WithCancel(context.WithoutCancel(ctx))
	s.wg.Go(s.loop)
	return s, nil
}

// Close stops the notification goroutine; requests after it are answered
// InternalError. It is idempotent.
func (s *Service) Close(ctx context.Context) error {
	s.once.Do(func() {
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		s.cancel()
		s.wg.Wait()
	})
	return nil
}

// Stats returns the service's counters.
func (s *Service) Stats() Stats {
	return Stats{NotificationsSent: s.sent.Load(), NotificationsDropped: s.dropped.Load(), Throttled: s.throttled.Load()}
}

// HandleSubscribe marks a device that subscribes to a filter under its
// own $aws/things/<id>/jobs/ as a Jobs device (rollout.Planner.MarkJobs).
// Wire it to the broker's OnSubscribe. A client subscribing for another
// thing (an operator) marks nothing.
func (s *Service) HandleSubscribe(clientID string, filters []string) {
	for _, f := range filters {
		rest, ok := strings.CutPrefix(f, "$aws/things/")
		if !ok {
			continue
		}
		thing, _, ok := strings.Cut(rest, "/jobs/")
		if !ok || thing != clientID {
			continue
		}
		if err := s.cfg.Planner.MarkJobs(s.ctx, device.ID(thing)); err != nil {
			s.log.Warn("mark jobs device", "device", thing, "err", err)
		}
		return
	}
}

// ExecutionChanged queues the notifications of device id: its next
// pending execution or its pending list changed. It never blocks; wire
// rollout.Config.OnExecution to it.
func (s *Service) ExecutionChanged(id device.ID) {
	s.mu.Lock()
	_, queued := s.pending[id]
	switch {
	case queued:
	case len(s.pending) < s.cfg.MaxNotifications:
		s.pending[id] = struct{}{}
	default:
		s.dropped.Add(1)
	}
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *Service) loop() {
	prune := time.NewTicker(30 * time.Second)
	defer prune.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-prune.C:
			s.pruneBuckets()
		case <-s.wake:
			s.mu.Lock()
			ids := make([]device.ID, 0, len(s.pending))
			for id := range s.pending {
				ids = append(ids, id)
			}
			clear(s.pending)
			s.mu.Unlock()
			for _, id := range ids {
				if s.ctx.Err() != nil {
					return
				}
				s.notify(s.ctx, id)
			}
		}
	}
}

// notify publishes id's notify-next and notify messages, as they are now.
func (s *Service) notify(ctx context.Context, id device.ID) {
	x, ok, err := s.cfg.Planner.NextExecution(ctx, id)
	if err != nil {
		if !errors.Is(err, rollout.ErrClosed) {
			s.log.Warn("next execution for a notification", "device", id, "err", err)
		}
		return
	}
	now := epoch(s.cfg.Now())
	next := wireNotifyNext{Timestamp: now}
	var pending []rollout.Execution
	if ok {
		doc, err := s.document(ctx, x)
		if err != nil {
			s.log.Error("job document for a notification", "device", id, "job", x.JobID, "err", err)
			return
		}
		next.Execution = execution(x, doc)
		pending = append(pending, x)
	}
	for _, m := range []struct {
		topic string
		body  any
	}{
		{Topic(id, "notify-next"), next},
		{Topic(id, "notify"), wireNotify{Timestamp: now, Jobs: notifyJobs(pending)}},
	} {
		b, _ := marshal(m.body)
		if err := s.cfg.Publisher.Publish(m.topic, b, false, 1); err != nil {
			s.log.Warn("publish jobs notification", "topic", m.topic, "err", err)
			continue
		}
		s.sent.Add(1)
	}
}

// allow takes a token of thing's bucket.
func (s *Service) allow(thing device.ID) (ok, closed bool) {
	now := s.cfg.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false, true
	}
	if s.cfg.DeviceRate < 0 {
		return true, false
	}
	b := s.buckets[thing]
	if b == nil {
		b = &bucket{tokens: float64(s.cfg.DeviceBurst), last: now}
		s.buckets[thing] = b
	}
	b.tokens = min(b.tokens+now.Sub(b.last).Seconds()*s.cfg.DeviceRate, float64(s.cfg.DeviceBurst))
	b.last = now
	if b.tokens < 1 {
		return false, false
	}
	b.tokens--
	return true, false
}

// pruneBuckets forgets the buckets of things idle long enough to be full.
func (s *Service) pruneBuckets() {
	now := s.cfg.Now()
	idle := time.Minute
	if s.cfg.DeviceRate > 0 {
		idle = max(idle, time.Duration(float64(s.cfg.DeviceBurst)/s.cfg.DeviceRate*float64(time.Second)))
	}
	s.mu.Lock()
	for id, b := range s.buckets {
		if now.Sub(b.last) > idle {
			delete(s.buckets, id)
		}
	}
	s.mu.Unlock()
}

// HandleRequest serves one Jobs request: wire it to the broker's
// in-process subscription for each of Filters. clientID is the publisher
// ("" for the broker itself: the service's own notifications and replies,
// which are ignored); topic is a topic under $aws/things/<thing>/jobs/.
// The reply goes to the requesting client only, on topic + "/accepted" or
// "/rejected"; every failure is a /rejected reply with an AWS IoT Jobs
// code, never a dropped request.
func (s *Service) HandleRequest(clientID, topic string, payload []byte) {
	if clientID == "" {
		return
	}
	req, ok, terr := parseTopic(topic)
	if !ok {
		return
	}
	body, rerr := s.serve(req, terr, payload)
	result := "accepted"
	suffix := "/accepted"
	if rerr != nil {
		result, suffix = string(rerr.code), "/rejected"
	}
	if s.cfg.Observe != nil {
		s.cfg.Observe(req.op, result)
	}
	if err := s.cfg.Publisher.SendTo(clientID, topic+suffix, body, 1); err != nil {
		s.log.Debug("jobs reply not delivered", "client", clientID, "topic", topic+suffix, "err", err)
	}
}

// serve returns the reply payload of a request and its error, if any
// (the payload is then the rejection).
func (s *Service) serve(req request, terr error, payload []byte) ([]byte, *reqError) {
	f, token, rerr := parsePayload(payload)
	if terr != nil {
		rerr = fail(CodeInvalidTopic, "%s", terr.Error())
	}
	if rerr == nil {
		switch ok, closed := s.allow(req.thing); {
		case closed:
			rerr = fail(CodeInternalError, "Service shutting down")
		case !ok:
			s.throttled.Add(1)
			rerr = fail(CodeRequestThrottled, "Too many requests: more than %g per second for this thing", s.cfg.DeviceRate)
		}
	}
	var body any
	if rerr == nil {
		ctx := s.ctx
		if err := s.cfg.Planner.MarkJobs(ctx, req.thing); err != nil {
			rerr = errorCode(err)
		} else {
			body, rerr = s.dispatch(ctx, req, f, token)
		}
	}
	if rerr != nil {
		if rerr.code == CodeInternalError {
			s.log.Warn("jobs request failed", "topic", req.topic, "err", rerr.msg)
		}
		e := wireError{Code: rerr.code, Message: rerr.msg, ClientToken: token, Timestamp: epoch(s.cfg.Now())}
		if rerr.state != nil {
			e.ExecutionState = state(*rerr.state)
		}
		b, _ := marshal(e)
		return b, rerr
	}
	b, err := marshal(body)
	if err != nil {
		s.log.Error("encode jobs reply", "topic", req.topic, "err", err)
		b, _ = marshal(wireError{Code: CodeInternalError, Message: "Internal error", ClientToken: token, Timestamp: epoch(s.cfg.Now())})
		return b, fail(CodeInternalError, "Internal error")
	}
	return b, nil
}

func (s *Service) dispatch(ctx context.Context, req request, f fields, token string) (any, *reqError) {
	p := s.cfg.Planner
	switch req.op {
	case OpGetPending:
		x, ok, err := p.NextExecution(ctx, req.thing)
		if err != nil {
			return nil, errorCode(err)
		}
		var xs []rollout.Execution
		if ok {
			xs = append(xs, x)
		}
		inProgress, queued := pendingLists(xs)
		return wirePending{InProgressJobs: inProgress, QueuedJobs: queued, Timestamp: epoch(s.cfg.Now()), ClientToken: token}, nil

	case OpDescribe:
		number, _, rerr := f.int("executionNumber", 1, maxExecutionNum)
		if rerr != nil {
			return nil, rerr
		}
		withDoc, rerr := f.bool("includeJobDocument", true)
		if rerr != nil {
			return nil, rerr
		}
		x, err := p.DescribeExecution(ctx, req.thing, req.job, int(number))
		reply := wireDescribe{Timestamp: epoch(s.cfg.Now()), ClientToken: token}
		switch {
		case req.job == rollout.NextJob && errors.Is(err, rollout.ErrNotFound):
			return reply, nil // nothing pending: an answer without an execution
		case err != nil:
			return nil, errorCode(err)
		case x.Status.Terminal():
			st := x.State()
			return nil, &reqError{code: CodeTerminalStateReached, state: &st,
				msg: fmt.Sprintf("Execution %d of job %s is %s", x.Number, x.JobID, x.Status)}
		}
		return s.withExecution(ctx, reply, x, withDoc)

	case OpStartNext:
		details, rerr := f.details()
		if rerr == nil {
			rerr = f.stepTimeout()
		}
		if rerr != nil {
			return nil, rerr
		}
		x, ok, err := p.StartNextExecution(ctx, req.thing, details)
		if err != nil {
			return nil, errorCode(err)
		}
		reply := wireDescribe{Timestamp: epoch(s.cfg.Now()), ClientToken: token}
		if !ok {
			return reply, nil
		}
		return s.withExecution(ctx, reply, x, true)

	case OpUpdate:
		u, withState, withDoc, rerr := parseUpdate(f)
		if rerr != nil {
			return nil, rerr
		}
		x, err := p.UpdateExecution(ctx, req.thing, req.job, u)
		if err != nil {
			return nil, errorCode(err)
		}
		reply := wireUpdate{Timestamp: epoch(s.cfg.Now()), ClientToken: token}
		if withState {
			reply.ExecutionState = state(x.State())
		}
		if withDoc {
			doc, err := s.document(ctx, x)
			if err != nil {
				return nil, errorCode(err)
			}
			reply.JobDocument = doc
		}
		return reply, nil
	}
	return nil, fail(CodeInvalidTopic, "Unsupported jobs operation")
}

// parseUpdate reads an UpdateJobExecution payload.
func parseUpdate(f fields) (u rollout.ExecutionUpdate, withState, withDoc bool, rerr *reqError) {
	if !f.has("status") {
		return u, false, false, fail(CodeInvalidRequest, "status is required")
	}
	var status string
	if err := json.Unmarshal(f["status"], &status); err != nil {
		return u, false, false, fail(CodeInvalidRequest, "status must be a string")
	}
	switch u.Status = rollout.ExecStatus(status); u.Status {
	case rollout.ExecInProgress, rollout.ExecSucceeded, rollout.ExecFailed, rollout.ExecRejected:
	default:
		return u, false, false, fail(CodeInvalidRequest, "status %.40q: want IN_PROGRESS, SUCCEEDED, FAILED or REJECTED", status)
	}
	if u.Details, rerr = f.details(); rerr != nil {
		return u, false, false, rerr
	}
	if rerr = f.stepTimeout(); rerr != nil {
		return u, false, false, rerr
	}
	if u.ExpectedVersion, u.CheckVersion, rerr = f.int("expectedVersion", 0, 1<<53); rerr != nil {
		return u, false, false, rerr
	}
	number, _, rerr := f.int("executionNumber", 1, maxExecutionNum)
	if rerr != nil {
		return u, false, false, rerr
	}
	u.Number = int(number)
	if withState, rerr = f.bool("includeJobExecutionState", false); rerr != nil {
		return u, false, false, rerr
	}
	if withDoc, rerr = f.bool("includeJobDocument", false); rerr != nil {
		return u, false, false, rerr
	}
	return u, withState, withDoc, nil
}

// withExecution completes a describe or start-next reply with x (and its
// job document, minted now, when withDoc).
func (s *Service) withExecution(ctx context.Context, reply wireDescribe, x rollout.Execution, withDoc bool) (any, *reqError) {
	var doc json.RawMessage
	if withDoc {
		var err error
		if doc, err = s.document(ctx, x); err != nil {
			return nil, errorCode(err)
		}
	}
	reply.Execution = execution(x, doc)
	return reply, nil
}

// Operation is the job document's "operation": the v1 SDK's jobs client
// dispatches on it.
const Operation = "firmware-update"

// document mints x's job document: the firmware command for the device,
// with a download URL minted now, plus "operation":"firmware-update".
func (s *Service) document(ctx context.Context, x rollout.Execution) (json.RawMessage, error) {
	img, err := s.cfg.Firmware.Get(ctx, x.Firmware)
	if err != nil {
		return nil, fmt.Errorf("job document of %s: %w", x.JobID, err)
	}
	doc := s.cfg.Firmware.Command(img, x.Device, x.URLTTL, x.Job).Desired()["firmware"].(map[string]any)
	doc["operation"] = Operation
	b, err := marshal(doc)
	if err != nil {
		return nil, fmt.Errorf("job document of %s: %w", x.JobID, err)
	}
	return b, nil
}
