package httpapi_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/umbra-iot/umbra/internal/httpapi"
	"github.com/umbra-iot/umbra/shadow"
)

// FuzzShadowRequest sends arbitrary bodies, clientTokens and device IDs
// through the shadow routes. Invariants: never a 500, every answer is a JSON
// object, and every error body carries code = the HTTP status.
func FuzzShadowRequest(f *testing.F) {
	seeds := []struct{ method, id, token, body string }{
		{"POST", "dev-1", "", `{"state":{"desired":{"color":"red"}}}`},
		{"POST", "dev-1", "c1", `{"state":{"reported":{"color":"blue"}},"clientToken":"c1"}`},
		{"POST", "dev-1", "a", `{"state":{},"clientToken":"b"}`},
		{"POST", "dev-1", "", `{"state":{"desired":{"a":[1,null]}}}`},
		{"POST", "dev-1", "x", `{"state":`},
		{"POST", "bad*id", "", `{}`},
		{"POST", "dev-1", "", `{"state":null,"version":1}`},
		{"GET", "dev-1", "g", ""},
		{"DELETE", "dev-1", "", `{"clientToken":5}`},
		{"DELETE", "dev-1", strings.Repeat("t", 70), ""},
	}
	for _, s := range seeds {
		f.Add(s.method, s.id, s.token, s.body)
	}
	h, err := httpapi.NewHandler(httpapi.Config{Shadow: openEngine(f, shadow.Config{DeviceRate: -1, MaxInFlight: -1})})
	if err != nil {
		f.Fatal(err)
	}
	allowed := []int{200, 400, 404, 409, 413}
	f.Fuzz(func(t *testing.T, method, id, token, body string) {
		if !slices.Contains([]string{"GET", "POST", "DELETE"}, method) {
			method = "POST"
		}
		if id == "" || id == "." || id == ".." {
			id = "x" + id // the mux would redirect these paths
		}
		target := "/v1/devices/" + url.PathEscape(id) + "/shadow?" + url.Values{"clientToken": {token}}.Encode()
		req := httptest.NewRequestWithContext(t.Context(), method, target, strings.NewReader(body))
		setContentType(req)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if !slices.Contains(allowed, rec.Code) {
			t.Fatalf("%s %s %q: status %d, want one of %v (body %s)", method, target, body, rec.Code, allowed, rec.Body)
		}
		var got map[string]any
		if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
			t.Fatalf("%s %s: body %q is not JSON: %v", method, target, rec.Body, err)
		}
		if rec.Code != http.StatusOK {
			if code, _ := got["code"].(float64); int(code) != rec.Code {
				t.Fatalf("%s %s: body code %v, want %d", method, target, got["code"], rec.Code)
			}
		}
	})
}
