package httpapi_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/firmware"
	fwstore "github.com/umbra-iot/umbra/firmware/boltstore"
	"github.com/umbra-iot/umbra/identity"
	"github.com/umbra-iot/umbra/internal/httpapi"
	"github.com/umbra-iot/umbra/shadow"
	"github.com/umbra-iot/umbra/wire"
)

// fwEnv is an API with a firmware store, both in t.TempDir().
type fwEnv struct {
	srv *httptest.Server
	fw  *firmware.Store
	dir string // the store's Dir
	eng *shadow.Engine
	rec *recorder
}

const testMaxImage = 1 << 20

// withCatalog gives cfg a bbolt Catalog in cfg.Dir (a temp dir if cfg has
// none); the firmware store opened with it closes it.
func withCatalog(tb testing.TB, cfg firmware.Config) firmware.Config {
	tb.Helper()
	if cfg.Dir == "" {
		cfg.Dir = tb.TempDir()
	}
	if err := os.MkdirAll(cfg.Dir, 0o750); err != nil {
		tb.Fatal(err)
	}
	c, err := fwstore.Open(context.Background(), fwstore.Config{Path: filepath.Join(cfg.Dir, fwstore.File)})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close(context.Background()) })
	cfg.Catalog = c
	return cfg
}

// newFirmwareAPI serves the API with a firmware store (MaxImageSize 1 MiB
// unless cfg says otherwise) and the download handler mounted at /fw/.
func newFirmwareAPI(t *testing.T, cfg firmware.Config) *fwEnv {
	t.Helper()
	srv := httptest.NewUnstartedServer(nil)
	cfg.Dir = filepath.Join(t.TempDir(), "firmware")
	cfg.BaseURL = "http://" + srv.Listener.Addr().String()
	if cfg.MaxImageSize == 0 {
		cfg.MaxImageSize = testMaxImage
	}
	cfg.Logger = testLogger(t)
	fw, err := firmware.Open(t.Context(), withCatalog(t, cfg))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := fw.Close(context.Background()); err != nil {
			t.Errorf("close firmware store: %v", err)
		}
	})
	rec := &recorder{}
	eng := openEngine(t, shadow.Config{Publisher: rec})
	h, err := httpapi.NewHandler(httpapi.Config{
		Shadow:   eng,
		Firmware: fw,
		Logger:   testLogger(t),
		Mounts:   map[string]http.Handler{"GET /fw/{sha256}": fw.DownloadHandler()},
	})
	if err != nil {
		t.Fatal(err)
	}
	srv.Config.Handler = h
	srv.Start()
	t.Cleanup(srv.Close)
	return &fwEnv{srv: srv, fw: fw, dir: cfg.Dir, eng: eng, rec: rec}
}

// upload is one upload request: body plus headers and query.
type upload struct {
	query   string // without "?"
	headers map[string]string
	ctype   string // default application/octet-stream; "-" for none
	body    io.Reader
	length  int64 // Content-Length; -1 for chunked, 0 for len(body) when known
}

func (e *fwEnv) upload(t *testing.T, u upload) response {
	t.Helper()
	path := "/v1/firmware"
	if u.query != "" {
		path += "?" + u.query
	}
	req, err := http.NewRequestWithContext(t.Context(), "POST", e.srv.URL+path, u.body)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range u.headers {
		req.Header.Set(k, v)
	}
	switch u.ctype {
	case "":
		req.Header.Set("Content-Type", "application/octet-stream")
	case "-": // none
	default:
		req.Header.Set("Content-Type", u.ctype)
	}
	switch {
	case u.length < 0:
		req.ContentLength = -1
		req.Body = io.NopCloser(u.body) // hide the length from the transport
	case u.length > 0:
		req.ContentLength = u.length
	}
	return e.send(t, req)
}

func (e *fwEnv) send(t *testing.T, req *http.Request) response {
	t.Helper()
	res, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer res.Body.Close()
	raw, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	r := response{status: res.StatusCode, header: res.Header, raw: string(raw)}
	if ct := res.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s %s: Content-Type %q, want application/json (body %q)", req.Method, req.URL.Path, ct, raw)
	}
	if err := json.Unmarshal(raw, &r.body); err != nil {
		t.Errorf("%s %s: body %q is not a JSON object: %v", req.Method, req.URL.Path, raw, err)
	}
	return r
}

