package server_test

import (
	"net/http"
	"strings"
	"testing"
)

// TestHTTPRefusalsAreCounted checks that the HTTP listener's refusals of
// one client (cross-origin, wrong content type, unknown route) are counted
// in /metrics by route and status, beside the requests it served.
func TestHTTPRefusalsAreCounted(t *testing.T) {
	r := mustOpenHTTPRig(t, true)
	stored := r.snapshot(t)
	tests := []struct {
		name        string
		method      string
		path        string
		contentType string
		origin      string
		series      string // the counter this request adds 1 to
	}{
		{"served", "GET", "/v1/devices/victim/shadow", "", "",
			`umbra_http_requests_total{code="200",route="GET /v1/devices/{id}/shadow"}`},
		{"cross-origin", "POST", "/v1/devices/victim/shadow", "application/json", "http://evil.example",
			`umbra_http_requests_total{code="403",route="POST /v1/devices/{id}/shadow"}`},
		{"content type", "POST", "/v1/devices/victim/shadow", "text/plain", "",
			`umbra_http_requests_total{code="415",route="POST /v1/devices/{id}/shadow"}`},
		{"no route", "GET", "/nowhere", "", "",
			`umbra_http_requests_total{code="404",route="/"}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := scrapeMetrics(t, r.api+"/metrics")[tc.series]
			req, err := http.NewRequestWithContext(t.Context(), tc.method, r.api+tc.path,
				strings.NewReader(`{"state":{"desired":{"door":"open"}}}`))
			if err != nil {
				t.Fatal(err)
			}
			if tc.contentType != "" {
				req.Header.Set("Content-Type", tc.contentType)
			}
			if tc.origin != "" {
				req.Header.Set("Origin", tc.origin)
				req.Header.Set("Sec-Fetch-Site", "cross-site")
			}
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			res.Body.Close()
			after := scrapeMetrics(t, r.api+"/metrics")[tc.series]
			if after != before+1 {
				t.Errorf("%s = %v after the request, want %v (status %d)", tc.series, after, before+1, res.StatusCode)
			}
		})
	}
	if got := r.snapshot(t); got != stored {
		t.Errorf("after the requests: %s\nbefore: %s", got, stored)
	}
}
