package httpapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/internal/httpapi"
	"github.com/umbra-iot/umbra/internal/waitfor"
	"github.com/umbra-iot/umbra/shadow"
	"github.com/umbra-iot/umbra/shadow/boltstore"
)

func TestMain(m *testing.M) { waitfor.Main(m) }

// message is one MQTT publish the engine made.
type message struct {
	topic   string
	payload string
}

// recorder is a shadow.Publisher that keeps every message.
type recorder struct {
	mu   sync.Mutex // guards msgs
	msgs []message
}

func (r *recorder) Publish(topic string, payload []byte, retain bool, qos byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.msgs = append(r.msgs, message{topic, string(payload)})
	return nil
}

// take returns and forgets the messages recorded so far.
func (r *recorder) take() []message {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := r.msgs
	r.msgs = nil
	return m
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// openEngine opens a shadow engine in t.TempDir(), closed on cleanup.
func openEngine(t testing.TB, cfg shadow.Config) *shadow.Engine {
	t.Helper()
	st, err := boltstore.Open(t.Context(), boltstore.Config{Path: filepath.Join(t.TempDir(), "shadow.db")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close(context.Background()) }) // after the engine's Cleanup below
	cfg.Store = st
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	eng, err := shadow.Open(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := eng.Close(context.Background()); err != nil {
			t.Errorf("close engine: %v", err)
		}
	})
	return eng
}

// newAPI serves cfg's routes over httptest; cfg.Shadow defaults to a fresh
// engine publishing into the returned recorder.
func newAPI(t *testing.T, cfg httpapi.Config) (*httptest.Server, *recorder) {
	t.Helper()
	rec := &recorder{}
	if cfg.Shadow == nil {
		cfg.Shadow = openEngine(t, shadow.Config{Publisher: rec})
	}
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	h, err := httpapi.NewHandler(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv, rec
}

// setContentType declares req's body, if any, as the API requires: a raw
// image for POST /v1/firmware, JSON everywhere else.
func setContentType(req *http.Request) {
	if req.ContentLength == 0 {
		return
	}
	if req.Method == http.MethodPost && req.URL.Path == "/v1/firmware" {
		req.Header.Set("Content-Type", "application/octet-stream")
		return
	}
	req.Header.Set("Content-Type", "application/json")
}

// response is a decoded HTTP response.
type response struct {
	status int
	header http.Header
	raw    string
	body   map[string]any
}

func do(t *testing.T, srv *httptest.Server, method, path, body string) response {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	setContentType(req)
	res, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	raw, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	r := response{status: res.StatusCode, header: res.Header, raw: string(raw)}
	if ct := res.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s %s: Content-Type %q, want application/json", method, path, ct)
	}
	if err := json.Unmarshal(raw, &r.body); err != nil {
		t.Errorf("%s %s: body %q is not a JSON object: %v", method, path, raw, err)
	}
	return r
}

// check compares each key of want with the body's value at that key (both
// compared as JSON), and the status.
func (r response) check(t *testing.T, name string, status int, want map[string]any) {
	t.Helper()
	if r.status != status {
		t.Errorf("%s: status %d, want %d (body %s)", name, r.status, status, r.raw)
	}
	if r.status >= 400 {
		if code, ok := r.body["code"].(float64); !ok || int(code) != r.status {
			t.Errorf("%s: body code %v, want %d (body %s)", name, r.body["code"], r.status, r.raw)
		}
		if msg, _ := r.body["message"].(string); msg == "" {
			t.Errorf("%s: no message in error body %s", name, r.raw)
		}
	}
	for k, w := range want {
		got, _ := json.Marshal(r.body[k])
		wantJSON, _ := json.Marshal(w)
		if !bytes.Equal(got, wantJSON) {
			t.Errorf("%s: %s = %s, want %s (body %s)", name, k, got, wantJSON, r.raw)
		}
	}
}

