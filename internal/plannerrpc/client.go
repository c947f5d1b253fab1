package plannerrpc

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/firmware"
	"github.com/umbra-iot/umbra/rollout"
)

// ErrInvalidConfig is wrapped by NewClient and Serve for a Config they
// cannot use.
var ErrInvalidConfig = errors.New("plannerrpc: invalid config")

// Config configures a Client or a Server.
type Config struct {
	// Conn is the NATS connection; the caller owns it. Required.
	Conn *nats.Conn
	// Subject is the requests' subject. Default DefaultSubject.
	Subject string
	// Node names this node (a Client sends it; a Server logs it).
	Node string
	// MaxBody bounds a request and a reply, in bytes. Default
	// DefaultMaxBody.
	MaxBody int
	// MaxInflight bounds a Client's outstanding forwarded calls (beyond,
	// a call fails at once with rollout.ErrUnavailable) and a Server's
	// running requests (beyond, it answers rollout.ErrUnavailable).
	// Default DefaultMaxInflight.
	MaxInflight int
	// Timeout bounds a Client's call whose context has no deadline.
	// Default DefaultTimeout.
	Timeout time.Duration
	// MaxStaged bounds the explicit device IDs a Server holds in staged
	// creates not yet complete (beyond, a part fails with
	// rollout.ErrUnavailable). Default DefaultMaxStaged.
	MaxStaged int
}

