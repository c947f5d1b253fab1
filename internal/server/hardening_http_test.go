package server_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/umbra-iot/umbra/firmware"
	"github.com/umbra-iot/umbra/identity"
	"github.com/umbra-iot/umbra/internal/server"
)

// httpRig is a whole Umbra with the HTTP API and the WebSocket listener on
// 127.0.0.1:0, anonymous or secure, with a device "victim" whose shadow is
// at version 1 and an image 1.0.0.
type httpRig struct {
	*server.Server
	api, ws string // http://host:port and host:port
	token   string // operator bearer token; "" when anonymous
	secret  string // victim's secret; "" when anonymous
}

func mustOpenHTTPRig(t *testing.T, anonymous bool, origins ...string) *httpRig {
	t.Helper()
	dir := t.TempDir()
	s := mustOpenServer(t, server.Config{
		DataDir:        dir,
		MQTTAddr:       "127.0.0.1:0",
		WSAddr:         "127.0.0.1:0",
		HTTPAddr:       "127.0.0.1:0",
		Anonymous:      anonymous,
		DeviceRate:     -1, // snapshot reads the shadow after every request
		AllowedOrigins: origins,
		Logger:         testLogger(t),
	})
	r := &httpRig{Server: s, api: "http://" + s.HTTPAddr().String(), ws: s.Broker().WSAddr().String()}
	if !anonymous {
		tok, err := os.ReadFile(filepath.Join(dir, server.AdminTokenFile))
		if err != nil {
			t.Fatal(err)
		}
		r.token = strings.TrimSpace(string(tok))
		if r.secret, err = s.Identity().AddDevice(t.Context(), "victim", nil); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Engine().Update(t.Context(), "victim", []byte(`{"state":{"desired":{"door":"locked"}}}`)); err != nil {
		t.Fatal(err)
	}
	(&rig{Server: s}).mustUpload(t, "1.0.0")
	return r
}

// snapshot is everything a request in these tests could change, as text.
func (r *httpRig) snapshot(t *testing.T) string {
	t.Helper()
	ctx := t.Context()
	var d struct {
		Version int             `json:"version"`
		State   json.RawMessage `json:"state"`
	}
	if doc, err := r.Engine().Get(ctx, "victim", nil); err != nil {
		d.State = fmt.Appendf(nil, "%q", err) // deleted: the difference shows
	} else if err := json.Unmarshal(doc, &d); err != nil {
		t.Fatal(err)
	}
	toks, err := r.Identity().ListTokens(ctx)
	if err != nil {
		t.Fatal(err)
	}
	devs, err := r.Identity().ListDevices(ctx)
	if err != nil {
		t.Fatal(err)
	}
	secretOK := "n/a"
	if r.secret != "" {
		_, err := r.Identity().Verify(ctx, "victim", []byte(r.secret))
		secretOK = fmt.Sprint(err == nil)
	}
	imgs, err := r.Firmware().List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ros, err := r.Planner().List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("shadow v%d %s; tokens %v; devices %v (secret valid: %s); images %v; rollouts %d",
		d.Version, d.State, names(toks, func(x identity.Token) string { return x.Name }),
		names(devs, func(x identity.Device) string { return string(x.ID) }), secretOK,
		names(imgs, func(x firmware.Image) string { return string(x.Version) }), len(ros))
}

// names maps xs to their names.
func names[T any](xs []T, name func(T) string) []string {
	out := make([]string, len(xs))
	for i, x := range xs {
		out[i] = name(x)
	}
	return out
}

// send sends one request to the API with the operator token (if any) and
// headers hdr (a "" value deletes the header), and returns the status,
// header and body.
func (r *httpRig) send(t *testing.T, method, path string, hdr map[string]string, body []byte) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, r.api+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if r.token != "" {
		req.Header.Set("Authorization", "Bearer "+r.token)
	}
	for k, v := range hdr {
		if v == "" {
			req.Header.Del(k)
			continue
		}
		req.Header.Set(k, v)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res.StatusCode, res.Header, b
}

// checkJSONError fails unless the answer is a JSON error body whose code is
// status.
func checkJSONError(t *testing.T, what string, status int, hdr http.Header, body []byte) {
	t.Helper()
	if ct := hdr.Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s: Content-Type %q, want application/json (body %q)", what, ct, body)
	}
	var e struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	}
	if err := json.Unmarshal(body, &e); err != nil || e.Code != status || e.Message == "" {
		t.Errorf("%s: body %q, want a JSON error with code %d and a message", what, body, status)
	}
}

