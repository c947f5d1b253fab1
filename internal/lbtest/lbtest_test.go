package lbtest_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/umbra-iot/umbra/internal/lbtest"
)

// TestFirstLiveBackendAnswers: a request goes to the first backend that
// accepts the connection; with none, 502.
func TestFirstLiveBackendAnswers(t *testing.T) {
	lb := lbtest.New(t)
	get := func() (int, string) {
		t.Helper()
		resp, err := http.Get(lb.URL() + "/fw/x")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get(); code != http.StatusBadGateway {
		t.Errorf("no backend: %d, want 502", code)
	}
	dead := httptest.NewServer(http.NotFoundHandler())
	deadAddr := dead.Listener.Addr().String()
	dead.Close()
	live := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "live "+r.URL.Path) }))
	defer live.Close()
	lb.Add(deadAddr)
	lb.Add(live.Listener.Addr().String())
	if code, body := get(); code != http.StatusOK || body != "live /fw/x" {
		t.Errorf("dead then live backend: %d %q, want 200 from the live one", code, body)
	}
}