func TestRoutes(t *testing.T) {
	srv, _ := newAPI(t, httpapi.Config{})
	big := `{"state":{"desired":{"blob":"` + strings.Repeat("x", httpapi.DefaultMaxBodyBytes) + `"}}}`
	overDoc := `{"state":{"desired":{"blob":"` + strings.Repeat("x", shadow.DefaultMaxDocumentSize) + `"}}}`
	// The steps run in order against one engine: each sees the state the
	// ones before it left.
	steps := []struct {
		name, method, path, body string
		status                   int
		want                     map[string]any
	}{
		{"health", "GET", "/healthz", "", 200, map[string]any{"status": "ok"}},
		{"empty list", "GET", "/v1/devices", "", 200, map[string]any{"devices": []any{}, "next": ""}},
		{"get missing", "GET", "/v1/devices/dev-1/shadow", "", 404, map[string]any{"message": "No shadow exists for device: dev-1"}},
		{"get missing echoes token", "GET", "/v1/devices/dev-1/shadow?clientToken=g0", "", 404, map[string]any{"clientToken": "g0"}},
		{"set desired, token in query", "POST", "/v1/devices/dev-1/shadow?clientToken=c1", `{"state":{"desired":{"color":"red"}}}`, 200,
			map[string]any{"version": 1, "clientToken": "c1", "state": map[string]any{"desired": map[string]any{"color": "red"}}}},
		{"report, token in body", "POST", "/v1/devices/dev-1/shadow", `{"state":{"reported":{"color":"blue"}},"clientToken":"c2"}`, 200,
			map[string]any{"version": 2, "clientToken": "c2"}},
		{"same token in query and body", "POST", "/v1/devices/dev-1/shadow?clientToken=c3", `{"state":{"reported":{"on":true}},"clientToken":"c3"}`, 200,
			map[string]any{"version": 3, "clientToken": "c3"}},
		{"version conflict", "POST", "/v1/devices/dev-1/shadow", `{"state":{"desired":{"color":"green"}},"version":1,"clientToken":"c4"}`, 409,
			map[string]any{"clientToken": "c4"}},
		{"bad JSON", "POST", "/v1/devices/dev-1/shadow?clientToken=c5", `{"state":`, 400, map[string]any{"clientToken": "c5"}},
		{"missing state", "POST", "/v1/devices/dev-1/shadow", `{}`, 400, map[string]any{"message": "Missing required node: state"}},
		{"empty update body", "POST", "/v1/devices/dev-1/shadow", ``, 400, nil},
		{"tokens differ", "POST", "/v1/devices/dev-1/shadow?clientToken=a", `{"state":{},"clientToken":"b"}`, 400, nil},
		{"token too long", "GET", "/v1/devices/dev-1/shadow?clientToken=" + strings.Repeat("t", 65), "", 400, nil},
		{"invalid id", "POST", "/v1/devices/bad*id/shadow", `{"state":{"desired":{"a":1}}}`, 400, nil},
		{"invalid id, escaped slash", "GET", "/v1/devices/bad%2Fid/shadow", "", 400, nil},
		{"id too long", "DELETE", "/v1/devices/" + strings.Repeat("a", 129) + "/shadow", "", 400, nil},
		{"body over the limit", "POST", "/v1/devices/dev-1/shadow", big, 413, nil},
		{"document over the limit", "POST", "/v1/devices/dev-1/shadow", overDoc, 413, nil},
		{"get", "GET", "/v1/devices/dev-1/shadow?clientToken=g1", "", 200, map[string]any{
			"version": 3, "clientToken": "g1",
			"state": map[string]any{"desired": map[string]any{"color": "red"}, "reported": map[string]any{"color": "blue", "on": true}, "delta": map[string]any{"color": "red"}}}},
		{"second device", "POST", "/v1/devices/dev-2/shadow", `{"state":{"reported":{"x":1}}}`, 200, map[string]any{"version": 1}},
		{"list page 1", "GET", "/v1/devices?limit=1", "", 200, map[string]any{"next": "dev-1"}},
		{"list page 2", "GET", "/v1/devices?limit=1&cursor=dev-1", "", 200, map[string]any{"next": ""}},
		{"list limit 0", "GET", "/v1/devices?limit=0", "", 400, nil},
		{"list limit 1001", "GET", "/v1/devices?limit=1001", "", 400, nil},
		{"list limit not a number", "GET", "/v1/devices?limit=ten", "", 400, nil},
		{"list limit empty", "GET", "/v1/devices?limit=", "", 400, nil},
		{"list bad cursor", "GET", "/v1/devices?cursor=a/b", "", 400, nil},
		{"wrong method on shadow", "PUT", "/v1/devices/dev-1/shadow", "{}", 405, nil},
		{"wrong method on list", "POST", "/v1/devices", "{}", 405, nil},
		{"wrong method on health", "DELETE", "/healthz", "", 405, nil},
		{"unknown path", "GET", "/v2/nothing", "", 404, nil},
		{"one device", "GET", "/v1/devices/dev-1", "", 200, map[string]any{"id": "dev-1", "enrolled": false}},
		{"one unknown device", "GET", "/v1/devices/nobody", "", 404, nil},
		{"one device, bad id", "GET", "/v1/devices/a%2Fb", "", 400, nil},
		{"delete", "DELETE", "/v1/devices/dev-1/shadow?clientToken=d1", "", 200, map[string]any{"version": 3, "clientToken": "d1"}},
		{"delete again", "DELETE", "/v1/devices/dev-1/shadow", "", 404, nil},
		{"delete with token in body", "DELETE", "/v1/devices/dev-2/shadow", `{"clientToken":"d2"}`, 200, map[string]any{"clientToken": "d2"}},
		{"list after deletes", "GET", "/v1/devices", "", 200, map[string]any{"devices": []any{}}},
	}
	for _, s := range steps {
		do(t, srv, s.method, s.path, s.body).check(t, s.name, s.status, s.want)
	}
}

