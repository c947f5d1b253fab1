package httpapi_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/identity"
	"github.com/umbra-iot/umbra/identity/identitytest"
	"github.com/umbra-iot/umbra/internal/httpapi"
	"github.com/umbra-iot/umbra/wire"
)

// newSecureAPI serves the API with Authenticate and IdentityRoutes over a
// real identity store, and returns an operator's bearer token.
func newSecureAPI(t *testing.T, anonymous bool) (*httptest.Server, *identity.Store, string) {
	t.Helper()
	ids := identitytest.Open(t, "", identity.Config{Logger: testLogger(t)})
	secret, err := ids.CreateToken(t.Context(), identity.RoleOperator, "ops")
	if err != nil {
		t.Fatal(err)
	}
	auth := httpapi.Authenticate(ids, anonymous)
	srv, _ := newAPI(t, httpapi.Config{Middleware: auth, Presence: ids.Presence, Mounts: httpapi.IdentityRoutes(ids, auth, testLogger(t))})
	return srv, ids, "ops:" + secret
}

// doAuth sends a request with an optional bearer token (or a "Basic …"
// header, sent as is) and decodes a JSON
// body into out (if not nil).
func doAuth(t *testing.T, srv *httptest.Server, method, path, token, body string, out any) (int, http.Header, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	setContentType(req)
	switch {
	case strings.HasPrefix(token, "Basic "):
		req.Header.Set("Authorization", token) // another scheme, as is
	case token != "":
		req.Header.Set("Authorization", "Bearer "+token)
	}
	res, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	raw, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	if out != nil && res.StatusCode/100 == 2 {
		if err := json.Unmarshal(raw, out); err != nil {
			t.Fatalf("%s %s: body %q: %v", method, path, raw, err)
		}
	}
	if res.StatusCode >= 400 {
		var e struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
		}
		if err := json.Unmarshal(raw, &e); err != nil || e.Code != res.StatusCode || e.Message == "" {
			t.Errorf("%s %s: error body %q, want JSON with code %d and a message", method, path, raw, res.StatusCode)
		}
	}
	return res.StatusCode, res.Header, string(raw)
}

func TestAuthenticateRules(t *testing.T) {
	srv, ids, op := newSecureAPI(t, false)
	ctx := t.Context()
	secA, err := ids.AddDevice(ctx, "dev-a", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ids.AddDevice(ctx, "dev-b", nil); err != nil {
		t.Fatal(err)
	}
	integSecret, err := ids.CreateToken(ctx, identity.RoleIntegrator, "dash")
	if err != nil {
		t.Fatal(err)
	}
	devA, integ := "dev-a:"+secA, "dash:"+integSecret
	const update = `{"state":{"reported":{"x":1}}}`

	tests := []struct {
		name, method, path, token, body string
		want                            int
	}{
		{"no header", "GET", "/v1/devices", "", "", http.StatusUnauthorized},
		{"not bearer", "GET", "/v1/devices", "Basic abc", "", http.StatusUnauthorized},
		{"wrong secret", "GET", "/v1/devices", "ops:wrong", "", http.StatusUnauthorized},
		{"unknown name", "GET", "/v1/devices", "nobody:" + secA, "", http.StatusUnauthorized},
		{"operator lists", "GET", "/v1/devices", op, "", http.StatusOK},
		{"operator writes", "POST", "/v1/devices/dev-b/shadow", op, update, http.StatusOK},
		{"device own get", "GET", "/v1/devices/dev-a/shadow", devA, "", http.StatusNotFound},
		{"device own update", "POST", "/v1/devices/dev-a/shadow", devA, update, http.StatusOK},
		{"device other get", "GET", "/v1/devices/dev-b/shadow", devA, "", http.StatusForbidden},
		{"device other update", "POST", "/v1/devices/dev-b/shadow", devA, update, http.StatusForbidden},
		{"device other delete", "DELETE", "/v1/devices/dev-b/shadow", devA, "", http.StatusForbidden},
		{"device own named update", "POST", "/v1/devices/dev-a/shadow?name=cfg", devA, update, http.StatusOK},
		{"device own named get", "GET", "/v1/devices/dev-a/shadow?name=cfg", devA, "", http.StatusOK},
		{"device own shadows", "GET", "/v1/devices/dev-a/shadows", devA, "", http.StatusOK},
		{"device other named update", "POST", "/v1/devices/dev-b/shadow?name=cfg", devA, update, http.StatusForbidden},
		{"device other shadows", "GET", "/v1/devices/dev-b/shadows", devA, "", http.StatusForbidden},
		{"integrator lists shadows", "GET", "/v1/devices/dev-b/shadows", integ, "", http.StatusOK},
		{"integrator named update", "POST", "/v1/devices/dev-b/shadow?name=cfg", integ, update, http.StatusForbidden},
		{"device lists", "GET", "/v1/devices", devA, "", http.StatusForbidden},
		{"device enrolls", "POST", "/v1/devices", devA, `{"id":"dev-c"}`, http.StatusForbidden},
		{"integrator reads", "GET", "/v1/devices/dev-b/shadow", integ, "", http.StatusOK},
		{"integrator lists identities", "GET", "/v1/identities/devices", integ, "", http.StatusOK},
		{"integrator updates", "POST", "/v1/devices/dev-b/shadow", integ, update, http.StatusForbidden},
		{"integrator enrolls", "POST", "/v1/devices", integ, `{"id":"dev-c"}`, http.StatusForbidden},
		{"integrator lists tokens", "GET", "/v1/tokens", integ, "", http.StatusForbidden},
		{"health is open", "GET", "/healthz", "", "", http.StatusOK},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st, h, raw := doAuth(t, srv, tc.method, tc.path, tc.token, tc.body, nil)
			if st != tc.want {
				t.Fatalf("%s %s = %d %s, want %d", tc.method, tc.path, st, raw, tc.want)
			}
			if got := h.Get("WWW-Authenticate"); (st == http.StatusUnauthorized) != strings.HasPrefix(got, "Bearer") {
				t.Errorf("WWW-Authenticate = %q with status %d, want Bearer exactly on 401", got, st)
			}
		})
	}
}