func (c *Config) setDefaults() error {
	if c.Conn == nil {
		return fmt.Errorf("%w: Conn is required", ErrInvalidConfig)
	}
	if c.MaxBody < 0 || c.MaxInflight < 0 || c.Timeout < 0 || c.MaxStaged < 0 {
		return fmt.Errorf("%w: negative MaxBody, MaxInflight, Timeout or MaxStaged", ErrInvalidConfig)
	}
	if c.MaxStaged == 0 {
		c.MaxStaged = DefaultMaxStaged
	}
	if c.Subject == "" {
		c.Subject = DefaultSubject
	}
	if c.MaxBody == 0 {
		c.MaxBody = DefaultMaxBody
	}
	if c.MaxInflight == 0 {
		c.MaxInflight = DefaultMaxInflight
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	return nil
}

// Stats are one side's counters, for /metrics.
type Stats struct {
	Inflight    int64 // calls outstanding (Client) or requests running (Server)
	OK          int64 // calls answered, planner errors included
	Unavailable int64 // Client: no lease holder, no answer in time, or a version mismatch; Server: requests that arrived as the lease moved
	Busy        int64 // refused: MaxInflight reached
	TooLarge    int64 // refused: a request (or a reply) over MaxBody
	BadRequest  int64 // Server: requests refused by validation
	Staged      int64 // Server: device IDs held in staged creates now
}

type counters struct {
	inflight, ok, unavailable, busy, tooLarge, bad, staged atomic.Int64
}

func (c *counters) stats() Stats {
	return Stats{Inflight: c.inflight.Load(), OK: c.ok.Load(), Unavailable: c.unavailable.Load(),
		Busy: c.busy.Load(), TooLarge: c.tooLarge.Load(), BadRequest: c.bad.Load(), Staged: c.staged.Load()}
}

// Client is the forwarding Planner: each call goes to the planner lease's
// holder over NATS, or to the Local planner when this node holds it.
type Client struct {
	cfg   Config
	local func() Planner
	sem   chan struct{}
	n     counters

	partSent func(part int) // the tests' hook: called after each staged part
}

var _ Planner = (*Client)(nil)

// NewClient returns a Client. local, when not nil, is asked at each call
// for this node's own planner (nil unless this node holds the lease): a
// call then goes to it directly instead of over NATS.
func NewClient(cfg Config, local func() Planner) (*Client, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if local == nil {
		local = func() Planner { return nil }
	}
	return &Client{cfg: cfg, local: local, sem: make(chan struct{}, cfg.MaxInflight)}, nil
}

// Stats returns the client's counters.
func (c *Client) Stats() Stats { return c.n.stats() }

// unavailable wraps rollout.ErrUnavailable with why.
func unavailable(format string, a ...any) error {
	return fmt.Errorf("%w: %s", rollout.ErrUnavailable, fmt.Sprintf(format, a...))
}

// localErr marks the error of a local planner that closed under the call
// (the lease moved) as rollout.ErrUnavailable.
func localErr(err error) error {
	if errors.Is(err, rollout.ErrClosed) && !errors.Is(err, rollout.ErrUnavailable) {
		return fmt.Errorf("%w: %w", rollout.ErrUnavailable, err)
	}
	return err
}

// call sends req to the lease holder and returns its reply, or the error
// it answered.
func (c *Client) call(ctx context.Context, req request) (reply, error) {
	req.V, req.From = Version, c.cfg.Node
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.cfg.Timeout)
		defer cancel()
	}
	dl, _ := ctx.Deadline()
	req.Timeout = max(time.Until(dl).Milliseconds(), 1)
	body, err := json.Marshal(req)
	if err != nil {
		return reply{}, fmt.Errorf("planner RPC %s: encode: %w", req.Op, err)
	}
	if len(body) > c.cfg.MaxBody {
		c.n.tooLarge.Add(1)
		return reply{}, fmt.Errorf("%w: this request (%d bytes) is larger than a call forwarded to the planner's node may be (%d bytes, --planner-rpc-max-body): send it to the node that runs the planner (umbra cluster status), or list fewer devices",
			rollout.ErrInvalid, len(body), c.cfg.MaxBody)
	}
	select {
	case c.sem <- struct{}{}:
	default:
		c.n.busy.Add(1)
		return reply{}, unavailable("%d calls to the planner's node are in progress on this node (--planner-rpc-inflight); retry later", c.cfg.MaxInflight)
	}
	c.n.inflight.Add(1)
	defer func() {
		c.n.inflight.Add(-1)
		<-c.sem
	}()
	msg, err := c.cfg.Conn.RequestWithContext(ctx, c.cfg.Subject, body)
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		c.n.unavailable.Add(1)
		return reply{}, unavailable("no node runs the rollout planner now (the planner lease is moving to another node); retry in a few seconds")
	case err != nil && ctx.Err() != nil:
		c.n.unavailable.Add(1)
		return reply{}, unavailable("the planner's node did not answer in time: %v", ctx.Err())
	case err != nil:
		c.n.unavailable.Add(1)
		return reply{}, unavailable("planner RPC %s: %v", req.Op, err)
	}
	rep, err := c.decode(req.Op, msg.Data)
	if err != nil {
		c.n.unavailable.Add(1)
		return reply{}, err
	}
	c.n.ok.Add(1)
	if rep.Err != nil {
		return reply{}, decodeError(rep.Err)
	}
	return rep, nil
}

// decode reads a reply, refusing one of another version or shape.
func (c *Client) decode(op string, data []byte) (reply, error) {
	if len(data) > c.cfg.MaxBody {
		return reply{}, unavailable("planner RPC %s: the reply of %d bytes is larger than %d", op, len(data), c.cfg.MaxBody)
	}
	var v struct {
		V int `json:"v"`
	}
	if err := json.Unmarshal(data, &v); err != nil {
		return reply{}, unavailable("planner RPC %s: undecodable reply: %v", op, err)
	}
	if v.V != Version {
		return reply{}, unavailable("planner RPC %s: the planner's node speaks version %d, this node version %d: run nodes of one Umbra release", op, v.V, Version)
	}
	var rep reply
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rep); err != nil {
		return reply{}, unavailable("planner RPC %s: undecodable reply: %v", op, err)
	}
	return rep, nil
}

func rolloutOf(rep reply, err error) (rollout.Rollout, error) {
	if err != nil || rep.Rollout == nil {
		return rollout.Rollout{}, err
	}
	return *rep.Rollout, nil
}

