package metrics_test

import (
	"bufio"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/internal/metrics"
)

// scrape GETs /metrics from h through a real HTTP server and returns every
// sample line as series → value ("name{labels}" exactly as exposed).
func scrape(t *testing.T, h http.Handler) map[string]float64 {
	t.Helper()
	srv := httptest.NewServer(h)
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET /metrics: got status %d (%s), want 200", resp.StatusCode, b)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("Content-Type = %q, want text/plain…", ct)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			t.Fatalf("malformed sample line %q", line)
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("sample line %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("read /metrics: %v", err)
	}
	return out
}

type fakeFirmware struct{ n atomic.Int64 }

func (f *fakeFirmware) BytesServed() int64 { return f.n.Load() }

func TestScrape(t *testing.T) {
	m := metrics.New()
	broker := metrics.BrokerStats{ClientsConnected: 1000, MessagesReceived: 5, MessagesSent: 7,
		MessagesDropped: 2, InflightDropped: 3, PublishesDenied: 4, SlowConsumers: 6, PendingBytes: 8 << 10,
		Subscriptions: 9, SubscriptionsRefused: 10,
		Retained: 11, RetainedBytes: 12, RetainedRefused: 13, PersistentSessions: 14, SessionsRefused: 15,
		QueuedBytes: 16, QueueBytesDropped: 17, StoreCommits: 18, StoreErrors: 19, StoreTime: 1500 * time.Millisecond,
		SubscriptionsDenied: 21, RateLimited: 22,
		ConnectsRejected: 23, IdentityConnsRefused: 24, TLSHandshakesFailed: 25, PacketsTooLarge: 26,
		LoopConns: 27, LoopHandoffs: 28}
	m.RegisterBroker(func() metrics.BrokerStats { return broker })
	fw := &fakeFirmware{}
	fw.n.Store(4 << 20)
	m.RegisterFirmware(fw)

	m.ObserveShadow("update", 200, 2*time.Millisecond)
	m.ObserveShadow("update", 200, 3*time.Second) // beyond the last bucket
	m.ObserveShadow("update", 409, time.Millisecond)
	m.ObserveShadow("get", 404, 100*time.Microsecond)
	m.ObserveCommit(4*time.Millisecond, 100)
	m.ObserveCommit(6*time.Millisecond, 1)
	m.SetRolloutDevices("r1", "installing", 10)
	m.SetRolloutDevices("r1", "succeeded", 90)
	m.SetRolloutDevices("r2", "pending", 5)
	m.DeleteRollout("r2")

	got := scrape(t, m.Handler())
	tests := []struct {
		series string
		want   float64
	}{
		{`umbra_devices_connected`, 1000},
		{`umbra_broker_messages_received_total`, 5},
		{`umbra_broker_messages_sent_total`, 7},
		{`umbra_broker_messages_dropped_total{reason="queue_full"}`, 2},
		{`umbra_broker_messages_dropped_total{reason="inflight_full"}`, 3},
		{`umbra_broker_messages_dropped_total{reason="denied"}`, 4},
		{`umbra_broker_slow_consumers_total`, 6},
		{`umbra_broker_pending_bytes`, 8 << 10},
		{`umbra_broker_subscriptions`, 9},
		{`umbra_broker_subscriptions_refused_total`, 10},
		{`umbra_broker_messages_dropped_total{reason="queue_bytes"}`, 17},
		{`umbra_broker_retained_messages`, 11},
		{`umbra_broker_retained_bytes`, 12},
		{`umbra_broker_limit_refusals_total{limit="retained"}`, 13},
		{`umbra_broker_persistent_sessions`, 14},
		{`umbra_broker_limit_refusals_total{limit="sessions_per_identity"}`, 15},
		{`umbra_broker_queued_bytes`, 16},
		{`umbra_broker_store_commits_total`, 18},
		{`umbra_broker_store_errors_total`, 19},
		{`umbra_broker_store_commit_seconds_total`, 1.5},
		{`umbra_broker_denied_total{op="publish"}`, 4},
		{`umbra_broker_denied_total{op="subscribe"}`, 21},
		{`umbra_broker_messages_dropped_total{reason="rate_limited"}`, 22},
		{`umbra_broker_connects_rejected_total`, 23},
		{`umbra_broker_identity_connections_refused_total`, 24},
		{`umbra_broker_tls_handshakes_failed_total`, 25},
		{`umbra_broker_packets_too_large_total`, 26},
		{`umbra_broker_read_loop_connections`, 27},
		{`umbra_broker_read_loop_handoffs_total`, 28},
		{`umbra_firmware_bytes_served_total`, 4 << 20},
		{`umbra_shadow_requests_total{code="200",op="update"}`, 2},
		{`umbra_shadow_requests_total{code="409",op="update"}`, 1},
		{`umbra_shadow_requests_total{code="404",op="get"}`, 1},
		{`umbra_shadow_request_duration_seconds_count{op="update"}`, 3},
		{`umbra_shadow_request_duration_seconds_bucket{op="update",le="0.001"}`, 1},
		{`umbra_shadow_request_duration_seconds_bucket{op="update",le="0.002"}`, 2},
		{`umbra_shadow_request_duration_seconds_bucket{op="update",le="1.024"}`, 2},
		{`umbra_shadow_request_duration_seconds_bucket{op="update",le="+Inf"}`, 3},
		{`umbra_shadow_request_duration_seconds_count{op="get"}`, 1},
		{`umbra_shadow_commit_duration_seconds_count`, 2},
		{`umbra_shadow_commit_duration_seconds_sum`, 0.010},
		{`umbra_shadow_commit_batch_documents_sum`, 101},
		{`umbra_shadow_commit_batch_documents_bucket{le="1"}`, 1},
		{`umbra_shadow_commit_batch_documents_bucket{le="128"}`, 2},
		{`umbra_rollout_devices{rollout="r1",state="installing"}`, 10},
		{`umbra_rollout_devices{rollout="r1",state="succeeded"}`, 90},
	}
	for _, tc := range tests {
		v, ok := got[tc.series]
		switch {
		case !ok:
			t.Errorf("%s: missing from /metrics", tc.series)
		case !near(v, tc.want):
			t.Errorf("%s = %g, want %g", tc.series, v, tc.want)
		}
	}
	for series := range got {
		if strings.Contains(series, `rollout="r2"`) {
			t.Errorf("%s: present after DeleteRollout(r2), want gone", series)
		}
	}
	// The standard collectors are there too.
	for _, series := range []string{"go_goroutines", "process_cpu_seconds_total"} {
		if _, ok := got[series]; !ok {
			t.Errorf("%s: missing from /metrics", series)
		}
	}
}