func TestListPage(t *testing.T) {
	srv, _ := newAPI(t, httpapi.Config{})
	for _, id := range []string{"b", "a", "c"} {
		do(t, srv, "POST", "/v1/devices/"+id+"/shadow", `{"state":{"reported":{"v":1}}}`).check(t, "create "+id, 200, nil)
	}
	r := do(t, srv, "GET", "/v1/devices?limit=2", "")
	r.check(t, "list", 200, map[string]any{"next": "b"})
	devs, _ := r.body["devices"].([]any)
	if len(devs) != 2 {
		t.Fatalf("got %d devices, want 2: %s", len(devs), r.raw)
	}
	first, _ := devs[0].(map[string]any)
	if first["id"] != "a" || first["version"] != 1.0 {
		t.Errorf("first device = %v, want id a version 1", first)
	}
	if up, _ := first["updated"].(string); up == "" {
		t.Errorf("first device has no updated time: %v", first)
	} else if _, err := time.Parse(time.RFC3339Nano, up); err != nil {
		t.Errorf("updated %q: %v", up, err)
	}
}

func TestMethodNotAllowedAllow(t *testing.T) {
	srv, _ := newAPI(t, httpapi.Config{})
	tests := []struct {
		path, want string
	}{
		{"/v1/devices/x/shadow", "DELETE, GET, HEAD, POST"},
		{"/v1/devices/x/shadows", "GET, HEAD"},
		{"/v1/devices", "GET, HEAD"},
		{"/healthz", "GET, HEAD"},
	}
	for _, tc := range tests {
		r := do(t, srv, "PATCH", tc.path, "")
		if got := r.header.Get("Allow"); got != tc.want {
			t.Errorf("PATCH %s: Allow %q, want %q", tc.path, got, tc.want)
		}
	}
}

func TestUpdatePublishesOverMQTT(t *testing.T) {
	srv, rec := newAPI(t, httpapi.Config{})
	do(t, srv, "POST", "/v1/devices/lamp/shadow?clientToken=h1", `{"state":{"desired":{"color":"red"}}}`).check(t, "update", 200, nil)
	got := map[string]map[string]any{}
	for _, m := range rec.take() {
		var body map[string]any
		if err := json.Unmarshal([]byte(m.payload), &body); err != nil {
			t.Fatalf("%s: %v", m.topic, err)
		}
		got[m.topic] = body
	}
	for _, topic := range []string{"state/lamp/update/accepted", "state/lamp/update/delta", "state/lamp/update/documents"} {
		body, ok := got[topic]
		if !ok {
			t.Errorf("no message on %s; got %v", topic, got)
			continue
		}
		if body["clientToken"] != "h1" {
			t.Errorf("%s: clientToken %v, want h1", topic, body["clientToken"])
		}
	}
	if d := got["state/lamp/update/delta"]; d != nil {
		if st, _ := json.Marshal(d["state"]); string(st) != `{"color":"red"}` {
			t.Errorf("delta state = %s, want {\"color\":\"red\"}", st)
		}
	}

	// A rejected HTTP request is answered over HTTP only.
	do(t, srv, "POST", "/v1/devices/lamp/shadow", `{"state":{"desired":{"a":1}},"version":7}`).check(t, "conflict", 409, nil)
	if msgs := rec.take(); len(msgs) != 0 {
		t.Errorf("rejected update published %v, want nothing", msgs)
	}
}