// state is what the store holds: versions listed, blobs and temp files.
func (e *fwEnv) state(t *testing.T) string {
	t.Helper()
	imgs, err := e.fw.List(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var vs []string
	for _, img := range imgs {
		vs = append(vs, string(img.Version))
	}
	return fmt.Sprintf("versions %v blobs %v tmp %v", vs, dirNames(t, filepath.Join(e.dir, "blobs")), dirNames(t, filepath.Join(e.dir, "tmp")))
}

func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

func sum(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// image returns n deterministic bytes.
func image(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i/251)
	}
	return b
}

func multipartBody(t *testing.T, fields [][2]string, file []byte) (string, *bytes.Buffer) {
	t.Helper()
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	for _, f := range fields {
		if err := mw.WriteField(f[0], f[1]); err != nil {
			t.Fatal(err)
		}
	}
	if file != nil {
		fw, err := mw.CreateFormFile("file", "fw.bin")
		if err != nil {
			t.Fatal(err)
		}
		fw.Write(file)
	}
	if err := mw.Close(); err != nil {
		t.Fatal(err)
	}
	return mw.FormDataContentType(), &buf
}

func TestFirmwareFlow(t *testing.T) {
	e := newFirmwareAPI(t, firmware.Config{})
	data := image(300 << 10)

	up := e.upload(t, upload{
		headers: map[string]string{wire.HeaderVersion: "1.2.0", wire.HeaderHW: "m1", wire.HeaderNotes: "fixes", wire.HeaderSHA256: sum(data)},
		ctype:   "application/octet-stream",
		body:    bytes.NewReader(data),
	})
	up.check(t, "upload", 201, map[string]any{"version": "1.2.0", "hw": "m1", "notes": "fixes", "size": len(data), "sha256": sum(data)})
	if loc := up.header.Get("Location"); loc != "/v1/firmware/1.2.0" {
		t.Errorf("Location = %q, want /v1/firmware/1.2.0", loc)
	}

	list := do(t, e.srv, "GET", "/v1/firmware", "")
	list.check(t, "list", 200, nil)
	if imgs, _ := list.body["images"].([]any); len(imgs) != 1 || imgs[0].(map[string]any)["version"] != "1.2.0" {
		t.Errorf("list images = %v, want one image 1.2.0", list.body["images"])
	}
	show := do(t, e.srv, "GET", "/v1/firmware/1.2.0", "")
	show.check(t, "show", 200, map[string]any{"version": "1.2.0", "size": len(data), "signature": up.body["signature"]})

	// The published key verifies the stored manifest's signature.
	pk := do(t, e.srv, "GET", "/v1/firmware/pubkey", "")
	pk.check(t, "pubkey", 200, map[string]any{"algorithm": "ed25519"})
	pem, _ := pk.body["pem"].(string)
	pub, err := firmware.ParsePublicKey([]byte(pem))
	if err != nil {
		t.Fatalf("pubkey pem %q: %v", pem, err)
	}
	sig, _ := base64.StdEncoding.DecodeString(show.body["signature"].(string))
	m := firmware.Manifest{Version: "1.2.0", HW: "m1", Size: int64(len(data)), SHA256: sum(data)}
	if err := firmware.Verify(pub, m, sig); err != nil {
		t.Errorf("verify manifest with published key: %v", err)
	}

	// A URL for dev-1 downloads the exact bytes, and resumes with Range.
	u := do(t, e.srv, "POST", "/v1/firmware/1.2.0/url", `{"device":"dev-1","ttl":"10m"}`)
	u.check(t, "url", 200, nil)
	dl, _ := u.body["url"].(string)
	if !strings.HasPrefix(dl, e.srv.URL+"/fw/"+sum(data)+"?d=dev-1&") {
		t.Fatalf("url = %q, want %s/fw/<sha256>?d=dev-1&…", dl, e.srv.URL)
	}
	if !strings.Contains(u.raw, "?d=dev-1&g=&e=") {
		t.Errorf("url response %s: want the URL's & unescaped", u.raw)
	}
	if _, ok := u.body["expires"].(string); !ok {
		t.Errorf("url response has no expires: %s", u.raw)
	}
	got := httpGet(t, dl, "", 200)
	if !bytes.Equal(got, data) || sum(got) != sum(data) {
		t.Errorf("download: got %d bytes sha256 %s, want %d bytes %s", len(got), sum(got), len(data), sum(data))
	}
	part := httpGet(t, dl, "bytes=1000-1999", 206)
	if !bytes.Equal(part, data[1000:2000]) {
		t.Errorf("Range 1000-1999: got %d bytes, want data[1000:2000]", len(part))
	}

	// Assign writes the firmware command into dev-1's desired state.
	as := do(t, e.srv, "POST", "/v1/firmware/1.2.0/assign", `{"device":"dev-1"}`)
	as.check(t, "assign", 200, nil)
	desired, _ := json.Marshal(as.body["state"].(map[string]any)["desired"])
	var cmd struct{ Firmware firmware.Command }
	if err := json.Unmarshal(desired, &cmd); err != nil {
		t.Fatal(err)
	}
	if cmd.Firmware.Version != "1.2.0" || cmd.Firmware.SHA256 != sum(data) || cmd.Firmware.Size != int64(len(data)) {
		t.Errorf("assigned command = %+v, want version 1.2.0 of %d bytes %s", cmd.Firmware, len(data), sum(data))
	}
	if err := cmd.Firmware.Verify(pub); err != nil {
		t.Errorf("assigned command does not verify: %v", err)
	}
	if !bytes.Equal(httpGet(t, cmd.Firmware.URL, "", 200), data) {
		t.Error("the assigned command's URL does not download the image")
	}
	var delta bool
	for _, m := range e.rec.take() {
		if m.topic == "state/dev-1/update/delta" && strings.Contains(m.payload, `"firmware"`) && strings.Contains(m.payload, sum(data)) {
			delta = true
		}
	}
	if !delta {
		t.Error("assign published no delta carrying the firmware command on state/dev-1/update/delta")
	}

	// dev-1 has 1.2.0 as its desired firmware: a delete is refused, names
	// it, and deletes nothing, unless forced.
	refused := do(t, e.srv, "DELETE", "/v1/firmware/1.2.0", "")
	refused.check(t, "delete while desired", 409, map[string]any{"desired_by": 1.0, "devices": []any{"dev-1"}})
	if msg, _ := refused.body["message"].(string); !strings.Contains(msg, "--force") || !strings.Contains(msg, "1 device") {
		t.Errorf("delete while desired: message %q, want the count and --force", msg)
	}
	do(t, e.srv, "DELETE", "/v1/firmware/1.2.0?force=maybe", "").check(t, "bad force", 400, nil)
	do(t, e.srv, "GET", "/v1/firmware/1.2.0", "").check(t, "still there", 200, map[string]any{"version": "1.2.0"})
	httpGet(t, dl, "", 200)
	do(t, e.srv, "DELETE", "/v1/firmware/1.2.0?force=true", "").check(t, "forced delete", 200, map[string]any{"version": "1.2.0", "deleted": true})
	do(t, e.srv, "GET", "/v1/firmware", "").check(t, "list after delete", 200, map[string]any{"images": []any{}})
	// The URL of the deleted image is genuine: 410 with a JSON body.
	var gone struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	}
	if err := json.Unmarshal(httpGet(t, dl, "", 410), &gone); err != nil || gone.Code != 410 || !strings.Contains(gone.Message, "deleted") {
		t.Errorf("download of a deleted image: %+v (%v), want a JSON 410 saying it was deleted", gone, err)
	}
}

