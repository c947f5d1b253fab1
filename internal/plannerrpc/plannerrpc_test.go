package plannerrpc_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/firmware"
	"github.com/umbra-iot/umbra/internal/natstest"
	"github.com/umbra-iot/umbra/internal/plannerrpc"
	"github.com/umbra-iot/umbra/rollout"
	"github.com/umbra-iot/umbra/rollout/boltstore"
)

// shadows records the planner's commands; devices never report.
type shadows struct {
	mu     sync.Mutex // guards writes
	writes int
}

func (s *shadows) SetDesiredFirmware(ctx context.Context, id device.ID, cmd map[string]any, token string) error {
	s.mu.Lock()
	s.writes++
	s.mu.Unlock()
	return nil
}

func (s *shadows) ReportedFirmware(ctx context.Context, id device.ID) (firmware.Report, bool, error) {
	return firmware.Report{}, false, nil
}

// images knows every version, for hardware m1.
type images struct{}

func (images) Get(ctx context.Context, v firmware.Version) (firmware.Image, error) {
	if v == "9.9.9" {
		return firmware.Image{}, fmt.Errorf("get %s: %w", v, firmware.ErrNotFound)
	}
	return firmware.Image{Version: v, HW: "m1", Size: 10, SHA256: strings.Repeat("ab", 32)}, nil
}

func (images) Command(img firmware.Image, id device.ID, ttl time.Duration, job string) firmware.Command {
	return firmware.Command{Version: string(img.Version), HW: img.HW, SHA256: img.SHA256, Size: img.Size,
		URL: "http://127.0.0.1/fw/" + img.SHA256, Signature: "c2ln", Job: job}
}

// mustPlanner opens a real planner on a bbolt file.
func mustPlanner(t testing.TB) *rollout.Planner {
	t.Helper()
	st, err := boltstore.Open(t.Context(), boltstore.Config{Path: filepath.Join(t.TempDir(), "rollout.db")})
	if err != nil {
		t.Fatal(err)
	}
	p, err := rollout.Open(t.Context(), rollout.Config{Store: st, Shadows: &shadows{}, Firmware: images{}, Tick: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		p.Close(ctx)
		st.Close(ctx)
	})
	return p
}

// pair is a leader serving a real planner and a client on another
// connection.
type pair struct {
	planner *rollout.Planner
	client  *plannerrpc.Client
	srv     *plannerrpc.Server
	stats   *plannerrpc.ServerStats
	nc      *nats.Conn // the client's
}

func mustPair(t testing.TB, cfg plannerrpc.Config) pair {
	t.Helper()
	ns := natstest.Start(t)
	p := pair{planner: mustPlanner(t), stats: &plannerrpc.ServerStats{}}
	scfg := cfg
	scfg.Conn = natstest.Connect(t, []string{ns.URL()})
	var err error
	p.srv, err = plannerrpc.Serve(t.Context(), scfg, p.planner, p.stats, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.srv.Close(context.Background()) })
	p.nc = natstest.Connect(t, []string{ns.URL()})
	cfg.Conn, cfg.Node = p.nc, "n2"
	if p.client, err = plannerrpc.NewClient(cfg, nil); err != nil {
		t.Fatal(err)
	}
	return p
}

func ids(n int) []device.ID {
	out := make([]device.ID, n)
	for i := range out {
		out[i] = device.ID(fmt.Sprintf("d%03d", i))
	}
	return out
}

