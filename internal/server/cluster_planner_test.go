package server_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/internal/brokertest"
	"github.com/umbra-iot/umbra/internal/cluster"
	"github.com/umbra-iot/umbra/internal/lbtest"
	"github.com/umbra-iot/umbra/internal/natstest"
	"github.com/umbra-iot/umbra/internal/server"
	"github.com/umbra-iot/umbra/internal/sim"
	"github.com/umbra-iot/umbra/rollout/jobs"
	"github.com/umbra-iot/umbra/wire"
)

// The planner under the lease (issue 15 item 5, docs/cluster.md): whole
// Umbra nodes on one NATS server, simulated fleets of real paho devices on
// the nodes that do not run the planner.

// plannerNode opens node id on ns with a planner lease of ttl. A crashable
// node is closed on cleanup without checking its error (Crash leaves it
// unable to close cleanly).
//
// Every node's public URL (Config.PublicURL) is lb, a load balancer in front
// of the nodes: the firmware download URLs minted by the planner's node keep
// working after it is gone, as in production.
func plannerNode(t *testing.T, ns *natstest.Server, lb *lbtest.LB, id string, ttl time.Duration, crashable bool, opts ...func(*server.Config)) *rig {
	t.Helper()
	cfg := server.Config{DataDir: t.TempDir(), MQTTAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", Anonymous: true,
		RolloutTick: 50 * time.Millisecond, Logger: testLogger(t), PublicURL: lb.URL(),
		NATS: ns.URLs(), NodeID: id, NATSReplicas: 1, PlannerLeaseTTL: ttl}
	for _, o := range opts {
		o(&cfg)
	}
	var s *server.Server
	if !crashable {
		s = mustOpenServer(t, cfg)
	} else {
		var err error
		if s, err = server.Open(t.Context(), cfg); err != nil {
			t.Fatalf("server.Open: %v", err)
		}
		t.Cleanup(s.Crash)
	}
	lb.Add(s.HTTPAddr().String())
	return &rig{Server: s, secrets: map[device.ID]string{}}
}

// waitPlanner waits until GET /v1/cluster on r names a planner lease
// holder for which ok holds, and returns it.
func (r *rig) waitPlanner(t *testing.T, what string, ok func(string) bool) string {
	t.Helper()
	var holder string
	eventually(t, "planner lease "+what, func() string {
		var st wire.ClusterStatus
		if code := r.getCluster(t, "", &st); code != http.StatusOK {
			return "GET /v1/cluster: " + http.StatusText(code)
		}
		if holder = st.Planner; st.Planners != "lease" || !ok(holder) {
			return fmt.Sprintf("planners %q, holder %q", st.Planners, holder)
		}
		return ""
	})
	return holder
}

// httpCall is apiDo with the response's headers.
func (r *rig) httpCall(t *testing.T, method, path, body string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, "http://"+r.HTTPAddr().String()+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

// rolloutVia returns rollout id's status read through node r's HTTP API.
func (r *rig) rolloutVia(t *testing.T, id string) wire.RolloutStatus {
	t.Helper()
	code, _, b := r.httpCall(t, "GET", "/v1/rollouts/"+id, "")
	if code != http.StatusOK {
		t.Fatalf("GET /v1/rollouts/%s: %d %s", id, code, b)
	}
	var st wire.RolloutStatus
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

// waitRolloutVia polls rollout id through r's HTTP API until cond holds.
// A 503 (no planner yet: the lease's new holder is loading it) is waited
// out.
func (r *rig) waitRolloutVia(t *testing.T, id, what string, cond func(wire.RolloutStatus) bool) wire.RolloutStatus {
	t.Helper()
	var st wire.RolloutStatus
	eventually(t, "rollout "+id+" "+what, func() string {
		code, _, b := r.httpCall(t, "GET", "/v1/rollouts/"+id, "")
		if code == http.StatusServiceUnavailable {
			return "503 " + string(b)
		}
		if st = r.rolloutVia(t, id); cond(st) {
			return ""
		}
		return fmt.Sprintf("state %s (%s), batches started %d, counts %v", st.State, st.Reason, st.Started, st.Counts)
	})
	return st
}

// installs counts, per device, how often it started downloading a given
// job: a device commanded twice for one attempt starts twice.
type installs struct {
	mu    sync.Mutex // guards the fields below
	last  map[device.ID]string
	count map[device.ID]map[string]int // device → job → downloads started
}

// add is sim.Config.OnEvent: it must not block.
func (in *installs) add(ev sim.Event) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.last == nil {
		in.last, in.count = map[device.ID]string{}, map[device.ID]map[string]int{}
	}
	if ev.State == "downloading" && in.last[ev.Device] != "downloading" {
		if in.count[ev.Device] == nil {
			in.count[ev.Device] = map[string]int{}
		}
		in.count[ev.Device][ev.Job]++
	}
	in.last[ev.Device] = ev.State
}

// check fails unless each of ids started downloading exactly one job, job.
func (in *installs) check(t *testing.T, ids []device.ID, job string) {
	t.Helper()
	in.mu.Lock()
	defer in.mu.Unlock()
	for _, id := range ids {
		if got := in.count[id]; len(got) != 1 || got[job] != 1 {
			t.Errorf("%s started downloads %v, want %s once", id, got, job)
		}
	}
}

// clusterJobsDevice is a hand-written AWS IoT Jobs device (MQTT 3.1.1,
// client ID = thing name) on one node.
type clusterJobsDevice struct {
	id      device.ID
	c       paho.Client
	next    <-chan brokertest.Message // notify-next
	replies chan brokertest.Message   // the replies it did not subscribe to
	n       int
}

func newClusterJobsDevice(t *testing.T, r *rig, id device.ID) *clusterJobsDevice {
	t.Helper()
	d := &clusterJobsDevice{id: id, replies: make(chan brokertest.Message, 64)}
	d.c = brokertest.Connect(t, r.mqttURL(), string(id), func(o *paho.ClientOptions) {
		o.SetProtocolVersion(4)
		o.SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) {
			d.replies <- brokertest.Message{Topic: m.Topic(), Payload: m.Payload()}
		})
	})
	d.next = brokertest.Subscribe(t, d.c, jobs.Topic(id, "notify-next"), 1)
	return d
}

