package httpapi_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/firmware"
	"github.com/umbra-iot/umbra/identity"
	"github.com/umbra-iot/umbra/identity/identitytest"
	"github.com/umbra-iot/umbra/internal/httpapi"
	"github.com/umbra-iot/umbra/internal/waitfor"
	"github.com/umbra-iot/umbra/rollout"
	"github.com/umbra-iot/umbra/rollout/boltstore"
	"github.com/umbra-iot/umbra/shadow"
	"github.com/umbra-iot/umbra/wire"
)

// rolloutEnv is the API with a real planner, shadow engine, firmware store
// and identity store, all in t.TempDir(), behind Authenticate.
type rolloutEnv struct {
	srv     *httptest.Server
	eng     *shadow.Engine
	ids     *identity.Store
	planner *rollout.Planner
	fw      *firmware.Store
	ops     string // an operator's bearer token
	reader  string // an integrator's bearer token
}

// newRolloutEnv serves the rollout API; firmware 1.0.0 and 2.0.0 exist.
// Without a planner (withPlanner false) the rollout routes answer 503.
func newRolloutEnv(t *testing.T, withPlanner bool) *rolloutEnv {
	t.Helper()
	dir := t.TempDir()
	e := &rolloutEnv{}
	var pl atomic.Pointer[rollout.Planner]
	e.eng = openEngine(t, shadow.Config{Publisher: &recorder{}, OnChange: func(id device.ID, _ shadow.Version) {
		if p := pl.Load(); p != nil {
			p.Notify(id)
		}
	}})
	// Wired as umbra serve wires them: every enrolment tells the planner,
	// which chooses targets among the enrolled devices and the shadows.
	ids := identitytest.Open(t, dir, identity.Config{Logger: testLogger(t),
		OnEnrolled: func(ctx context.Context, enrolled []identity.Enrollment) {
			if p := pl.Load(); p != nil {
				devs := make([]rollout.EnrolledDevice, len(enrolled))
				for i, en := range enrolled {
					devs[i] = rollout.EnrolledDevice{ID: en.ID, Labels: en.Labels}
				}
				p.DevicesEnrolled(ctx, devs)
			}
		}})
	e.ids = ids
	for role, name := range map[identity.Role]string{identity.RoleOperator: "ops", identity.RoleIntegrator: "reader"} {
		secret, err := ids.CreateToken(t.Context(), role, name)
		if err != nil {
			t.Fatal(err)
		}
		if role == identity.RoleOperator {
			e.ops = name + ":" + secret
		} else {
			e.reader = name + ":" + secret
		}
	}
	fw, err := firmware.Open(t.Context(), withCatalog(t, firmware.Config{Dir: filepath.Join(dir, "firmware"), BaseURL: "http://127.0.0.1:1", Logger: testLogger(t)}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := fw.Close(context.Background()); err != nil {
			t.Errorf("close firmware store: %v", err)
		}
	})
	for _, v := range []string{"1.0.0", "2.0.0"} {
		if _, err := fw.Upload(t.Context(), firmware.UploadRequest{Version: v}, strings.NewReader("image "+v)); err != nil {
			t.Fatal(err)
		}
	}
	e.fw = fw
	cfg := httpapi.Config{Shadow: e.eng, Logger: testLogger(t), Firmware: fw}
	inventory := rollout.EngineInventory(e.eng, func(ctx context.Context) ([]rollout.EnrolledDevice, error) {
		list, err := ids.ListDevices(ctx)
		devs := make([]rollout.EnrolledDevice, len(list))
		for i, d := range list {
			devs[i] = rollout.EnrolledDevice{ID: d.ID, Labels: d.Labels}
		}
		return devs, err
	})
	if withPlanner {
		st, err := boltstore.Open(t.Context(), boltstore.Config{Path: filepath.Join(dir, "rollout.db")})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close(context.Background()) })
		p, err := rollout.Open(t.Context(), rollout.Config{Store: st, Inventory: inventory,
			Shadows: rollout.EngineShadows(e.eng), Firmware: fw, Tick: 5 * time.Millisecond, Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := p.Close(context.Background()); err != nil {
				t.Errorf("close planner: %v", err)
			}
		})
		pl.Store(p)
		e.planner = p
		cfg.Rollouts = p
	}
	auth := httpapi.Authenticate(ids, false)
	cfg.Middleware = auth
	cfg.Mounts = httpapi.IdentityRoutes(ids, auth, testLogger(t))
	e.srv, _ = newAPI(t, cfg)
	return e
}

// call sends a request as the operator and decodes a 2xx JSON answer into
// out (if not nil).
func (e *rolloutEnv) call(t *testing.T, method, path, body string, out any) (int, string) {
	t.Helper()
	status, _, raw := doAuth(t, e.srv, method, path, e.ops, body, out)
	return status, raw
}