// httpGet fetches url like a device (optionally with a Range) and wants
// status.
func httpGet(t *testing.T, url, rng string, status int) []byte {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), "GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if rng != "" {
		req.Header.Set("Range", rng)
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
	if res.StatusCode != status {
		t.Errorf("GET %s (Range %q): status %d, want %d", url, rng, res.StatusCode, status)
	}
	return b
}

// TestFirmwareUploadForms: every way to pass the metadata stores the same
// fields.
func TestFirmwareUploadForms(t *testing.T) {
	e := newFirmwareAPI(t, firmware.Config{})
	data := image(70 << 10)
	mpType, mpBody := multipartBody(t, [][2]string{{"version", "3.0.0"}, {"hw", "m3"}, {"notes", "über"}, {"sha256", sum(data)}}, data)
	mpType2, mpBody2 := multipartBody(t, nil, data)
	tests := []struct {
		name    string
		u       upload
		version string
		hw      string
		notes   string
	}{
		{"headers", upload{headers: map[string]string{wire.HeaderVersion: "1.0.0", wire.HeaderHW: "m1"}, body: bytes.NewReader(data)}, "1.0.0", "m1", ""},
		{"query", upload{query: "version=2.0.0-rc.1&hw=m2&notes=n%C3%BC&sha256=" + sum(data), body: bytes.NewReader(data)}, "2.0.0-rc.1", "m2", "nü"},
		{"chunked", upload{query: "version=2.1.0", body: bytes.NewReader(data), length: -1}, "2.1.0", "", ""},
		{"multipart fields", upload{ctype: mpType, body: mpBody}, "3.0.0", "m3", "über"},
		{"multipart file, version in header", upload{ctype: mpType2, body: mpBody2, headers: map[string]string{wire.HeaderVersion: "3.1.0"}}, "3.1.0", "", ""},
		{"same value twice", upload{query: "version=4.0.0", headers: map[string]string{wire.HeaderVersion: "4.0.0"}, body: bytes.NewReader(data)}, "4.0.0", "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := e.upload(t, tc.u)
			r.check(t, tc.name, 201, map[string]any{"version": tc.version, "hw": tc.hw, "size": len(data), "sha256": sum(data)})
			if got, _ := r.body["notes"].(string); got != tc.notes {
				t.Errorf("notes = %q, want %q", got, tc.notes)
			}
		})
	}
	// Six versions, one blob: identical bytes are stored once.
	if blobs := dirNames(t, filepath.Join(e.dir, "blobs")); !slices.Equal(blobs, []string{sum(data)}) {
		t.Errorf("blobs = %v, want [%s]", blobs, sum(data))
	}
}

