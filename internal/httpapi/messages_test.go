package httpapi_test

import (
	"strings"
	"testing"

	"github.com/umbra-iot/umbra/internal/httpapi"
)

// TestNoHTMLEscapes: an error message quoting the request keeps its "<"
// and "&" (Go's json.Marshal would write \u003c and \u0026).
func TestNoHTMLEscapes(t *testing.T) {
	srv, _ := newAPI(t, httpapi.Config{})
	r := do(t, srv, "GET", "/v1/x%3Cy%3E%26z", "")
	r.check(t, "no route", 404, map[string]any{"message": "No route for /v1/x<y>&z"})
	if strings.Contains(r.raw, `\u00`) {
		t.Errorf("HTML escapes in %s", r.raw)
	}
}
