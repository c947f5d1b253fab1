package loadgen_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/broker"

	"github.com/umbra-iot/umbra/internal/loadgen"
	"github.com/umbra-iot/umbra/internal/loadgen/loadgentest"
)

// echoBroker is the benchmark baseline: a bare broker whose inline
// responder echoes every update to …/accepted.
func echoBroker(tb testing.TB) (*broker.Server, string) {
	srv, url := loadgentest.MustBroker(tb)
	loadgentest.Handle(tb, srv, "state/+/update", loadgen.Echo(srv, 1))
	return srv, url
}

func checkPercentiles(t *testing.T, r loadgen.Result) {
	t.Helper()
	if !(r.P50 > 0 && r.P50 <= r.P90 && r.P90 <= r.P99 && r.P99 <= r.P999 && r.P999 <= r.Max) {
		t.Errorf("percentiles not ordered: %v", r)
	}
}

func TestRunAgainstEcho(t *testing.T) {
	_, url := echoBroker(t)
	tests := []struct {
		name string
		cfg  loadgen.Config
	}{
		{"window 1 qos 1", loadgen.Config{Clients: 8, Window: 1, QoS: 1}},
		{"window 4 qos 1", loadgen.Config{Clients: 4, Window: 4, QoS: 1}},
		{"qos 0", loadgen.Config{Clients: 4, QoS: 0}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg
			cfg.Server, cfg.IDPrefix = url, strings.ReplaceAll(tc.name, " ", "-")+"-"
			cfg.MaxRequests, cfg.Duration = 2000, 20*time.Second
			r, err := loadgen.Run(t.Context(), cfg)
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			if r.Requests != 2000 || r.Errors != 0 || len(r.Rejected) != 0 {
				t.Errorf("got %v, want exactly 2000 requests, no errors, no rejections", r)
			}
			if r.Elapsed <= 0 || r.Elapsed > 20*time.Second || r.PerSecond <= 0 {
				t.Errorf("elapsed %v, %.0f/s: want a positive rate within the 20s bound", r.Elapsed, r.PerSecond)
			}
			checkPercentiles(t, r)
			t.Logf("%s: %v", tc.name, r)
		})
	}
}

