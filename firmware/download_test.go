package firmware_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/firmware"
)

func TestDownload(t *testing.T) {
	e := mustOpen(t, nil)
	data := image(300_000, 1)
	mustUpload(t, e.st, "1.0.0", data)
	imgs, err := e.st.List(t.Context())
	if err != nil || len(imgs) != 1 {
		t.Fatalf("List = %v, %v; want one image", imgs, err)
	}
	u, exp := e.st.URL(imgs[0], "dev-1", 0)
	if want := e.clock.Now().Add(firmware.DefaultURLTTL); !exp.Equal(want) {
		t.Errorf("URL expiry = %v, want %v", exp, want)
	}
	resp, body := get(t, http.MethodGet, u, nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET: status %d, want 200", resp.StatusCode)
	}
	if !bytes.Equal(body, data) || sum(body) != imgs[0].SHA256 {
		t.Errorf("GET body: got %d bytes sha %s, want %d bytes sha %s", len(body), sum(body), len(data), imgs[0].SHA256)
	}
	wantHdr := map[string]string{
		"Content-Length": strconv.Itoa(len(data)),
		"Content-Type":   "application/octet-stream",
		"Etag":           `"` + imgs[0].SHA256 + `"`,
		"Accept-Ranges":  "bytes",
	}
	for k, want := range wantHdr {
		if got := resp.Header.Get(k); got != want {
			t.Errorf("GET header %s = %q, want %q", k, got, want)
		}
	}
	resp, body = get(t, http.MethodHead, u, nil)
	if resp.StatusCode != http.StatusOK || len(body) != 0 || resp.Header.Get("Content-Length") != strconv.Itoa(len(data)) {
		t.Errorf("HEAD: status %d, %d body bytes, Content-Length %q; want 200, 0, %d", resp.StatusCode, len(body), resp.Header.Get("Content-Length"), len(data))
	}
	wantServed(t, e.st, int64(len(data)))
	if got, want := e.st.Downloads(), int64(2); got != want {
		t.Errorf("Downloads = %d, want %d", got, want)
	}
}

func TestDownloadRange(t *testing.T) {
	e := mustOpen(t, nil)
	data := image(10_000, 2)
	img := mustUpload(t, e.st, "1.0.0", data)
	u, _ := e.st.URL(img, "dev-1", 0)
	etag := `"` + img.SHA256 + `"`
	tests := []struct {
		name       string
		hdr        map[string]string
		wantStatus int
		wantBody   []byte
		wantRange  string
	}{
		{"first 100", map[string]string{"Range": "bytes=0-99"}, 206, data[:100], "bytes 0-99/10000"},
		{"middle", map[string]string{"Range": "bytes=5000-5999"}, 206, data[5000:6000], "bytes 5000-5999/10000"},
		{"open end", map[string]string{"Range": "bytes=9990-"}, 206, data[9990:], "bytes 9990-9999/10000"},
		{"suffix", map[string]string{"Range": "bytes=-10"}, 206, data[9990:], "bytes 9990-9999/10000"},
		{"if-range matches", map[string]string{"Range": "bytes=100-", "If-Range": etag}, 206, data[100:], "bytes 100-9999/10000"},
		{"if-range stale", map[string]string{"Range": "bytes=100-", "If-Range": `"0000"`}, 200, data, ""},
		{"if-range weak", map[string]string{"Range": "bytes=100-", "If-Range": "W/" + etag}, 200, data, ""},
		{"unsatisfiable", map[string]string{"Range": "bytes=20000-"}, 416, nil, "bytes */10000"},
		{"if-none-match", map[string]string{"If-None-Match": etag}, 304, nil, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := get(t, http.MethodGet, u, tc.hdr)
			if resp.StatusCode != tc.wantStatus {
				t.Fatalf("status = %d, want %d", resp.StatusCode, tc.wantStatus)
			}
			if tc.wantBody != nil && !bytes.Equal(body, tc.wantBody) {
				t.Errorf("body = %d bytes, want %d bytes (the requested slice)", len(body), len(tc.wantBody))
			}
			if got := resp.Header.Get("Content-Range"); got != tc.wantRange {
				t.Errorf("Content-Range = %q, want %q", got, tc.wantRange)
			}
		})
	}
}