// TestFirmwareErrors: every bad request gets its status and a JSON error
// body, and leaves the store as it was.
func TestFirmwareErrors(t *testing.T) {
	e := newFirmwareAPI(t, firmware.Config{})
	data := image(10 << 10)
	e.upload(t, upload{query: "version=1.0.0", body: bytes.NewReader(data)}).check(t, "seed", 201, nil)
	before := e.state(t)

	big := image(testMaxImage + 1)
	noFileType, noFileBody := multipartBody(t, [][2]string{{"version", "5.0.0"}}, nil)
	cutType, cutBody := multipartBody(t, [][2]string{{"version", "5.0.0"}}, data)
	badFieldType, badFieldBody := multipartBody(t, [][2]string{{"version", "5.0.0"}, {"colour", "red"}}, data)
	uploads := []struct {
		name   string
		u      upload
		status int
		msg    string // a substring of the message
	}{
		{"bad semver", upload{query: "version=1.2", body: bytes.NewReader(data)}, 400, "version"},
		{"missing version", upload{body: bytes.NewReader(data)}, 400, "Missing version"},
		{"bad hw", upload{query: "version=2.0.0&hw=a/b", body: bytes.NewReader(data)}, 400, "hw"},
		{"bad sha256", upload{query: "version=2.0.0&sha256=xyz", body: bytes.NewReader(data)}, 400, "sha256"},
		{"checksum mismatch", upload{query: "version=2.0.0&sha256=" + sum([]byte("other")), body: bytes.NewReader(data)}, 422, "sha256 mismatch"},
		{"duplicate version", upload{query: "version=1.0.0", body: bytes.NewReader(data)}, 409, "already exists"},
		{"empty image", upload{query: "version=2.0.0", body: bytes.NewReader(nil)}, 400, "empty"},
		{"header and query differ", upload{query: "version=2.0.0", headers: map[string]string{wire.HeaderVersion: "2.0.1"}, body: bytes.NewReader(data)}, 400, "different values"},
		{"query twice", upload{query: "version=2.0.0&version=2.0.0", body: bytes.NewReader(data)}, 400, "given 2 times"},
		{"content-length over limit", upload{query: "version=2.0.0", body: bytes.NewReader(big)}, 413, "larger than the limit"},
		{"chunked over limit", upload{query: "version=2.0.0", body: bytes.NewReader(big), length: -1}, 413, "larger than the limit"},
		{"multipart without file", upload{ctype: noFileType, body: noFileBody}, 400, "no \"file\" part"},
		{"multipart unknown field", upload{ctype: badFieldType, body: badFieldBody}, 400, "Unknown form field"},
		{"multipart without boundary", upload{ctype: "multipart/form-data", query: "version=2.0.0", body: bytes.NewReader(data)}, 400, "boundary"},
		{"multipart malformed", upload{ctype: "multipart/form-data; boundary=xyz", query: "version=2.0.0", body: bytes.NewReader(data)}, 400, "no \"file\" part"},
		{"multipart truncated", upload{ctype: cutType, body: bytes.NewReader(cutBody.Bytes()[:cutBody.Len()-100])}, 400, "Reading request body"},
	}
	for _, tc := range uploads {
		t.Run(tc.name, func(t *testing.T) {
			r := e.upload(t, tc.u)
			r.check(t, tc.name, tc.status, nil)
			if msg, _ := r.body["message"].(string); !strings.Contains(msg, tc.msg) {
				t.Errorf("message = %q, want it to contain %q", msg, tc.msg)
			}
		})
	}

	requests := []struct {
		name, method, path, body string
		status                   int
	}{
		{"show unknown", "GET", "/v1/firmware/9.9.9", "", 404},
		{"show bad version", "GET", "/v1/firmware/latest", "", 400},
		{"show traversal", "GET", "/v1/firmware/..%2f..%2fetc", "", 400},
		{"delete unknown", "DELETE", "/v1/firmware/9.9.9", "", 404},
		{"delete bad version", "DELETE", "/v1/firmware/1..0", "", 400},
		{"delete pubkey", "DELETE", "/v1/firmware/pubkey", "", 400},
		{"url unknown version", "POST", "/v1/firmware/9.9.9/url", `{"device":"d1"}`, 404},
		{"url bad version", "POST", "/v1/firmware/x/url", `{"device":"d1"}`, 400},
		{"url missing device", "POST", "/v1/firmware/1.0.0/url", `{}`, 400},
		{"url bad device", "POST", "/v1/firmware/1.0.0/url", `{"device":"a/b"}`, 400},
		{"url bad ttl", "POST", "/v1/firmware/1.0.0/url", `{"device":"d1","ttl":"soon"}`, 400},
		{"url ttl too short", "POST", "/v1/firmware/1.0.0/url", `{"device":"d1","ttl":"10ms"}`, 400},
		{"url ttl too long", "POST", "/v1/firmware/1.0.0/url", `{"device":"d1","ttl":"1000h"}`, 400},
		{"url unknown field", "POST", "/v1/firmware/1.0.0/url", `{"device":"d1","devices":"x"}`, 400},
		{"url not json", "POST", "/v1/firmware/1.0.0/url", `device=d1`, 400},
		{"url trailing data", "POST", "/v1/firmware/1.0.0/url", `{"device":"d1"} {}`, 400},
		{"url body too large", "POST", "/v1/firmware/1.0.0/url", `{"device":"` + strings.Repeat("d", httpapi.DefaultMaxBodyBytes) + `"}`, 413},
		{"assign unknown version", "POST", "/v1/firmware/9.9.9/assign", `{"device":"d1"}`, 404},
		{"assign bad device", "POST", "/v1/firmware/1.0.0/assign", `{"device":""}`, 400},
		{"assign bad ttl", "POST", "/v1/firmware/1.0.0/assign", `{"device":"d1","ttl":"-1m"}`, 400},
		{"wrong method", "PUT", "/v1/firmware/1.0.0", "", 405},
		{"wrong method on url", "GET", "/v1/firmware/1.0.0/url", "", 405},
	}
	for _, tc := range requests {
		t.Run(tc.name, func(t *testing.T) {
			do(t, e.srv, tc.method, tc.path, tc.body).check(t, tc.name, tc.status, nil)
		})
	}

	if after := e.state(t); after != before {
		t.Errorf("store after bad requests: %s, want %s", after, before)
	}
	if msgs := e.rec.take(); len(msgs) != 0 {
		t.Errorf("bad requests published %v, want nothing", msgs)
	}
	if sums, _, err := e.eng.List(t.Context(), "", 10); err != nil || len(sums) != 0 {
		t.Errorf("shadows after bad requests: %v (err %v), want none", sums, err)
	}
}