// multipartImage is a browser form upload of a firmware image.
func multipartImage(t *testing.T, version string) (ctype string, body []byte) {
	t.Helper()
	var b bytes.Buffer
	mw := multipart.NewWriter(&b)
	if err := mw.WriteField("version", version); err != nil {
		t.Fatal(err)
	}
	fw, err := mw.CreateFormFile("file", "evil.bin")
	if err != nil {
		t.Fatal(err)
	}
	fw.Write(bytes.Repeat([]byte("evil"), 1000))
	if err := mw.Close(); err != nil {
		t.Fatal(err)
	}
	return mw.FormDataContentType(), b.Bytes()
}

// TestHardening11CrossOriginRequestsChangeNothing: a state-changing request
// a browser page of another origin can send (a "simple" text/plain or form
// POST, with Origin or Sec-Fetch-Site: cross-site), or a JSON body not
// declared application/json, or a raw image not declared
// application/octet-stream, is refused with a JSON 403 or 415 and changes
// nothing stored, with authentication off and on. Before the fix, the
// text/plain shadow update and token creation returned 200 and 201.
func TestHardening11CrossOriginRequestsChangeNothing(t *testing.T) {
	const evil = "http://evil.example"
	shadowBody := []byte(`{"state":{"desired":{"door":"open"}}}`)
	tokenBody := []byte(`{"name":"pwned","role":"operator"}`)
	formCT, formBody := multipartImage(t, "6.6.6")
	tests := []struct {
		name   string
		method string
		path   string
		hdr    map[string]string
		body   []byte
		status int
	}{
		{"shadow text/plain from a page", "POST", "/v1/devices/victim/shadow", map[string]string{"Content-Type": "text/plain", "Origin": evil}, shadowBody, 403},
		{"shadow text/plain, Sec-Fetch-Site only", "POST", "/v1/devices/victim/shadow", map[string]string{"Content-Type": "text/plain", "Sec-Fetch-Site": "cross-site"}, shadowBody, 403},
		{"shadow JSON from a page", "POST", "/v1/devices/victim/shadow", map[string]string{"Content-Type": "application/json", "Origin": evil, "Sec-Fetch-Site": "cross-site"}, shadowBody, 403},
		{"shadow JSON from a sibling port", "POST", "/v1/devices/victim/shadow", map[string]string{"Content-Type": "application/json", "Sec-Fetch-Site": "same-site"}, shadowBody, 403},
		{"shadow JSON from origin null", "POST", "/v1/devices/victim/shadow", map[string]string{"Content-Type": "application/json", "Origin": "null"}, shadowBody, 403},
		{"shadow text/plain without Origin", "POST", "/v1/devices/victim/shadow", map[string]string{"Content-Type": "text/plain"}, shadowBody, 415},
		{"shadow form type", "POST", "/v1/devices/victim/shadow", map[string]string{"Content-Type": "application/x-www-form-urlencoded"}, shadowBody, 415},
		{"shadow without Content-Type", "POST", "/v1/devices/victim/shadow", map[string]string{"Content-Type": ""}, shadowBody, 415},
		{"shadow JSON in latin1", "POST", "/v1/devices/victim/shadow", map[string]string{"Content-Type": "application/json; charset=iso-8859-1"}, shadowBody, 415},
		{"shadow delete from a page", "DELETE", "/v1/devices/victim/shadow", map[string]string{"Origin": evil}, nil, 403},
		{"token text/plain from a page", "POST", "/v1/tokens", map[string]string{"Content-Type": "text/plain", "Origin": evil}, tokenBody, 403},
		{"token text/plain without Origin", "POST", "/v1/tokens", map[string]string{"Content-Type": "text/plain"}, tokenBody, 415},
		{"token form type", "POST", "/v1/tokens", map[string]string{"Content-Type": "application/x-www-form-urlencoded"}, tokenBody, 415},
		{"token revoke from a page", "DELETE", "/v1/tokens/" + "admin", map[string]string{"Origin": evil}, nil, 403},
		{"enrol text/plain", "POST", "/v1/devices", map[string]string{"Content-Type": "text/plain"}, []byte(`{"id":"intruder"}`), 415},
		{"rotate from a page, no body", "POST", "/v1/devices/victim/rotate", map[string]string{"Origin": evil}, nil, 403},
		{"remove from a page", "DELETE", "/v1/devices/victim", map[string]string{"Sec-Fetch-Site": "cross-site"}, nil, 403},
		{"firmware form upload from a page", "POST", "/v1/firmware", map[string]string{"Content-Type": formCT, "Origin": evil, "Sec-Fetch-Site": "cross-site"}, formBody, 403},
		{"firmware raw text/plain", "POST", "/v1/firmware?version=6.6.6", map[string]string{"Content-Type": "text/plain"}, []byte("evil"), 415},
		{"firmware raw without Content-Type", "POST", "/v1/firmware?version=6.6.6", map[string]string{"Content-Type": ""}, []byte("evil"), 415},
		{"firmware delete from a page", "DELETE", "/v1/firmware/1.0.0", map[string]string{"Origin": evil}, nil, 403},
		{"firmware assign text/plain", "POST", "/v1/firmware/1.0.0/assign", map[string]string{"Content-Type": "text/plain"}, []byte(`{"device":"victim"}`), 415},
		{"rollout text/plain", "POST", "/v1/rollouts", map[string]string{"Content-Type": "text/plain"}, []byte(`{"firmware":"1.0.0","devices":["victim"]}`), 415},
		{"rollout JSON from a page", "POST", "/v1/rollouts", map[string]string{"Content-Type": "application/json", "Origin": evil}, []byte(`{"firmware":"1.0.0","devices":["victim"]}`), 403},
	}
	for _, anonymous := range []bool{true, false} {
		r := mustOpenHTTPRig(t, anonymous)
		for _, tc := range tests {
			t.Run(fmt.Sprintf("anonymous=%v/%s", anonymous, tc.name), func(t *testing.T) {
				before := r.snapshot(t)
				status, hdr, body := r.send(t, tc.method, tc.path, tc.hdr, tc.body)
				if status != tc.status {
					t.Errorf("%s %s: status %d, want %d (body %s)", tc.method, tc.path, status, tc.status, body)
				}
				checkJSONError(t, tc.method+" "+tc.path, status, hdr, body)
				if after := r.snapshot(t); after != before {
					t.Errorf("stored state changed:\nbefore %s\nafter  %s", before, after)
				}
			})
		}
	}
}

