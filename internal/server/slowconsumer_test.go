package server_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/identity"
	"github.com/umbra-iot/umbra/internal/brokertest"
	"github.com/umbra-iot/umbra/internal/server"
)

// promptly bounds each request of the slow-consumer tests: it detects a
// hang (before the fix: until the slow socket closed, never with keepalive
// 0), generously for -race on two busy cores. It is not a performance
// assertion.
const promptly = 10 * time.Second

// apiClient calls the rig's HTTP API with an operator token.
type apiClient struct {
	base, bearer string
	c            *http.Client
}

func (r *rig) operatorAPI(t *testing.T, name string) *apiClient {
	t.Helper()
	secret, err := r.Identity().CreateToken(t.Context(), identity.RoleOperator, name)
	if err != nil {
		t.Fatalf("create token %s: %v", name, err)
	}
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &apiClient{base: "http://" + r.HTTPAddr().String(), bearer: name + ":" + secret,
		c: &http.Client{Transport: tr, Timeout: promptly}}
}

// do sends a request and returns the status and body; a request that gets
// no answer within promptly is an error.
func (a *apiClient) do(method, path string, body []byte) (int, []byte, error) {
	req, err := http.NewRequest(method, a.base+path, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+a.bearer)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	start := time.Now()
	resp, err := a.c.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("%s %s: no answer after %v: %w", method, path, time.Since(start).Round(time.Millisecond), err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// mustDo is do for a request that must get want.
func (a *apiClient) mustDo(t *testing.T, method, path string, body []byte, want int) []byte {
	t.Helper()
	code, b, err := a.do(method, path, body)
	if err != nil {
		t.Fatal(err)
	}
	if code != want {
		t.Fatalf("%s %s: status %d (%s), want %d", method, path, code, b, want)
	}
	return b
}

// blob is a reported-state value of about n bytes.
func blob(n int) string { return strings.Repeat("b", n) }

// TestHardening05SlowSubscriberServer is issue 10's case 5 on a whole
// Umbra with authentication: an operator subscribed to "#", or an
// integrator (read-only token) subscribed to state/+/update/accepted,
// stops reading its socket, with keepalive 0. Devices' updates over MQTT
// and HTTP must keep getting their accepted replies promptly; before the
// fix they failed within seconds (the engine's reply publish waited for
// the slow subscriber's lock while holding the device's). The slow client
// is disconnected once its pending bytes pass the service cap (1 MiB
// here), and /metrics counts it.
func TestHardening05SlowSubscriberServer(t *testing.T) {
	tests := []struct {
		name   string
		role   identity.Role
		filter string
	}{
		{"operator on #", identity.RoleOperator, "#"},
		{"integrator on accepted", identity.RoleIntegrator, "state/+/update/accepted"},
	}
	const (
		devices = 4
		updates = 80 // per device and over HTTP: 400 updates of 24 KiB, more than a socket buffer and the cap
	)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := mustOpenRig(t, true, func(c *server.Config) {
				c.ServicePendingBytes = 1 << 20
				c.MaxDocumentSize = 64 << 10
				c.DeviceRate = -1 // the devices update as fast as they can
			})
			secret, err := r.Identity().CreateToken(t.Context(), tc.role, "slow")
			if err != nil {
				t.Fatal(err)
			}
			brokertest.DialStalled(t, r.Broker().Addr().String(), brokertest.StalledOptions{
				ClientID: "slow-watcher", Username: "slow", Password: secret, Filter: tc.filter, QoS: 1,
			})
			api := r.operatorAPI(t, "ops")

			var wg sync.WaitGroup
			errs := make(chan error, devices+1)
			for i := range devices {
				id := device.ID(fmt.Sprintf("dev%d", i))
				c := r.connectDevice(t, id)
				wg.Go(func() {
					topic := "state/" + string(id) + "/update"
					request := func(i int) []byte {
						return fmt.Appendf(nil, `{"state":{"reported":{"blob":%q,"n":%d}}}`, blob(24<<10), i)
					}
					if err := brokertest.RequestReplies(c, topic, topic+"/accepted", updates, request, promptly); err != nil {
						errs <- err
					}
				})
			}
			wg.Go(func() {
				for i := range updates {
					body := fmt.Sprintf(`{"state":{"desired":{"blob":%q,"n":%d}}}`, blob(24<<10), i)
					code, b, err := api.do("POST", "/v1/devices/http-dev/shadow", []byte(body))
					if err == nil && code != http.StatusOK {
						err = fmt.Errorf("HTTP update %d: status %d (%s), want 200", i, code, b)
					}
					if err != nil {
						errs <- err
						return
					}
				}
			})
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}

			eventually(t, "the slow watcher to be disconnected", func() string {
				if st := r.Broker().Stats(); st.SlowConsumers != 1 {
					return fmt.Sprintf("Stats.SlowConsumers %d, want 1", st.SlowConsumers)
				}
				return ""
			})
			metrics := string(api.mustDo(t, "GET", "/metrics", nil, http.StatusOK))
			if !strings.Contains(metrics, "\numbra_broker_slow_consumers_total 1\n") {
				t.Errorf("/metrics has no umbra_broker_slow_consumers_total 1:\n%s", grepLines(metrics, "umbra_broker_"))
			}
		})
	}
}