func TestFirmwareInUse(t *testing.T) {
	e := newFirmwareAPI(t, firmware.Config{
		InUse: func(_ context.Context, v firmware.Version) (string, bool, error) {
			return "rollout-7", v == "1.0.0", nil
		},
	})
	e.upload(t, upload{query: "version=1.0.0", body: bytes.NewReader(image(100))}).check(t, "seed", 201, nil)
	do(t, e.srv, "DELETE", "/v1/firmware/1.0.0", "").check(t, "delete in use", 409, map[string]any{"rollout": "rollout-7"})
	do(t, e.srv, "GET", "/v1/firmware/1.0.0", "").check(t, "still there", 200, nil)
}

// TestFirmwareStoreLifecycle: without a store the routes answer 503; a
// store opened on the address of the API's bound listener (the Serve(ln)
// shape internal/server uses) serves them; a closed store is 503 again.
func TestFirmwareStoreLifecycle(t *testing.T) {
	eng := openEngine(t, shadow.Config{})
	open := func(ln net.Listener, fw *firmware.Store) string {
		t.Helper()
		api, err := httpapi.Open(t.Context(), httpapi.Config{Addr: "127.0.0.1:0", Listener: ln, Shadow: eng, Firmware: fw, Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := api.Close(context.Background()); err != nil {
				t.Errorf("close api: %v", err)
			}
		})
		return "http://" + api.Addr().String()
	}
	get := func(base, name string, status int) {
		t.Helper()
		req, _ := http.NewRequestWithContext(t.Context(), "GET", base+"/v1/firmware", nil)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != status || !json.Valid(b) {
			t.Errorf("%s: status %d body %q, want %d with a JSON body", name, res.StatusCode, b, status)
		}
	}
	get(open(nil, nil), "no store", 503)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + ln.Addr().String()
	fw, err := firmware.Open(t.Context(), withCatalog(t, firmware.Config{BaseURL: base}))
	if err != nil {
		t.Fatal(err)
	}
	if got := open(ln, fw); got != base {
		t.Errorf("API address %s, want the listener's %s", got, base)
	}
	get(base, "store set", 200)
	if err := fw.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	get(base, "store closed", 503)
}