// TestForwardedCallsAnswerAsLocal: every planner call made through the
// forwarding client returns what the planner returned (results and
// errors, errors.Is and errors.As included).
func TestForwardedCallsAnswerAsLocal(t *testing.T) {
	p := mustPair(t, plannerrpc.Config{})
	ctx := t.Context()
	c := p.client
	spec := rollout.Spec{Firmware: "2.0.0", Devices: ids(5), Policy: rollout.Policy{BatchSize: 2, PauseBetweenBatches: true}}
	pre, err := c.Preview(ctx, spec)
	if err != nil || pre.Targets != 5 || len(pre.Batches) != 3 {
		t.Fatalf("Preview = %+v, %v; want 5 targets in 3 batches", pre, err)
	}
	r, err := c.Create(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if !r.Policy.PauseBetweenBatches || r.Policy.BatchSize != 2 {
		t.Errorf("Create's policy %+v lost the spec's", r.Policy)
	}
	if err := c.MarkJobs(ctx, "d004"); err != nil {
		t.Fatal(err)
	}

	// same compares results as JSON (the wire drops monotonic clock
	// readings) and errors by text and sentinels.
	same := func(name string, got, want any, gerr, werr error) {
		t.Helper()
		if (gerr == nil) != (werr == nil) || gerr != nil && gerr.Error() != werr.Error() {
			t.Errorf("%s: error %v, want %v", name, gerr, werr)
		}
		for _, s := range []error{rollout.ErrNotFound, rollout.ErrInvalid, rollout.ErrState, rollout.ErrConflict, rollout.ErrTerminal} {
			if errors.Is(gerr, s) != errors.Is(werr, s) {
				t.Errorf("%s: errors.Is(%v, %v) = %v, want %v", name, gerr, s, errors.Is(gerr, s), errors.Is(werr, s))
			}
		}
		g, _ := json.Marshal(got)
		w, _ := json.Marshal(want)
		if string(g) != string(w) {
			t.Errorf("%s:\n got %s\nwant %s", name, g, w)
		}
	}
	for _, tc := range []struct {
		name   string
		remote func() (any, error)
		local  func() (any, error)
	}{
		{"Get", func() (any, error) { return c.Get(ctx, r.ID) }, func() (any, error) { return p.planner.Get(ctx, r.ID) }},
		{"List", func() (any, error) { return c.List(ctx) }, func() (any, error) { return p.planner.List(ctx) }},
		{"DevicesPage", func() (any, error) {
			ds, n, err := c.DevicesPage(ctx, r.ID, []rollout.DeviceState{rollout.DevicePending}, 1, 2)
			return []any{ds, n}, err
		}, func() (any, error) {
			ds, n, err := p.planner.DevicesPage(ctx, r.ID, []rollout.DeviceState{rollout.DevicePending}, 1, 2)
			return []any{ds, n}, err
		}},
		{"EventsAfter", func() (any, error) { return c.EventsAfter(ctx, r.ID, 0) }, func() (any, error) { return p.planner.EventsAfter(ctx, r.ID, 0) }},
		{"InUse", func() (any, error) {
			id, used, err := c.InUse(ctx, "2.0.0")
			return []any{id, used}, err
		}, func() (any, error) {
			id, used, err := p.planner.InUse(ctx, "2.0.0")
			return []any{id, used}, err
		}},
		{"InUse/unused", func() (any, error) {
			id, used, err := c.InUse(ctx, "3.0.0")
			return []any{id, used}, err
		}, func() (any, error) {
			id, used, err := p.planner.InUse(ctx, "3.0.0")
			return []any{id, used}, err
		}},
		{"NextExecution", func() (any, error) {
			x, ok, err := c.NextExecution(ctx, "d004")
			return []any{x, ok}, err
		}, func() (any, error) {
			x, ok, err := p.planner.NextExecution(ctx, "d004")
			return []any{x, ok}, err
		}},
		{"UpdateExecution/none", func() (any, error) {
			return c.UpdateExecution(ctx, "d004", r.ID, rollout.ExecutionUpdate{Status: rollout.ExecInProgress})
		}, func() (any, error) {
			return p.planner.UpdateExecution(ctx, "d004", r.ID, rollout.ExecutionUpdate{Status: rollout.ExecInProgress})
		}},
		{"Retry/running", func() (any, error) { return c.Retry(ctx, r.ID) }, func() (any, error) { return p.planner.Retry(ctx, r.ID) }},
		{"Get/not found", func() (any, error) { return c.Get(ctx, "nope") }, func() (any, error) { return p.planner.Get(ctx, "nope") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, gerr := tc.remote()
			want, werr := tc.local()
			same(tc.name, got, want, gerr, werr)
		})
	}

	// Errors keep their sentinels and typed data.
	_, err = c.Get(ctx, "nope")
	if !errors.Is(err, rollout.ErrNotFound) {
		t.Errorf("Get(nope) = %v, want ErrNotFound", err)
	}
	_, err = c.Create(ctx, rollout.Spec{Firmware: "3.0.0", Devices: ids(1)})
	if ce, ok := errors.AsType[*rollout.ConflictError](err); !ok || ce.Rollout != r.ID || ce.Device != "d000" || !errors.Is(err, rollout.ErrConflict) {
		t.Errorf("Create of a device in an active rollout = %v, want a ConflictError naming %s and d000", err, r.ID)
	}
	_, err = c.Create(ctx, rollout.Spec{Firmware: "9.9.9", Devices: []device.ID{"x1"}})
	if !errors.Is(err, rollout.ErrInvalid) || !errors.Is(err, firmware.ErrNotFound) {
		t.Errorf("Create of a missing version = %v, want ErrInvalid and firmware.ErrNotFound", err)
	}
	// An execution's errors carry its state (the Jobs API's
	// executionState): d000, in flight in batch 1, becomes a Jobs device.
	for deadline := time.Now().Add(10 * time.Second); ; {
		if _, ok, err := c.NextExecution(ctx, "d000"); err != nil || ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("d000 has no pending execution 10 s after the rollout started")
		}
		if err := c.MarkJobs(ctx, "d000"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond) // the planner's pass notifies batch 1: poll
	}
	if x, err := c.UpdateExecution(ctx, "d000", r.ID, rollout.ExecutionUpdate{Status: rollout.ExecSucceeded}); err != nil || x.Status != rollout.ExecSucceeded || x.JobID != r.ID {
		t.Fatalf("UpdateExecution SUCCEEDED = %+v, %v", x, err)
	}
	_, err = c.UpdateExecution(ctx, "d000", r.ID, rollout.ExecutionUpdate{Status: rollout.ExecFailed})
	_, lerr := p.planner.UpdateExecution(ctx, "d000", r.ID, rollout.ExecutionUpdate{Status: rollout.ExecFailed})
	xe, ok := errors.AsType[*rollout.ExecutionError](err)
	lxe, _ := errors.AsType[*rollout.ExecutionError](lerr)
	if !ok || lxe == nil || !errors.Is(err, rollout.ErrTerminal) || xe.Msg != lxe.Msg || xe.State.Status != rollout.ExecSucceeded || xe.State.Version != lxe.State.Version || err.Error() != lerr.Error() {
		t.Errorf("update of a final execution = %#v, want as the local %#v", err, lerr)
	}

	if _, err := c.Pause(ctx, r.ID); err != nil {
		t.Fatal(err)
	}
	got, err := c.Resume(ctx, r.ID)
	if err != nil || got.State != rollout.StateRunning {
		t.Errorf("Resume = %+v, %v; want running", got.State, err)
	}
	if ab, err := c.Abort(ctx, r.ID, false); err != nil || ab.State != rollout.StateAborted {
		t.Errorf("Abort = %v, %v; want aborted", ab.State, err)
	}
	if st := p.stats.Stats(); st.OK == 0 || st.BadRequest != 0 || st.Inflight != 0 {
		t.Errorf("server stats %+v: want calls answered, none bad, none in flight", st)
	}
}

