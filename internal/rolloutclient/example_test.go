package rolloutclient_test

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"

	"github.com/umbra-iot/umbra/firmware"
	"github.com/umbra-iot/umbra/internal/device"
	"github.com/umbra-iot/umbra/internal/httpapi"
	"github.com/umbra-iot/umbra/internal/rolloutclient"
	"github.com/umbra-iot/umbra/rollout"
	"github.com/umbra-iot/umbra/shadow"
)

// Create a rollout over two devices, read its status and pause it.
func ExampleClient_Create() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "rolloutclient-example")
	defer os.RemoveAll(dir)
	// A server: shadow engine, firmware store, planner and the HTTP API.
	eng, _ := shadow.Open(ctx, shadow.Config{Path: filepath.Join(dir, "shadow.db")})
	defer eng.Close(ctx)
	fw, _ := firmware.Open(ctx, firmware.Config{Dir: filepath.Join(dir, "firmware"), BaseURL: "http://127.0.0.1:1"})
	defer fw.Close(ctx)
	_, _ = fw.Upload(ctx, firmware.UploadRequest{Version: "1.2.0"}, strings.NewReader("new firmware"))
	planner, _ := rollout.Open(ctx, rollout.Config{Path: filepath.Join(dir, "rollout.db"), Shadows: rollout.EngineShadows(eng), Firmware: fw})
	defer planner.Close(ctx)
	h, _ := httpapi.NewHandler(httpapi.Config{Shadow: eng, Rollouts: planner})
	srv := httptest.NewServer(h)
	defer srv.Close()

	c, err := rolloutclient.New(rolloutclient.Config{API: srv.URL})
	if err != nil {
		fmt.Println(err)
		return
	}
	r, err := c.Create(ctx, rolloutclient.CreateRequest{Firmware: "1.2.0", Devices: []device.ID{"lamp-1", "lamp-2"},
		Policy: rollout.Policy{BatchSize: 1}})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Printf("%s: %s to %d devices in %d batches\n", r.ID, r.Firmware, r.Targets, len(r.Batches))
	_, err = c.Create(ctx, rolloutclient.CreateRequest{Firmware: "1.2.0", Devices: []device.ID{"lamp-2"}})
	var ae *rolloutclient.APIError
	fmt.Println("again:", errors.Is(err, rollout.ErrConflict), errors.As(err, &ae) && ae.Rollout == r.ID)
	p, _ := c.Pause(ctx, r.ID)
	fmt.Println("state:", p.State)
	// Output:
	// r1: 1.2.0 to 2 devices in 2 batches
	// again: true true
	// state: paused
}