func TestRunStopsAfterDuration(t *testing.T) {
	_, url := echoBroker(t)
	start := time.Now()
	r, err := loadgen.Run(t.Context(), loadgen.Config{Server: url, Clients: 2, QoS: 1,
		Warmup: 100 * time.Millisecond, Duration: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if r.Elapsed < 300*time.Millisecond || r.Elapsed > 400*time.Millisecond {
		t.Errorf("elapsed %v, want the 300ms window", r.Elapsed)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("run took %v, want about warmup + duration + drain", took)
	}
	if r.Requests == 0 || r.Errors != 0 {
		t.Errorf("got %v, want requests and no errors", r)
	}
}

func TestRunCountsRejectionsAndTimeouts(t *testing.T) {
	srv, url := loadgentest.MustBroker(t)
	var n atomic.Int64
	// Every 3rd request is rejected with 429, every 5th gets no answer.
	loadgentest.Handle(t, srv, "state/+/update", func(_, topic string, payload []byte) {
		var req struct {
			ClientToken string `json:"clientToken"`
		}
		if err := json.Unmarshal(payload, &req); err != nil {
			t.Errorf("request payload %q: %v", payload, err)
			return
		}
		switch i := n.Add(1); {
		case i%5 == 0:
		case i%3 == 0:
			_ = srv.Publish(topic+"/rejected", fmt.Appendf(nil, `{"code":429,"message":"slow down","clientToken":%q}`, req.ClientToken), false, 1)
		default:
			_ = srv.Publish(topic+"/accepted", fmt.Appendf(nil, `{"version":1,"clientToken":%q}`, req.ClientToken), false, 1)
		}
	})
	r, err := loadgen.Run(t.Context(), loadgen.Config{Server: url, Clients: 4, Window: 2, QoS: 1,
		Duration: time.Second, Timeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if r.Requests == 0 || r.Rejected[429] == 0 || r.Errors == 0 {
		t.Errorf("got %v, want accepted requests, 429 rejections and timeouts", r)
	}
	if got := float64(r.Rejected[429]) / float64(r.Requests); got < 0.2 || got > 0.8 {
		t.Errorf("rejected/accepted = %.2f, want about 4/8", got)
	}
}

func TestRunEchoClient(t *testing.T) {
	_, url := loadgentest.MustBroker(t)
	echo, err := loadgen.OpenEcho(t.Context(), loadgen.EchoConfig{Server: url, QoS: 1})
	if err != nil {
		t.Fatalf("OpenEcho: %v", err)
	}
	defer echo.Close(t.Context())
	r, err := loadgen.Run(t.Context(), loadgen.Config{Server: url, Clients: 4, QoS: 1, MaxRequests: 500, Duration: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if r.Requests != 500 || r.Errors != 0 {
		t.Errorf("got %v, want 500 requests and no errors", r)
	}
	checkPercentiles(t, r)
}

func TestRunCancelled(t *testing.T) {
	_, url := loadgentest.MustBroker(t) // nobody answers
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	r, err := loadgen.Run(ctx, loadgen.Config{Server: url, Clients: 2, QoS: 1, Duration: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("cancelled run took %v, want it to stop promptly", took)
	}
	if r.Requests != 0 {
		t.Errorf("got %d requests from a broker nobody answers on, want 0", r.Requests)
	}
}

func TestRunValidates(t *testing.T) {
	tests := []struct {
		name string
		cfg  loadgen.Config
	}{
		{"no server", loadgen.Config{}},
		{"no host", loadgen.Config{Server: "tcp://"}},
		{"negative clients", loadgen.Config{Server: "tcp://127.0.0.1:1", Clients: -1}},
		{"negative duration", loadgen.Config{Server: "tcp://127.0.0.1:1", Duration: -time.Second}},
		{"qos 2", loadgen.Config{Server: "tcp://127.0.0.1:1", QoS: 2}},
		{"wildcard prefix", loadgen.Config{Server: "tcp://127.0.0.1:1", IDPrefix: "a/+"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := loadgen.Run(t.Context(), tc.cfg); !errors.Is(err, loadgen.ErrInvalidConfig) {
				t.Errorf("Run(%s) error = %v, want ErrInvalidConfig", tc.name, err)
			}
		})
	}
	t.Run("unreachable", func(t *testing.T) {
		_, err := loadgen.Run(t.Context(), loadgen.Config{Server: "tcp://127.0.0.1:1", Clients: 1, Timeout: time.Second})
		if err == nil || errors.Is(err, loadgen.ErrInvalidConfig) {
			t.Errorf("Run(unreachable) error = %v, want a connect error", err)
		}
	})
}

func TestRunEndsWhenBrokerGoes(t *testing.T) {
	srv, url, err := loadgentest.Start()
	if err != nil {
		t.Fatal(err)
	}
	var n atomic.Int64
	closed := make(chan struct{})
	echo := loadgen.Echo(srv, 1)
	loadgentest.Handle(t, srv, "state/+/update", func(id, topic string, payload []byte) {
		if n.Add(1) == 200 {
			go func() { _ = srv.Close(context.Background()); close(closed) }()
		}
		echo(id, topic, payload)
	})
	start := time.Now()
	r, err := loadgen.Run(t.Context(), loadgen.Config{Server: url, Clients: 4, QoS: 1,
		Duration: 30 * time.Second, Timeout: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	<-closed
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("run took %v after the broker went away, want it to end promptly", took)
	}
	// The broker closes asynchronously after the 200th request, so a few
	// more may be answered; never more than the broker handled.
	if handled := n.Load(); r.Requests < 100 || int64(r.Requests) > handled {
		t.Errorf("got %d requests, want at least 100 and at most the %d the broker handled", r.Requests, handled)
	}
}