// call sends a Jobs request and returns whether it was accepted, and the
// reply.
func (d *clusterJobsDevice) call(t *testing.T, suffix string, body map[string]any) (bool, map[string]any) {
	t.Helper()
	d.n++
	tok := fmt.Sprintf("%s-%d", d.id, d.n)
	if body == nil {
		body = map[string]any{}
	}
	body["clientToken"] = tok
	publishJSON(t, d.c, jobs.Topic(d.id, suffix), body)
	deadline := time.Now().Add(waitTimeout)
	for {
		m := brokertest.Next(t, d.replies, time.Until(deadline))
		var p map[string]any
		if err := json.Unmarshal(m.Payload, &p); err != nil || p["clientToken"] != tok {
			continue
		}
		return m.Topic == jobs.Topic(d.id, suffix+"/accepted"), p
	}
}

// plannerCluster is three nodes on one NATS server: a, which holds the
// planner lease (crashable when asked), and b and c, each with a simulated
// fleet of perNode devices running oldVersion, every device counted in seen.
// newVersion is uploaded.
type plannerCluster struct {
	a, b, c *rig
	fb, fc  *sim.Fleet
	ids     []device.ID // fb's, then fc's
	seen    *installs
}

func openPlannerCluster(t *testing.T, ttl time.Duration, crashable bool, perNode int, install time.Duration) plannerCluster {
	t.Helper()
	ns, lb := natstest.Start(t), lbtest.New(t)
	pc := plannerCluster{seen: &installs{}}
	pc.a = plannerNode(t, ns, lb, "a", ttl, crashable)
	pc.a.waitPlanner(t, "held by a", func(h string) bool { return h == "a" })
	pc.b, pc.c = plannerNode(t, ns, lb, "b", ttl, false), plannerNode(t, ns, lb, "c", ttl, false)
	pc.a.mustUpload(t, newVersion)
	pc.fb = pc.b.mustOpenFleet(t, sim.Config{Devices: perNode, IDPrefix: "b-", InstallTime: install, OnEvent: pc.seen.add})
	pc.fc = pc.c.mustOpenFleet(t, sim.Config{Devices: perNode, IDPrefix: "c-", InstallTime: install, OnEvent: pc.seen.add})
	waitFleet(t, pc.fb, "node b's devices to connect", func(st sim.Stats) bool { return st.Connected == perNode })
	waitFleet(t, pc.fc, "node c's devices to connect", func(st sim.Stats) bool { return st.Connected == perNode })
	pc.ids = append(pc.fb.IDs(), pc.fc.IDs()...)
	pc.b.waitReported(t, pc.ids, oldVersion)
	return pc
}

