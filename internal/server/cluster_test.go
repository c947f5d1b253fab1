package server_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/internal/brokertest"
	"github.com/umbra-iot/umbra/internal/natstest"
	"github.com/umbra-iot/umbra/internal/server"
)

// TestClusterModeNATSUnreachable: with --nats naming no live server, serve
// refuses to start, saying which URLs and what to do, and binds nothing.
func TestClusterModeNATSUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "nats://" + l.Addr().String()
	l.Close() // nothing listens there now
	mqtt, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mqttAddr := mqtt.Addr().String()
	mqtt.Close()
	start := time.Now()
	s, err := server.Open(t.Context(), server.Config{DataDir: t.TempDir(), MQTTAddr: mqttAddr, NATS: []string{dead}, NodeID: "n1",
		Logger: testLogger(t)})
	if err == nil {
		s.Close(t.Context())
		t.Fatal("Open with NATS unreachable succeeded")
	}
	if !errors.Is(err, server.ErrNATSUnreachable) || !strings.Contains(err.Error(), dead) || !strings.Contains(err.Error(), "without --nats") {
		t.Fatalf("Open = %v, want ErrNATSUnreachable naming %s and what to do", err, dead)
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("Open took %v to give up", d)
	}
	if l, err := net.Listen("tcp", mqttAddr); err != nil {
		t.Errorf("the MQTT address is bound after the refused start: %v", err)
	} else {
		l.Close()
	}
	if _, err := server.Open(t.Context(), server.Config{DataDir: t.TempDir(), MQTTAddr: "127.0.0.1:0", NATS: []string{dead}}); !errors.Is(err, server.ErrInvalidConfig) {
		t.Errorf("Open with NATS and no NodeID = %v, want ErrInvalidConfig", err)
	}
}

// TestClusterModeSharedShadows: two nodes on one NATS server see one
// fleet's shadows: an update through node A's HTTP API is read through
// node B's. With NATS lost, node A answers shadow updates with 503 (HTTP)
// and rejected code 503 (MQTT) and stores nothing; when NATS is back it
// serves again by itself.
func TestClusterModeSharedShadows(t *testing.T) {
	ns := natstest.Start(t)
	node := func(id string) *rig {
		return mustOpenRig(t, false, func(c *server.Config) { c.NATS, c.NodeID, c.NATSReplicas = ns.URLs(), id, 1 })
	}
	a, b := node("a"), node("b")
	post := func(r *rig, body string) (int, string) {
		t.Helper()
		resp, err := http.Post("http://"+r.HTTPAddr().String()+"/v1/devices/dev-1/shadow", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out bytes.Buffer
		out.ReadFrom(resp.Body)
		return resp.StatusCode, out.String()
	}
	if code, body := post(a, `{"state":{"reported":{"temp":21}}}`); code != http.StatusOK {
		t.Fatalf("update on node A = %d %s", code, body)
	}
	resp, err := http.Get("http://" + b.HTTPAddr().String() + "/v1/devices/dev-1/shadow")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		State struct {
			Reported map[string]any `json:"reported"`
		} `json:"state"`
		Version int `json:"version"`
	}
	err = json.NewDecoder(resp.Body).Decode(&doc)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || doc.State.Reported["temp"] != float64(21) {
		t.Fatalf("GET on node B = %d %+v, %v; want node A's update", resp.StatusCode, doc, err)
	}

	// A device on node A updates over MQTT too (anonymous mode: any client).
	dev := brokertest.Connect(t, a.mqttURL(), "dev-1")
	rejected := brokertest.Subscribe(t, dev, "state/dev-1/update/rejected", 1)

	ns.Kill()
	if code, body := post(a, `{"state":{"reported":{"temp":22}}}`); code != http.StatusServiceUnavailable {
		t.Errorf("update on node A with NATS down = %d %s, want 503", code, body)
	}
	if tok := dev.Publish("state/dev-1/update", 1, false, `{"state":{"reported":{"temp":22}},"clientToken":"t1"}`); !tok.WaitTimeout(brokertest.Timeout) || tok.Error() != nil {
		t.Fatalf("publish: %v", tok.Error())
	}
	select {
	case m := <-rejected:
		var rej struct {
			Code        int    `json:"code"`
			ClientToken string `json:"clientToken"`
		}
		if err := json.Unmarshal(m.Payload, &rej); err != nil || rej.Code != http.StatusServiceUnavailable || rej.ClientToken != "t1" {
			t.Errorf("MQTT update with NATS down: rejected %s, want code 503 for t1", m.Payload)
		}
	case <-time.After(20 * time.Second):
		t.Error("MQTT update with NATS down: no rejected message within 20 s")
	}
	ns.Restart()
	deadline := time.Now().Add(20 * time.Second)
	for {
		code, body := post(a, `{"state":{"reported":{"temp":23}}}`)
		if code == http.StatusOK {
			if !strings.Contains(body, `"version":2`) {
				t.Errorf("update after NATS came back = %s, want version 2 (the refused one stored nothing)", body)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("node A did not recover within 20 s of NATS coming back: %d %s", code, body)
		}
		time.Sleep(100 * time.Millisecond) // the client reconnects on its own schedule
	}
}
