package server_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/umbra-iot/umbra/internal/brokertest"
	"github.com/umbra-iot/umbra/internal/natstest"
	"github.com/umbra-iot/umbra/internal/server"
)

// TestClusterModeSessionMovesWithTheDevice: a device with a persistent
// session subscribed to its deltas on node B goes offline; an operator's
// update through node A's HTTP API makes a delta, queued for it on node
// B; the device reconnects to node A: CONNACK session present 1, the
// delta arrives, and both nodes report it connected on A.
func TestClusterModeSessionMovesWithTheDevice(t *testing.T) {
	ns := natstest.Start(t)
	node := func(id string) *rig {
		return mustOpenRig(t, true, func(c *server.Config) { c.NATS, c.NodeID, c.NATSReplicas = ns.URLs(), id, 1 })
	}
	a, b := node("a"), node("b")
	secret, err := a.Identity().AddDevice(t.Context(), "dev-m", nil)
	if err != nil {
		t.Fatal(err)
	}
	awaitEnrolled(t, b, "dev-m") // else b may evict the device when it hears of its enrolment
	connect := func(r *rig) (paho.Client, bool, <-chan brokertest.Message) {
		msgs := make(chan brokertest.Message, 16)
		o := paho.NewClientOptions().AddBroker(r.mqttURL()).SetClientID("dev-m").SetUsername("dev-m").SetPassword(secret).
			SetCleanSession(false).SetAutoReconnect(false).SetOrderMatters(false).
			SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) {
				msgs <- brokertest.Message{Topic: m.Topic(), Payload: append([]byte(nil), m.Payload()...), QoS: m.Qos()}
			})
		c := paho.NewClient(o)
		tok := c.Connect()
		if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("connect dev-m: %v", tok.Error())
		}
		t.Cleanup(func() { c.Disconnect(100) })
		return c, tok.(*paho.ConnectToken).SessionPresent(), msgs
	}
	dev, _, _ := connect(b)
	brokertest.Subscribe(t, dev, "state/dev-m/update/delta", 1)
	dev.Disconnect(100)
	eventually(t, "dev-m offline on both nodes", func() string {
		for _, r := range []*rig{a, b} {
			if p := r.devicePresence(t, "dev-m"); p.Connected || p.Node != "b" {
				return "presence not yet disconnected from b"
			}
		}
		return ""
	})
	// Node b's NATS interest for the offline session's filter is made
	// asynchronously: update until a delta is queued there.
	eventually(t, "node b queues a delta", func() string {
		if b.Broker().Stats().Inflight == 0 {
			a.postShadowAs(t, "dev-m", `{"state":{"desired":{"led":"on"}}}`)
			return "no message queued on node b"
		}
		return ""
	})

	_, present, msgs := connect(a)
	if !present {
		t.Fatal("reconnect to node a: session present 0, want 1")
	}
	m := brokertest.Next(t, msgs, 10*time.Second)
	var delta struct {
		State map[string]any `json:"state"`
	}
	if err := json.Unmarshal(m.Payload, &delta); err != nil || m.Topic != "state/dev-m/update/delta" || delta.State["led"] != "on" {
		t.Fatalf("first message on node a: %s %s, want the queued delta led on", m.Topic, m.Payload)
	}
	eventually(t, "dev-m connected on a everywhere", func() string {
		for _, r := range []*rig{a, b} {
			if p := r.devicePresence(t, "dev-m"); !p.Connected || p.Node != "a" {
				return "presence not yet connected on a"
			}
		}
		return ""
	})
	// Live deliveries follow: the moved session is authorised on node a
	// (a handoff that left node a's record of the session to the adopted
	// offline client denied them all).
	for len(msgs) > 0 { // further deltas of the warm-up updates
		<-msgs
	}
	b.postShadowAs(t, "dev-m", `{"state":{"desired":{"led":"blink"}}}`)
	for {
		m := brokertest.Next(t, msgs, 10*time.Second)
		if err := json.Unmarshal(m.Payload, &delta); err == nil && delta.State["led"] == "blink" {
			break
		}
	}
	if n := b.metric(t, `umbra_cluster_session_handoffs_total{role="sent"}`); n != 1 {
		t.Errorf("node b handed off %v sessions, want 1", n)
	}
}

// postShadowAs sends an update through r's HTTP API with r's operator
// token and fails unless it is accepted.
func (r *rig) postShadowAs(t *testing.T, id, body string) {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, "http://"+r.HTTPAddr().String()+"/v1/devices/"+id+"/shadow", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+r.adminToken(t))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("update of %s: %d", id, resp.StatusCode)
	}
}