// waitInstalled waits for every device to run newVersion, and checks that
// each started downloading once, for job.
func (pc plannerCluster) waitInstalled(t *testing.T, perNode int, job string) {
	t.Helper()
	waitFleet(t, pc.fb, "node b's devices to run "+newVersion, func(st sim.Stats) bool { return st.Versions[newVersion] == perNode })
	waitFleet(t, pc.fc, "node c's devices to run "+newVersion, func(st sim.Stats) bool { return st.Versions[newVersion] == perNode })
	pc.seen.check(t, pc.ids, job)
}

// TestClusterModeRolloutAcrossNodes: three nodes, node a holds the
// planner lease, the devices are on nodes b and c. A rollout created
// through node b's HTTP API finishes on every device, each commanded
// once; it is read, paused and resumed through every node; a Jobs device
// on node c runs its execution through node c's Jobs API; node c refuses
// to delete the firmware the rollout installs; and the rollout's events
// reach an MQTT subscriber on node c and the live feed (GET /v1/events) of
// node b.
func TestClusterModeRolloutAcrossNodes(t *testing.T) {
	const perNode = 8
	pc := openPlannerCluster(t, 2*time.Second, false, perNode, 50*time.Millisecond)
	a, b, c, ids := pc.a, pc.b, pc.c, pc.ids
	nodes := map[string]*rig{"a": a, "b": b, "c": c}

	// A Jobs device on node c (subscribing marks it, through the leader),
	// and an integrator watching the rollout events on node c.
	jd := newClusterJobsDevice(t, c, "j-1")
	watcher := brokertest.Connect(t, c.mqttURL(), "watcher")
	events := brokertest.Subscribe(t, watcher, "rollouts/+/events", 1)
	// And the web console's live feed on node b.
	live, code := b.openEvents(t, "anonymous", "kinds=rollout")
	if code != http.StatusOK {
		t.Fatalf("GET /v1/events on node b: %d", code)
	}
	if name, _ := live.next(t); name != "ready" {
		t.Fatalf("first live event %q, want ready", name)
	}

	targets := append([]device.ID{"j-1"}, ids...)
	body, _ := json.Marshal(map[string]any{"firmware": newVersion, "devices": targets, "batch_size": 5, "pause_between_batches": true})
	code, _, raw := b.httpCall(t, "POST", "/v1/rollouts", string(body))
	if code != http.StatusCreated {
		t.Fatalf("POST /v1/rollouts through node b: %d %s", code, raw)
	}
	var ro wire.Rollout
	if err := json.Unmarshal(raw, &ro); err != nil {
		t.Fatal(err)
	}
	if name, data := live.next(t); name != "rollout" || !strings.Contains(data, `"kind":"created"`) || !strings.Contains(data, ro.ID) {
		t.Errorf("live event on node b %s %s, want %s's created event", name, data, ro.ID)
	}

	// The firmware in-use guard, on a node that does not run the planner
	// (force skips the check of the devices' desired state, not this one).
	if code, _, raw := c.httpCall(t, "DELETE", "/v1/firmware/"+newVersion+"?force=true", ""); code != http.StatusConflict || !strings.Contains(string(raw), `"rollout":"`+ro.ID+`"`) {
		t.Errorf("DELETE /v1/firmware/%s through node c = %d %s, want 409 naming %s", newVersion, code, raw, ro.ID)
	}

	// The Jobs device (first target, in batch 1 of 4) is notified through node c,
	// starts its execution and reports success there.
	m := brokertest.Next(t, jd.next, waitTimeout)
	if !strings.Contains(string(m.Payload), `"jobId":"`+ro.ID+`"`) {
		t.Fatalf("notify-next %s, want job %s", m.Payload, ro.ID)
	}
	if ok, p := jd.call(t, "start-next", nil); !ok || p["execution"] == nil {
		t.Fatalf("start-next through node c: accepted %t %v", ok, p)
	}
	if ok, p := jd.call(t, ro.ID+"/update", map[string]any{"status": "SUCCEEDED"}); !ok {
		t.Fatalf("update SUCCEEDED through node c: %v", p)
	}

	// Each batch ends paused for approval: read and resume it through
	// each node in turn (and pause a running one through another).
	for i, via := range []string{"a", "b", "c"} {
		t.Run("resume via "+via, func(t *testing.T) {
			r := nodes[via]
			st := r.waitRolloutVia(t, ro.ID, "paused after batch "+fmt.Sprint(i+1), func(st wire.RolloutStatus) bool {
				return st.State == "paused" && st.Started == i+1
			})
			if st.Targets != len(targets) {
				t.Errorf("GET through %s: %d targets, want %d", via, st.Targets, len(targets))
			}
			code, _, raw := r.httpCall(t, "POST", "/v1/rollouts/"+ro.ID+"/resume", "")
			if code != http.StatusOK || !strings.Contains(string(raw), `"state":"running"`) {
				t.Fatalf("resume through %s: %d %s", via, code, raw)
			}
			if i == 0 {
				other := nodes["c"]
				if code, _, raw := other.httpCall(t, "POST", "/v1/rollouts/"+ro.ID+"/pause", ""); code != http.StatusOK || !strings.Contains(string(raw), `"state":"paused"`) {
					t.Fatalf("pause through c: %d %s", code, raw)
				}
				if code, _, raw := r.httpCall(t, "POST", "/v1/rollouts/"+ro.ID+"/resume", ""); code != http.StatusOK {
					t.Fatalf("resume through %s: %d %s", via, code, raw)
				}
			}
		})
	}
	st := c.waitRolloutVia(t, ro.ID, "to succeed", func(st wire.RolloutStatus) bool { return st.State == "succeeded" })
	if st.Counts["succeeded"] != len(targets) {
		t.Errorf("counts %v, want %d succeeded", st.Counts, len(targets))
	}
	pc.waitInstalled(t, perNode, ro.ID+"/1")

	// The events reached node c's subscriber: created first, the final
	// state last.
	var kinds []string
	for !slices.Contains(kinds, "state:succeeded") {
		m := brokertest.Next(t, events, waitTimeout)
		var ev wire.RolloutEvent
		if err := json.Unmarshal(m.Payload, &ev); err != nil || m.Topic != "rollouts/"+ro.ID+"/events" {
			t.Fatalf("event %s %s: %v", m.Topic, m.Payload, err)
		}
		k := ev.Kind
		if ev.Kind == "state" {
			k += ":" + string(ev.State)
		}
		kinds = append(kinds, k)
	}
	if kinds[0] != "created" || !slices.Contains(kinds, "batch_started") {
		t.Errorf("events on node c %v, want created first and batch_started", kinds)
	}
}