// enroll adds device id with labels to the identity store.
func (e *rolloutEnv) enroll(t *testing.T, id device.ID, labels map[string]string) {
	t.Helper()
	if _, err := e.ids.AddDevice(t.Context(), id, labels); err != nil {
		t.Fatal(err)
	}
}

// report writes reported.firmware of id as the device would.
func (e *rolloutEnv) report(t *testing.T, id device.ID, rep firmware.Report) {
	t.Helper()
	body, err := json.Marshal(map[string]any{"state": map[string]any{"reported": map[string]any{"firmware": rep}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.eng.Update(t.Context(), id, body); err != nil {
		t.Fatalf("report %s: %v", id, err)
	}
}

// waitRollout polls (no event reaches the test) until cond holds for the
// status of rollout id.
func (e *rolloutEnv) waitRollout(t *testing.T, id string, cond func(rollout.Status) bool) rollout.Status {
	t.Helper()
	var st rollout.Status
	waitfor.PollExplained(t, 10*time.Second, "rollout "+id, func() string {
		var err error
		if st, err = e.planner.Get(t.Context(), id); err != nil {
			t.Fatal(err)
		}
		if cond(st) {
			return ""
		}
		return fmt.Sprintf("%s (%s) %v", st.State, st.Reason, st.Counts)
	})
	return st
}

func TestRolloutFlow(t *testing.T) {
	e := newRolloutEnv(t, true)
	for i, hw := range []string{"m2", "m2", "m2", "m1"} {
		e.enroll(t, device.ID(fmt.Sprintf("d%d", i+1)), map[string]string{"hw": hw, "region": "eu"})
	}

	// Create by label selector: d1..d3, sorted.
	var r1 rollout.Rollout
	status, raw := e.call(t, "POST", "/v1/rollouts", `{"firmware":"v2.0.0","select":{"hw":"m2"},"batch_size":2,"device_timeout":"10m","retries":0}`, &r1)
	if status != http.StatusCreated || r1.ID != "r1" || r1.Targets != 3 || r1.Firmware != "2.0.0" ||
		r1.Policy.DeviceTimeout != 10*time.Minute || r1.Selector["hw"] != "m2" {
		t.Fatalf("create = %d %s, want 201 r1 of 2.0.0 with 3 targets, 10m timeout and the selector", status, raw)
	}
	if !strings.Contains(raw, `"device_timeout":"10m0s"`) {
		t.Errorf("create body %s, want the duration as a string", raw)
	}
	var devs wire.RolloutDevices
	if status, raw := e.call(t, "GET", "/v1/rollouts/r1/devices", "", &devs); status != http.StatusOK || len(devs.Devices) != 3 || devs.Next != "" {
		t.Fatalf("devices = %d %s, want 3 devices", status, raw)
	}
	var got []string
	for _, d := range devs.Devices {
		got = append(got, string(d.Device))
	}
	if strings.Join(got, ",") != "d1,d2,d3" {
		t.Errorf("targets %v, want d1,d2,d3", got)
	}

	// Batch 0 (d1, d2) is notified; d1 installs, d2 fails for good.
	e.waitRollout(t, "r1", func(st rollout.Status) bool { return st.Counts[rollout.DeviceNotified] == 2 })
	e.report(t, "d1", firmware.Report{Version: "2.0.0", State: firmware.StateUpdated, Job: "r1/1"})
	e.report(t, "d2", firmware.Report{Version: "1.0.0", State: firmware.StateFailed, Error: "hw_mismatch", Job: "r1/1"})
	e.waitRollout(t, "r1", func(st rollout.Status) bool { return st.State == rollout.StatePaused })

	var st rollout.Status
	if status, raw := e.call(t, "GET", "/v1/rollouts/r1", "", &st); status != http.StatusOK ||
		st.Counts[rollout.DeviceFailed] != 1 || len(st.Failing) != 1 || st.Failing[0].Error != "hw_mismatch" ||
		len(st.Batches) != 2 || st.Batches[0].State != "done" {
		t.Fatalf("status = %d %s, want paused with d2 failing (hw_mismatch) and batch 0 done", status, raw)
	}
	// Filters and pages.
	if status, raw := e.call(t, "GET", "/v1/rollouts/r1/devices?state=failed,timed_out", "", &devs); status != http.StatusOK ||
		len(devs.Devices) != 1 || devs.Devices[0].Device != "d2" {
		t.Errorf("failed devices = %d %s, want d2", status, raw)
	}
	var pages []string
	for cursor, n := "", 0; n < 10; n++ {
		var page wire.RolloutDevices
		e.call(t, "GET", "/v1/rollouts/r1/devices?limit=1&state=succeeded&state=pending&cursor="+cursor, "", &page)
		for _, d := range page.Devices {
			pages = append(pages, string(d.Device)+":"+string(d.State))
		}
		if cursor = page.Next; cursor == "" {
			break
		}
	}
	if want := "d1:succeeded d3:pending"; strings.Join(pages, " ") != want {
		t.Errorf("pages of succeeded and pending = %q, want %q", strings.Join(pages, " "), want)
	}

	// Pause and resume are idempotent.
	for _, step := range []struct {
		path  string
		body  string
		state rollout.State
	}{
		{"/v1/rollouts/r1/pause", "", rollout.StatePaused},
		{"/v1/rollouts/r1/resume", "{}", rollout.StateRunning},
		{"/v1/rollouts/r1/resume", "", rollout.StateRunning},
		{"/v1/rollouts/r1/pause", "", rollout.StatePaused},
	} {
		var ro rollout.Rollout
		if status, raw := e.call(t, "POST", step.path, step.body, &ro); status != http.StatusOK || ro.State != step.state {
			t.Errorf("POST %s = %d %s, want 200 %s", step.path, status, raw, step.state)
		}
	}
	// A device of an active rollout cannot join another.
	status, raw = e.call(t, "POST", "/v1/rollouts", `{"firmware":"2.0.0","devices":["d4","d3"]}`, nil)
	if status != http.StatusConflict || !strings.Contains(raw, `"rollout":"r1"`) {
		t.Errorf("conflicting create = %d %s, want 409 naming r1", status, raw)
	}
	if status, raw := e.call(t, "POST", "/v1/rollouts/r1/retry", "", nil); status != http.StatusConflict {
		t.Errorf("retry of an active rollout = %d %s, want 409", status, raw)
	}
	// Abort with rollback (d1 reported no version before, so it keeps 2.0.0).
	var ro rollout.Rollout
	if status, raw := e.call(t, "POST", "/v1/rollouts/r1/abort?rollback=true", "", &ro); status != http.StatusOK ||
		ro.State != rollout.StateAborted || !ro.Rollback {
		t.Fatalf("abort = %d %s, want 200 aborted with rollback", status, raw)
	}
	if status, raw := e.call(t, "POST", "/v1/rollouts/r1/resume", "", nil); status != http.StatusConflict {
		t.Errorf("resume after abort = %d %s, want 409", status, raw)
	}

	// Retry makes a new rollout of the failed device.
	var r2 rollout.Rollout
	status, hdr, raw := doAuth(t, e.srv, "POST", "/v1/rollouts/r1/retry", e.ops, "", &r2)
	if status != http.StatusCreated || r2.ID != "r2" || r2.RetryOf != "r1" || r2.Targets != 1 || hdr.Get("Location") != "/v1/rollouts/r2" {
		t.Fatalf("retry = %d %s (Location %q), want 201 r2 retrying r1 over 1 device", status, raw, hdr.Get("Location"))
	}
	// A rollback that cannot apply is refused, and changes nothing: r2,
	// once aborted, has no device that moved. Rolling r1 back again is
	// idempotent.
	if status, raw := e.call(t, "POST", "/v1/rollouts/r1/rollback", "", nil); status != http.StatusOK || !strings.Contains(raw, `"rollback":true`) {
		t.Errorf("rollback of a rolled back rollout = %d %s, want 200 with rollback", status, raw)
	}
	var r2a rollout.Rollout
	if status, raw := e.call(t, "POST", "/v1/rollouts/r2/abort", "", &r2a); status != http.StatusOK || r2a.Rollback {
		t.Fatalf("abort r2 = %d %s", status, raw)
	}
	if status, raw := e.call(t, "POST", "/v1/rollouts/r2/rollback", "", nil); status != http.StatusConflict || !strings.Contains(raw, "Nothing to roll back") {
		t.Errorf("rollback with nothing to roll back = %d %s, want 409 saying so", status, raw)
	}
	var r2b rollout.Rollout
	if status, raw := e.call(t, "GET", "/v1/rollouts/r2", "", &r2b); status != http.StatusOK || r2b.Rollback || r2b.State != rollout.StateAborted {
		t.Errorf("r2 after the refused rollback = %d %s, want aborted without rollback", status, raw)
	}
	if status, raw := e.call(t, "POST", "/v1/rollouts/r2/abort", `{"rollback":true}`, &ro); status != http.StatusOK || !ro.Rollback {
		t.Errorf("abort with body = %d %s, want 200 with rollback", status, raw)
	}

	// The list is newest first.
	var list wire.RolloutList
	if status, raw := e.call(t, "GET", "/v1/rollouts", "", &list); status != http.StatusOK ||
		len(list.Rollouts) != 2 || list.Rollouts[0].ID != "r2" || list.Rollouts[1].ID != "r1" {
		t.Errorf("list = %d %s, want r2, r1", status, raw)
	}

	// Events, all and after a sequence number.
	var evs wire.RolloutEvents
	e.call(t, "GET", "/v1/rollouts/r1/events", "", &evs)
	if len(evs.Events) < 4 || evs.Events[0].Kind != rollout.EventCreated {
		t.Fatalf("events %+v, want created first and more", evs.Events)
	}
	var kinds []string
	for _, ev := range evs.Events {
		kinds = append(kinds, ev.Kind)
	}
	if !slices.Contains(kinds, rollout.EventBatchFinished) || !slices.Contains(kinds, rollout.EventDeviceFailed) {
		t.Errorf("event kinds %v, want batch_finished and device_failed among them", kinds)
	}
	var later wire.RolloutEvents
	e.call(t, "GET", "/v1/rollouts/r1/events?after=2", "", &later)
	if len(later.Events) != len(evs.Events)-2 || later.Events[0].Seq != 3 {
		t.Errorf("events after 2: %d from seq %v, want %d from 3", len(later.Events), later.Events, len(evs.Events)-2)
	}
}

func TestRolloutAll(t *testing.T) {
	e := newRolloutEnv(t, true)
	e.enroll(t, "b", nil)
	e.enroll(t, "a", map[string]string{"hw": "m1"})
	// Shadow-only devices (anonymous mode) count for all; a already runs
	// the target version.
	e.report(t, "c", firmware.Report{Version: "1.0.0", State: firmware.StateUpdated})
	e.report(t, "a", firmware.Report{Version: "2.0.0", State: firmware.StateUpdated})
	var r rollout.Rollout
	if status, raw := e.call(t, "POST", "/v1/rollouts", `{"firmware":"2.0.0","all":true}`, &r); status != http.StatusCreated || r.Targets != 3 || !r.All {
		t.Fatalf("create all = %d %s, want 201 over 3 devices", status, raw)
	}
	st := e.waitRollout(t, r.ID, func(st rollout.Status) bool { return st.Counts[rollout.DeviceAlreadyInstalled] == 1 })
	if got := e.targets(t, r.ID); got != "a,b,c" {
		t.Errorf("targets %s (status %v), want a,b,c sorted", got, st.Counts)
	}
}

// targets lists rollout id's devices in rollout order, comma separated.
func (e *rolloutEnv) targets(t *testing.T, id string) string {
	t.Helper()
	devs, err := e.planner.Devices(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	ids := make([]string, len(devs))
	for i, d := range devs {
		ids[i] = string(d.Device)
	}
	return strings.Join(ids, ",")
}

func TestRolloutCreateValidation(t *testing.T) {
	e := newRolloutEnv(t, true)
	e.enroll(t, "d1", map[string]string{"hw": "m2"})
	tests := []struct {
		name   string
		body   string
		status int
		msg    string // part of the message
	}{
		{"not JSON", `{"firmware":`, 400, "Invalid JSON"},
		{"not an object", `["d1"]`, 400, "JSON object"},
		{"null", `null`, 400, "JSON object"},
		{"trailing data", `{"firmware":"2.0.0","devices":["d1"]} {}`, 400, "after the object"},
		{"unknown field", `{"firmware":"2.0.0","devices":["d1"],"batchsize":3}`, 400, `Unknown field \"batchsize`},
		{"no targets", `{"firmware":"2.0.0"}`, 400, "exactly one"},
		{"two target kinds", `{"firmware":"2.0.0","devices":["d1"],"all":true}`, 400, "exactly one"},
		{"select and all", `{"firmware":"2.0.0","select":{"hw":"m2"},"all":true}`, 400, "exactly one"},
		{"empty devices", `{"firmware":"2.0.0","devices":[]}`, 400, "No device matches"},
		{"bad device ID", `{"firmware":"2.0.0","devices":["a/b"]}`, 400, "device ID"},
		{"empty select", `{"firmware":"2.0.0","select":{}}`, 400, "at least one label"},
		{"bad label key", `{"firmware":"2.0.0","select":{"-x":"1"}}`, 400, "key"},
		{"no device matches", `{"firmware":"2.0.0","select":{"hw":"m9"}}`, 400, "no device matches the selector"},
		{"missing firmware", `{"devices":["d1"]}`, 400, "Missing firmware"},
		{"bad firmware version", `{"firmware":"latest","devices":["d1"]}`, 400, "firmware"},
		{"unknown firmware", `{"firmware":"9.9.9","devices":["d1"]}`, 400, "9.9.9"},
		{"bad duration", `{"firmware":"2.0.0","devices":["d1"],"device_timeout":"soon"}`, 400, "duration"},
		{"duration as a number", `{"firmware":"2.0.0","devices":["d1"],"retry_backoff":30}`, 400, "duration string"},
		{"duration null", `{"firmware":"2.0.0","devices":["d1"],"url_ttl":null}`, 400, `Field \"url_ttl\" must be a duration string`},
		{"device timeout too short", `{"firmware":"2.0.0","devices":["d1"],"device_timeout":"10ms"}`, 400, "device timeout"},
		{"negative batch size", `{"firmware":"2.0.0","devices":["d1"],"batch_size":-1}`, 400, "negative"},
		{"size and percent", `{"firmware":"2.0.0","devices":["d1"],"batch_size":1,"batch_percent":10}`, 400, "not both"},
		{"bad on_failure", `{"firmware":"2.0.0","devices":["d1"],"on_failure":"explode"}`, 400, "on failure"},
		{"wrong type", `{"firmware":"2.0.0","devices":["d1"],"retries":"two"}`, 400, "retries"},
		{"window malformed", `{"firmware":"2.0.0","devices":["d1"],"window":"25:00-01:00"}`, 400, "want HH:MM-HH:MM"},
		{"window zone unknown", `{"firmware":"2.0.0","devices":["d1"],"window":"01:00-02:00","window_tz":"Mars/Base"}`, 400, "window tz"},
		{"window zone alone", `{"firmware":"2.0.0","devices":["d1"],"window_tz":"UTC"}`, 400, "without a window"},
		{"start_at not a time", `{"firmware":"2.0.0","devices":["d1"],"start_at":"tomorrow"}`, 400, "policy"},
		{"skip_incompatible not a bool", `{"firmware":"2.0.0","devices":["d1"],"skip_incompatible":"yes"}`, 400, "skip_incompatible"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, raw := e.call(t, "POST", "/v1/rollouts", tc.body, nil)
			if status != tc.status || !strings.Contains(raw, tc.msg) {
				t.Errorf("POST %s = %d %s, want %d with %q", tc.body, status, raw, tc.status, tc.msg)
			}
		})
	}
	var list wire.RolloutList
	if e.call(t, "GET", "/v1/rollouts", "", &list); len(list.Rollouts) != 0 {
		t.Errorf("%d rollouts after invalid requests, want 0", len(list.Rollouts))
	}
}

func TestRolloutRequestErrors(t *testing.T) {
	e := newRolloutEnv(t, true)
	e.enroll(t, "d1", nil)
	if status, raw := e.call(t, "POST", "/v1/rollouts", `{"firmware":"2.0.0","devices":["d1"]}`, nil); status != http.StatusCreated {
		t.Fatalf("create = %d %s", status, raw)
	}
	tests := []struct {
		method, path, body string
		status             int
	}{
		{"GET", "/v1/rollouts/r9", "", 404},
		{"GET", "/v1/rollouts/r9/devices", "", 404},
		{"GET", "/v1/rollouts/r9/events", "", 404},
		{"POST", "/v1/rollouts/r9/pause", "", 404},
		{"GET", "/v1/rollouts/r%21x", "", 400},
		{"GET", "/v1/rollouts/" + strings.Repeat("r", 65), "", 400},
		{"GET", "/v1/rollouts/r1/devices?state=broken", "", 400},
		{"GET", "/v1/rollouts/r1/devices?limit=0", "", 400},
		{"GET", "/v1/rollouts/r1/devices?limit=1001", "", 400},
		{"GET", "/v1/rollouts/r1/devices?cursor=-1", "", 400},
		{"GET", "/v1/rollouts/r1/events?after=x", "", 400},
		{"POST", "/v1/rollouts/r1/abort?rollback=maybe", "", 400},
		{"POST", "/v1/rollouts/r1/abort", `{"rollback":true,"force":1}`, 400},
		{"POST", "/v1/rollouts/r1/pause", `{"now":true}`, 400},
		{"POST", "/v1/rollouts/r1/retry", "", 409}, // still active
		{"DELETE", "/v1/rollouts/r1", "", 405},
		{"PUT", "/v1/rollouts", "", 405},
		{"POST", "/v1/rollouts", strings.Repeat(" ", httpapi.MaxRolloutBody+1), 413},
	}
	for _, tc := range tests {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			if status, raw := e.call(t, tc.method, tc.path, tc.body, nil); status != tc.status {
				t.Errorf("%s %s = %d %s, want %d", tc.method, tc.path, status, raw, tc.status)
			}
		})
	}
	// A closed planner answers 503.
	if err := e.planner.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{"/v1/rollouts", "/v1/rollouts/r1"} {
		if status, raw := e.call(t, "GET", path, "", nil); status != http.StatusServiceUnavailable {
			t.Errorf("GET %s with a closed planner = %d %s, want 503", path, status, raw)
		}
	}
}

func TestRolloutsUnavailable(t *testing.T) {
	e := newRolloutEnv(t, false)
	for _, tc := range []struct{ method, path, body string }{
		{"GET", "/v1/rollouts", ""},
		{"POST", "/v1/rollouts", `{"firmware":"2.0.0","devices":["d1"]}`},
		{"GET", "/v1/rollouts/r1", ""},
		{"POST", "/v1/rollouts/r1/abort", ""},
	} {
		if status, raw := e.call(t, tc.method, tc.path, tc.body, nil); status != http.StatusServiceUnavailable {
			t.Errorf("%s %s without a planner = %d %s, want 503", tc.method, tc.path, status, raw)
		}
	}
	// Enrolment works without a planner.
	if status, raw := e.call(t, "POST", "/v1/devices", `{"id":"d1"}`, nil); status != http.StatusCreated {
		t.Errorf("enroll without a planner = %d %s, want 201", status, raw)
	}
}

// TestServerRolloutsAtOpen: the planner is given at Open; a nil one (also
// a typed nil) leaves the rollout routes answering 503.
func TestServerRolloutsAtOpen(t *testing.T) {
	e := newRolloutEnv(t, true) // for its planner
	for _, tc := range []struct {
		name     string
		rollouts httpapi.Rollouts
		want     int
	}{
		{"planner", e.planner, http.StatusOK},
		{"nil", nil, http.StatusServiceUnavailable},
		{"typed nil planner", (*rollout.Planner)(nil), http.StatusServiceUnavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := httpapi.Open(t.Context(), httpapi.Config{Addr: "127.0.0.1:0", Shadow: e.eng, Rollouts: tc.rollouts, Logger: testLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close(context.Background())
			req, _ := http.NewRequestWithContext(t.Context(), "GET", "http://"+s.Addr().String()+"/v1/rollouts", nil)
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			res.Body.Close()
			if res.StatusCode != tc.want {
				t.Errorf("GET /v1/rollouts = %d, want %d", res.StatusCode, tc.want)
			}
		})
	}
}

func TestRolloutRoles(t *testing.T) {
	e := newRolloutEnv(t, true)
	e.enroll(t, "d1", nil)
	secret, err := e.ids.AddDevice(t.Context(), "dev", nil)
	if err != nil {
		t.Fatal(err)
	}
	create := `{"firmware":"2.0.0","devices":["d1"]}`
	tests := []struct {
		name, token, method, path, body string
		status                          int
	}{
		{"no token", "", "GET", "/v1/rollouts", "", 401},
		{"integrator lists", e.reader, "GET", "/v1/rollouts", "", 200},
		{"integrator may not create", e.reader, "POST", "/v1/rollouts", create, 403},
		{"device may not list", "dev:" + secret, "GET", "/v1/rollouts", "", 403},
		{"operator creates", e.ops, "POST", "/v1/rollouts", create, 201},
		{"integrator reads status", e.reader, "GET", "/v1/rollouts/r1", "", 200},
		{"integrator reads devices", e.reader, "GET", "/v1/rollouts/r1/devices", "", 200},
		{"integrator reads events", e.reader, "GET", "/v1/rollouts/r1/events", "", 200},
		{"integrator may not pause", e.reader, "POST", "/v1/rollouts/r1/pause", "", 403},
		{"integrator may not abort", e.reader, "POST", "/v1/rollouts/r1/abort", "", 403},
		{"operator pauses", e.ops, "POST", "/v1/rollouts/r1/pause", "", 200},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if status, _, raw := doAuth(t, e.srv, tc.method, tc.path, tc.token, tc.body, nil); status != tc.status {
				t.Errorf("%s %s = %d %s, want %d", tc.method, tc.path, status, raw, tc.status)
			}
		})
	}
}