// TestResumedDownload drops the connection mid-body, then resumes from the
// bytes received with Range and If-Range, and checks the reassembled image.
func TestResumedDownload(t *testing.T) {
	e := mustOpen(t, nil)
	data := image(2<<20, 3)
	img := mustUpload(t, e.st, "1.0.0", data)
	u, _ := e.st.URL(img, "dev-1", 0)

	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	var got []byte
	for attempt := 0; len(got) < len(data); attempt++ {
		if attempt > 10 {
			t.Fatalf("no complete image after %d attempts", attempt)
		}
		req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, u, nil)
		if err != nil {
			t.Fatal(err)
		}
		want := http.StatusOK
		if len(got) > 0 {
			req.Header.Set("Range", fmt.Sprintf("bytes=%d-", len(got)))
			req.Header.Set("If-Range", `"`+img.SHA256+`"`)
			want = http.StatusPartialContent
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != want {
			resp.Body.Close()
			t.Fatalf("attempt %d: status %d, want %d", attempt, resp.StatusCode, want)
		}
		// Read at most 700 KiB, then drop the connection (an interrupted
		// download), except that reads reaching EOF complete.
		chunk, err := io.ReadAll(io.LimitReader(resp.Body, 700<<10))
		resp.Body.Close()
		if err != nil {
			t.Fatalf("attempt %d: read: %v", attempt, err)
		}
		got = append(got, chunk...)
	}
	if !bytes.Equal(got, data) || sum(got) != img.SHA256 {
		t.Errorf("reassembled image: %d bytes sha %s, want %d bytes sha %s", len(got), sum(got), len(data), img.SHA256)
	}
}

// tamper returns u with query parameter k set to v (or removed when v is "").
func tamper(t *testing.T, u, k, v string) string {
	t.Helper()
	p, err := url.Parse(u)
	if err != nil {
		t.Fatal(err)
	}
	q := p.Query()
	if v == "" {
		q.Del(k)
	} else {
		q.Set(k, v)
	}
	p.RawQuery = q.Encode()
	return p.String()
}