// TestClusterModePlannerFailover: node a runs the planner; mid-rollout it
// crashes (its NATS connection drops: no renewal, no release, no answer).
// Until another node holds the lease, the rollout API answers 503 with
// Retry-After and a JSON body, the Jobs API rejects with InternalError,
// and firmware deletion with 503. Another node takes over within the
// bound and the rollout finishes: every device on its first attempt,
// each commanded once, each batch started once.
func TestClusterModePlannerFailover(t *testing.T) {
	const ttl = 3 * time.Second // the no-leader window is at least 2/3 of it
	const perNode, batch = 16, 8
	pc := openPlannerCluster(t, ttl, true, perNode, 200*time.Millisecond)
	a, b, c, ids := pc.a, pc.b, pc.c, pc.ids
	jd := newClusterJobsDevice(t, b, "j-9") // not a target

	body, _ := json.Marshal(map[string]any{"firmware": newVersion, "devices": ids, "batch_size": batch})
	code, _, raw := b.httpCall(t, "POST", "/v1/rollouts", string(body))
	if code != http.StatusCreated {
		t.Fatalf("POST /v1/rollouts through node b: %d %s", code, raw)
	}
	var ro wire.Rollout
	if err := json.Unmarshal(raw, &ro); err != nil {
		t.Fatal(err)
	}
	c.waitRolloutVia(t, ro.ID, "mid-way", func(st wire.RolloutStatus) bool { return st.Started >= 2 })
	crashed := time.Now()
	a.Crash()

	// No lease holder: every forwarded call fails fast and clearly.
	eventually(t, "node b to find no planner", func() string {
		if code, _, raw := b.httpCall(t, "GET", "/v1/rollouts/"+ro.ID, ""); code != http.StatusServiceUnavailable {
			return fmt.Sprintf("GET = %d %s", code, raw)
		}
		return ""
	})
	for _, tc := range []struct {
		name, method, path string
		via                *rig
	}{
		{"get", "GET", "/v1/rollouts/" + ro.ID, b},
		{"pause", "POST", "/v1/rollouts/" + ro.ID + "/pause", c},
		{"list", "GET", "/v1/rollouts", c},
		{"firmware delete", "DELETE", "/v1/firmware/" + newVersion + "?force=true", b},
	} {
		t.Run("no leader/"+tc.name, func(t *testing.T) {
			code, h, raw := tc.via.httpCall(t, tc.method, tc.path, "")
			var e wire.ErrorBody
			if err := json.Unmarshal(raw, &e); err != nil || code != http.StatusServiceUnavailable || e.Code != 503 ||
				!strings.Contains(e.Message, "no node runs the rollout planner") || h.Get("Retry-After") == "" {
				t.Errorf("%s %s = %d (Retry-After %q) %s, want 503 with Retry-After saying no node runs the planner",
					tc.method, tc.path, code, h.Get("Retry-After"), raw)
			}
		})
	}
	if code, _, raw := c.httpCall(t, "GET", "/v1/firmware/"+newVersion, ""); code != http.StatusOK {
		t.Errorf("the refused delete deleted the image: GET /v1/firmware/%s = %d %s", newVersion, code, raw)
	}
	t.Run("no leader/jobs get", func(t *testing.T) {
		if ok, p := jd.call(t, "get", nil); ok || p["code"] != "InternalError" || p["message"] != jobs.MsgPlannerUnavailable {
			t.Errorf("jobs get without a planner: accepted %t %v, want rejected InternalError %q", ok, p, jobs.MsgPlannerUnavailable)
		}
	})

	holder := b.waitPlanner(t, "taken over", func(h string) bool { return h == "b" || h == "c" })
	took := time.Since(crashed)
	t.Logf("node a crashed; node %s holds the planner lease %v later (bound %v)", holder, took.Round(time.Millisecond), cluster.TakeoverBound(ttl))
	if took > cluster.TakeoverBound(ttl) {
		t.Errorf("takeover took %v, beyond the bound %v", took, cluster.TakeoverBound(ttl))
	}

	st := c.waitRolloutVia(t, ro.ID, "to succeed after the takeover", func(st wire.RolloutStatus) bool { return st.State == "succeeded" })
	if st.Counts["succeeded"] != len(ids) || st.Started != len(ids)/batch {
		t.Errorf("counts %v, %d batches started; want %d succeeded in %d batches", st.Counts, st.Started, len(ids), len(ids)/batch)
	}
	pc.waitInstalled(t, perNode, ro.ID+"/1")

	code, _, raw = b.httpCall(t, "GET", "/v1/rollouts/"+ro.ID+"/devices?limit=1000", "")
	var devs wire.RolloutDevices
	if err := json.Unmarshal(raw, &devs); err != nil || code != http.StatusOK || len(devs.Devices) != len(ids) {
		t.Fatalf("devices: %d %s", code, raw)
	}
	for _, d := range devs.Devices {
		if d.Attempt != 1 {
			t.Errorf("%s on attempt %d, want 1", d.Device, d.Attempt)
		}
	}
	code, _, raw = c.httpCall(t, "GET", "/v1/rollouts/"+ro.ID+"/events", "")
	var evs wire.RolloutEvents
	if err := json.Unmarshal(raw, &evs); err != nil || code != http.StatusOK {
		t.Fatalf("events: %d %s", code, raw)
	}
	started := map[int]int{}
	for _, ev := range evs.Events {
		if ev.Kind == "batch_started" {
			started[ev.Batch]++
		}
	}
	for n := 1; n <= len(ids)/batch; n++ {
		if started[n] != 1 {
			t.Errorf("batch %d started %d times, want once (events %v)", n, started[n], started)
		}
	}
}

