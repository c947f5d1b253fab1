package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/umbra-iot/umbra/client"
	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/firmware"
	fwstore "github.com/umbra-iot/umbra/firmware/boltstore"
	"github.com/umbra-iot/umbra/internal/httpapi"
	"github.com/umbra-iot/umbra/rollout"
	rolloutstore "github.com/umbra-iot/umbra/rollout/boltstore"
	"github.com/umbra-iot/umbra/shadow"
	"github.com/umbra-iot/umbra/shadow/boltstore"
	"github.com/umbra-iot/umbra/wire"
)

// List the devices that have a shadow, page by page.
func Example() {
	url, stop := startUmbra() // your program talks to umbra serve instead
	defer stop()
	ctx := context.Background()

	c, err := client.New(client.Config{URL: url, Token: os.Getenv("UMBRA_TOKEN")})
	if err != nil {
		log.Fatal(err)
	}
	for cursor := ""; ; {
		page, err := c.ListDevices(ctx, cursor, 2)
		if err != nil {
			log.Fatal(err)
		}
		for _, d := range page.Devices {
			fmt.Printf("%s at version %d\n", d.ID, d.Version)
		}
		if cursor = page.Next; cursor == "" {
			break
		}
	}
	// Output:
	// lamp-1 at version 1
	// lamp-2 at version 1
	// lamp-3 at version 1
}