// TestHardening11SameOriginAndTrustedStillWork: the checks refuse only what
// they must. Non-browser clients, pages of the API's own origin and of
// --allowed-origins, and JSON with a charset parameter get through and
// change the shadow.
func TestHardening11SameOriginAndTrustedStillWork(t *testing.T) {
	const console = "https://console.example.com"
	for _, anonymous := range []bool{true, false} {
		r := mustOpenHTTPRig(t, anonymous, console)
		tests := []struct {
			name string
			hdr  map[string]string
		}{
			{"no Origin (curl, CLI)", map[string]string{"Content-Type": "application/json"}},
			{"charset utf-8", map[string]string{"Content-Type": "application/json; charset=UTF-8"}},
			{"same origin", map[string]string{"Content-Type": "application/json", "Origin": r.api}},
			{"Sec-Fetch-Site same-origin", map[string]string{"Content-Type": "application/json", "Sec-Fetch-Site": "same-origin", "Origin": r.api}},
			{"trusted origin", map[string]string{"Content-Type": "application/json", "Origin": console, "Sec-Fetch-Site": "cross-site"}},
		}
		for i, tc := range tests {
			t.Run(fmt.Sprintf("anonymous=%v/%s", anonymous, tc.name), func(t *testing.T) {
				before := r.snapshot(t)
				body := fmt.Appendf(nil, `{"state":{"desired":{"n":%d}}}`, i)
				if status, _, b := r.send(t, "POST", "/v1/devices/victim/shadow", tc.hdr, body); status != 200 {
					t.Fatalf("status %d (body %s), want 200", status, b)
				}
				if after := r.snapshot(t); after == before {
					t.Errorf("shadow unchanged after an allowed update: %s", after)
				}
			})
		}
	}
}