func TestDownloadDenied(t *testing.T) {
	e := mustOpen(t, nil)
	img := mustUpload(t, e.st, "1.0.0", image(1000, 4))
	gone := mustUpload(t, e.st, "1.0.1", image(1000, 5))
	u, _ := e.st.URL(img, "dev-1", time.Minute)
	goneURL, _ := e.st.URL(gone, "dev-1", time.Minute)
	if err := e.st.Delete(t.Context(), gone.Version); err != nil {
		t.Fatal(err)
	}
	unknown := firmware.Image{Version: "9.9.9", SHA256: sum([]byte("never uploaded"))}
	unknownURL, _ := e.st.URL(unknown, "dev-1", time.Minute)
	expiredURL, _ := e.st.URL(img, "dev-1", time.Second)
	q, _ := url.ParseQuery(strings.SplitN(u, "?", 2)[1])
	e0, _ := strconv.ParseInt(q.Get("e"), 10, 64)
	sig := q.Get("s")
	flip := func(s string) string {
		b := []byte(s)
		if b[0] == 'A' {
			b[0] = 'B'
		} else {
			b[0] = 'A'
		}
		return string(b)
	}
	tests := []struct{ name, url string }{
		{"wrong device", tamper(t, u, "d", "dev-2")},
		{"device prefix", tamper(t, u, "d", "dev-")},
		{"altered expiry later", tamper(t, u, "e", strconv.FormatInt(e0+3600, 10))},
		{"altered expiry earlier", tamper(t, u, "e", strconv.FormatInt(e0-1, 10))},
		{"expiry with plus", strings.Replace(u, "e="+q.Get("e"), "e=%2B"+q.Get("e"), 1)},
		{"expiry with leading zero", strings.Replace(u, "e="+q.Get("e"), "e=0"+q.Get("e"), 1)},
		{"altered signature", tamper(t, u, "s", flip(sig))},
		{"truncated signature", tamper(t, u, "s", sig[:len(sig)-1])},
		{"padded signature", tamper(t, u, "s", sig+"=")},
		{"empty signature", strings.Replace(u, "s="+sig, "s=", 1)},
		{"missing signature", tamper(t, u, "s", "")},
		{"missing device", tamper(t, u, "d", "")},
		{"missing expiry", tamper(t, u, "e", "")},
		{"duplicate device", u + "&d=dev-1"},
		{"extra parameter", u + "&x=1"},
		{"semicolon", strings.Replace(u, "&", ";", 1)},
		{"other blob", strings.Replace(u, img.SHA256, gone.SHA256, 1)},
		{"no query", strings.SplitN(u, "?", 2)[0]},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := get(t, http.MethodGet, tc.url, nil)
			if resp.StatusCode != http.StatusForbidden || string(body) != denyBody {
				t.Errorf("GET %s: got %d %q, want 403 %q", tc.url, resp.StatusCode, body, denyBody)
			}
		})
	}
	// A genuine URL of an image that is gone (or never was) answers a
	// JSON 410: its holder may know, and retrying will not help.
	for _, tc := range []struct{ name, url string }{{"unknown blob", unknownURL}, {"deleted image", goneURL}} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := get(t, http.MethodGet, tc.url, nil)
			if resp.StatusCode != http.StatusGone || resp.Header.Get("Content-Type") != "application/json" || !strings.Contains(string(body), `"code":410`) {
				t.Errorf("GET %s: got %d %q, want a JSON 410", tc.url, resp.StatusCode, body)
			}
		})
	}
	t.Run("expired", func(t *testing.T) {
		if resp, _ := get(t, http.MethodGet, expiredURL, nil); resp.StatusCode != http.StatusOK {
			t.Fatalf("before expiry: got %d, want 200", resp.StatusCode)
		}
		e.clock.Advance(2 * time.Second)
		if resp, body := get(t, http.MethodGet, expiredURL, nil); resp.StatusCode != http.StatusForbidden || string(body) != denyBody {
			t.Errorf("after expiry: got %d %q, want 403 %q", resp.StatusCode, body, denyBody)
		}
	})
	if got, want := e.st.DeniedDownloads(), int64(len(tests)+1+2); got != want { // + the two 410s
		t.Errorf("DeniedDownloads = %d, want %d", got, want)
	}
	wantServed(t, e.st, 1000) // only the one allowed download
	resp, _ := get(t, http.MethodPost, u, nil)
	if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "GET, HEAD" {
		t.Errorf("POST: got %d Allow %q, want 405 %q", resp.StatusCode, resp.Header.Get("Allow"), "GET, HEAD")
	}
}

// rawGet sends target verbatim as the request target over a fresh TCP
// connection, so no client normalises it.
func rawGet(t *testing.T, addr, target string) (int, []byte) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", target, addr); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("GET %s: %v", target, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, body
}