func TestDynamicEnrolment(t *testing.T) {
	e := newRolloutEnv(t, true)
	e.enroll(t, "m2-a", map[string]string{"hw": "m2"})
	e.enroll(t, "m1-a", map[string]string{"hw": "m1"})
	for _, body := range []string{
		`{"firmware":"2.0.0","select":{"hw":"m2"},"dynamic":true}`, // r1
		`{"firmware":"2.0.0","select":{"hw":"m1"}}`,                // r2: not dynamic
	} {
		if status, raw := e.call(t, "POST", "/v1/rollouts", body, nil); status != http.StatusCreated {
			t.Fatalf("create %s = %d %s", body, status, raw)
		}
	}
	tests := []struct {
		id, labels string
		want       map[string]int // rollout → targets after the enrolment
	}{
		{"m2-b", `{"hw":"m2","region":"us"}`, map[string]int{"r1": 2, "r2": 1}},
		{"m1-b", `{"hw":"m1"}`, map[string]int{"r1": 2, "r2": 1}},
		{"plain", `{}`, map[string]int{"r1": 2, "r2": 1}},
	}
	for _, tc := range tests {
		t.Run(tc.id, func(t *testing.T) {
			body := fmt.Sprintf(`{"id":%q,"labels":%s}`, tc.id, tc.labels)
			if status, raw := e.call(t, "POST", "/v1/devices", body, nil); status != http.StatusCreated {
				t.Fatalf("enroll = %d %s, want 201", status, raw)
			}
			for id, n := range tc.want {
				st, err := e.planner.Get(t.Context(), id)
				if err != nil {
					t.Fatal(err)
				}
				if st.Targets != n {
					t.Errorf("%s has %d targets, want %d", id, st.Targets, n)
				}
			}
		})
	}
	// r3 lists its devices: enrolled devices never join it. r4 selects
	// region=eu: a device matching r1 and r4 joins r1 (the older), r4's
	// conflict is logged and the enrolment still succeeds.
	e.enroll(t, "solo", nil)
	e.enroll(t, "eu-1", map[string]string{"region": "eu"})
	for _, body := range []string{
		`{"firmware":"1.0.0","devices":["solo"],"dynamic":true}`,       // r3
		`{"firmware":"2.0.0","select":{"region":"eu"},"dynamic":true}`, // r4
	} {
		if status, raw := e.call(t, "POST", "/v1/rollouts", body, nil); status != http.StatusCreated {
			t.Fatalf("create %s = %d %s", body, status, raw)
		}
	}
	if status, raw := e.call(t, "POST", "/v1/devices", `{"id":"late","labels":{"hw":"m2","region":"eu"}}`, nil); status != http.StatusCreated {
		t.Fatalf("enroll late = %d %s", status, raw)
	}
	for id, n := range map[string]int{"r1": 3, "r3": 1, "r4": 1} {
		if st, _ := e.planner.Get(t.Context(), id); st.Targets != n {
			t.Errorf("after enrolling late: %s has %d targets, want %d", id, st.Targets, n)
		}
	}
}