// FuzzFirmwareRequests sends arbitrary upload metadata and bodies, versions
// and device requests through the firmware routes. Invariants: never a 500,
// every answer is a JSON object with code = the status on errors, and a
// version that does not parse is never stored.
func FuzzFirmwareRequests(f *testing.F) {
	seeds := []struct{ query, hdrVersion, version, body string }{
		{"version=1.0.0", "", "1.0.0", `{"device":"d1"}`},
		{"version=1.0.0&hw=m1&notes=x", "1.0.0", "1.0.0", `{"device":"d1","ttl":"10m"}`},
		{"hw=a%2Fb", "2.0.0", "2.0.0", `{"device":"d1","ttl":"-1s"}`},
		{"version=..%2F..%2Fetc", "", "..%2Fetc", `{"device":"../x"}`},
		{"sha256=00", "v1.0.0", "v1.0.0", `{"device":"d1"} x`},
		{"version=1.0.0&version=2.0.0", "1.0.0-rc.1", "pubkey", `{"device":1}`},
		{"notes=%00", "1.0.0+build", "1.0", `{}`},
	}
	for _, s := range seeds {
		f.Add(s.query, s.hdrVersion, s.version, s.body)
	}
	fw, err := firmware.Open(f.Context(), withCatalog(f, firmware.Config{MaxImageSize: 4 << 10}))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { fw.Close(context.Background()) })
	h, err := httpapi.NewHandler(httpapi.Config{Shadow: openEngine(f, shadow.Config{DeviceRate: -1, MaxInFlight: -1}), Firmware: fw})
	if err != nil {
		f.Fatal(err)
	}
	serve := func(t *testing.T, req *http.Request) *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		// 415: an upload without a body has no Content-Type (setContentType), and
		// an upload must declare its media type (issue 10, case 11).
		allowed := []int{200, 201, 400, 404, 405, 409, 413, 415, 422}
		if !slices.Contains(allowed, rec.Code) {
			t.Fatalf("%s %s: status %d, want one of %v (body %s)", req.Method, req.URL, rec.Code, allowed, rec.Body)
		}
		var got map[string]any
		if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
			t.Fatalf("%s %s: body %q is not JSON: %v", req.Method, req.URL, rec.Body, err)
		}
		if rec.Code >= 400 {
			if code, _ := got["code"].(float64); int(code) != rec.Code {
				t.Fatalf("%s %s: body code %v, want %d", req.Method, req.URL, got["code"], rec.Code)
			}
		}
		return rec
	}
	f.Fuzz(func(t *testing.T, query, hdrVersion, version, body string) {
		up := httptest.NewRequestWithContext(t.Context(), "POST", "/v1/firmware", strings.NewReader(body))
		up.URL.RawQuery = query
		setContentType(up)
		if hdrVersion != "" && !strings.ContainsAny(hdrVersion, "\r\n\x00") {
			up.Header.Set(wire.HeaderVersion, hdrVersion)
		}
		if rec := serve(t, up); rec.Code == http.StatusCreated {
			var img firmware.Image
			if err := json.Unmarshal(rec.Body.Bytes(), &img); err != nil {
				t.Fatal(err)
			}
			if v, err := firmware.ParseVersion(string(img.Version)); err != nil || v != img.Version {
				t.Fatalf("stored version %q does not parse as itself (%v)", img.Version, err)
			}
			if err := fw.Delete(t.Context(), img.Version); err != nil {
				t.Fatal(err)
			}
		}
		p := "/v1/firmware/" + url.PathEscape(version)
		if version == "" || version == "." || version == ".." {
			p += "x" // the mux would redirect these paths
		}
		for _, r := range []struct{ method, path string }{{"GET", p}, {"DELETE", p}, {"POST", p + "/url"}, {"POST", p + "/assign"}} {
			req := httptest.NewRequestWithContext(t.Context(), r.method, r.path, strings.NewReader(body))
			setContentType(req)
			serve(t, req)
		}
	})
}

