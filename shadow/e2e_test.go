package shadow_test

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/internal/brokertest"
	"github.com/umbra-iot/umbra/shadow"
)

const wait = 5 * time.Second

// startStack runs a real broker on 127.0.0.1:0 with the engine wired to it
// exactly as `umbra serve` does, and returns the broker URL.
func startStack(t *testing.T, mod func(*shadow.Config)) (string, *shadow.Engine) {
	t.Helper()
	var eng *shadow.Engine
	brk := brokertest.New(t, broker.Config{OnSubscribe: func(id string, f []string) { eng.HandleSubscribe(id, f) }})
	cfg := shadow.Config{Store: storeAt(t, filepath.Join(t.TempDir(), "shadow.db")), Publisher: brk}
	if mod != nil {
		mod(&cfg)
	}
	var err error
	eng, err = shadow.Open(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { eng.Close(t.Context()) })
	for _, f := range shadow.RequestFilters {
		if err := brk.Subscribe(f, eng.HandleRequest); err != nil {
			t.Fatal(err)
		}
	}
	return brokertest.URL(brk), eng
}

type wire struct {
	State       map[string]any `json:"state"`
	Version     int            `json:"version"`
	ClientToken string         `json:"clientToken"`
	Code        int            `json:"code"`
	Message     string         `json:"message"`
}

func decode(t *testing.T, m brokertest.Message) wire {
	t.Helper()
	var w wire
	if err := json.Unmarshal(m.Payload, &w); err != nil {
		t.Fatalf("decode %s: %v", m, err)
	}
	return w
}

// TestEndToEnd: operator sets desired → device receives delta → device
// reports → accepted and documents with consecutive versions; a stale
// version is refused with 409; an oversize merge with 413.
func TestEndToEnd(t *testing.T) {
	url, _ := startStack(t, func(c *shadow.Config) { c.MaxDocumentSize = 512 })
	dev := brokertest.Connect(t, url, "lamp1")
	op := brokertest.Connect(t, url, "operator-1")
	delta := brokertest.Subscribe(t, dev, "state/lamp1/update/delta", 1)
	devAccepted := brokertest.Subscribe(t, dev, "state/lamp1/update/accepted", 1)
	opAccepted := brokertest.Subscribe(t, op, "state/lamp1/update/accepted", 1)
	docs := brokertest.Subscribe(t, op, "state/lamp1/update/documents", 1)
	rejected := brokertest.Subscribe(t, op, "state/lamp1/update/rejected", 1)

	brokertest.Publish(t, dev, "state/lamp1/update", 1, []byte(`{"state":{"reported":{"color":"blue"}},"clientToken":"d0"}`))
	if w := decode(t, brokertest.Next(t, devAccepted, wait)); w.Version != 1 || w.ClientToken != "d0" {
		t.Fatalf("first report accepted as %+v, want version 1 token d0", w)
	}
	brokertest.Next(t, opAccepted, wait)
	brokertest.Next(t, docs, wait)

	brokertest.Publish(t, op, "state/lamp1/update", 1, []byte(`{"state":{"desired":{"color":"red"}},"clientToken":"c1","version":1}`))
	d := decode(t, brokertest.Next(t, delta, wait))
	if d.Version != 2 || d.ClientToken != "c1" || d.State["color"] != "red" {
		t.Fatalf("delta = %+v, want version 2, token c1, color red", d)
	}
	if w := decode(t, brokertest.Next(t, opAccepted, wait)); w.Version != 2 {
		t.Fatalf("operator accepted version %d, want 2", w.Version)
	}
	brokertest.Next(t, devAccepted, wait)
	brokertest.Next(t, docs, wait)

	brokertest.Publish(t, dev, "state/lamp1/update", 1, []byte(`{"state":{"reported":{"color":"red"}},"clientToken":"d1"}`))
	if w := decode(t, brokertest.Next(t, devAccepted, wait)); w.Version != 3 {
		t.Fatalf("report accepted version %d, want 3", w.Version)
	}
	var doc struct {
		Previous struct{ Version int } `json:"previous"`
		Current  struct {
			Version int
			State   struct{ Desired, Reported map[string]any }
		} `json:"current"`
	}
	brokertest.Next(t, opAccepted, wait)
	if err := json.Unmarshal(brokertest.Next(t, docs, wait).Payload, &doc); err != nil {
		t.Fatal(err)
	}
	if doc.Previous.Version != 2 || doc.Current.Version != 3 || doc.Current.State.Reported["color"] != "red" {
		t.Fatalf("documents = %+v, want 2 → 3 with reported red", doc)
	}

	brokertest.Publish(t, op, "state/lamp1/update", 1, []byte(`{"state":{"desired":{"color":"green"}},"clientToken":"c2","version":2}`))
	if w := decode(t, brokertest.Next(t, rejected, wait)); w.Code != 409 || w.ClientToken != "c2" {
		t.Fatalf("stale version answered %+v, want 409 with token c2", w)
	}
	big := fmt.Sprintf(`{"state":{"desired":{"blob":"%s"}},"clientToken":"c3"}`, strings.Repeat("x", 600))
	brokertest.Publish(t, op, "state/lamp1/update", 1, []byte(big))
	if w := decode(t, brokertest.Next(t, rejected, wait)); w.Code != 413 || w.ClientToken != "c3" {
		t.Fatalf("oversize answered %+v, want 413 with token c3", w)
	}
	select {
	case m := <-delta:
		t.Fatalf("rejected updates published a delta: %s", m)
	default:
	}
}