// TestHardening11WebSocketOrigin: a WebSocket handshake from a page of
// another origin gets a JSON 403 and no MQTT connection; clients without
// Origin (MQTT libraries), pages of the same host (any port) and of
// --allowed-origins connect. Same rules with authentication on. Before the
// fix, Origin: http://evil.example was upgraded.
func TestHardening11WebSocketOrigin(t *testing.T) {
	const console = "https://console.example.com"
	for _, anonymous := range []bool{true, false} {
		r := mustOpenHTTPRig(t, anonymous, console)
		tests := []struct {
			name   string
			origin string // "" sends none
			ok     bool
		}{
			{"no Origin", "", true},
			{"same host, the HTTP API's port", r.api, true},
			{"same host and port", "http://" + r.ws, true},
			{"allowed origin", console, true},
			{"allowed origin, other case", "HTTPS://Console.Example.com", true},
			{"evil page", "http://evil.example", false},
			{"evil page on the allowed host's other port", "https://console.example.com:8443", false},
			{"opaque origin", "null", false},
			{"localhost is another name", strings.Replace(r.api, "127.0.0.1", "localhost", 1), false},
		}
		for _, tc := range tests {
			t.Run(fmt.Sprintf("anonymous=%v/%s", anonymous, tc.name), func(t *testing.T) {
				hdr := http.Header{}
				if tc.origin != "" {
					hdr.Set("Origin", tc.origin)
				}
				d := websocket.Dialer{Subprotocols: []string{"mqtt"}, HandshakeTimeout: 10 * time.Second}
				c, res, err := d.DialContext(t.Context(), "ws://"+r.ws+"/mqtt", hdr)
				if tc.ok {
					if err != nil {
						t.Fatalf("dial with Origin %q: %v, want an upgrade", tc.origin, err)
					}
					c.Close()
					return
				}
				if err == nil {
					c.Close()
					t.Fatalf("dial with Origin %q: upgraded, want 403", tc.origin)
				}
				if res == nil || res.StatusCode != http.StatusForbidden {
					t.Fatalf("dial with Origin %q: %v (response %v), want 403", tc.origin, err, res)
				}
				body, _ := io.ReadAll(res.Body)
				checkJSONError(t, "refused handshake", res.StatusCode, res.Header, body)
				if n := r.Broker().Stats().ClientsConnected; n != 0 {
					t.Errorf("clients connected = %d after a refused handshake, want 0", n)
				}
			})
		}
	}
	// The listener's other errors are JSON too.
	r := mustOpenHTTPRig(t, true)
	for _, tc := range []struct {
		method, path string
		status       int
	}{{"GET", "/other", 404}, {"GET", "/mqtt", 400}, {"POST", "/", 400}} {
		req, _ := http.NewRequestWithContext(t.Context(), tc.method, "http://"+r.ws+tc.path, nil)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != tc.status {
			t.Errorf("%s %s: status %d, want %d", tc.method, tc.path, res.StatusCode, tc.status)
		}
		checkJSONError(t, tc.method+" "+tc.path, res.StatusCode, res.Header, b)
	}
}