func near(a, b float64) bool {
	d := a - b
	return d < 1e-9 && d > -1e-9
}

// TestBrokerReadAtScrape checks that broker and firmware figures are live
// values read at each scrape, not copies taken at registration.
func TestBrokerReadAtScrape(t *testing.T) {
	m := metrics.New()
	var connected atomic.Int64
	m.RegisterBroker(func() metrics.BrokerStats { return metrics.BrokerStats{ClientsConnected: connected.Load()} })
	fw := &fakeFirmware{}
	m.RegisterFirmware(fw)
	for _, n := range []int64{0, 3, 1} {
		connected.Store(n)
		fw.n.Store(n * 100)
		got := scrape(t, m.Handler())
		if v := got["umbra_devices_connected"]; v != float64(n) {
			t.Errorf("umbra_devices_connected = %g, want %d", v, n)
		}
		if v := got["umbra_firmware_bytes_served_total"]; v != float64(n*100) {
			t.Errorf("umbra_firmware_bytes_served_total = %g, want %d", v, n*100)
		}
	}
}

// TestInstancesIndependent checks that two Metrics do not share a
// registry (no global state): both register a broker and count apart.
func TestInstancesIndependent(t *testing.T) {
	a, b := metrics.New(), metrics.New()
	a.RegisterBroker(func() metrics.BrokerStats { return metrics.BrokerStats{ClientsConnected: 1} })
	b.RegisterBroker(func() metrics.BrokerStats { return metrics.BrokerStats{ClientsConnected: 2} })
	a.ObserveShadow("update", 200, time.Millisecond)
	if v := scrape(t, a.Handler())["umbra_devices_connected"]; v != 1 {
		t.Errorf("a: umbra_devices_connected = %g, want 1", v)
	}
	gb := scrape(t, b.Handler())
	if v := gb["umbra_devices_connected"]; v != 2 {
		t.Errorf("b: umbra_devices_connected = %g, want 2", v)
	}
	if v, ok := gb[`umbra_shadow_requests_total{code="200",op="update"}`]; ok {
		t.Errorf("b: shadow request counted in a is %g in b, want absent", v)
	}
}

func TestRegisterTwicePanics(t *testing.T) {
	tests := []struct {
		name     string
		register func(m *metrics.Metrics)
	}{
		{"broker", func(m *metrics.Metrics) {
			m.RegisterBroker(func() metrics.BrokerStats { return metrics.BrokerStats{} })
		}},
		{"firmware", func(m *metrics.Metrics) { m.RegisterFirmware(&fakeFirmware{}) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := metrics.New()
			tc.register(m)
			defer func() {
				if recover() == nil {
					t.Errorf("second Register%s: got no panic, want one", tc.name)
				}
			}()
			tc.register(m)
		})
	}
}

// TestConcurrentObserve exercises every push method from many goroutines
// while scraping, for the race detector, and checks the totals.
func TestConcurrentObserve(t *testing.T) {
	m := metrics.New()
	const workers, each = 8, 500
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				m.ObserveShadow("update", 200, time.Duration(i)*time.Microsecond)
				m.ObserveCommit(time.Millisecond, 2)
				m.SetRolloutDevices("r", "state"+strconv.Itoa(w), i)
			}
		})
	}
	scrape(t, m.Handler()) // concurrently with the writers
	wg.Wait()
	got := scrape(t, m.Handler())
	if v, want := got[`umbra_shadow_requests_total{code="200",op="update"}`], float64(workers*each); v != want {
		t.Errorf("requests_total = %g, want %g", v, want)
	}
	if v, want := got[`umbra_shadow_commit_batch_documents_sum`], float64(workers*each*2); v != want {
		t.Errorf("commit_batch_documents_sum = %g, want %g", v, want)
	}
	if v := got[`umbra_rollout_devices{rollout="r",state="state3"}`]; v != each-1 {
		t.Errorf("rollout_devices state3 = %g, want %d", v, each-1)
	}
}

func TestJobsMetrics(t *testing.T) {
	m := metrics.New()
	m.RegisterJobs(func() metrics.JobsStats { return metrics.JobsStats{NotificationsSent: 6, NotificationsDropped: 1} })
	m.ObserveJobs("update", "accepted")
	m.ObserveJobs("update", "accepted")
	m.ObserveJobs("get", "RequestThrottled")
	got := scrape(t, m.Handler())
	for series, want := range map[string]float64{
		`umbra_jobs_requests_total{op="update",result="accepted"}`:      2,
		`umbra_jobs_requests_total{op="get",result="RequestThrottled"}`: 1,
		`umbra_jobs_notifications_total`:                                6,
		`umbra_jobs_notifications_dropped_total`:                        1,
	} {
		if got[series] != want {
			t.Errorf("%s = %v, want %v", series, got[series], want)
		}
	}
}
