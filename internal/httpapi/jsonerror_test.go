package httpapi_test

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/internal/httpapi"
)

// TestHardening14MountErrorsAreJSON: an error a mount writes as text (like
// http.Error, or http.ServeContent's bare 412) reaches the client as the
// API's JSON error with the mount's text as the message; successful and
// JSON answers pass unchanged. Before the fix, they reached the client as
// written.
func TestHardening14MountErrorsAreJSON(t *testing.T) {
	file := filepath.Join(t.TempDir(), "blob")
	if err := os.WriteFile(file, []byte(strings.Repeat("firmware", 4096)), 0o600); err != nil {
		t.Fatal(err)
	}
	serveFile := func(w http.ResponseWriter, r *http.Request) {
		f, err := os.Open(file)
		if err != nil {
			t.Error(err)
			return
		}
		defer f.Close()
		w.Header().Set("ETag", `"v1"`)
		w.Header().Set("Content-Type", "application/octet-stream")
		http.ServeContent(w, r, "", time.Time{}, f)
	}
	srv, _ := newAPI(t, httpapi.Config{Mounts: map[string]http.Handler{
		"GET /text-error": http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "starting", http.StatusServiceUnavailable)
		}),
		"GET /bare-error": http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusTeapot)
		}),
		"GET /json-error": http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json; charset=utf-8")
			w.WriteHeader(http.StatusConflict)
			io.WriteString(w, `{"code":409,"message":"mine","extra":1}`)
		}),
		"GET /json-as-text": http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, `{"code":401,"message":"who are you"}`, http.StatusUnauthorized)
		}),
		"GET /text": http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "plain and fine")
		}),
		"GET /file": http.HandlerFunc(serveFile),
	}})
	tests := []struct {
		name, method, path string
		hdr                map[string]string
		status             int
		body               string // exact, or "" for a JSON error with msg
		msg                string
	}{
		{"http.Error", "GET", "/text-error", nil, 503, "", "starting"},
		{"http.Error, HEAD", "HEAD", "/text-error", nil, 503, "", ""},
		{"status only", "GET", "/bare-error", nil, 418, "", "I'm a teapot"},
		{"ServeContent 412", "GET", "/file", map[string]string{"If-Match": `"v0"`}, 412, "", "Precondition Failed"},
		{"ServeContent 416", "GET", "/file", map[string]string{"Range": "bytes=999999-"}, 416, "", "invalid range: failed to overlap"},
		{"JSON error sent as text", "GET", "/json-as-text", nil, 401, "", "who are you"},
		{"JSON error untouched", "GET", "/json-error", nil, 409, `{"code":409,"message":"mine","extra":1}`, ""},
		{"success untouched", "GET", "/text", nil, 200, "plain and fine", ""},
		{"file untouched", "GET", "/file", nil, 200, strings.Repeat("firmware", 4096), ""},
		{"range untouched", "GET", "/file", map[string]string{"Range": "bytes=8-15"}, 206, "firmware", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequestWithContext(t.Context(), tc.method, srv.URL+tc.path, nil)
			for k, v := range tc.hdr {
				req.Header.Set(k, v)
			}
			res, err := srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if res.StatusCode != tc.status {
				t.Fatalf("status %d, want %d (body %q)", res.StatusCode, tc.status, b)
			}
			if tc.body != "" {
				if string(b) != tc.body {
					t.Errorf("body %.80q, want %.80q", b, tc.body)
				}
				return
			}
			if ct := res.Header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q, want application/json", ct)
			}
			if tc.method == "HEAD" {
				return
			}
			var e struct {
				Code    int    `json:"code"`
				Message string `json:"message"`
			}
			if err := json.Unmarshal(b, &e); err != nil || e.Code != tc.status || e.Message != tc.msg {
				t.Errorf("body %q, want {\"code\":%d,\"message\":%q}", b, tc.status, tc.msg)
			}
		})
	}
}