// TestHardening11AllowedOriginsInvalid: a malformed allow-list entry is a
// configuration error, not a silently ignored origin.
func TestHardening11AllowedOriginsInvalid(t *testing.T) {
	for _, o := range []string{"console.example.com", "https://console.example.com/", "https://", "*"} {
		_, err := server.Open(t.Context(), server.Config{
			DataDir: t.TempDir(), MQTTAddr: "127.0.0.1:0", WSAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0",
			AllowedOrigins: []string{o}, Logger: testLogger(t),
		})
		if err == nil || !strings.Contains(err.Error(), "invalid config") {
			t.Errorf("AllowedOrigins %q: Open error %v, want an invalid config", o, err)
		}
	}
}

// rawExchange writes raw to a new connection to addr and reads n answers.
func rawExchange(t *testing.T, addr, raw string, n int) []*http.Response {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	var out []*http.Response
	for range n {
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("answer %d of %d: %v", len(out)+1, n, err)
		}
		b, err := io.ReadAll(res.Body)
		if err != nil {
			t.Fatalf("answer %d body: %v", len(out)+1, err)
		}
		res.Body = io.NopCloser(bytes.NewReader(b))
		out = append(out, res)
	}
	return out
}

// body reads res's (already buffered) body.
func body(res *http.Response) []byte {
	b, _ := io.ReadAll(res.Body)
	return b
}

// TestHardening14MalformedRequestsGetJSON: a request net/http refuses
// before any handler runs (a NUL or CR in a header, a missing Host, an
// unknown version or transfer coding, two Content-Lengths, an oversized
// header block, an unknown expectation) gets a JSON error with a
// WWW-Authenticate challenge on 400, and changes nothing; an answer on the
// same connection before it is untouched. Before the fix, the NUL in
// Authorization got "400 Bad Request" as text/plain without
// WWW-Authenticate.
func TestHardening14MalformedRequestsGetJSON(t *testing.T) {
	r := mustOpenHTTPRig(t, false)
	host := r.HTTPAddr().String()
	update := `{"state":{"desired":{"door":"open"}}}`
	post := func(extra string) string {
		return "POST /v1/devices/victim/shadow HTTP/1.1\r\nHost: " + host + "\r\nContent-Type: application/json\r\n" +
			extra + fmt.Sprintf("Content-Length: %d\r\n\r\n", len(update)) + update
	}
	auth := "Authorization: Bearer " + r.token + "\r\n"
	tests := []struct {
		name   string
		raw    string
		status int
		msg    string // in the message
	}{
		{"NUL in Authorization", post("Authorization: Bearer " + r.token + "\x00\r\n"), 400, "Malformed request"},
		{"NUL in Authorization, GET", "GET /v1/devices HTTP/1.1\r\nHost: " + host + "\r\nAuthorization: Bearer a\x00b\r\n\r\n", 400, "Malformed request"},
		{"CR in a header value", post(auth + "X-A: a\rb\r\n"), 400, "Malformed request"},
		{"NUL in a header name", post(auth + "X-\x00A: a\r\n"), 400, "Malformed request"},
		{"DEL in a header value", post(auth + "X-A: a\x7fb\r\n"), 400, "Malformed request"},
		{"NUL in the target", "GET /v1/devices\x00 HTTP/1.1\r\nHost: " + host + "\r\n" + auth + "\r\n", 400, "Malformed request"},
		{"two Content-Lengths", post(auth + "Content-Length: 3\r\n"), 400, "Malformed request"},
		{"no Host", "GET /v1/devices HTTP/1.1\r\n" + auth + "\r\n", 400, "missing required Host header"},
		{"HTTP/9.1", "GET /v1/devices HTTP/9.1\r\nHost: " + host + "\r\n" + auth + "\r\n", 505, "HTTP Version Not Supported"},
		{"unknown transfer coding", "POST /v1/devices/victim/shadow HTTP/1.1\r\nHost: " + host + "\r\n" + auth + "Transfer-Encoding: gzip\r\n\r\n", 501, "transfer encoding"},
		{"header block too large", post(auth + "X-Big: " + strings.Repeat("a", 80<<10) + "\r\n"), 431, "too large"},
		{"unknown expectation", post(auth + "Expect: teapot\r\n"), 417, "100-continue"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := r.snapshot(t)
			res := rawExchange(t, host, tc.raw, 1)[0]
			b := body(res)
			if res.StatusCode != tc.status {
				t.Fatalf("status %d, want %d (body %q)", res.StatusCode, tc.status, b)
			}
			checkJSONError(t, "answer", res.StatusCode, res.Header, b)
			if !strings.Contains(string(b), tc.msg) {
				t.Errorf("body %s, want a message with %q", b, tc.msg)
			}
			wantAuth := ""
			if tc.status == 400 {
				wantAuth = `Bearer realm="umbra", error="invalid_request"`
			}
			if got := res.Header.Get("WWW-Authenticate"); got != wantAuth {
				t.Errorf("WWW-Authenticate %q, want %q", got, wantAuth)
			}
			if after := r.snapshot(t); after != before {
				t.Errorf("stored state changed:\nbefore %s\nafter  %s", before, after)
			}
		})
	}
	t.Run("a good answer before a bad request is untouched", func(t *testing.T) {
		get := "GET /v1/devices/victim/shadow HTTP/1.1\r\nHost: " + host + "\r\n" + auth + "\r\n"
		noAuth := "GET /v1/devices/victim/shadow HTTP/1.1\r\nHost: " + host + "\r\n\r\n"
		bad := "GET /v1/devices HTTP/1.1\r\nHost: " + host + "\r\nAuthorization: Bearer a\x00b\r\n\r\n"
		res := rawExchange(t, host, get+noAuth+bad, 3)
		if res[0].StatusCode != 200 || !bytes.Contains(body(res[0]), []byte(`"door":"locked"`)) {
			t.Errorf("first answer %d, want 200 with the shadow", res[0].StatusCode)
		}
		if res[1].StatusCode != 401 || res[1].Header.Get("WWW-Authenticate") != `Bearer realm="umbra"` {
			t.Errorf("second answer %d %q, want 401 with the handler's challenge", res[1].StatusCode, res[1].Header.Get("WWW-Authenticate"))
		}
		if res[2].StatusCode != 400 || res[2].Header.Get("Content-Type") != "application/json" {
			t.Errorf("third answer %d %q, want a JSON 400", res[2].StatusCode, res[2].Header.Get("Content-Type"))
		}
	})
}

