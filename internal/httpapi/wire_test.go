package httpapi_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/umbra-iot/umbra/firmware"
	"github.com/umbra-iot/umbra/internal/rolloutwire"
	"github.com/umbra-iot/umbra/rollout"
	"github.com/umbra-iot/umbra/wire"
)

// strict decodes raw into a new T refusing unknown fields: the answer
// holds nothing its wire type does not declare.
func strict[T any](t *testing.T, what, raw string) T {
	t.Helper()
	var v T
	dec := json.NewDecoder(strings.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil {
		t.Errorf("%s: answer %s does not decode strictly into %T: %v", what, raw, v, err)
	}
	return v
}

// as returns a check that an answer decodes strictly into T.
func as[T any](t *testing.T, what, raw string) { t.Helper(); strict[T](t, what, raw) }

// TestAnswersAreWireTypes sends a request to every /v1 route and checks
// that each answer, errors included, is exactly its type in package wire.
func TestAnswersAreWireTypes(t *testing.T) {
	e := newRolloutEnv(t, true)
	type step struct {
		method, path, body string
		status             int
		check              func(t *testing.T, what, raw string)
	}
	steps := []step{
		{"GET", "/healthz", "", 200, as[wire.Health]},
		{"POST", "/v1/devices", `{"id":"d1","labels":{"hw":"m2"}}`, 201, as[wire.SecretResponse]},
		{"POST", "/v1/identities/devices", `{"devices":[{"id":"d2","labels":{"hw":"m2"}}]}`, 201, as[wire.ImportResponse]},
		{"POST", "/v1/identities/devices", `{"devices":[{"id":"d/3"}]}`, 400, as[wire.ErrorBody]},
		{"GET", "/v1/identities/devices", "", 200, as[wire.IdentityList]},
		{"POST", "/v1/devices/d2/rotate", "", 200, as[wire.SecretResponse]},
		{"POST", "/v1/tokens", `{"name":"t1","role":"integrator"}`, 201, as[wire.TokenResponse]},
		{"GET", "/v1/tokens", "", 200, as[wire.TokenList]},
		{"POST", "/v1/devices/d1/shadow?clientToken=c1", `{"state":{"desired":{"a":1},"reported":{"a":0}}}`, 200, as[wire.Shadow]},
		{"POST", "/v1/devices/d1/shadow?name=cfg", `{"state":{"reported":{"b":"x"}},"version":0}`, 200, as[wire.Shadow]},
		{"GET", "/v1/devices/d1/shadow", "", 200, as[wire.Shadow]},
		{"GET", "/v1/devices/d1/shadows", "", 200, as[wire.ShadowList]},
		{"GET", "/v1/devices", "", 200, as[wire.DeviceList]},
		{"POST", "/v1/devices/d1/shadow", `{"state":{"reported":{"a":2}},"version":7}`, 409, as[wire.ErrorBody]},
		{"DELETE", "/v1/devices/d1/shadow?name=cfg", "", 200, as[wire.Shadow]},
		{"GET", "/v1/devices/d9/shadow", "", 404, as[wire.ErrorBody]},
		{"GET", "/v1/firmware", "", 200, as[wire.ImageList]},
		{"GET", "/v1/firmware/2.0.0", "", 200, as[wire.Image]},
		{"GET", "/v1/firmware/pubkey", "", 200, as[wire.PublicKey]},
		{"POST", "/v1/firmware/2.0.0/url", `{"device":"d1","ttl":"10m"}`, 200, as[wire.URLResponse]},
		{"POST", "/v1/firmware/1.0.0/assign", `{"device":"d1"}`, 200, as[wire.Shadow]},
		{"POST", "/v1/rollouts", `{"firmware":"2.0.0","devices":["d1","d2"],"batch_size":1,"device_timeout":"10m"}`, 201, as[wire.Rollout]},
		{"POST", "/v1/rollouts", `{"firmware":"2.0.0","devices":["d2"]}`, 409, as[wire.ErrorBody]},
		{"GET", "/v1/rollouts", "", 200, as[wire.RolloutList]},
		{"GET", "/v1/rollouts/r1", "", 200, as[wire.RolloutStatus]},
		{"GET", "/v1/rollouts/r1/devices?limit=1", "", 200, as[wire.RolloutDevices]},
		{"GET", "/v1/rollouts/r1/events", "", 200, as[wire.RolloutEvents]},
		{"POST", "/v1/rollouts/r1/pause", "", 200, as[wire.Rollout]},
		{"POST", "/v1/rollouts/r1/resume", "", 200, as[wire.Rollout]},
		{"POST", "/v1/rollouts/r1/abort", `{"rollback":true}`, 200, as[wire.Rollout]},
		{"POST", "/v1/rollouts/r1/retry", "", 409, as[wire.ErrorBody]},
		// force: d1 may still want 1.0.0 (assigned above), depending on
		// whether the planner wrote d1's command before the abort.
		{"DELETE", "/v1/firmware/1.0.0?force=true", "", 200, as[wire.DeletedImage]},
		{"DELETE", "/v1/tokens/t1", "", 204, nil},
		{"DELETE", "/v1/devices/d2", "", 204, nil},
	}
	for _, s := range steps {
		what := s.method + " " + s.path
		status, raw := e.call(t, s.method, s.path, s.body, nil)
		if status != s.status {
			t.Fatalf("%s = %d %s, want %d", what, status, raw, s.status)
		}
		if s.check != nil {
			s.check(t, what, raw)
		}
	}
	if _, err := e.fw.Upload(t.Context(), firmware.UploadRequest{Version: "3.0.0", HW: "m3"}, strings.NewReader("m3 image")); err != nil {
		t.Fatal(err)
	}
	status, raw := e.call(t, "POST", "/v1/rollouts", `{"firmware":"3.0.0","devices":["d1"]}`, nil)
	if eb := strict[wire.ErrorBody](t, "incompatible", raw); status != http.StatusConflict || len(eb.Incompatible) != 1 {
		t.Errorf("incompatible rollout = %d %s, want 409 listing d1", status, raw)
	}
}

// TestRolloutAnswersLeaveBookkeepingOut: the planner's bookkeeping
// (rolloutwire.Dropped) is in no rollout answer, though the planner set it.
func TestRolloutAnswersLeaveBookkeepingOut(t *testing.T) {
	e := newRolloutEnv(t, true)
	e.enroll(t, "d1", nil)
	e.report(t, "d1", firmware.Report{Version: "1.0.0", State: firmware.StateUpdated})
	if status, raw := e.call(t, "POST", "/v1/rollouts", `{"firmware":"2.0.0","devices":["d1"],"pause_between_batches":true}`, nil); status != http.StatusCreated {
		t.Fatalf("create = %d %s", status, raw)
	}
	e.call(t, "POST", "/v1/rollouts/r1/pause", "", nil)
	e.call(t, "POST", "/v1/rollouts/r1/resume", "", nil) // sets forced and approved
	e.report(t, "d1", firmware.Report{Version: "2.0.0", State: firmware.StateUpdated, Job: "r1/1"})
	st := e.waitRollout(t, "r1", func(st rollout.Status) bool { return !st.State.Active() })
	if len(st.Versions) == 0 || st.Forced == 0 {
		t.Fatalf("planner status %+v: want versions and forced set, or the test proves nothing", st.Rollout)
	}
	for _, path := range []string{"/v1/rollouts/r1", "/v1/rollouts"} {
		status, raw := e.call(t, "GET", path, "", nil)
		if status != http.StatusOK {
			t.Fatalf("GET %s = %d %s", path, status, raw)
		}
		for _, k := range rolloutwire.Dropped {
			if strings.Contains(raw, fmt.Sprintf("%q:", k)) {
				t.Errorf("GET %s = %s: has bookkeeping field %q", path, raw, k)
			}
		}
	}
	status, raw := e.call(t, "GET", "/v1/rollouts/r1", "", nil)
	var want bytes.Buffer
	enc := json.NewEncoder(&want)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(rolloutwire.Status(st))
	if status != http.StatusOK || strings.TrimSpace(raw) != strings.TrimSpace(want.String()) {
		t.Errorf("GET /v1/rollouts/r1 = %s, want rolloutwire.Status of the planner's: %s", raw, want.String())
	}
}
