package lbtest

import (
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
)

// LB is a running load balancer.
type LB struct {
	srv *httptest.Server

	mu       sync.Mutex // guards backends
	backends []string   // host:port, in order of preference
}

// New starts a load balancer with no backend, closed on tb's cleanup.
func New(tb testing.TB) *LB {
	tb.Helper()
	lb := &LB{}
	lb.srv = httptest.NewServer(http.HandlerFunc(lb.serve))
	tb.Cleanup(lb.srv.Close)
	return lb
}

// URL is the load balancer's base URL, http://127.0.0.1:<port>.
func (lb *LB) URL() string { return lb.srv.URL }

// Add adds a backend, host:port, after the others.
func (lb *LB) Add(addr string) {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	lb.backends = append(lb.backends, addr)
}

// serve forwards r to the first backend that answers.
func (lb *LB) serve(w http.ResponseWriter, r *http.Request) {
	lb.mu.Lock()
	backends := slices.Clone(lb.backends)
	lb.mu.Unlock()
	for i, b := range backends {
		if i > 0 && r.ContentLength != 0 {
			break
		}
		req := r.Clone(r.Context())
		req.URL.Scheme, req.URL.Host, req.Host, req.RequestURI = "http", b, b, ""
		resp, err := http.DefaultTransport.RoundTrip(req)
		if err != nil {
			continue // that node is down: the next one
		}
		for k, v := range resp.Header {
			w.Header()[k] = v
		}
		w.WriteHeader(resp.StatusCode)
		_, _ = io.Copy(w, resp.Body)
		resp.Body.Close()
		return
	}
	http.Error(w, "lbtest: no backend answers", http.StatusBadGateway)
}