// TestHardening14EveryErrorIsJSON: every error answer of the HTTP
// listener, on every route family (the API, the identity routes, firmware
// downloads, /metrics, /healthz, unknown paths and methods), is JSON
// {"code","message"} with code = the status, and 401s carry
// WWW-Authenticate. Before the fix, /fw/ refusals were text/plain
// "forbidden" and a failed If-Match an empty 412.
func TestHardening14EveryErrorIsJSON(t *testing.T) {
	r := mustOpenHTTPRig(t, false)
	img, err := r.Firmware().Get(t.Context(), "1.0.0")
	if err != nil {
		t.Fatal(err)
	}
	fwURL, _ := r.Firmware().URL(img, "victim", time.Hour)
	fwPath := strings.TrimPrefix(fwURL, r.api)
	devTok := "victim:" + r.secret
	J := map[string]string{"Content-Type": "application/json"}
	with := func(h map[string]string, kv ...string) map[string]string {
		out := map[string]string{}
		for k, v := range h {
			out[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			out[kv[i]] = kv[i+1]
		}
		return out
	}
	tests := []struct {
		name, method, path string
		token              string // "-" for none, "" for the operator's
		hdr                map[string]string
		body               string
		status             int
	}{
		{"unknown path", "GET", "/nope", "", nil, "", 404},
		{"unknown path, no token", "GET", "/v1/nope", "-", nil, "", 404},
		{"unknown path, HEAD", "HEAD", "/nope", "", nil, "", 404},
		{"wrong method, shadow", "PUT", "/v1/devices/victim/shadow", "", J, "{}", 405},
		{"wrong method, healthz", "POST", "/healthz", "", nil, "", 405},
		{"wrong method, metrics", "DELETE", "/metrics", "", nil, "", 405},
		{"wrong method, download", "POST", fwPath, "", nil, "", 405},
		{"wrong method, tokens", "PATCH", "/v1/tokens", "", nil, "", 405},
		{"OPTIONS", "OPTIONS", "/v1/devices", "", nil, "", 405},
		{"no token", "GET", "/v1/devices", "-", nil, "", 401},
		{"bad token", "GET", "/v1/devices", "ops:wrong", nil, "", 401},
		{"other scheme", "GET", "/v1/devices", "Basic", nil, "", 401},
		{"device lists", "GET", "/v1/devices", devTok, nil, "", 403},
		{"device reads another", "GET", "/v1/devices/other/shadow", devTok, nil, "", 403},
		{"bad device ID", "GET", "/v1/devices/a*b/shadow", "", nil, "", 400},
		{"bad JSON", "POST", "/v1/devices/victim/shadow", "", J, "{", 400},
		{"body too large", "POST", "/v1/devices/victim/shadow", "", J, `{"state":{"desired":{"a":"` + strings.Repeat("x", 70<<10) + `"}}}`, 413},
		{"wrong type", "POST", "/v1/tokens", "", map[string]string{"Content-Type": "text/plain"}, `{"name":"x","role":"operator"}`, 415},
		{"cross-origin", "DELETE", "/v1/tokens/x", "", map[string]string{"Origin": "http://evil.example"}, "", 403},
		{"unknown token", "DELETE", "/v1/tokens/nobody", "", nil, "", 404},
		{"unknown image", "GET", "/v1/firmware/9.9.9", "", nil, "", 404},
		{"bad limit", "GET", "/v1/devices?limit=0", "", nil, "", 400},
		{"unknown rollout", "GET", "/v1/rollouts/nope", "", nil, "", 404},
		{"download, tampered", "GET", strings.Replace(fwPath, "d=victim", "d=other", 1), "-", nil, "", 403},
		{"download, unknown blob", "GET", "/fw/" + strings.Repeat("0", 64), "-", nil, "", 403},
		{"download, HEAD tampered", "HEAD", strings.Replace(fwPath, "d=victim", "d=other", 1), "-", nil, "", 403},
		{"download, If-Match fails", "GET", fwPath, "-", map[string]string{"If-Match": `"0000"`}, "", 412},
		{"download, too many ranges", "GET", fwPath, "-", map[string]string{"Range": "bytes=" + strings.Repeat("0-0,", 20) + "0-0"}, "", 416},
		{"download, unsatisfiable", "GET", fwPath, "-", map[string]string{"Range": "bytes=99999999-"}, "", 416},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := r.snapshot(t)
			req, err := http.NewRequestWithContext(t.Context(), tc.method, r.api+tc.path, strings.NewReader(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			switch tc.token {
			case "-":
			case "":
				req.Header.Set("Authorization", "Bearer "+r.token)
			case "Basic":
				req.SetBasicAuth("ops", "x")
			default:
				req.Header.Set("Authorization", "Bearer "+tc.token)
			}
			for k, v := range with(tc.hdr) {
				req.Header.Set(k, v)
			}
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if res.StatusCode != tc.status {
				t.Fatalf("%s %s: status %d, want %d (body %q)", tc.method, tc.path, res.StatusCode, tc.status, b)
			}
			if tc.method == "HEAD" {
				if ct := res.Header.Get("Content-Type"); ct != "application/json" {
					t.Errorf("HEAD: Content-Type %q, want application/json", ct)
				}
			} else {
				checkJSONError(t, tc.method+" "+tc.path, res.StatusCode, res.Header, b)
			}
			if res.StatusCode == 401 && !strings.HasPrefix(res.Header.Get("WWW-Authenticate"), "Bearer") {
				t.Errorf("401 without a Bearer challenge: %q", res.Header.Get("WWW-Authenticate"))
			}
			if after := r.snapshot(t); after != before {
				t.Errorf("stored state changed:\nbefore %s\nafter  %s", before, after)
			}
		})
	}
}
