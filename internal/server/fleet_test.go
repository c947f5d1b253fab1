package server_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/identity"
	"github.com/umbra-iot/umbra/internal/server"
	"github.com/umbra-iot/umbra/wire"
)

// apiGet sends an authenticated GET and returns the status and body.
func (r *rig) apiDo(t *testing.T, method, path, token, body string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, "http://"+r.HTTPAddr().String()+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func (r *rig) fleetPage(t *testing.T, query string) wire.FleetList {
	t.Helper()
	code, b := r.apiDo(t, "GET", "/v1/devices?"+query, r.adminToken(t), "")
	if code != 200 {
		t.Fatalf("GET /v1/devices?%s: %d %s", query, code, b)
	}
	var l wire.FleetList
	if err := json.Unmarshal(b, &l); err != nil {
		t.Fatal(err)
	}
	return l
}

// TestFleetListFiltersAndTotals enrols labelled devices, has them report
// firmware over HTTP, and checks GET /v1/devices' filters, paging and
// totals, and that bad filters are 400s.
func TestFleetListFiltersAndTotals(t *testing.T) {
	r := mustOpenRig(t, true)
	tok := r.adminToken(t)
	for i := range 12 {
		id := device.ID(fmt.Sprintf("lamp-%02d", i))
		hw := map[bool]string{true: "m2", false: "m1"}[i%2 == 0]
		secret, err := r.Identity().AddDevice(t.Context(), id, map[string]string{"hw": hw})
		if err != nil {
			t.Fatal(err)
		}
		r.secrets[id] = secret
		state := map[bool]string{true: "failed", false: "updated"}[i%4 == 0]
		body := fmt.Sprintf(`{"state":{"reported":{"firmware":{"version":"1.%d.0","state":%q}}}}`, i%3, state)
		if code, b := r.apiDo(t, "POST", "/v1/devices/"+string(id)+"/shadow", tok, body); code != 200 {
			t.Fatalf("report %s: %d %s", id, code, b)
		}
	}
	c := r.connectDevice(t, "lamp-03")
	defer c.Disconnect(0)
	eventually(t, "the index to load and see lamp-03 online", func() string {
		if l := r.fleetPage(t, "online=true"); l.Loading || l.Matched != 1 {
			return fmt.Sprintf("%+v", l)
		}
		return ""
	})
	cases := []struct {
		query   string
		matched int
		first   device.ID
	}{
		{"", 12, "lamp-00"},
		{"selector=hw%3Dm2", 6, "lamp-00"},
		{"selector=hw%3Dm1&state=failed", 0, ""},
		{"online=true", 1, "lamp-03"},
		{"online=false&firmware=1.1.0", 4, "lamp-01"},
		{"state=failed", 3, "lamp-00"},
		{"q=-1", 2, "lamp-10"},
		{"id=lamp-07", 1, "lamp-07"},
		{"id=lamp-1", 0, ""}, // no such device: not a substring search
		{"cursor=lamp-10", 12, "lamp-11"},
	}
	for _, c := range cases {
		l := r.fleetPage(t, c.query)
		var first device.ID
		if len(l.Devices) > 0 {
			first = l.Devices[0].ID
		}
		if l.Matched != c.matched || first != c.first {
			t.Errorf("?%s: matched %d first %q, want %d %q", c.query, l.Matched, first, c.matched, c.first)
		}
		if tt := l.Totals; tt.Devices != 12 || tt.Online != 1 || tt.Offline != 11 || tt.Failing != 3 || tt.Firmware["1.0.0"] != 4 {
			t.Errorf("?%s: totals %+v", c.query, tt)
		}
	}
	if h := r.fleetPage(t, "id=lamp-03").Devices[0].PresenceHistory; len(h) != 1 || !h[0].Connected || h[0].At.IsZero() {
		t.Errorf("lamp-03's presence history %+v, want its connection", h)
	}
	d := r.fleetPage(t, "id=lamp-04").Devices[0]
	if !d.Enrolled || d.Labels["hw"] != "m2" || d.Firmware != (wire.FleetFirmware{Version: "1.1.0", State: "failed"}) || d.Version != 1 || d.LastReport.IsZero() {
		t.Errorf("lamp-04 = %+v", d)
	}
	p := r.fleetPage(t, "limit=5")
	if len(p.Devices) != 5 || p.Next != "lamp-04" {
		t.Errorf("limit 5: %d devices next %q", len(p.Devices), p.Next)
	}
	for _, bad := range []string{"limit=0", "limit=x", "online=maybe", "state=weird", "selector=nokey", "selector=%3Dv",
		"cursor=bad%20id", "id=a%2Fb", "q=" + strings.Repeat("x", 200), "online=true&online=false"} {
		code, b := r.apiDo(t, "GET", "/v1/devices?"+bad, tok, "")
		var eb wire.ErrorBody
		if code != 400 || json.Unmarshal(b, &eb) != nil || eb.Code != 400 || eb.Message == "" {
			t.Errorf("?%s: %d %s, want a 400 JSON error", bad, code, b)
		}
	}
	if l := r.fleetPage(t, ""); l.Matched != 12 {
		t.Errorf("after the bad queries: %d devices, want 12 (nothing changed)", l.Matched)
	}
	// A removed device leaves; its shadow keeps it listed, unenrolled.
	if err := r.Identity().RemoveDevice(t.Context(), "lamp-05"); err != nil {
		t.Fatal(err)
	}
	if d := r.fleetPage(t, "id=lamp-05").Devices; len(d) != 1 || d[0].Enrolled {
		t.Errorf("removed lamp-05: %+v, want it listed unenrolled", d)
	}
}

// sseStream is an open GET /v1/events.
type sseStream struct {
	resp *http.Response
	sc   *bufio.Scanner
}

func (r *rig) openEvents(t *testing.T, token, query string) (*sseStream, int) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+r.HTTPAddr().String()+"/v1/events?"+query, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 {
		resp.Body.Close()
		return nil, resp.StatusCode
	}
	t.Cleanup(func() { resp.Body.Close() })
	return &sseStream{resp: resp, sc: bufio.NewScanner(resp.Body)}, 200
}