// TestOfflineDeviceGetsDeltaOnConnect: desired changes while the device is
// offline; on reconnect it receives the current delta as soon as it
// subscribes, without publishing get.
func TestOfflineDeviceGetsDeltaOnConnect(t *testing.T) {
	url, _ := startStack(t, nil)
	op := brokertest.Connect(t, url, "operator-1")
	accepted := brokertest.Subscribe(t, op, "state/sensor-9/update/accepted", 1)
	brokertest.Publish(t, op, "state/sensor-9/update", 1, []byte(`{"state":{"desired":{"interval":30},"reported":{"interval":60}}}`))
	brokertest.Next(t, accepted, wait)
	brokertest.Publish(t, op, "state/sensor-9/update", 1, []byte(`{"state":{"desired":{"mode":"eco"}}}`))
	brokertest.Next(t, accepted, wait)

	dev := brokertest.Connect(t, url, "sensor-9")
	d := decode(t, brokertest.Next(t, brokertest.Subscribe(t, dev, "state/sensor-9/update/delta", 1), wait))
	if d.Version != 2 || d.State["mode"] != "eco" || d.State["interval"] != float64(30) {
		t.Fatalf("catch-up delta = %+v, want version 2 with interval 30 and mode eco", d)
	}
}

// TestGetAndDeleteOverMQTT covers the get and delete topics end to end.
func TestGetAndDeleteOverMQTT(t *testing.T) {
	url, _ := startStack(t, nil)
	c := brokertest.Connect(t, url, "d1")
	getOK := brokertest.Subscribe(t, c, "state/d1/get/accepted", 1)
	getNo := brokertest.Subscribe(t, c, "state/d1/get/rejected", 1)
	delOK := brokertest.Subscribe(t, c, "state/d1/delete/accepted", 1)
	acc := brokertest.Subscribe(t, c, "state/d1/update/accepted", 1)

	brokertest.Publish(t, c, "state/d1/get", 1, nil)
	if w := decode(t, brokertest.Next(t, getNo, wait)); w.Code != 404 {
		t.Fatalf("get of missing shadow = %+v, want 404", w)
	}
	brokertest.Publish(t, c, "state/d1/update", 1, []byte(`{"state":{"reported":{"on":true}}}`))
	brokertest.Next(t, acc, wait)
	brokertest.Publish(t, c, "state/d1/get", 1, []byte(`{"clientToken":"g"}`))
	if w := decode(t, brokertest.Next(t, getOK, wait)); w.Version != 1 || w.ClientToken != "g" {
		t.Fatalf("get = %+v, want version 1 token g", w)
	}
	brokertest.Publish(t, c, "state/d1/delete", 1, nil)
	if w := decode(t, brokertest.Next(t, delOK, wait)); w.Version != 1 {
		t.Fatalf("delete = %+v, want version 1", w)
	}
	brokertest.Publish(t, c, "state/d1/get", 1, nil)
	if w := decode(t, brokertest.Next(t, getNo, wait)); w.Code != 404 {
		t.Fatalf("get after delete = %+v, want 404", w)
	}
}

// TestRetryCacheTokenReuseAfterRestart is issue 12's bug: the AWS v1 SDK
// numbers clientTokens <clientId>-0, -1, … from 0 in every process, so a
// device that restarts within the retry window reports its boot state
// again with token <clientId>-0. That is a new request, not a retry: it
// must be applied (new version, stored), not answered with the old
// accepted. A retry of the last update stays safe: answered as before,
// applied once.
func TestRetryCacheTokenReuseAfterRestart(t *testing.T) {
	url, eng := startStack(t, nil)
	boot := []byte(`{"state":{"reported":{"fw":"1.0","uptime":0}},"clientToken":"devR-0"}`)
	report := func(c mqtt.Client, acc <-chan brokertest.Message, payload []byte) brokertest.Message {
		t.Helper()
		brokertest.Publish(t, c, "state/devR/update", 1, payload)
		return brokertest.Next(t, acc, wait)
	}
	stored := func() (shadow.Version, map[string]any) {
		t.Helper()
		doc, err := eng.Read(t.Context(), "devR")
		if err != nil {
			t.Fatal(err)
		}
		return doc.Version, doc.State.Reported
	}

	// First process: boot report, then the state moves on.
	first := brokertest.Connect(t, url, "devR")
	acc1 := brokertest.Subscribe(t, first, "state/devR/update/accepted", 1)
	if w := decode(t, report(first, acc1, boot)); w.Version != 1 || w.ClientToken != "devR-0" {
		t.Fatalf("first boot report accepted as %+v, want version 1 token devR-0", w)
	}
	if w := decode(t, report(first, acc1, []byte(`{"state":{"reported":{"fw":"1.1","uptime":30}},"clientToken":"devR-1"}`))); w.Version != 2 {
		t.Fatalf("second report accepted as %+v, want version 2", w)
	}
	first.Disconnect(100)

	// The device restarts within the window and counts from 0 again.
	second := brokertest.Connect(t, url, "devR")
	acc2 := brokertest.Subscribe(t, second, "state/devR/update/accepted", 1)
	again := report(second, acc2, boot)
	if w := decode(t, again); w.Version != 3 || w.ClientToken != "devR-0" {
		t.Fatalf("boot report after restart accepted as %+v, want version 3 (applied as new) with token devR-0", w)
	}
	if v, rep := stored(); v != 3 || rep["fw"] != "1.0" || fmt.Sprint(rep["uptime"]) != "0" {
		t.Fatalf("stored after restart: version %d reported %v, want version 3 with fw 1.0 uptime 0", v, rep)
	}

	// A retry of that last update is answered as before and not applied.
	retry := report(second, acc2, boot)
	if string(retry.Payload) != string(again.Payload) {
		t.Errorf("retry of the last update answered\n%s\nwant the original\n%s", retry.Payload, again.Payload)
	}
	if v, _ := stored(); v != 3 {
		t.Errorf("retry of the last update stored version %d, want 3 (not applied twice)", v)
	}
}
