package server_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/internal/brokertest"
	"github.com/umbra-iot/umbra/internal/server"
)

// TestShadowWiring checks what the server wires between the broker and
// the shadow engine for issue 10's cases 8, 9 and 17: the retry cache's
// bounds and series on /metrics, replies kept within the broker's packet
// limit, and catch-up deltas delivered to the subscriber only.
func TestShadowWiring(t *testing.T) {
	cfg := testConfig(t, t.TempDir())
	cfg.RetryCacheEntries = 2
	cfg.MaxPacketSize = 4096
	cfg.Logger = testLogger(t)
	s, err := server.Open(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(t.Context()), 10*time.Second)
		defer cancel()
		s.Close(ctx)
	})
	url := "tcp://" + s.Broker().Addr().String()
	ordered := func(o *paho.ClientOptions) { o.SetOrderMatters(true) }

	// Three devices report with a token; the cache keeps two entries.
	for _, id := range []string{"w1", "w2", "w3"} {
		body := fmt.Sprintf(`{"state":{"desired":{"mode":"eco"},"reported":{"mode":"off"}},"clientToken":"%s-0"}`, id)
		if _, err := s.Engine().Update(t.Context(), device.ID(id), []byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	got := scrapeMetrics(t, "http://"+s.HTTPAddr().String()+"/metrics")
	for series, want := range map[string]float64{
		"umbra_shadow_retry_cache_entries":         2,
		"umbra_shadow_retry_cache_evictions_total": 1,
	} {
		if got[series] != want {
			t.Errorf("%s = %g, want %g", series, got[series], want)
		}
	}
	if got["umbra_shadow_retry_cache_bytes"] <= 0 {
		t.Errorf("umbra_shadow_retry_cache_bytes = %g, want > 0", got["umbra_shadow_retry_cache_bytes"])
	}

	// A reply larger than the 4 KiB packet limit (JSON escapes each "<" to
	// six bytes) gets the short form.
	dev := brokertest.Connect(t, url, "w1", ordered)
	accepted := brokertest.Subscribe(t, dev, "state/w1/update/accepted", 1)
	var b strings.Builder
	for i := range 280 {
		fmt.Fprintf(&b, `,"<k%03d":null`, i)
	}
	brokertest.Publish(t, dev, "state/w1/update", 1, []byte(`{"state":{"reported":{"mode":"eco"`+b.String()+`}},"clientToken":"w1-1"}`))
	var w struct {
		Version      int
		StateOmitted bool
	}
	if err := json.Unmarshal(brokertest.Next(t, accepted, 5*time.Second).Payload, &w); err != nil || w.Version != 2 || !w.StateOmitted {
		t.Errorf("accepted of a large update = %+v (%v), want the short form of version 2", w, err)
	}

	// An integrator's subscription to w2's delta sends the catch-up delta
	// to the integrator only.
	w2 := brokertest.Connect(t, url, "w2", ordered)
	w2Delta := brokertest.Subscribe(t, w2, "state/w2/update/delta", 1)
	brokertest.Next(t, w2Delta, 5*time.Second) // its own catch-up
	w2Get := brokertest.Subscribe(t, w2, "state/w2/get/accepted", 1)
	integrator := brokertest.Connect(t, url, "integrator-1", ordered)
	if m := brokertest.Next(t, brokertest.Subscribe(t, integrator, "state/w2/update/delta", 1), 5*time.Second); !strings.Contains(string(m.Payload), `"mode":"eco"`) {
		t.Errorf("integrator's catch-up delta = %s, want mode eco", m.Payload)
	}
	brokertest.Publish(t, w2, "state/w2/get", 1, nil)
	brokertest.Next(t, w2Get, 5*time.Second)
	if n := len(w2Delta); n != 0 {
		t.Errorf("w2 received %d deltas caused by the integrator's subscription, want 0", n)
	}
}

// scrapeMetrics returns the sample lines of a /metrics page as series →
// value.
func scrapeMetrics(t *testing.T, url string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		// Label values may hold spaces (HTTP routes): the value is the
		// last field.
		line := sc.Text()
		i := strings.LastIndexByte(line, ' ')
		if strings.HasPrefix(line, "#") || i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			out[line[:i]] = v
		}
	}
	return out
}