func TestDynamicEnrolmentAll(t *testing.T) {
	e := newRolloutEnv(t, true)
	e.enroll(t, "a", nil)
	if status, raw := e.call(t, "POST", "/v1/rollouts", `{"firmware":"2.0.0","all":true,"dynamic":true}`, nil); status != http.StatusCreated {
		t.Fatalf("create = %d %s", status, raw)
	}
	// Pause: the new device joins an active rollout whatever its state.
	e.call(t, "POST", "/v1/rollouts/r1/pause", "", nil)
	if status, raw := e.call(t, "POST", "/v1/devices", `{"id":"b"}`, nil); status != http.StatusCreated {
		t.Fatalf("enroll = %d %s", status, raw)
	}
	var st rollout.Status
	if e.call(t, "GET", "/v1/rollouts/r1", "", &st); st.Targets != 2 {
		t.Errorf("targets %d, want 2", st.Targets)
	}
	// A finished rollout takes no one.
	e.call(t, "POST", "/v1/rollouts/r1/abort", "", nil)
	if status, raw := e.call(t, "POST", "/v1/devices", `{"id":"c"}`, nil); status != http.StatusCreated {
		t.Fatalf("enroll after abort = %d %s", status, raw)
	}
	if e.call(t, "GET", "/v1/rollouts/r1", "", &st); st.Targets != 2 {
		t.Errorf("targets after abort %d, want 2", st.Targets)
	}
}