// next returns the next event's name and data.
func (s *sseStream) next(t *testing.T) (string, string) {
	t.Helper()
	var name, data string
	for s.sc.Scan() {
		line := s.sc.Text()
		switch {
		case line == "" && name != "":
			return name, data
		case strings.HasPrefix(line, "event: "):
			name = line[len("event: "):]
		case strings.HasPrefix(line, "data: "):
			data = line[len("data: "):]
		}
	}
	t.Fatalf("stream ended: %v", s.sc.Err())
	return "", ""
}

// TestLiveEventsStreamTheFeed: GET /v1/events streams shadow and presence
// events filtered by device, is refused (429) beyond the per-token cap,
// and the caps are in /metrics.
func TestLiveEventsStreamTheFeed(t *testing.T) {
	r := mustOpenRig(t, true, func(c *server.Config) { c.MaxSSEConnsPerToken = 2 })
	tok := r.adminToken(t)
	s, code := r.openEvents(t, tok, "devices=lamp-1&kinds=shadow,presence")
	if code != 200 {
		t.Fatalf("GET /v1/events: %d", code)
	}
	if name, _ := s.next(t); name != "ready" {
		t.Fatalf("first event %q, want ready", name)
	}
	r.apiDo(t, "POST", "/v1/devices/lamp-2/shadow", tok, `{"state":{"reported":{"x":1}}}`) // filtered out
	if code, b := r.apiDo(t, "POST", "/v1/devices/lamp-1/shadow", tok, `{"state":{"reported":{"x":2}}}`); code != 200 {
		t.Fatalf("update: %d %s", code, b)
	}
	name, data := s.next(t)
	var ev struct {
		Device  device.ID
		Payload struct {
			Version int
			State   map[string]map[string]int
		}
	}
	if err := json.Unmarshal([]byte(data), &ev); err != nil || name != "shadow" || ev.Device != "lamp-1" || ev.Payload.State["reported"]["x"] != 2 {
		t.Fatalf("event %s %s (%v), want lamp-1's accepted update", name, data, err)
	}
	c := r.connectDevice(t, "lamp-1")
	name, data = s.next(t)
	var pres struct {
		Device  device.ID
		Payload identity.Presence
	}
	if err := json.Unmarshal([]byte(data), &pres); err != nil || name != "presence" || !pres.Payload.Connected {
		t.Fatalf("event %s %s, want lamp-1 connected", name, data)
	}
	c.Disconnect(0)

	if _, code := r.openEvents(t, tok, ""); code != 200 {
		t.Fatalf("second stream: %d", code)
	}
	if _, code := r.openEvents(t, tok, ""); code != http.StatusTooManyRequests {
		t.Errorf("third stream of one token: %d, want 429", code)
	}
	for _, bad := range []string{"kinds=nope", "devices=a%2Fb", "rollout=bad%20id"} {
		if _, code := r.openEvents(t, tok, bad); code != 400 {
			t.Errorf("?%s: %d, want 400", bad, code)
		}
	}
	if _, code := r.openEvents(t, "nobody:secret", ""); code != 401 {
		t.Errorf("a bad token: %d, want 401", code)
	}
	_, metrics := r.apiDo(t, "GET", "/metrics", "", "")
	for _, want := range []string{"umbra_console_sse_connections 2", `umbra_console_sse_refused_total{cap="per_token"} 1`, "umbra_console_sse_events_total"} {
		if !strings.Contains(string(metrics), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	// Close ends the streams (http.Server.Shutdown would wait for them).
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		done <- r.Close(ctx)
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Close: %v", err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("Close did not end the event streams")
	}
}