// Create forwards rollout.Planner.Create.
func (c *Client) Create(ctx context.Context, s rollout.Spec) (rollout.Rollout, error) {
	if p := c.local(); p != nil {
		r, err := p.Create(ctx, s)
		return r, localErr(err)
	}
	return rolloutOf(c.callSpec(ctx, request{Op: opCreate, Spec: specOf(s)}))
}

// Preview forwards rollout.Planner.Preview.
func (c *Client) Preview(ctx context.Context, s rollout.Spec) (rollout.Rollout, error) {
	if p := c.local(); p != nil {
		r, err := p.Preview(ctx, s)
		return r, localErr(err)
	}
	return rolloutOf(c.callSpec(ctx, request{Op: opPreview, Spec: specOf(s)}))
}

// callSpec sends a create or preview. One whose explicit device list
// makes it larger than MaxBody is sent in parts: every part but the last
// is staged on the holder (opStage), and the create (or preview) with the
// last part commits them all at once, so a create whose parts do not all
// arrive creates nothing. All parts share ctx's deadline.
func (c *Client) callSpec(ctx context.Context, req request) (reply, error) {
	devs := req.Spec.Devices
	if len(devs) < 2 || c.size(req) <= c.cfg.MaxBody {
		return c.call(ctx, req)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.cfg.Timeout)
		defer cancel()
	}
	tok := make([]byte, 12)
	_, _ = rand.Read(tok)
	stage := hex.EncodeToString(tok)
	head, sp := req, *req.Spec
	head.Spec = &sp
	head.Spec.Devices, head.Stage, head.Part = nil, stage, math.MaxInt32
	// The room left for device IDs in a part, with room for the
	// timeout's digits and the part's number.
	room := c.cfg.MaxBody - max(c.size(head), c.size(request{Op: opStage, Stage: stage, Part: math.MaxInt32})) - 64
	parts := split(devs, room)
	if len(parts) < 2 {
		return c.call(ctx, req) // not even one ID fits: refused as too large
	}
	for i, part := range parts[:len(parts)-1] {
		if _, err := c.call(ctx, request{Op: opStage, Stage: stage, Part: i, Devices: part}); err != nil {
			return reply{}, fmt.Errorf("planner RPC %s: part %d of %d: %w", req.Op, i+1, len(parts), err)
		}
		if c.partSent != nil {
			c.partSent(i)
		}
	}
	head.Spec.Devices, head.Part = parts[len(parts)-1], len(parts)-1
	return c.call(ctx, head)
}

// size is req's encoded size as call sends it (within a few bytes of the
// timeout's digits).
func (c *Client) size(req request) int {
	req.V, req.From, req.Timeout = Version, c.cfg.Node, math.MaxInt32
	b, _ := json.Marshal(req)
	return len(b)
}

// split cuts devs into parts whose JSON lists fit in room bytes each, or
// returns nil if one ID alone does not fit.
func split(devs []device.ID, room int) [][]device.ID {
	var parts [][]device.ID
	start, used := 0, 2 // the brackets
	for i, id := range devs {
		b, _ := json.Marshal(id)
		n := len(b) + 1 // the comma
		if n+2 > room {
			return nil
		}
		if used+n > room {
			parts = append(parts, devs[start:i])
			start, used = i, 2
		}
		used += n
	}
	return append(parts, devs[start:])
}

// Get forwards rollout.Planner.Get.
func (c *Client) Get(ctx context.Context, id string) (rollout.Status, error) {
	if p := c.local(); p != nil {
		st, err := p.Get(ctx, id)
		return st, localErr(err)
	}
	rep, err := c.call(ctx, request{Op: opGet, ID: id})
	if err != nil || rep.Status == nil {
		return rollout.Status{}, err
	}
	return *rep.Status, nil
}

