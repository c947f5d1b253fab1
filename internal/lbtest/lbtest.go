package lbtest

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
)

// LB is a running load balancer.
type LB struct {
	srv       *httptest.Server
	transport *http.Transport

	mu       sync.Mutex    // guards the fields below
	backends []string      // host:port, in order of preference
	hold     chan struct{} // non-nil: bodies pause after their first chunk until it is closed
	held     int           // bodies paused now
	changed  chan struct{} // closed (and replaced) when held changes
}

// New starts a load balancer with no backend, closed on tb's cleanup.
func New(tb testing.TB) *LB {
	tb.Helper()
	lb := &LB{transport: &http.Transport{DialContext: dialSmallBuffer, DisableCompression: true}, changed: make(chan struct{})}
	lb.srv = httptest.NewServer(http.HandlerFunc(lb.serve))
	tb.Cleanup(lb.srv.Close)
	tb.Cleanup(lb.transport.CloseIdleConnections)
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

// backendReadBuffer is the receive buffer of the connections to the
// backends. Fixed and small, so that a held body is not soaked up by the
// kernel (loopback autotuning grows it to megabytes): a backend killed
// mid-body then cuts a body larger than its own send buffer (up to
// net.ipv4.tcp_wmem's maximum, 4 MiB by default), as its death would
// behind a real proxy.
const backendReadBuffer = 64 << 10

func dialSmallBuffer(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	if tc, ok := c.(*net.TCPConn); ok {
		if err := tc.SetReadBuffer(backendReadBuffer); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

// Hold makes every response body that starts from now on pause after its
// first chunk until release is called (release is idempotent), so that a
// test can kill a backend while a download is under way.
func (lb *LB) Hold() (release func()) {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	hold := make(chan struct{})
	lb.hold = hold
	var once sync.Once
	return func() {
		once.Do(func() {
			lb.mu.Lock()
			defer lb.mu.Unlock()
			if lb.hold == hold {
				lb.hold = nil
			}
			close(hold)
		})
	}
}

// WaitHeld waits until a response body is paused by Hold, or ctx ends.
func (lb *LB) WaitHeld(ctx context.Context) error {
	for {
		lb.mu.Lock()
		n, changed := lb.held, lb.changed
		lb.mu.Unlock()
		if n > 0 {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// addHeld adds d to the count of paused bodies.
func (lb *LB) addHeld(d int) {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	lb.held += d
	close(lb.changed)
	lb.changed = make(chan struct{})
}

// firstChunk is what a held body copies before it pauses.
const firstChunk = 16 << 10

// copyBody copies body to w; with hold non-nil it pauses after the first
// chunk until hold is closed or the client is gone.
func (lb *LB) copyBody(ctx context.Context, w io.Writer, body io.Reader, hold chan struct{}) error {
	if hold != nil {
		if _, err := io.CopyN(w, body, firstChunk); err != nil {
			if err == io.EOF {
				return nil // all of it
			}
			return err
		}
		lb.addHeld(1)
		select {
		case <-hold:
		case <-ctx.Done():
		}
		lb.addHeld(-1)
	}
	_, err := io.Copy(w, body)
	return err
}

// serve forwards r to the first backend that answers.
func (lb *LB) serve(w http.ResponseWriter, r *http.Request) {
	lb.mu.Lock()
	backends, hold := slices.Clone(lb.backends), lb.hold
	lb.mu.Unlock()
	for i, b := range backends {
		if i > 0 && r.ContentLength != 0 {
			break
		}
		req := r.Clone(r.Context())
		req.URL.Scheme, req.URL.Host, req.Host, req.RequestURI = "http", b, b, ""
		resp, err := lb.transport.RoundTrip(req)
		if err != nil {
			continue // that node is down: the next one
		}
		for k, v := range resp.Header {
			w.Header()[k] = v
		}
		w.WriteHeader(resp.StatusCode)
		err = lb.copyBody(r.Context(), w, resp.Body, hold)
		resp.Body.Close()
		if err != nil {
			// The backend died mid-body: cut the client's connection too,
			// rather than end a chunked body cleanly short.
			panic(http.ErrAbortHandler)
		}
		return
	}
	http.Error(w, "lbtest: no backend answers", http.StatusBadGateway)
}