// TestClusterModeDynamicRolloutEnrolment: a device enrolled through a node
// that does not run the planner joins a matching dynamic rollout: the
// enrolment hook is forwarded to the lease's holder.
func TestClusterModeDynamicRolloutEnrolment(t *testing.T) {
	ns, lb := natstest.Start(t), lbtest.New(t)
	a := plannerNode(t, ns, lb, "a", 2*time.Second, false)
	a.waitPlanner(t, "held by a", func(h string) bool { return h == "a" })
	b := plannerNode(t, ns, lb, "b", 2*time.Second, false)
	a.mustUpload(t, newVersion)
	enrol := func(id string) {
		t.Helper()
		if code, _, raw := b.httpCall(t, "POST", "/v1/devices", `{"id":"`+id+`","labels":{"site":"x"}}`); code != http.StatusCreated {
			t.Fatalf("enrol %s through node b: %d %s", id, code, raw)
		}
	}
	enrol("site-1")
	code, _, raw := b.httpCall(t, "POST", "/v1/rollouts", `{"firmware":"`+newVersion+`","select":{"site":"x"},"dynamic":true}`)
	if code != http.StatusCreated {
		t.Fatalf("POST /v1/rollouts through node b: %d %s", code, raw)
	}
	var ro wire.Rollout
	if err := json.Unmarshal(raw, &ro); err != nil || ro.Targets != 1 {
		t.Fatalf("rollout %s (%v), want 1 target", raw, err)
	}
	enrol("site-2")
	a.waitRolloutVia(t, ro.ID, "to take the device enrolled through node b", func(st wire.RolloutStatus) bool { return st.Targets == 2 })
}