// Set a device's desired state and read the delta it has to apply.
func ExampleClient_UpdateShadow() {
	url, stop := startUmbra()
	defer stop()
	ctx := context.Background()
	c, err := client.New(client.Config{URL: url, Token: os.Getenv("UMBRA_TOKEN")})
	if err != nil {
		log.Fatal(err)
	}

	doc, err := c.UpdateShadow(ctx, "lamp-1", "", wire.ShadowUpdate{
		State:       wire.ShadowState{Desired: json.RawMessage(`{"color":"red"}`)},
		ClientToken: "set-red-1", // retrying with the same token and body is safe
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("accepted as version", doc.Version)
	doc, err = c.GetShadow(ctx, "lamp-1", "")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("delta %s\n", doc.State.Delta)

	// A stale optimistic lock is refused: errors.Is tells why.
	stale := uint64(1)
	_, err = c.UpdateShadow(ctx, "lamp-1", "", wire.ShadowUpdate{
		State: wire.ShadowState{Desired: json.RawMessage(`{"color":"green"}`)}, Version: &stale})
	fmt.Println("conflict:", errors.Is(err, client.ErrConflict))
	_, err = c.GetShadow(ctx, "lamp-9", "")
	fmt.Println("no such shadow:", errors.Is(err, client.ErrNotFound))
	// Output:
	// accepted as version 2
	// delta {"color":"red"}
	// conflict: true
	// no such shadow: true
}

// Roll firmware 1.2.0 out to every device, one at a time, and watch the
// rollout until it ends.
func ExampleClient_CreateRollout() {
	url, stop := startUmbra()
	defer stop()
	ctx := context.Background()
	c, err := client.New(client.Config{URL: url, Token: os.Getenv("UMBRA_TOKEN")})
	if err != nil {
		log.Fatal(err)
	}

	r, err := c.CreateRollout(ctx, wire.CreateRollout{Firmware: "1.2.0", All: true,
		Policy: wire.Policy{BatchSize: 1, DeviceTimeout: wire.Duration(10 * time.Minute)}})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s: %s to %d devices in %d batches\n", r.ID, r.Firmware, r.Targets, len(r.Batches))

	// A device is in at most one active rollout.
	_, err = c.CreateRollout(ctx, wire.CreateRollout{Firmware: "1.2.0", Devices: []device.ID{"lamp-1"}})
	if e, ok := errors.AsType[*client.Error](err); ok && errors.Is(err, client.ErrConflict) {
		fmt.Println("lamp-1 is in", e.Rollout)
	}

	// Watch: poll the status until the rollout is no longer active.
	var st wire.RolloutStatus
	for st.State = r.State; st.State.Active(); time.Sleep(20 * time.Millisecond) {
		if st, err = c.GetRollout(ctx, r.ID); err != nil {
			log.Fatal(err)
		}
	}
	fmt.Printf("%s %s: %d succeeded\n", st.ID, st.State, st.Counts[wire.DeviceSucceeded])
	// Output:
	// r1: 1.2.0 to 3 devices in 3 batches
	// lamp-1 is in r1
	// r1 succeeded: 3 succeeded
}

// startUmbra serves Umbra's HTTP API on 127.0.0.1 for the examples, as
// umbra serve --insecure-anonymous would, with three devices that report
// version 1.0.0, firmware 1.2.0 uploaded, and a simulated fleet that
// installs whatever firmware a rollout sends it.
func startUmbra() (url string, stop func()) {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "umbra-example")
	if err != nil {
		log.Fatal(err)
	}
	changed := make(chan device.ID, 64)
	var planner *rollout.Planner
	shadows, err := boltstore.Open(ctx, boltstore.Config{Path: filepath.Join(dir, "shadow.db")})
	if err != nil {
		log.Fatal(err)
	}
	eng, err := shadow.Open(ctx, shadow.Config{Store: shadows, // ours to close, after the engine
		OnChange: func(id device.ID, _ shadow.Version) {
			select {
			case changed <- id:
			default:
			}
		}})
	if err != nil {
		log.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "firmware"), 0o750); err != nil {
		log.Fatal(err)
	}
	images, err := fwstore.Open(ctx, fwstore.Config{Path: filepath.Join(dir, "firmware", fwstore.File)})
	if err != nil {
		log.Fatal(err)
	}
	fw, err := firmware.Open(ctx, firmware.Config{Dir: filepath.Join(dir, "firmware"), Catalog: images, // ours to close, after fw
		BaseURL: "http://127.0.0.1:1"})
	if err != nil {
		log.Fatal(err)
	}
	if _, err := fw.Upload(ctx, firmware.UploadRequest{Version: "1.2.0"}, strings.NewReader("new firmware")); err != nil {
		log.Fatal(err)
	}
	st, err := rolloutstore.Open(ctx, rolloutstore.Config{Path: filepath.Join(dir, "rollout.db")})
	if err != nil {
		log.Fatal(err)
	}
	planner, err = rollout.Open(ctx, rollout.Config{Store: st, Shadows: rollout.EngineShadows(eng), Inventory: rollout.EngineInventory(eng, nil),
		Firmware: fw, Tick: 10 * time.Millisecond})
	if err != nil {
		log.Fatal(err)
	}
	for _, id := range []device.ID{"lamp-1", "lamp-2", "lamp-3"} {
		if err := report(ctx, eng, id, firmware.Report{Version: "1.0.0"}); err != nil {
			log.Fatal(err)
		}
	}
	quit, fleetDone := make(chan struct{}), make(chan struct{})
	go func() { // the devices: install every firmware command at once
		defer close(fleetDone)
		for {
			var id device.ID
			select {
			case <-quit:
				return
			case id = <-changed:
			}
			planner.Notify(id)
			raw, err := eng.Get(ctx, id, nil)
			if err != nil {
				continue
			}
			var doc struct {
				State struct {
					Desired, Reported struct{ Firmware firmware.Command }
				}
			}
			_ = json.Unmarshal(raw, &doc)
			cmd, have := doc.State.Desired.Firmware, doc.State.Reported.Firmware
			if cmd.Job != "" && cmd.Job != have.Job {
				_ = report(ctx, eng, id, firmware.Report{Version: cmd.Version, State: firmware.StateUpdated, Job: cmd.Job})
			}
		}
	}()
	h, err := httpapi.NewHandler(httpapi.Config{Shadow: eng, Firmware: fw, Rollouts: planner})
	if err != nil {
		log.Fatal(err)
	}
	srv := httptest.NewServer(h)
	return srv.URL, func() {
		srv.Close()
		close(quit)
		<-fleetDone
		planner.Close(ctx)
		st.Close(ctx)
		eng.Close(ctx)
		shadows.Close(ctx)
		fw.Close(ctx)
		images.Close(ctx)
		os.RemoveAll(dir)
	}
}

// report writes reported.firmware of device id, as the device would.
func report(ctx context.Context, eng *shadow.Engine, id device.ID, rep firmware.Report) error {
	body, _ := json.Marshal(map[string]any{"state": map[string]any{"reported": map[string]any{"firmware": rep}}})
	_, err := eng.Update(ctx, id, body)
	return err
}
