package rolloutfeed_test

import (
	"context"
	"encoding/json"
	"path/filepath"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/firmware"
	"github.com/umbra-iot/umbra/internal/brokertest"
	"github.com/umbra-iot/umbra/internal/metrics"
	"github.com/umbra-iot/umbra/internal/rolloutfeed"
	"github.com/umbra-iot/umbra/internal/rolloutwire"
	"github.com/umbra-iot/umbra/rollout"
	"github.com/umbra-iot/umbra/rollout/boltstore"
	"github.com/umbra-iot/umbra/wire"
)

// What the server wires in.
var (
	_ rolloutfeed.Publisher = (*broker.Server)(nil)
	_ rolloutfeed.Metrics   = (*metrics.Metrics)(nil)
)

// instantShadows is a fleet whose devices install a firmware command the
// moment it is written to their desired state.
type instantShadows struct {
	mu      sync.Mutex // guards reports
	reports map[device.ID]firmware.Report
}

func (s *instantShadows) SetDesiredFirmware(_ context.Context, id device.ID, cmd map[string]any, _ string) error {
	s.mu.Lock()
	if cmd != nil {
		v, _ := cmd["version"].(string)
		job, _ := cmd["job"].(string)
		s.reports[id] = firmware.Report{Version: v, State: firmware.StateUpdated, Job: job}
	}
	s.mu.Unlock()
	return nil
}

func (s *instantShadows) ReportedFirmware(_ context.Context, id device.ID) (firmware.Report, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.reports[id]
	return r, ok, nil
}

// oneImage is a firmware store holding one image.
type oneImage struct{ img firmware.Image }

func (f oneImage) Get(_ context.Context, v firmware.Version) (firmware.Image, error) {
	if v != f.img.Version {
		return firmware.Image{}, firmware.ErrNotFound
	}
	return f.img, nil
}

func (f oneImage) Command(img firmware.Image, id device.ID, _ time.Duration, job string) firmware.Command {
	return firmware.Command{Version: string(img.Version), URL: "http://127.0.0.1/fw/" + string(id), SHA256: img.SHA256, Size: img.Size, Job: job}
}

// TestWithPlanner wires a Feed to a real rollout.Planner the way the
// server does and follows a rollout to its end over MQTT.
func TestWithPlanner(t *testing.T) {
	b := brokertest.New(t, broker.Config{})
	sub := brokertest.Connect(t, brokertest.URL(b), "integrator", func(o *mqtt.ClientOptions) { o.SetOrderMatters(true) })
	msgs := brokertest.Subscribe(t, sub, rolloutfeed.Filter, 1)
	m := metrics.New()

	var planner *rollout.Planner // set before the first event can need it
	var mu sync.Mutex
	feed := mustOpen(t, rolloutfeed.Config{
		Publisher: b,
		Status: func(ctx context.Context, id string) (rollout.Status, error) {
			mu.Lock()
			p := planner
			mu.Unlock()
			if p == nil {
				return rollout.Status{}, rollout.ErrClosed
			}
			return p.Get(ctx, id)
		},
		Metrics:        m,
		StatusInterval: 10 * time.Millisecond,
	})
	st, err := boltstore.Open(t.Context(), boltstore.Config{Path: filepath.Join(t.TempDir(), "rollout.db")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close(context.Background()) })
	p, err := rollout.Open(t.Context(), rollout.Config{
		Store:    st,
		Shadows:  &instantShadows{reports: map[device.ID]firmware.Report{}},
		Firmware: oneImage{firmware.Image{Version: "2.0.0", Size: 1, SHA256: "00"}},
		Tick:     10 * time.Millisecond,
		OnEvent:  feed.OnEvent,
	})
	if err != nil {
		t.Fatalf("rollout.Open: %v", err)
	}
	t.Cleanup(func() {
		if err := p.Close(context.Background()); err != nil {
			t.Errorf("planner Close: %v", err)
		}
	}) // runs before the feed's Close, as in the server
	mu.Lock()
	planner = p
	mu.Unlock()

	devs := []device.ID{"d1", "d2", "d3", "d4", "d5"}
	r, err := p.Create(t.Context(), rollout.Spec{Firmware: "2.0.0", Devices: devs, Policy: rollout.Policy{BatchSize: 2}})
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	var got []wire.RolloutEvent
	var final wire.RolloutSummary
	next := func() {
		t.Helper()
		msg := brokertest.Next(t, msgs, wait)
		switch msg.Topic {
		case rolloutfeed.EventsTopic(r.ID):
			var ev wire.RolloutEventMessage
			if err := json.Unmarshal(msg.Payload, &ev); err != nil {
				t.Fatalf("%v in %s", err, msg.Payload)
			}
			got = append(got, ev.RolloutEvent)
		case rolloutfeed.StatusTopic(r.ID):
			if err := json.Unmarshal(msg.Payload, &final); err != nil {
				t.Fatalf("%v in %s", err, msg.Payload)
			}
		default:
			t.Fatalf("message on %s, want only %s's topics", msg.Topic, r.ID)
		}
	}
	for final.State != wire.RolloutSucceeded {
		next()
	}
	if n := final.Counts[wire.DeviceSucceeded]; n != len(devs) || final.Batches != 3 || final.BatchesStarted != 3 {
		t.Errorf("final status %+v, want %d succeeded in 3 of 3 batches", final, len(devs))
	}
	// Every event of the planner's log arrives, in the log's order.
	want, err := p.Events(t.Context(), r.ID)
	if err != nil {
		t.Fatalf("Events: %v", err)
	}
	for len(got) < len(want) {
		next()
	}
	for i := range want {
		if w := rolloutwire.Event(want[i]); got[i].Seq != w.Seq || got[i].Kind != w.Kind || got[i].State != w.State || !got[i].Time.Equal(w.Time) {
			t.Errorf("event %d = %+v, want %+v", i, got[i], want[i])
		}
	}
	if g := gauges(t, m)[r.ID+"/succeeded"]; g != float64(len(devs)) {
		t.Errorf("umbra_rollout_devices{rollout=%s,state=succeeded} = %v, want %d", r.ID, g, len(devs))
	}
}