// List forwards rollout.Planner.List.
func (c *Client) List(ctx context.Context) ([]rollout.Rollout, error) {
	if p := c.local(); p != nil {
		rs, err := p.List(ctx)
		return rs, localErr(err)
	}
	rep, err := c.call(ctx, request{Op: opList})
	if err != nil {
		return nil, err
	}
	if rep.Rollouts == nil {
		rep.Rollouts = []rollout.Rollout{}
	}
	return rep.Rollouts, nil
}

// DevicesPage forwards rollout.Planner.DevicesPage.
func (c *Client) DevicesPage(ctx context.Context, id string, states []rollout.DeviceState, start, limit int) ([]rollout.DeviceStatus, int, error) {
	if p := c.local(); p != nil {
		ds, n, err := p.DevicesPage(ctx, id, states, start, limit)
		return ds, n, localErr(err)
	}
	rep, err := c.call(ctx, request{Op: opDevices, ID: id, States: states, Start: start, Limit: limit})
	if err != nil {
		return nil, 0, err
	}
	if rep.Devices == nil {
		rep.Devices = []rollout.DeviceStatus{}
	}
	return rep.Devices, rep.Total, nil
}

// EventsAfter forwards rollout.Planner.EventsAfter.
func (c *Client) EventsAfter(ctx context.Context, id string, after uint64) ([]rollout.Event, error) {
	if p := c.local(); p != nil {
		evs, err := p.EventsAfter(ctx, id, after)
		return evs, localErr(err)
	}
	rep, err := c.call(ctx, request{Op: opEvents, ID: id, After: after})
	if err != nil {
		return nil, err
	}
	if rep.Events == nil {
		rep.Events = []rollout.Event{}
	}
	return rep.Events, nil
}

// control forwards one of the calls that take a rollout ID and return the
// rollout.
func (c *Client) control(ctx context.Context, op, id string, local func(Planner) (rollout.Rollout, error)) (rollout.Rollout, error) {
	if p := c.local(); p != nil {
		r, err := local(p)
		return r, localErr(err)
	}
	return rolloutOf(c.call(ctx, request{Op: op, ID: id}))
}

// Pause forwards rollout.Planner.Pause.
func (c *Client) Pause(ctx context.Context, id string) (rollout.Rollout, error) {
	return c.control(ctx, opPause, id, func(p Planner) (rollout.Rollout, error) { return p.Pause(ctx, id) })
}

// Resume forwards rollout.Planner.Resume.
func (c *Client) Resume(ctx context.Context, id string) (rollout.Rollout, error) {
	return c.control(ctx, opResume, id, func(p Planner) (rollout.Rollout, error) { return p.Resume(ctx, id) })
}

// Rollback forwards rollout.Planner.Rollback.
func (c *Client) Rollback(ctx context.Context, id string) (rollout.Rollout, error) {
	return c.control(ctx, opRollback, id, func(p Planner) (rollout.Rollout, error) { return p.Rollback(ctx, id) })
}

// Retry forwards rollout.Planner.Retry.
func (c *Client) Retry(ctx context.Context, id string) (rollout.Rollout, error) {
	return c.control(ctx, opRetry, id, func(p Planner) (rollout.Rollout, error) { return p.Retry(ctx, id) })
}

// Abort forwards rollout.Planner.Abort.
func (c *Client) Abort(ctx context.Context, id string, rollback bool) (rollout.Rollout, error) {
	if p := c.local(); p != nil {
		r, err := p.Abort(ctx, id, rollback)
		return r, localErr(err)
	}
	return rolloutOf(c.call(ctx, request{Op: opAbort, ID: id, Rollback: rollback}))
}

// AddDevices forwards rollout.Planner.AddDevices.
func (c *Client) AddDevices(ctx context.Context, id string, devices []device.ID) (rollout.Rollout, error) {
	if p := c.local(); p != nil {
		r, err := p.AddDevices(ctx, id, devices)
		return r, localErr(err)
	}
	return rolloutOf(c.call(ctx, request{Op: opAddDevices, ID: id, Devices: devices}))
}