// TestRolloutHardware: an image built for one hardware model is refused for
// targets labelled with another (409 listing them), or goes to the others
// with skip_incompatible; unlabelled devices are taken, and a dynamic
// rollout does not take a device of another model enrolled later.
func TestRolloutHardware(t *testing.T) {
	e := newRolloutEnv(t, true)
	if _, err := e.fw.Upload(t.Context(), firmware.UploadRequest{Version: "3.0.0", HW: "m2"}, strings.NewReader("image for m2")); err != nil {
		t.Fatal(err)
	}
	for id, hw := range map[device.ID]string{"a-m2": "m2", "b-m3": "m3", "c-none": "", "d-m1": "m1"} {
		labels := map[string]string{"site": "x"}
		if hw != "" {
			labels["hw"] = hw
		}
		e.enroll(t, id, labels)
	}
	e.enroll(t, "x-m1", map[string]string{"hw": "m1"}) // outside site=x
	e.enroll(t, "x-none", nil)
	type answer struct {
		Message      string                    `json:"message"`
		Incompatible []wire.IncompatibleDevice `json:"incompatible"`
		ID           string                    `json:"id"`
		Targets      int                       `json:"targets"`
		Excluded     int                       `json:"excluded"`
	}
	tests := []struct {
		name, body   string
		status       int
		incompatible string // IDs listed in a 409
		targets      int
		excluded     int
	}{
		{"refused", `{"firmware":"3.0.0","select":{"site":"x"}}`, http.StatusConflict, "b-m3,d-m1", 0, 0},
		{"explicit list refused", `{"firmware":"3.0.0","devices":["d-m1"]}`, http.StatusConflict, "d-m1", 0, 0},
		{"version with a v refused too", `{"firmware":"v3.0.0","devices":["d-m1"]}`, http.StatusConflict, "d-m1", 0, 0},
		{"invalid version", `{"firmware":"three","devices":["d-m1"]}`, http.StatusBadRequest, "", 0, 0},
		{"duplicates counted once", `{"firmware":"3.0.0","devices":["x-none","x-m1","x-m1"],"skip_incompatible":true}`, http.StatusCreated, "", 1, 1},
		{"nothing left", `{"firmware":"3.0.0","devices":["d-m1","b-m3"],"skip_incompatible":true}`, http.StatusBadRequest, "", 0, 0},
		{"image for any hardware", `{"firmware":"2.0.0","devices":["d-m1"]}`, http.StatusCreated, "", 1, 0},
		{"skipped", `{"firmware":"3.0.0","select":{"site":"x"},"skip_incompatible":true,"dynamic":true}`, http.StatusCreated, "", 2, 2},
	}
	var dynamic string
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got answer
			status, _, raw := doAuth(t, e.srv, "POST", "/v1/rollouts", e.ops, tc.body, nil)
			if err := json.Unmarshal([]byte(raw), &got); err != nil {
				t.Fatalf("answer %q: %v", raw, err)
			}
			if status != tc.status {
				t.Fatalf("status %d (%s), want %d", status, raw, tc.status)
			}
			var ids []string
			for _, d := range got.Incompatible {
				ids = append(ids, string(d.ID))
			}
			if strings.Join(ids, ",") != tc.incompatible {
				t.Errorf("incompatible %v, want %s", got.Incompatible, tc.incompatible)
			}
			if status == http.StatusCreated && (got.Targets != tc.targets || got.Excluded != tc.excluded) {
				t.Errorf("targets %d, excluded %d; want %d, %d", got.Targets, got.Excluded, tc.targets, tc.excluded)
			}
			if tc.status == http.StatusCreated && strings.Contains(tc.body, "dynamic") {
				dynamic = got.ID
			}
		})
	}
	if dynamic == "" {
		t.Fatal("the dynamic rollout was not created")
	}
	for _, body := range []string{`{"id":"e-m3","labels":{"site":"x","hw":"m3"}}`, `{"id":"f-m2","labels":{"site":"x","hw":"m2"}}`} {
		if status, raw := e.call(t, "POST", "/v1/devices", body, nil); status != http.StatusCreated {
			t.Fatalf("enroll %s = %d %s", body, status, raw)
		}
	}
	if got := e.targets(t, dynamic); got != "a-m2,c-none,f-m2" {
		t.Errorf("dynamic rollout targets %s, want a-m2,c-none,f-m2", got)
	}
}