func TestAuthenticateAnonymous(t *testing.T) {
	srv, _, _ := newSecureAPI(t, true)
	if st, _, raw := doAuth(t, srv, "POST", "/v1/devices", "", `{"id":"dev-x"}`, nil); st != http.StatusCreated {
		t.Fatalf("anonymous POST /v1/devices = %d %s, want 201", st, raw)
	}
}

// TestIdentityRoutes enrolls, lists, rotates and removes a device and
// creates, lists and revokes a token, checking that each secret works
// exactly as long as it should.
func TestIdentityRoutes(t *testing.T) {
	srv, _, op := newSecureAPI(t, false)
	var enrolled wire.SecretResponse
	if st, _, raw := doAuth(t, srv, "POST", "/v1/devices", op, `{"id":"dev-1","labels":{"site":"lab"}}`, &enrolled); st != http.StatusCreated || enrolled.Secret == "" {
		t.Fatalf("enroll = %d %s, want 201 with a secret", st, raw)
	}
	dev := "dev-1:" + enrolled.Secret
	if st, _, _ := doAuth(t, srv, "GET", "/v1/devices/dev-1/shadow", dev, "", nil); st != http.StatusNotFound {
		t.Errorf("enrolled device GET own shadow = %d, want 404 (authenticated, no shadow yet)", st)
	}
	var list wire.IdentityList
	doAuth(t, srv, "GET", "/v1/identities/devices", op, "", &list)
	if len(list.Devices) != 1 || list.Devices[0].ID != "dev-1" || list.Devices[0].Labels["site"] != "lab" || list.Devices[0].Presence.Connected {
		t.Errorf("identities = %+v, want dev-1 site=lab, offline", list.Devices)
	}
	var rotated wire.SecretResponse
	doAuth(t, srv, "POST", "/v1/devices/dev-1/rotate", op, "", &rotated)
	if rotated.Secret == "" || rotated.Secret == enrolled.Secret {
		t.Fatalf("rotate gave %q, want a new secret", rotated.Secret)
	}
	if st, _, _ := doAuth(t, srv, "GET", "/v1/devices/dev-1/shadow", dev, "", nil); st != http.StatusUnauthorized {
		t.Errorf("old secret after rotate = %d, want 401", st)
	}
	var tok wire.TokenResponse
	if st, _, raw := doAuth(t, srv, "POST", "/v1/tokens", op, `{"name":"ci","role":"integrator"}`, &tok); st != http.StatusCreated || !strings.HasPrefix(tok.Token, "ci:") {
		t.Fatalf("create token = %d %s, want 201 with ci:<secret>", st, raw)
	}
	var toks wire.TokenList
	doAuth(t, srv, "GET", "/v1/tokens", op, "", &toks)
	if len(toks.Tokens) != 2 || strings.Contains(mustJSON(t, toks), strings.TrimPrefix(tok.Token, "ci:")) {
		t.Errorf("tokens = %+v, want ops and ci without secrets", toks.Tokens)
	}

	errTests := []struct {
		name, method, path, body string
		want                     int
	}{
		{"enroll again", "POST", "/v1/devices", `{"id":"dev-1"}`, http.StatusConflict},
		{"enroll bad id", "POST", "/v1/devices", `{"id":"a b"}`, http.StatusBadRequest},
		{"enroll unknown field", "POST", "/v1/devices", `{"id":"dev-2","secret":"x"}`, http.StatusBadRequest},
		{"enroll bad label", "POST", "/v1/devices", `{"id":"dev-2","labels":{"":"x"}}`, http.StatusBadRequest},
		{"enroll not json", "POST", "/v1/devices", `nope`, http.StatusBadRequest},
		{"enroll too large", "POST", "/v1/devices", `{"id":"` + strings.Repeat("x", 20<<10) + `"}`, http.StatusRequestEntityTooLarge},
		{"rotate unknown", "POST", "/v1/devices/dev-9/rotate", "", http.StatusNotFound},
		{"token bad role", "POST", "/v1/tokens", `{"name":"x","role":"device"}`, http.StatusBadRequest},
		{"token taken by device", "POST", "/v1/tokens", `{"name":"dev-1","role":"operator"}`, http.StatusConflict},
		{"revoke unknown", "DELETE", "/v1/tokens/none", "", http.StatusNotFound},
		{"remove", "DELETE", "/v1/devices/dev-1", "", http.StatusNoContent},
		{"remove again", "DELETE", "/v1/devices/dev-1", "", http.StatusNotFound},
		{"revoke", "DELETE", "/v1/tokens/ci", "", http.StatusNoContent},
	}
	for _, tc := range errTests {
		t.Run(tc.name, func(t *testing.T) {
			if st, _, raw := doAuth(t, srv, tc.method, tc.path, op, tc.body, nil); st != tc.want {
				t.Errorf("%s %s = %d %s, want %d", tc.method, tc.path, st, raw, tc.want)
			}
		})
	}
	for name, cred := range map[string]string{"removed device": "dev-1:" + rotated.Secret, "revoked token": tok.Token} {
		if st, _, _ := doAuth(t, srv, "GET", "/v1/devices/dev-1/shadow", cred, "", nil); st != http.StatusUnauthorized {
			t.Errorf("%s: GET = %d, want 401", name, st)
		}
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestListPresence: with Config.Presence, GET /v1/devices carries each
// device's presence.
func TestListPresence(t *testing.T) {
	srv, ids, op := newSecureAPI(t, false)
	for _, id := range []string{"dev-on", "dev-off"} {
		if st, _, raw := doAuth(t, srv, "POST", "/v1/devices/"+id+"/shadow", op, `{"state":{"desired":{"x":1}}}`, nil); st != http.StatusOK {
			t.Fatalf("create %s = %d %s", id, st, raw)
		}
	}
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	ids.Connected("dev-on", 1, at, "127.0.0.1:5555")
	var list struct {
		Devices []struct {
			ID       string         `json:"id"`
			Version  int            `json:"version"`
			Presence *wire.Presence `json:"presence"`
		} `json:"devices"`
	}
	doAuth(t, srv, "GET", "/v1/devices", op, "", &list)
	want := map[string]bool{"dev-on": true, "dev-off": false}
	if len(list.Devices) != 2 {
		t.Fatalf("got %d devices, want 2", len(list.Devices))
	}
	for _, d := range list.Devices {
		if d.Presence == nil || d.Presence.Connected != want[d.ID] || d.Version != 1 {
			t.Errorf("%s: presence %+v version %d, want connected=%v version 1", d.ID, d.Presence, d.Version, want[d.ID])
		}
	}
	if p := list.Devices[1].Presence; list.Devices[1].ID == "dev-on" && !p.ConnectedAt.Equal(at) {
		t.Errorf("dev-on connectedAt = %v, want %v", p.ConnectedAt, at)
	}
}