// TestHardening06SlowDeviceDoesNotWedgePlanner is issue 10's case 6: a
// device subscribes to its own topics with a tiny receive buffer, never
// reads, and reports large states, so its socket fills before its inflight
// cap trips. A rollout then notifies it. Before the fix the planner's
// pass blocked (holding the planner's mutex) on the device, and
// GET /v1/rollouts/{id}, GET /v1/rollouts and POST /v1/rollouts hung until
// the device disconnected: never, with keepalive 0. Now the device is
// disconnected as a slow consumer and the API answers.
func TestHardening06SlowDeviceDoesNotWedgePlanner(t *testing.T) {
	r := mustOpenRig(t, true, func(c *server.Config) {
		c.MaxDocumentSize = 64 << 10
		c.DeviceRate = -1
	})
	r.mustUpload(t, newVersion)
	api := r.operatorAPI(t, "ops")
	user, pass := r.credentials(t, "dev-wedge")
	r.credentials(t, "dev-ok")
	dev := brokertest.DialStalled(t, r.Broker().Addr().String(), brokertest.StalledOptions{
		ClientID: "dev-wedge", Username: user, Password: pass, Filter: "state/dev-wedge/#", QoS: 1,
	})
	// 200 reports of 30 KiB: each is answered on the device's own topics
	// with an accepted reply and a documents message (about 90 KiB), far
	// more than its socket holds. The device's writes stall once the
	// broker stops reading it, so they run in the background, each bounded
	// by brokertest.Timeout.
	reported := make(chan struct{})
	go func() {
		defer close(reported)
		for i := range 200 {
			report := fmt.Sprintf(`{"state":{"reported":{"firmware":{"version":%q},"blob":%q,"n":%d}}}`, oldVersion, blob(30<<10), i)
			if err := dev.Publish("state/dev-wedge/update", 0, []byte(report)); err != nil {
				return
			}
		}
	}()
	<-reported

	body := fmt.Sprintf(`{"firmware":%q,"devices":["dev-wedge"]}`, newVersion)
	var ro struct{ ID string }
	if err := json.Unmarshal(api.mustDo(t, "POST", "/v1/rollouts", []byte(body), http.StatusCreated), &ro); err != nil {
		t.Fatal(err)
	}
	// The planner notifies the device in its next pass (every 50 ms).
	eventually(t, "the rollout to notify dev-wedge", func() string {
		var st struct{ Counts map[string]int }
		if err := json.Unmarshal(api.mustDo(t, "GET", "/v1/rollouts/"+ro.ID, nil, http.StatusOK), &st); err != nil {
			t.Fatal(err)
		}
		if st.Counts["pending"] > 0 {
			return fmt.Sprintf("counts %v", st.Counts)
		}
		return ""
	})
	api.mustDo(t, "GET", "/v1/rollouts", nil, http.StatusOK)
	body = fmt.Sprintf(`{"firmware":%q,"devices":["dev-ok"]}`, newVersion)
	api.mustDo(t, "POST", "/v1/rollouts", []byte(body), http.StatusCreated)

	// The broker counts the slow consumer when it decides to cut it; the
	// disconnect, and so presence, follows on the connection's goroutine.
	eventually(t, "dev-wedge disconnected as a slow consumer", func() string {
		if st := r.Broker().Stats(); st.SlowConsumers != 1 {
			return fmt.Sprintf("Stats.SlowConsumers %d, want 1 (dev-wedge)", st.SlowConsumers)
		}
		if p, ok := r.Identity().Presence("dev-wedge"); !ok || p.Connected || p.DisconnectReason != "slow_consumer" {
			return fmt.Sprintf("presence of dev-wedge %+v, want disconnected as slow_consumer", p)
		}
		return ""
	})
	if st := r.Broker().Stats(); st.SlowConsumers != 1 {
		t.Errorf("Stats.SlowConsumers %d, want exactly 1 (dev-wedge)", st.SlowConsumers)
	}
}

// grepLines returns the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	for l := range strings.Lines(s) {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "")
}