// TestRolloutDryRun: POST /v1/rollouts?dry_run=true answers the rollout
// as it would be created (targets, batches, no ID) and stores nothing; a
// bad spec is the same 400 as without it, a bad dry_run value a 400.
func TestRolloutDryRun(t *testing.T) {
	e := newRolloutEnv(t, true)
	for i := range 25 {
		e.enroll(t, device.ID(fmt.Sprintf("p%02d", i)), map[string]string{"hw": "m2"})
	}
	var ro wire.Rollout
	status, raw := e.call(t, "POST", "/v1/rollouts?dry_run=true", `{"firmware":"2.0.0","select":{"hw":"m2"},"first_batch":5,"batch_size":10}`, &ro)
	if status != 200 || ro.ID != "" || ro.Targets != 25 || len(ro.Batches) != 3 || ro.Batches[0].Size != 5 || ro.Batches[1].Size != 10 || ro.Batches[2].Size != 10 {
		t.Errorf("dry run = %d %s, want 200 with 25 targets in batches 5, 10, 10 and no ID", status, raw)
	}
	for _, c := range []struct{ query, body, msg string }{
		{"dry_run=true", `{"firmware":"2.0.0","select":{"hw":"m9"}}`, "no device matches"},
		{"dry_run=yes", `{"firmware":"2.0.0","select":{"hw":"m2"}}`, "dry_run"},
	} {
		if status, raw := e.call(t, "POST", "/v1/rollouts?"+c.query, c.body, nil); status != 400 || !strings.Contains(raw, c.msg) {
			t.Errorf("?%s %s = %d %s, want 400 with %q", c.query, c.body, status, raw, c.msg)
		}
	}
	var list wire.RolloutList
	if e.call(t, "GET", "/v1/rollouts", "", &list); len(list.Rollouts) != 0 {
		t.Errorf("%d rollouts after dry runs, want 0", len(list.Rollouts))
	}
}