// TestNamedShadowRoutes: ?name= addresses a named shadow on the shadow
// routes, GET /v1/devices/{id}/shadows lists a device's shadows, and bad
// names and the per-device cap are 400s in the shadow error shape that
// store nothing.
func TestNamedShadowRoutes(t *testing.T) {
	eng := openEngine(t, shadow.Config{MaxNamedShadows: 2})
	srv, _ := newAPI(t, httpapi.Config{Shadow: eng})
	shadowsOf := func(id string) string {
		r := do(t, srv, "GET", "/v1/devices/"+id+"/shadows", "")
		r.check(t, "list "+id, 200, map[string]any{"device": id})
		var names []string
		list, _ := r.body["shadows"].([]any)
		for _, e := range list {
			m, _ := e.(map[string]any)
			names = append(names, fmt.Sprintf("%v@%v", m["name"], m["version"]))
			if up, _ := m["updated"].(string); up == "" {
				t.Errorf("list %s: entry without updated: %s", id, r.raw)
			}
		}
		return strings.Join(names, ",")
	}
	steps := []struct {
		name, method, path, body string
		status                   int
		want                     map[string]any
	}{
		{"create named", "POST", "/v1/devices/d1/shadow?name=cfg&clientToken=n1", `{"state":{"desired":{"rate":5}}}`, 200, map[string]any{"version": 1, "clientToken": "n1"}},
		{"update named", "POST", "/v1/devices/d1/shadow?name=cfg", `{"state":{"reported":{"rate":5}},"version":1}`, 200, map[string]any{"version": 2}},
		{"classic is distinct", "GET", "/v1/devices/d1/shadow", "", 404, map[string]any{"message": "No shadow exists for device: d1"}},
		{"create classic", "POST", "/v1/devices/d1/shadow", `{"state":{"reported":{"on":true}}}`, 200, map[string]any{"version": 1}},
		{"get named", "GET", "/v1/devices/d1/shadow?name=cfg", "", 200, map[string]any{"version": 2, "state": map[string]any{"desired": map[string]any{"rate": 5}, "reported": map[string]any{"rate": 5}}}},
		{"second named", "POST", "/v1/devices/d1/shadow?name=ota", `{"state":{}}`, 200, map[string]any{"version": 1}},
		{"over the cap", "POST", "/v1/devices/d1/shadow?name=more&clientToken=n2", `{"state":{}}`, 400, map[string]any{"clientToken": "n2", "message": "Too many named shadows: device d1 has 2, the limit is 2; delete one first"}},
		{"bad name", "POST", "/v1/devices/d1/shadow?name=a.b&clientToken=n3", `{"state":{}}`, 400, map[string]any{"clientToken": "n3"}},
		{"reserved name", "GET", "/v1/devices/d1/shadow?name=%24package", "", 400, nil},
		{"empty name", "DELETE", "/v1/devices/d1/shadow?name=", "", 400, nil},
		{"name too long", "GET", "/v1/devices/d1/shadow?name=" + strings.Repeat("n", 65), "", 400, nil},
		{"name twice", "DELETE", "/v1/devices/d1/shadow?name=cfg&name=ota", "", 400, nil},
		{"named missing", "GET", "/v1/devices/d1/shadow?name=nope", "", 404, nil},
		{"list bad id", "GET", "/v1/devices/bad*id/shadows", "", 400, nil},
		{"list wrong method", "POST", "/v1/devices/d1/shadows", "{}", 405, nil},
	}
	for _, s := range steps {
		do(t, srv, s.method, s.path, s.body).check(t, s.name, s.status, s.want)
	}
	if r := do(t, srv, "POST", "/v1/devices/d1/shadow?name=a.b", `{"state":{}}`); r.body["timestamp"] == nil {
		t.Errorf("bad name error %s: want the shadow error shape with a timestamp", r.raw)
	}
	if got, want := shadowsOf("d1"), "@1,cfg@2,ota@1"; got != want {
		t.Errorf("shadows of d1 = %s, want %s (nothing stored by the rejected requests)", got, want)
	}
	do(t, srv, "DELETE", "/v1/devices/d1/shadow?name=cfg", "").check(t, "delete named", 200, map[string]any{"version": 2})
	if got, want := shadowsOf("d1"), "@1,ota@1"; got != want {
		t.Errorf("after deleting cfg: shadows %s, want %s", got, want)
	}
	if got := shadowsOf("nobody"); got != "" {
		t.Errorf("shadows of a device without any = %q, want none", got)
	}
}