// tokens is a Verifier with fixed bearer tokens.
type tokens map[string]identity.Principal

func (v tokens) VerifyBearer(_ context.Context, tok string) (identity.Principal, error) {
	if p, ok := v[tok]; ok {
		return p, nil
	}
	return identity.Principal{}, identity.ErrUnauthenticated
}

// TestFirmwareAuth: behind Authenticate, only operators change firmware;
// integrators read; devices and anonymous callers get nothing; a refused
// upload stores nothing.
func TestFirmwareAuth(t *testing.T) {
	fw, err := firmware.Open(t.Context(), withCatalog(t, firmware.Config{Logger: testLogger(t)}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fw.Close(context.Background()) })
	auth := httpapi.Authenticate(tokens{
		"op:s":  {Role: identity.RoleOperator, Name: "op"},
		"int:s": {Role: identity.RoleIntegrator, Name: "int"},
		"dev:s": {Role: identity.RoleDevice, Name: "dev", Device: "dev"},
	}, false)
	srv, _ := newAPI(t, httpapi.Config{Firmware: fw, Middleware: auth})
	send := func(method, path, token, body string) int {
		t.Helper()
		req, _ := http.NewRequestWithContext(t.Context(), method, srv.URL+path, strings.NewReader(body))
		setContentType(req)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		res, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if !json.Valid(b) {
			t.Errorf("%s %s: body %q is not JSON", method, path, b)
		}
		return res.StatusCode
	}
	if got := send("POST", "/v1/firmware?version=1.0.0", "op:s", "image"); got != 201 {
		t.Fatalf("operator upload: got %d, want 201", got)
	}
	tests := []struct {
		name, method, path, token, body string
		status                          int
	}{
		{"anonymous list", "GET", "/v1/firmware", "", "", 401},
		{"bad token upload", "POST", "/v1/firmware?version=2.0.0", "op:wrong", "image", 401},
		{"device list", "GET", "/v1/firmware", "dev:s", "", 403},
		{"device pubkey", "GET", "/v1/firmware/pubkey", "dev:s", "", 403},
		{"integrator list", "GET", "/v1/firmware", "int:s", "", 200},
		{"integrator show", "GET", "/v1/firmware/1.0.0", "int:s", "", 200},
		{"integrator pubkey", "GET", "/v1/firmware/pubkey", "int:s", "", 200},
		{"integrator upload", "POST", "/v1/firmware?version=2.0.0", "int:s", "image", 403},
		{"integrator delete", "DELETE", "/v1/firmware/1.0.0", "int:s", "", 403},
		{"integrator url", "POST", "/v1/firmware/1.0.0/url", "int:s", `{"device":"d"}`, 403},
		{"integrator assign", "POST", "/v1/firmware/1.0.0/assign", "int:s", `{"device":"d"}`, 403},
		{"operator url", "POST", "/v1/firmware/1.0.0/url", "op:s", `{"device":"d"}`, 200},
	}
	for _, tc := range tests {
		if got := send(tc.method, tc.path, tc.token, tc.body); got != tc.status {
			t.Errorf("%s: got %d, want %d", tc.name, got, tc.status)
		}
	}
	if imgs, err := fw.List(t.Context()); err != nil || len(imgs) != 1 {
		t.Errorf("store after refused requests: %d images (err %v), want 1", len(imgs), err)
	}
}

