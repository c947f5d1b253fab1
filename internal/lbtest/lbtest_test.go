package lbtest_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

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

// TestCutBodyIsCutForTheClient: a backend that dies mid-body (here, one
// that aborts its handler after half of a chunked body) leaves the client
// with a broken transfer, not a clean short body; a whole body arrives
// intact.
func TestCutBodyIsCutForTheClient(t *testing.T) {
	body := strings.Repeat("0123456789abcdef", 8<<10) // 128 KiB
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/cut" {
			io.WriteString(w, body[:len(body)/2])
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler)
		}
		io.WriteString(w, body)
	}))
	defer backend.Close()
	lb := lbtest.New(t)
	lb.Add(backend.Listener.Addr().String())
	tests := []struct {
		path    string
		wantErr bool
	}{
		{"/whole", false},
		{"/cut", true},
	}
	for _, tt := range tests {
		resp, err := http.Get(lb.URL() + tt.path)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if tt.wantErr {
			if err == nil {
				t.Errorf("%s: read %d bytes and no error, want a broken transfer", tt.path, len(got))
			}
			continue
		}
		if err != nil || string(got) != body {
			t.Errorf("%s: read %d of %d bytes, error %v; want the whole body", tt.path, len(got), len(body), err)
		}
	}
}

// TestHoldPausesBodies: WaitHeld returns with ctx's error while no body
// is held; after Hold, a body pauses after its first chunk (WaitHeld
// returns) and arrives whole once released.
func TestHoldPausesBodies(t *testing.T) {
	lb := lbtest.New(t)
	short, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if err := lb.WaitHeld(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitHeld with no request: %v, want the deadline", err)
	}
	body := strings.Repeat("0123456789abcdef", 8<<10) // 128 KiB
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, body) }))
	defer backend.Close()
	lb.Add(backend.Listener.Addr().String())
	release := lb.Hold()
	defer release()
	got := make(chan string, 1)
	go func() {
		resp, err := http.Get(lb.URL() + "/slow")
		if err != nil {
			got <- err.Error()
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		got <- fmt.Sprint(len(b), " ", string(b) == body, " ", err)
	}()
	ctx, cancel2 := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel2()
	if err := lb.WaitHeld(ctx); err != nil {
		t.Fatalf("WaitHeld with a body under way: %v", err)
	}
	select {
	case b := <-got:
		t.Fatalf("the held body ended before its release: %s", b)
	default:
	}
	release()
	if b, want := <-got, fmt.Sprint(len(body), " true <nil>"); b != want {
		t.Errorf("body: %s, want %s", b, want)
	}
}