func TestEngineErrors(t *testing.T) {
	t.Run("rate limited", func(t *testing.T) {
		eng := openEngine(t, shadow.Config{DeviceRate: 0.001, DeviceBurst: 1})
		srv, _ := newAPI(t, httpapi.Config{Shadow: eng})
		do(t, srv, "POST", "/v1/devices/d/shadow", `{"state":{"reported":{"a":1}}}`).check(t, "first", 200, nil)
		do(t, srv, "POST", "/v1/devices/d/shadow", `{"state":{"reported":{"a":2}}}`).check(t, "second", 429, nil)
	})
	t.Run("engine closed", func(t *testing.T) {
		eng := openEngine(t, shadow.Config{})
		srv, _ := newAPI(t, httpapi.Config{Shadow: eng})
		if err := eng.Close(t.Context()); err != nil {
			t.Fatal(err)
		}
		do(t, srv, "GET", "/v1/devices/d/shadow", "").check(t, "get after close", 503, nil)
	})
	t.Run("small body limit", func(t *testing.T) {
		srv, _ := newAPI(t, httpapi.Config{MaxBodyBytes: 16})
		do(t, srv, "POST", "/v1/devices/d/shadow", `{"state":{"reported":{"a":1}}}`).check(t, "over 16 bytes", 413,
			map[string]any{"message": "Request body larger than 16 bytes"})
	})
}

func TestMountsAndMiddleware(t *testing.T) {
	// The middleware stands in for authentication: it guards /v1 only.
	deny := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get("Authorization") != "" {
				next.ServeHTTP(w, r)
				return
			}
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = w.Write([]byte(`{"code":401,"message":"unauthorized"}`))
		})
	}
	srv, _ := newAPI(t, httpapi.Config{
		Middleware: deny,
		Mounts: map[string]http.Handler{
			"GET /fw/{sha}": http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				fmt.Fprintf(w, `{"sha":%q}`, r.PathValue("sha"))
			}),
			"GET /boom": http.HandlerFunc(func(http.ResponseWriter, *http.Request) { panic("boom") }),
		},
	})
	tests := []struct {
		name, method, path string
		status             int
		want               map[string]any
	}{
		{"mount served", "GET", "/fw/abc", 200, map[string]any{"sha": "abc"}},
		{"mount wrong method", "POST", "/fw/abc", 405, nil},
		{"panicking mount", "GET", "/boom", 500, map[string]any{"message": "Internal server error"}},
		{"middleware guards v1", "GET", "/v1/devices", 401, nil},
		{"middleware guards shadow", "GET", "/v1/devices/d/shadow", 401, nil},
		{"health not guarded", "GET", "/healthz", 200, nil},
	}
	for _, tc := range tests {
		do(t, srv, tc.method, tc.path, "").check(t, tc.name, tc.status, tc.want)
	}
}

func TestConfigErrors(t *testing.T) {
	eng := openEngine(t, shadow.Config{})
	ok := http.NotFoundHandler()
	tests := []struct {
		name string
		cfg  httpapi.Config
	}{
		{"no engine", httpapi.Config{}},
		{"negative body limit", httpapi.Config{Shadow: eng, MaxBodyBytes: -1}},
		{"nil mount", httpapi.Config{Shadow: eng, Mounts: map[string]http.Handler{"GET /x": nil}}},
		{"mount replaces a route", httpapi.Config{Shadow: eng, Mounts: map[string]http.Handler{"GET /healthz": ok}}},
		{"mount conflicts", httpapi.Config{Shadow: eng, Mounts: map[string]http.Handler{"GET /v1/devices/{x}/shadow": ok}}},
		{"malformed mount", httpapi.Config{Shadow: eng, Mounts: map[string]http.Handler{"GET": ok}}},
	}
	for _, tc := range tests {
		if _, err := httpapi.NewHandler(tc.cfg); !errors.Is(err, httpapi.ErrInvalidConfig) {
			t.Errorf("%s: NewHandler error %v, want ErrInvalidConfig", tc.name, err)
		}
		if s, err := httpapi.Open(t.Context(), tc.cfg); !errors.Is(err, httpapi.ErrInvalidConfig) {
			t.Errorf("%s: Open error %v, want ErrInvalidConfig", tc.name, err)
			if s != nil {
				_ = s.Close(t.Context())
			}
		}
	}
}