// TestFirmwareSlowUpload: an upload may take longer than the server's
// ReadTimeout and WriteTimeout (which bound ordinary requests) as long as
// bytes keep arriving.
func TestFirmwareSlowUpload(t *testing.T) {
	fw, err := firmware.Open(t.Context(), withCatalog(t, firmware.Config{Logger: testLogger(t)}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fw.Close(context.Background()) })
	h, err := httpapi.NewHandler(httpapi.Config{Shadow: openEngine(t, shadow.Config{}), Firmware: fw, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(h)
	const limit = 300 * time.Millisecond
	srv.Config.ReadTimeout, srv.Config.WriteTimeout = limit, limit
	srv.Start()
	t.Cleanup(srv.Close)

	// 16 chunks, one every 50ms: about 800ms in all.
	pr, pw := io.Pipe()
	go func() {
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for range 16 {
			<-tick.C
			if _, err := pw.Write(image(4 << 10)); err != nil {
				return
			}
		}
		pw.Close()
	}()
	req, err := http.NewRequestWithContext(t.Context(), "POST", srv.URL+"/v1/firmware?version=1.0.0", pr)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	start := time.Now()
	res, err := srv.Client().Do(req)
	if err != nil {
		t.Fatalf("slow upload: %v", err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if d := time.Since(start); d < 2*limit {
		t.Errorf("upload took %v, want over %v for the test to mean anything", d, 2*limit)
	}
	if res.StatusCode != 201 {
		t.Fatalf("slow upload: status %d body %s, want 201", res.StatusCode, b)
	}
	if img, err := fw.Get(t.Context(), "1.0.0"); err != nil || img.Size != 16*4<<10 {
		t.Errorf("stored image %+v (err %v), want %d bytes", img, err, 16*4<<10)
	}
}
