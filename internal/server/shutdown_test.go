package server_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/firmware"
	"github.com/umbra-iot/umbra/internal/server"
	"github.com/umbra-iot/umbra/internal/sim"
	"github.com/umbra-iot/umbra/internal/waitfor"
	"github.com/umbra-iot/umbra/rollout"
)

// TestCloseWithinShutdownGrace: Close with a ctx of --shutdown-grace
// returns within the grace (plus slack for the components that then stop
// on a done ctx), while devices are connected, a rollout pass is writing
// commands to a thousand shadows and an upload is stuck half-way in an
// open HTTP request. Reopened on the same data dir, everything
// acknowledged before is there: devices' shadows, the image, the rollout
// with all its targets; the half upload left nothing behind.
func TestCloseWithinShutdownGrace(t *testing.T) {
	const (
		grace = 2 * time.Second
		// slack bounds what Close may take beyond the grace: stopping
		// the components that come after the HTTP API on a done ctx.
		slack   = 5 * time.Second
		devices = 20
		offline = 1000 // targets with no device: the pass writes their shadows
	)
	dir := t.TempDir()
	cfg := server.Config{
		DataDir:     dir,
		MQTTAddr:    "127.0.0.1:0",
		HTTPAddr:    "127.0.0.1:0",
		Anonymous:   true,
		RolloutTick: 10 * time.Millisecond,
		Logger:      testLogger(t),
	}
	s, err := server.Open(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			s.Close(context.Background())
		}
	})
	r := &rig{Server: s}
	img := r.mustUpload(t, newVersion)

	// Connected devices (closed on cleanup, after Close cut them off).
	fleet := r.mustOpenFleet(t, sim.Config{Devices: devices, IDPrefix: "dev-", InstallTime: time.Minute})
	waitFleet(t, fleet, "every device to connect", func(st sim.Stats) bool { return st.Connected == devices })
	ids := fleet.IDs()
	r.waitReported(t, ids, oldVersion)

	// An open HTTP request: an upload whose body stops half-way.
	body, feed := io.Pipe()
	defer feed.Close()
	req, err := http.NewRequestWithContext(t.Context(), "POST",
		"http://"+s.HTTPAddr().String()+"/v1/firmware?version=9.9.9", body)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	uploaded := make(chan error, 1)
	go func() {
		res, err := http.DefaultClient.Do(req)
		if err == nil {
			res.Body.Close()
		}
		uploaded <- err
	}()
	if _, err := feed.Write(make([]byte, 256<<10)); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(dir, "firmware", "tmp")
	waitfor.Poll(t, waitTimeout, "the upload to reach the firmware store", func() bool {
		ents, _ := os.ReadDir(tmp)
		return len(ents) > 0
	})

	// A rollout whose first pass writes a command into every target's
	// shadow: Close comes while it runs.
	targets := append(slices.Clone(ids), offlineIDs(offline)...)
	ro, err := s.Planner().Create(t.Context(), rollout.Spec{Firmware: newVersion, Devices: targets,
		Policy: rollout.Policy{BatchSize: len(targets)}})
	if err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	start := time.Now()
	closeErr := s.Close(ctx)
	took := time.Since(start)
	closed = true
	if took > grace+slack {
		t.Errorf("Close took %v, want at most the grace %v + %v", took, grace, slack)
	}
	// The stuck upload holds the HTTP API for the whole grace.
	if !errors.Is(closeErr, context.DeadlineExceeded) {
		t.Errorf("Close = %v, want an error wrapping context.DeadlineExceeded (the stuck upload)", closeErr)
	}
	feed.CloseWithError(errors.New("test: server closed"))
	if err := <-uploaded; err == nil {
		t.Error("the half upload succeeded")
	}
	closeFleet(t, fleet)

	// Reopen on the same data dir.
	cfg.RolloutTick = time.Hour // no pass: look at what Close left
	s2 := mustOpenServer(t, cfg)
	imgs, err := s2.Firmware().List(t.Context())
	if err != nil || len(imgs) != 1 || imgs[0].Version != img.Version || imgs[0].SHA256 != img.SHA256 {
		t.Errorf("images after reopen: %+v, %v; want only %s", imgs, err, img.Version)
	}
	if _, err := s2.Firmware().Get(t.Context(), "9.9.9"); !errors.Is(err, firmware.ErrNotFound) {
		t.Errorf("the half upload after reopen: %v, want ErrNotFound", err)
	}
	if ents, err := os.ReadDir(tmp); err != nil || len(ents) != 0 {
		t.Errorf("firmware/tmp after reopen: %d entries, %v; want none", len(ents), err)
	}
	for _, id := range ids {
		doc, err := s2.Engine().Read(t.Context(), id)
		if err != nil {
			t.Fatalf("shadow of %s after reopen: %v", id, err)
		}
		if fw, _ := doc.State.Reported["firmware"].(map[string]any); fw["version"] != oldVersion {
			t.Errorf("%s reported.firmware after reopen: %v, want version %s", id, fw, oldVersion)
		}
	}
	st, err := s2.Planner().Get(t.Context(), ro.ID)
	if err != nil {
		t.Fatalf("rollout %s after reopen: %v", ro.ID, err)
	}
	total := 0
	for _, n := range st.Counts {
		total += n
	}
	if total != len(targets) || !st.State.Active() {
		t.Errorf("rollout after reopen: state %s, counts %v (%d devices); want active with %d", st.State, st.Counts, total, len(targets))
	}
	t.Logf("Close took %v (grace %v): %v; rollout after reopen: counts %v", took, grace, closeErr, st.Counts)
}

// offlineIDs are n device IDs no device uses.
func offlineIDs(n int) []device.ID {
	ids := make([]device.ID, n)
	for i := range ids {
		ids[i] = device.ID(fmt.Sprintf("offline-%05d", i))
	}
	return ids
}
