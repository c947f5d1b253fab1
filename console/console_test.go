package console_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"github.com/umbra-iot/umbra/console"
)

// TestAssetsServedWithCSP: every asset is served with the strict policy,
// and the page holds no inline script or style and no external URL.
func TestAssetsServedWithCSP(t *testing.T) {
	mux := http.NewServeMux()
	for p, h := range console.Routes() {
		mux.Handle(p, h)
	}
	srv := httptest.NewServer(mux)
	defer srv.Close()
	for path, ctype := range map[string]string{"/": "text/html", "/console/app.js": "text/javascript", "/console/style.css": "text/css"} {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), ctype) ||
			resp.Header.Get("Content-Security-Policy") != console.CSP || resp.Header.Get("X-Frame-Options") != "DENY" {
			t.Errorf("%s: %d %q csp %q", path, resp.StatusCode, resp.Header.Get("Content-Type"), resp.Header.Get("Content-Security-Policy"))
		}
		if regexp.MustCompile(`(?i)https?://|//cdn|@import`).Match(body) {
			t.Errorf("%s refers to another origin", path)
		}
		if path == "/" && regexp.MustCompile(`(?i)<script>|<style|style=|\son[a-z]+=`).Match(body) {
			t.Errorf("the page has inline script or style")
		}
		req, _ := http.NewRequest("GET", srv.URL+path, nil)
		req.Header.Set("If-None-Match", resp.Header.Get("ETag"))
		r2, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		r2.Body.Close()
		if r2.StatusCode != http.StatusNotModified {
			t.Errorf("%s with its ETag: %d, want 304", path, r2.StatusCode)
		}
	}
	if !strings.Contains(console.CSP, "default-src 'self'") || strings.Contains(console.CSP, "unsafe") {
		t.Errorf("CSP %q is not strict", console.CSP)
	}
}
