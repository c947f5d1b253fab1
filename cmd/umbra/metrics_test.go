package main

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

// TestMetricsEndpoint: serve exposes Prometheus metrics that move with
// traffic (a shadow update over HTTP counts as an accepted request and a
// commit).
func TestMetricsEndpoint(t *testing.T) {
	srv := startServer(t)
	if _, err := srv.eng.Update(t.Context(), "m1", []byte(`{"state":{"reported":{"a":1}}}`)); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get(srv.apiURL() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics = %d, want 200", resp.StatusCode)
	}
	for _, want := range []string{
		`umbra_shadow_requests_total{code="200",op="update"} 1`,
		"umbra_shadow_commit_duration_seconds_count",
		"umbra_devices_connected",
		"umbra_firmware_bytes_served_total",
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}