// TestNoLeaderFailsFast: with no server subscribed, a call fails at once
// with rollout.ErrUnavailable (NATS answers "no responders").
func TestNoLeaderFailsFast(t *testing.T) {
	ns := natstest.Start(t)
	c, err := plannerrpc.NewClient(plannerrpc.Config{Conn: natstest.Connect(t, []string{ns.URL()})}, nil)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = c.Get(t.Context(), "r1")
	if !errors.Is(err, rollout.ErrUnavailable) || !strings.Contains(err.Error(), "no node runs the rollout planner") {
		t.Errorf("Get without a leader = %v, want ErrUnavailable saying no node runs the planner", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Get without a leader took %v, want it to fail fast", d)
	}
	if st := c.Stats(); st.Unavailable != 1 {
		t.Errorf("client stats %+v, want 1 unavailable", st)
	}
}

// TestBadRequestsRefused: what a node of another release (or anything
// else on the subject) sends is validated by the leader: each bad request
// gets an error reply that says what is wrong, and the planner stores
// nothing.
func TestBadRequestsRefused(t *testing.T) {
	p := mustPair(t, plannerrpc.Config{MaxBody: 4096})
	for _, tc := range []struct {
		name string
		body string
		kind string // the sentinel the reply names
		want string // in the message
	}{
		{"not JSON", `{"v":1,`, "invalid", "undecodable request"},
		{"two values", `{"v":1,"op":"list"} {}`, "invalid", "more than one JSON value"},
		{"unknown field", `{"v":1,"op":"create","spec":{"firmware":"2.0.0","devices":["a"],"policy":{}},"color":"red"}`, "invalid", `unknown field "color"`},
		{"newer version", `{"v":2,"op":"create","spec":{"firmware":"2.0.0","devices":["a"],"policy":{}}}`, "unavailable", "planner RPC version 2"},
		{"no version", `{"op":"list"}`, "unavailable", "planner RPC version 0"},
		{"unknown op", `{"v":1,"op":"drop_all"}`, "invalid", `unknown operation "drop_all"`},
		{"no spec", `{"v":1,"op":"create"}`, "invalid", "spec is required"},
		{"bad device", `{"v":1,"op":"mark_jobs","device":"a/b"}`, "invalid", "device"},
		{"bad target", `{"v":1,"op":"add_devices","id":"r1","devices":["ok","+"]}`, "invalid", "device"},
		{"no rollout ID", `{"v":1,"op":"pause"}`, "invalid", "rollout ID"},
		{"negative start", `{"v":1,"op":"devices","id":"r1","start":-1}`, "invalid", "negative"},
		{"huge limit", `{"v":1,"op":"devices","id":"r1","limit":100000}`, "invalid", "limit 100000"},
		{"bad version", `{"v":1,"op":"in_use","version":"../x"}`, "invalid", "version"},
		{"bad state", `{"v":1,"op":"devices","id":"r1","states":["exploded"]}`, "invalid", "undecodable"},
		{"no update", `{"v":1,"op":"update_execution","device":"a","id":"r1"}`, "invalid", "update is required"},
		{"invalid spec", `{"v":1,"op":"create","spec":{"firmware":"2.0.0","devices":[],"policy":{}}}`, "invalid", "no target devices"},
		{"too large", `{"v":1,"op":"list","from":"` + strings.Repeat("x", 5000) + `"}`, "invalid", "at most 4096"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			msg, err := p.nc.RequestWithContext(t.Context(), plannerrpc.DefaultSubject, []byte(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			var rep struct {
				V   int `json:"v"`
				Err *struct {
					Msg   string   `json:"msg"`
					Kinds []string `json:"kinds"`
				} `json:"err"`
			}
			if err := json.Unmarshal(msg.Data, &rep); err != nil {
				t.Fatalf("reply %s: %v", msg.Data, err)
			}
			if rep.V != plannerrpc.Version || rep.Err == nil {
				t.Fatalf("reply %s, want a version %d error", msg.Data, plannerrpc.Version)
			}
			if !strings.Contains(rep.Err.Msg, tc.want) || len(rep.Err.Kinds) == 0 || rep.Err.Kinds[0] != tc.kind {
				t.Errorf("reply error %q %v, want %q naming %s", rep.Err.Msg, rep.Err.Kinds, tc.want, tc.kind)
			}
		})
	}
	rs, err := p.planner.List(t.Context())
	if err != nil || len(rs) != 0 {
		t.Errorf("the planner holds %d rollouts after the bad requests (%v), want none", len(rs), err)
	}
	if st := p.stats.Stats(); st.BadRequest != 15 || st.TooLarge != 1 || st.OK != 1 {
		t.Errorf("server stats %+v, want 15 bad requests, 1 too large and 1 answered (the invalid spec)", st)
	}
}

// TestRequestTooLargeRefusedBeforeSending: the client refuses a request
// over its MaxBody that it does not send in parts (only a create's or a
// preview's explicit device list is split) with a clear error; nothing
// reaches the leader.
func TestRequestTooLargeRefusedBeforeSending(t *testing.T) {
	p := mustPair(t, plannerrpc.Config{MaxBody: 2048})
	for _, tc := range []struct {
		name string
		call func() error
	}{
		{"add devices", func() error { _, err := p.client.AddDevices(t.Context(), "r1", ids(500)); return err }},
		{"create by a large selector", func() error {
			_, err := p.client.Create(t.Context(), rollout.Spec{Firmware: "2.0.0", Selector: map[string]string{"site": strings.Repeat("x", 3000)}})
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := p.client.Stats().TooLarge
			if err := tc.call(); !errors.Is(err, rollout.ErrInvalid) || !strings.Contains(err.Error(), "--planner-rpc-max-body") {
				t.Errorf("call = %v, want ErrInvalid naming --planner-rpc-max-body", err)
			}
			if st := p.client.Stats(); st.TooLarge != before+1 {
				t.Errorf("client stats %+v, want one more too large", st)
			}
		})
	}
	if st := p.stats.Stats(); st.OK != 0 {
		t.Errorf("server stats %+v: the leader answered something", st)
	}
}

// blocking is a planner whose Get waits for release.
type blocking struct {
	*rollout.Planner
	entered chan struct{}
	release chan struct{}
}

func (b *blocking) Get(ctx context.Context, id string) (rollout.Status, error) {
	b.entered <- struct{}{}
	select {
	case <-b.release:
	case <-ctx.Done():
	}
	return b.Planner.Get(ctx, id)
}

// TestInflightCaps: a client with MaxInflight calls outstanding refuses
// the next at once, and so does a leader running MaxInflight requests;
// both with rollout.ErrUnavailable.
func TestInflightCaps(t *testing.T) {
	for _, side := range []string{"client", "server"} {
		t.Run(side, func(t *testing.T) {
			ns := natstest.Start(t)
			b := &blocking{Planner: mustPlanner(t), entered: make(chan struct{}, 4), release: make(chan struct{})}
			stats := &plannerrpc.ServerStats{}
			srvCap, cliCap := 8, 1
			if side == "server" {
				srvCap, cliCap = 1, 8
			}
			srv, err := plannerrpc.Serve(t.Context(), plannerrpc.Config{Conn: natstest.Connect(t, []string{ns.URL()}), MaxInflight: srvCap}, b, stats, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer srv.Close(context.Background())
			c, err := plannerrpc.NewClient(plannerrpc.Config{Conn: natstest.Connect(t, []string{ns.URL()}), MaxInflight: cliCap}, nil)
			if err != nil {
				t.Fatal(err)
			}
			first := make(chan error, 1)
			go func() {
				_, err := c.Get(t.Context(), "r1")
				first <- err
			}()
			select {
			case <-b.entered:
			case <-time.After(10 * time.Second):
				t.Fatal("the first call did not reach the planner")
			}
			_, err = c.Get(t.Context(), "r1")
			if !errors.Is(err, rollout.ErrUnavailable) || !strings.Contains(err.Error(), "retry later") {
				t.Errorf("second call = %v, want ErrUnavailable (busy)", err)
			}
			close(b.release)
			if err := <-first; !errors.Is(err, rollout.ErrNotFound) {
				t.Errorf("first call = %v, want the planner's ErrNotFound", err)
			}
			busy := c.Stats().Busy
			if side == "server" {
				busy = stats.Stats().Busy
			}
			if busy != 1 {
				t.Errorf("%s busy count %d, want 1", side, busy)
			}
		})
	}
}

// TestCloseAnswersRequestsArrivingAsTheLeaseMoves: a request that reaches
// a leader whose Close has begun (the lease is moving) is answered at once
// with rollout.ErrUnavailable, to be retried, rather than dropped (its
// caller would wait for its whole timeout); a request already running is
// answered by the planner before Close returns.
func TestCloseAnswersRequestsArrivingAsTheLeaseMoves(t *testing.T) {
	ns := natstest.Start(t)
	b := &blocking{Planner: mustPlanner(t), entered: make(chan struct{}, 1), release: make(chan struct{})}
	stats := &plannerrpc.ServerStats{}
	srv, err := plannerrpc.Serve(t.Context(), plannerrpc.Config{Conn: natstest.Connect(t, []string{ns.URL()})}, b, stats, nil)
	if err != nil {
		t.Fatal(err)
	}
	c, err := plannerrpc.NewClient(plannerrpc.Config{Conn: natstest.Connect(t, []string{ns.URL()}), Timeout: 30 * time.Second}, nil)
	if err != nil {
		t.Fatal(err)
	}
	running := make(chan error, 1)
	go func() {
		_, err := c.Get(t.Context(), "r1")
		running <- err
	}()
	<-b.entered
	// Close, held after it has begun: the subscription still receives.
	begun, resume := make(chan struct{}), make(chan struct{})
	plannerrpc.OnCloseBegun(srv, func() { close(begun); <-resume })
	closed := make(chan error, 1)
	go func() { closed <- srv.Close(context.Background()) }()
	<-begun
	start := time.Now()
	_, err = c.Get(t.Context(), "r1")
	if !errors.Is(err, rollout.ErrUnavailable) || !strings.Contains(err.Error(), "no longer holds the planner lease") {
		t.Errorf("call as the lease moves = %v, want ErrUnavailable saying the lease moved", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("call as the lease moves took %v, want an answer at once", d)
	}
	close(resume)
	close(b.release)
	if err := <-running; !errors.Is(err, rollout.ErrNotFound) {
		t.Errorf("running call = %v, want the planner's ErrNotFound", err)
	}
	if err := <-closed; err != nil {
		t.Errorf("Close = %v", err)
	}
	if st := stats.Stats(); st.Unavailable != 1 || st.OK != 1 {
		t.Errorf("server stats %+v, want 1 unavailable and 1 ok", st)
	}
	// Drained: the next call finds no responder.
	if _, err := c.Get(t.Context(), "r1"); !errors.Is(err, rollout.ErrUnavailable) || !strings.Contains(err.Error(), "no node runs the rollout planner") {
		t.Errorf("call after Close = %v, want ErrUnavailable saying no node runs the planner", err)
	}
}

// TestReplyOfAnotherVersionRefused: a reply of another protocol version
// (a leader of another release) is an error naming both versions.
func TestReplyOfAnotherVersionRefused(t *testing.T) {
	ns := natstest.Start(t)
	nc := natstest.Connect(t, []string{ns.URL()})
	sub, err := nc.Subscribe(plannerrpc.DefaultSubject, func(m *nats.Msg) { m.Respond([]byte(`{"v":7,"rollouts":[]}`)) })
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	nc.Flush()
	c, err := plannerrpc.NewClient(plannerrpc.Config{Conn: natstest.Connect(t, []string{ns.URL()})}, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.List(t.Context())
	if !errors.Is(err, rollout.ErrUnavailable) || !strings.Contains(err.Error(), "version 7, this node version 1") {
		t.Errorf("List = %v, want ErrUnavailable naming versions 7 and 1", err)
	}
}

// TestLocalPlannerCalledDirectly: a client whose node holds the lease
// calls its planner without NATS, and a planner closed under it (the
// lease moved) is reported unavailable.
func TestLocalPlannerCalledDirectly(t *testing.T) {
	ns := natstest.Start(t)
	p := mustPlanner(t)
	var local plannerrpc.Planner = p
	c, err := plannerrpc.NewClient(plannerrpc.Config{Conn: natstest.Connect(t, []string{ns.URL()})}, func() plannerrpc.Planner { return local })
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Create(t.Context(), rollout.Spec{Firmware: "2.0.0", Devices: ids(2)}); err != nil {
		t.Fatal(err)
	}
	if st := c.Stats(); st.OK != 0 {
		t.Errorf("client stats %+v: a local call went over NATS", st)
	}
	p.Close(t.Context())
	if _, err := c.List(t.Context()); !errors.Is(err, rollout.ErrUnavailable) || !errors.Is(err, rollout.ErrClosed) {
		t.Errorf("List on a closed local planner = %v, want ErrUnavailable", err)
	}
}