// MarkJobs forwards rollout.Planner.MarkJobs.
func (c *Client) MarkJobs(ctx context.Context, id device.ID) error {
	if p := c.local(); p != nil {
		return localErr(p.MarkJobs(ctx, id))
	}
	_, err := c.call(ctx, request{Op: opMarkJobs, Device: id})
	return err
}

// NextExecution forwards rollout.Planner.NextExecution.
func (c *Client) NextExecution(ctx context.Context, id device.ID) (rollout.Execution, bool, error) {
	if p := c.local(); p != nil {
		x, ok, err := p.NextExecution(ctx, id)
		return x, ok, localErr(err)
	}
	rep, err := c.call(ctx, request{Op: opNextExecution, Device: id})
	return rep.Execution.rollout(), rep.Found, err
}

// DescribeExecution forwards rollout.Planner.DescribeExecution.
func (c *Client) DescribeExecution(ctx context.Context, id device.ID, jobID string, number int) (rollout.Execution, error) {
	if p := c.local(); p != nil {
		x, err := p.DescribeExecution(ctx, id, jobID, number)
		return x, localErr(err)
	}
	rep, err := c.call(ctx, request{Op: opDescribe, Device: id, ID: jobID, Number: number})
	return rep.Execution.rollout(), err
}

// StartNextExecution forwards rollout.Planner.StartNextExecution.
func (c *Client) StartNextExecution(ctx context.Context, id device.ID, details map[string]string) (rollout.Execution, bool, error) {
	if p := c.local(); p != nil {
		x, ok, err := p.StartNextExecution(ctx, id, details)
		return x, ok, localErr(err)
	}
	rep, err := c.call(ctx, request{Op: opStartNext, Device: id, Details: details})
	return rep.Execution.rollout(), rep.Found, err
}

// UpdateExecution forwards rollout.Planner.UpdateExecution.
func (c *Client) UpdateExecution(ctx context.Context, id device.ID, jobID string, u rollout.ExecutionUpdate) (rollout.Execution, error) {
	if p := c.local(); p != nil {
		x, err := p.UpdateExecution(ctx, id, jobID, u)
		return x, localErr(err)
	}
	rep, err := c.call(ctx, request{Op: opUpdateExecution, Device: id, ID: jobID, Update: &update{Status: u.Status,
		Details: u.Details, ExpectedVersion: u.ExpectedVersion, CheckVersion: u.CheckVersion, Number: u.Number}})
	return rep.Execution.rollout(), err
}

// InUse forwards rollout.Planner.InUse.
func (c *Client) InUse(ctx context.Context, v firmware.Version) (string, bool, error) {
	if p := c.local(); p != nil {
		id, used, err := p.InUse(ctx, v)
		return id, used, localErr(err)
	}
	rep, err := c.call(ctx, request{Op: opInUse, Version: v})
	return rep.InUse, rep.InUse != "", err
}

// DevicesEnrolled forwards rollout.Planner.DevicesEnrolled, which returns
// nothing: a forward that fails is lost (use ForwardEnrolled to log it).
func (c *Client) DevicesEnrolled(ctx context.Context, devs []rollout.EnrolledDevice) {
	_ = c.ForwardEnrolled(ctx, devs)
}

// ForwardEnrolled is DevicesEnrolled with the forward's error: without a
// lease holder, the devices do not join the dynamic rollouts (until they
// are enrolled again).
func (c *Client) ForwardEnrolled(ctx context.Context, devs []rollout.EnrolledDevice) error {
	if len(devs) == 0 {
		return nil
	}
	if p := c.local(); p != nil {
		p.DevicesEnrolled(ctx, devs)
		return nil
	}
	req := request{Op: opEnrolled, Enrolled: make([]enrolled, len(devs))}
	for i, d := range devs {
		req.Enrolled[i] = enrolled{ID: d.ID, Labels: d.Labels}
	}
	_, err := c.call(ctx, req)
	return err
}