func TestOpenClose(t *testing.T) {
	eng := openEngine(t, shadow.Config{})
	s, err := httpapi.Open(t.Context(), httpapi.Config{Addr: "127.0.0.1:0", Shadow: eng, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	addr := s.Addr().String()
	if strings.HasSuffix(addr, ":0") {
		t.Fatalf("Addr() = %s, want the bound port", addr)
	}
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	res, err := client.Get("http://" + addr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 200 || strings.TrimSpace(string(body)) != `{"status":"ok"}` {
		t.Errorf("GET /healthz = %d %s, want 200 {\"status\":\"ok\"}", res.StatusCode, body)
	}

	// A second server cannot take the same address.
	if s2, err := httpapi.Open(t.Context(), httpapi.Config{Addr: addr, Shadow: eng}); err == nil {
		_ = s2.Close(t.Context())
		t.Errorf("Open on %s, which is taken: got no error, want one", addr)
	}

	for i := range 2 {
		if err := s.Close(t.Context()); err != nil {
			t.Errorf("Close #%d: %v", i+1, err)
		}
	}
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Errorf("dial %s after Close: got a connection, want an error", addr)
	}
}

func TestCloseWaitsForRequests(t *testing.T) {
	eng := openEngine(t, shadow.Config{})
	entered, release := make(chan struct{}), make(chan struct{})
	s, err := httpapi.Open(t.Context(), httpapi.Config{Addr: "127.0.0.1:0", Shadow: eng, Mounts: map[string]http.Handler{
		"GET /slow": http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			close(entered)
			<-release
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(`{"done":true}`))
		}),
	}})
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	type result struct {
		status int
		err    error
	}
	got := make(chan result, 1)
	go func() {
		res, err := client.Get("http://" + s.Addr().String() + "/slow")
		if err != nil {
			got <- result{err: err}
			return
		}
		res.Body.Close()
		got <- result{status: res.StatusCode}
	}()
	select {
	case <-entered:
	case <-time.After(5 * time.Second):
		t.Fatal("slow request never reached its handler")
	}
	closed := make(chan error, 1)
	go func() { closed <- s.Close(context.Background()) }()
	select {
	case err := <-closed:
		t.Fatalf("Close returned %v while a request was in progress, want it to wait", err)
	case <-time.After(100 * time.Millisecond):
		// Close is still waiting, as it should.
	}
	close(release)
	if r := <-got; r.err != nil || r.status != 200 {
		t.Errorf("in-flight request during Close: status %d err %v, want 200", r.status, r.err)
	}
	select {
	case err := <-closed:
		if err != nil {
			t.Errorf("Close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return after the request finished")
	}
}

// TestCloseDoesNotWaitForSilentConnections: a connection that has sent
// no request (an HTTP client's spare connection, a port scanner) does not
// hold Close: net/http's Shutdown waits up to 5 s for such a connection's
// first request (which, since it would arrive during shutdown, it would
// not serve), longer than a short --shutdown-grace. Close with a 4 s ctx
// returns nil, and the connection is closed.
func TestCloseDoesNotWaitForSilentConnections(t *testing.T) {
	for _, tc := range []struct {
		name  string
		conns int
	}{
		{"one", 1},
		{"several", 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			eng := openEngine(t, shadow.Config{})
			s, err := httpapi.Open(t.Context(), httpapi.Config{Addr: "127.0.0.1:0", Shadow: eng, Logger: testLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			var conns []net.Conn
			for range tc.conns {
				c, err := net.DialTimeout("tcp", s.Addr().String(), 5*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				conns = append(conns, c)
			}
			// A request on another connection, so that the server has
			// accepted (and registered) the silent ones before Close.
			res, err := http.Get("http://" + s.Addr().String() + "/healthz")
			if err != nil {
				t.Fatal(err)
			}
			res.Body.Close()
			http.DefaultClient.CloseIdleConnections()
			// 4 s: less than the 5 s net/http gives a new connection.
			ctx, cancel := context.WithTimeout(t.Context(), 4*time.Second)
			defer cancel()
			if err := s.Close(ctx); err != nil {
				t.Errorf("Close with %d silent connections = %v, want nil", tc.conns, err)
			}
			for i, c := range conns {
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				if n, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
					t.Errorf("silent connection %d after Close: read %d bytes, %v; want it closed", i, n, err)
				}
			}
		})
	}
}