func TestPathTraversal(t *testing.T) {
	e := mustOpen(t, nil)
	img := mustUpload(t, e.st, "1.0.0", image(100, 6))
	u, _ := e.st.URL(img, "dev-1", 0)
	query := strings.SplitN(u, "?", 2)[1]
	addr := e.srv.Listener.Addr().String()

	// Validly signed URLs for non-blob names: the MAC is right, the path
	// check must still refuse them.
	signed := func(name string) string {
		su, _ := e.st.URL(firmware.Image{SHA256: name}, "dev-1", 0)
		return strings.TrimPrefix(su, e.srv.URL)
	}
	tests := []string{
		"/fw/../firmware.db?" + query,
		"/fw/../url.key?" + query,
		"/fw/%2e%2e/firmware.db?" + query,
		"/fw/%2E%2E%2Fsigning.key?" + query,
		"/fw/..%2fsigning.key?" + query,
		"/fw/" + img.SHA256 + "/../../url.key?" + query,
		"/fw/" + img.SHA256 + "/?" + query,
		"/fw/" + img.SHA256 + "%00?" + query,
		"/fw/" + strings.ToUpper(img.SHA256) + "?" + query,
		"/fw//etc/passwd?" + query,
		"/fw/?" + query,
		"/fw?" + query,
		"/blobs/" + img.SHA256 + "?" + query,
		"/fw/./" + img.SHA256 + "?" + query,
		"//fw/" + img.SHA256 + "?" + query,
		signed("../url.key"),
		signed("../signing.key"),
		signed("../firmware.db"),
		signed("..%2furl.key"),
		signed(strings.ToUpper(img.SHA256)),
		signed(img.SHA256[:63]),
		"/fw/" + img.SHA256 + "?d=../../url.key&" + query,
		"/fw/" + img.SHA256 + "?" + strings.Replace(query, "d=dev-1", "d=..%2F..%2Furl.key", 1),
		"/fw/" + img.SHA256 + "?" + strings.Replace(query, "d=dev-1", "d=%2e%2e", 1),
		"/fw/" + img.SHA256 + "?" + strings.Replace(query, "e=", "e=../", 1),
		"/fw/" + img.SHA256 + "?" + strings.Replace(query, "s=", "s=../../", 1),
		"http://" + addr + "/fw/../url.key?" + query,
	}
	secrets := [][]byte{readFile(t, e.dir, "url.key"), readFile(t, e.dir, "signing.key")}
	for _, target := range tests {
		code, body := rawGet(t, addr, target)
		if code != http.StatusForbidden && code != http.StatusNotFound && code != http.StatusBadRequest {
			t.Errorf("GET %s: status %d, want 403, 404 or 400", target, code)
		}
		for _, s := range secrets {
			if bytes.Contains(body, bytes.TrimSpace(s)) {
				t.Errorf("GET %s leaked a key file", target)
			}
		}
	}
	// The untampered URL still works through the same raw client.
	if code, body := rawGet(t, addr, strings.TrimPrefix(u, e.srv.URL)); code != http.StatusOK || sum(body) != img.SHA256 {
		t.Errorf("GET minted URL: status %d, want 200 with the image", code)
	}
}

