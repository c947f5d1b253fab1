package main

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/firmware"
	"github.com/umbra-iot/umbra/internal/brokertest"
	"github.com/umbra-iot/umbra/rollout"
)

// TestFirmwareDeleteRefusedWhileRolloutActive: serve wires the rollout
// planner into the firmware store's delete guard, so an image an active
// rollout uses cannot be deleted (409 naming the rollout), and the rollout
// has written the firmware command into the device's desired state.
func TestFirmwareDeleteRefusedWhileRolloutActive(t *testing.T) {
	srv := startServer(t)
	img, err := srv.fw.Upload(t.Context(), firmware.UploadRequest{Version: "1.2.0"}, strings.NewReader("image bytes"))
	if err != nil {
		t.Fatal(err)
	}
	r, err := srv.planner.Create(t.Context(), rollout.Spec{Firmware: img.Version, Devices: []device.ID{"d1"}})
	if err != nil {
		t.Fatalf("create rollout: %v", err)
	}
	// The planner notifies d1: its desired state carries the command. So
	// both guards apply below; the rollout's is the one reported, with or
	// without ?force=true, which overrides only the desired-state guard.
	acc := watchDelta(t, srv, "d1")
	var d struct {
		State struct {
			Firmware struct{ Version, Job string }
		}
	}
	if err := json.Unmarshal(acc, &d); err != nil {
		t.Fatal(err)
	}
	if d.State.Firmware.Version != "1.2.0" || !strings.HasPrefix(d.State.Firmware.Job, r.ID+"/") {
		t.Errorf("delta of d1 = %s, want firmware 1.2.0 with job %s/…", acc, r.ID)
	}
	for _, query := range []string{"", "?force=true"} {
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodDelete, srv.apiURL()+"/v1/firmware/1.2.0"+query, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusConflict || !strings.Contains(string(body), r.ID) {
			t.Errorf("DELETE%s firmware in use = %d %s, want 409 naming rollout %s", query, resp.StatusCode, body, r.ID)
		}
	}
	if _, err := srv.fw.Get(t.Context(), "1.2.0"); err != nil {
		t.Errorf("image gone after refused delete: %v", err)
	}
}

// watchDelta subscribes to id's delta as an operator would and returns the
// first (catch-up) delta.
func watchDelta(t *testing.T, srv *server, id string) []byte {
	t.Helper()
	c := brokertest.Connect(t, srv.mqttURL(), "op-watch")
	return brokertest.Next(t, brokertest.Subscribe(t, c, "state/"+id+"/update/delta", 1), 10*time.Second).Payload
}