func readFile(t *testing.T, dir, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDeviceAuthHook(t *testing.T) {
	allow := map[device.ID]bool{"dev-1": true}
	var seen []device.ID
	e := mustOpen(t, func(c *firmware.Config) {
		c.DeviceAuth = func(r *http.Request, id device.ID) bool {
			seen = append(seen, id) // requests are sequential in this test
			return allow[id] && r.Header.Get("Authorization") == "Bearer "+string(id)
		}
	})
	img := mustUpload(t, e.st, "1.0.0", image(100, 7))
	u1, _ := e.st.URL(img, "dev-1", 0)
	u2, _ := e.st.URL(img, "dev-2", 0)
	tests := []struct {
		name string
		url  string
		auth string
		want int
	}{
		{"allowed with credentials", u1, "Bearer dev-1", 200},
		{"allowed device without credentials", u1, "", 403},
		{"refused device", u2, "Bearer dev-2", 403},
		{"bad signature never reaches the hook", tamper(t, u1, "d", "dev-3"), "Bearer dev-3", 403},
	}
	for _, tc := range tests {
		resp, _ := get(t, http.MethodGet, tc.url, map[string]string{"Authorization": tc.auth})
		if resp.StatusCode != tc.want {
			t.Errorf("%s: status %d, want %d", tc.name, resp.StatusCode, tc.want)
		}
	}
	if want := []device.ID{"dev-1", "dev-1", "dev-2"}; fmt.Sprint(seen) != fmt.Sprint(want) {
		t.Errorf("DeviceAuth saw %v, want %v", seen, want)
	}
}

func TestDownloadBehindMux(t *testing.T) {
	// How httpapi will mount it: a ServeMux pattern, with a path prefix
	// stripped when BaseURL has one.
	e := mustOpen(t, nil)
	img := mustUpload(t, e.st, "1.0.0", image(100, 8))
	mux := http.NewServeMux()
	mux.Handle("GET /umbra/fw/{sha256}", http.StripPrefix("/umbra", e.st.DownloadHandler()))
	e.srv.Config.Handler = mux
	u, _ := e.st.URL(img, "dev-1", 0)
	u = strings.Replace(u, "/fw/", "/umbra/fw/", 1)
	if resp, body := get(t, http.MethodGet, u, nil); resp.StatusCode != 200 || sum(body) != img.SHA256 {
		t.Errorf("GET via mux: status %d, want 200 with the image", resp.StatusCode)
	}
	addr := e.srv.Listener.Addr().String()
	query := strings.SplitN(u, "?", 2)[1]
	for _, target := range []string{"/umbra/fw/../firmware.db?" + query, "/umbra/fw/%2e%2e%2furl.key?" + query} {
		if code, _ := rawGet(t, addr, target); code == http.StatusOK {
			t.Errorf("GET %s via mux: status 200, want a refusal", target)
		}
	}
}

// failingBlobs is the default Blobs whose Open fails while down is set, as
// an object store without NATS does.
type failingBlobs struct {
	firmware.Blobs
	down atomic.Bool
}

func (b *failingBlobs) Open(ctx context.Context, sum string) (*os.File, error) {
	if b.down.Load() {
		return nil, errors.New("nats: connection closed")
	}
	return b.Blobs.Open(ctx, sum)
}

// TestDownloadStoreUnavailable: a genuine URL whose image cannot be read
// right now gets 503 with Retry-After, a JSON error and no bytes, is not
// counted as denied, and downloads once the store is back: the device
// retries rather than giving the update up (a 403 before).
func TestDownloadStoreUnavailable(t *testing.T) {
	blobs := &failingBlobs{}
	e := mustOpen(t, func(c *firmware.Config) {
		fb, err := firmware.FileBlobs(c.Dir)
		if err != nil {
			t.Fatal(err)
		}
		blobs.Blobs = fb
		c.Blobs = blobs
	})
	data := image(10_000, 3)
	img := mustUpload(t, e.st, "1.0.0", data)
	u, _ := e.st.URL(img, "dev-1", 0)

	blobs.down.Store(true)
	for _, method := range []string{http.MethodGet, http.MethodHead} {
		resp, body := get(t, method, u, nil)
		if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
			t.Errorf("%s with the store down: %d, Retry-After %q; want 503 with Retry-After", method, resp.StatusCode, resp.Header.Get("Retry-After"))
		}
		if method == http.MethodGet {
			var e struct {
				Code    int    `json:"code"`
				Message string `json:"message"`
			}
			if err := json.Unmarshal(body, &e); err != nil || e.Code != http.StatusServiceUnavailable || !strings.Contains(e.Message, "retry") {
				t.Errorf("body %q (%v), want a JSON 503 error saying to retry", body, err)
			}
		}
	}
	if got := e.st.DeniedDownloads(); got != 0 {
		t.Errorf("DeniedDownloads = %d, want 0: an unreadable store is not a refusal", got)
	}

	blobs.down.Store(false)
	resp, body := get(t, http.MethodGet, u, nil)
	if resp.StatusCode != http.StatusOK || !bytes.Equal(body, data) {
		t.Fatalf("the same URL with the store back: %d, %d bytes; want 200 with the image", resp.StatusCode, len(body))
	}
	wantServed(t, e.st, int64(len(data)))
}
