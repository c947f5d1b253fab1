package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/client"
	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/firmware"
	fwstore "github.com/umbra-iot/umbra/firmware/boltstore"
	"github.com/umbra-iot/umbra/internal/httpapi"
	"github.com/umbra-iot/umbra/internal/waitfor"
	"github.com/umbra-iot/umbra/rollout"
	rolloutstore "github.com/umbra-iot/umbra/rollout/boltstore"
	"github.com/umbra-iot/umbra/shadow"
	"github.com/umbra-iot/umbra/shadow/boltstore"
	"github.com/umbra-iot/umbra/wire"
)

const token = "ops:secret"

// rolloutEnv is the real API (shadow engine, firmware store with 1.0.0 and
// 2.0.0, planner) behind a bearer check, served by httptest. Device pages
// hold at most two devices, so that RolloutDevices must follow cursors.
type rolloutEnv struct {
	eng    *shadow.Engine
	client *client.Client
	url    string // the API's base URL
}

type discard struct{}

func (discard) Publish(string, []byte, bool, byte) error { return nil }

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}

func newRolloutEnv(t *testing.T, withPlanner bool) *rolloutEnv {
	t.Helper()
	dir := t.TempDir()
	log := testLogger(t)
	var pl atomic.Pointer[rollout.Planner]
	eng, err := shadow.Open(t.Context(), shadow.Config{Store: shadowStore(t, filepath.Join(dir, "shadow.db")), Publisher: discard{}, Logger: log,
		OnChange: func(id device.ID, _ shadow.Version) {
			if p := pl.Load(); p != nil {
				p.Notify(id)
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { eng.Close(context.Background()) })
	fw, err := firmware.Open(t.Context(), firmware.Config{Dir: filepath.Join(dir, "fw"), Catalog: fwCatalog(t, filepath.Join(dir, "fw")),
		BaseURL: "http://127.0.0.1:1", Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fw.Close(context.Background()) })
	for _, v := range []string{"1.0.0", "2.0.0"} {
		if _, err := fw.Upload(t.Context(), firmware.UploadRequest{Version: v}, strings.NewReader("image "+v)); err != nil {
			t.Fatal(err)
		}
	}
	cfg := httpapi.Config{Shadow: eng, Logger: log,
		Middleware: func(next http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Header.Get("Authorization") != "Bearer "+token {
					w.Header().Set("Content-Type", "application/json")
					w.WriteHeader(http.StatusUnauthorized)
					io.WriteString(w, `{"code":401,"message":"who are you"}`)
					return
				}
				next.ServeHTTP(w, r)
			})
		}}
	e := &rolloutEnv{eng: eng}
	if withPlanner {
		st, err := rolloutstore.Open(t.Context(), rolloutstore.Config{Path: filepath.Join(dir, "rollout.db")})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close(context.Background()) })
		p, err := rollout.Open(t.Context(), rollout.Config{Store: st, Shadows: rollout.EngineShadows(eng), Inventory: rollout.EngineInventory(eng, nil),
			Firmware: fw, Tick: 5 * time.Millisecond, Logger: log})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close(context.Background()) })
		pl.Store(p)
		cfg.Rollouts = p
	}
	h, err := httpapi.NewHandler(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/devices") {
			q := r.URL.Query()
			q.Set("limit", "2")
			r.URL.RawQuery = q.Encode()
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	e.url = srv.URL
	e.client, err = client.New(client.Config{URL: srv.URL + "/", Token: token})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// report writes reported.firmware of id as the device would.
func (e *rolloutEnv) report(t *testing.T, id device.ID, rep firmware.Report) {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"state": map[string]any{"reported": map[string]any{"firmware": rep}}})
	if _, err := e.eng.Update(t.Context(), id, body); err != nil {
		t.Fatal(err)
	}
}

// waitStatus polls (the test gets no event) until cond holds.
func (e *rolloutEnv) waitStatus(t *testing.T, id string, cond func(wire.RolloutStatus) bool) wire.RolloutStatus {
	t.Helper()
	var st wire.RolloutStatus
	waitfor.PollExplained(t, 10*time.Second, "rollout "+id, func() string {
		var err error
		if st, err = e.client.GetRollout(t.Context(), id); err != nil {
			t.Fatal(err)
		}
		if cond(st) {
			return ""
		}
		return fmt.Sprintf("%s %v", st.State, st.Counts)
	})
	return st
}

func TestRolloutFlow(t *testing.T) {
	e := newRolloutEnv(t, true)
	ctx := t.Context()
	c := e.client
	r1, err := c.CreateRollout(ctx, wire.CreateRollout{Firmware: "2.0.0", Devices: []device.ID{"d1", "d2", "d3", "d4", "d5"},
		Policy: wire.Policy{BatchSize: 5, DeviceTimeout: wire.Duration(5 * time.Minute)}})
	if err != nil || r1.ID != "r1" || r1.Targets != 5 || r1.Policy.DeviceTimeout != wire.Duration(5*time.Minute) {
		t.Fatalf("CreateRollout = %+v, %v; want r1 over 5 devices with a 5m timeout", r1, err)
	}
	e.waitStatus(t, "r1", func(st wire.RolloutStatus) bool { return st.Counts[wire.DeviceNotified] == 5 })
	e.report(t, "d1", firmware.Report{Version: "2.0.0", State: firmware.StateUpdated, Job: "r1/1"})
	e.report(t, "d3", firmware.Report{Version: "2.0.0", State: firmware.StateUpdated, Job: "r1/1"})
	e.report(t, "d4", firmware.Report{Version: "1.0.0", State: firmware.StateFailed, Error: "flash", Job: "r1/1"})
	e.waitStatus(t, "r1", func(st wire.RolloutStatus) bool {
		return st.Counts[wire.DeviceFailed] == 1 && st.Counts[wire.DeviceSucceeded] == 2
	})

	// RolloutDevices follows the server's pages of two.
	all, err := c.RolloutDevices(ctx, "r1")
	if err != nil || len(all) != 5 || all[4].Device != "d5" {
		t.Fatalf("RolloutDevices = %v, %v; want all 5 in order", all, err)
	}
	got, err := c.RolloutDevices(ctx, "r1", wire.DeviceSucceeded, wire.DeviceFailed)
	var ids []string
	for _, d := range got {
		ids = append(ids, string(d.Device)+":"+string(d.State))
	}
	if want := "d1:succeeded d3:succeeded d4:failed"; err != nil || strings.Join(ids, " ") != want {
		t.Errorf("RolloutDevices(succeeded, failed) = %q, %v; want %q", strings.Join(ids, " "), err, want)
	}

	steps := []struct {
		name string
		call func() (wire.Rollout, error)
		want wire.RolloutState
	}{
		{"pause", func() (wire.Rollout, error) { return c.PauseRollout(ctx, "r1") }, wire.RolloutPaused},
		{"pause again", func() (wire.Rollout, error) { return c.PauseRollout(ctx, "r1") }, wire.RolloutPaused},
		{"resume", func() (wire.Rollout, error) { return c.ResumeRollout(ctx, "r1") }, wire.RolloutRunning},
		{"abort", func() (wire.Rollout, error) { return c.AbortRollout(ctx, "r1", false) }, wire.RolloutAborted},
		{"abort with rollback", func() (wire.Rollout, error) { return c.AbortRollout(ctx, "r1", true) }, wire.RolloutAborted},
		{"rollback", func() (wire.Rollout, error) { return c.RollbackRollout(ctx, "r1") }, wire.RolloutAborted},
	}
	for _, s := range steps {
		if r, err := s.call(); err != nil || r.State != s.want {
			t.Errorf("%s = %s, %v; want %s", s.name, r.State, err, s.want)
		}
	}
	r2, err := c.RetryRollout(ctx, "r1")
	if err != nil || r2.ID != "r2" || r2.RetryOf != "r1" || r2.Targets != 1 {
		t.Errorf("RetryRollout = %+v, %v; want r2 retrying r1 over d4", r2, err)
	}
	list, err := c.ListRollouts(ctx)
	if err != nil || len(list) != 2 || list[0].ID != "r2" {
		t.Errorf("ListRollouts = %v, %v; want r2 then r1", list, err)
	}
	evs, err := c.RolloutEvents(ctx, "r1", 0)
	if err != nil || len(evs) == 0 || evs[0].Kind != wire.EventCreated {
		t.Fatalf("RolloutEvents = %v, %v; want created first", evs, err)
	}
	later, err := c.RolloutEvents(ctx, "r1", evs[0].Seq)
	if err != nil || len(later) != len(evs)-1 {
		t.Errorf("RolloutEvents after %d = %d events, %v; want %d", evs[0].Seq, len(later), err, len(evs)-1)
	}
}

func TestRolloutSelectAndAll(t *testing.T) {
	e := newRolloutEnv(t, true)
	e.report(t, "s1", firmware.Report{Version: "1.0.0", State: firmware.StateUpdated})
	e.report(t, "s2", firmware.Report{Version: "1.0.0", State: firmware.StateUpdated})
	r, err := e.client.CreateRollout(t.Context(), wire.CreateRollout{Firmware: "2.0.0", All: true})
	if err != nil || r.Targets != 2 || !r.All {
		t.Errorf("CreateRollout(all) = %+v, %v; want 2 targets", r, err)
	}
	// The resolver here knows no labels: a selector matches nothing.
	_, err = e.client.CreateRollout(t.Context(), wire.CreateRollout{Firmware: "2.0.0", Select: map[string]string{"hw": "m2"}})
	if !errors.Is(err, client.ErrInvalid) || !strings.Contains(err.Error(), "no device matches") {
		t.Errorf("CreateRollout(select) = %v, want ErrInvalid: no device matches", err)
	}
}

func TestRolloutErrors(t *testing.T) {
	e := newRolloutEnv(t, true)
	ctx := t.Context()
	c := e.client
	if _, err := c.CreateRollout(ctx, wire.CreateRollout{Firmware: "2.0.0", Devices: []device.ID{"d1"}}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		call    func() error
		want    error
		status  int    // of the *Error; 0 = none
		rollout string // of the *Error
	}{
		{"conflict names the rollout", func() error {
			_, err := c.CreateRollout(ctx, wire.CreateRollout{Firmware: "2.0.0", Devices: []device.ID{"d1"}})
			return err
		}, client.ErrConflict, 409, "r1"},
		{"retry of an active rollout", func() error { _, err := c.RetryRollout(ctx, "r1"); return err }, client.ErrConflict, 409, ""},
		{"unknown rollout", func() error { _, err := c.GetRollout(ctx, "r7"); return err }, client.ErrNotFound, 404, ""},
		{"unknown rollout devices", func() error { _, err := c.RolloutDevices(ctx, "r7"); return err }, client.ErrNotFound, 404, ""},
		{"invalid policy", func() error {
			_, err := c.CreateRollout(ctx, wire.CreateRollout{Firmware: "2.0.0", Devices: []device.ID{"d2"}, Policy: wire.Policy{Retries: 99}})
			return err
		}, client.ErrInvalid, 400, ""},
		{"two target kinds, not sent", func() error {
			_, err := c.CreateRollout(ctx, wire.CreateRollout{Firmware: "2.0.0", Devices: []device.ID{"d2"}, All: true})
			return err
		}, client.ErrInvalid, 0, ""},
		{"bad rollout ID, not sent", func() error { _, err := c.PauseRollout(ctx, "r1/../x"); return err }, client.ErrInvalid, 0, ""},
		{"bad state, not sent", func() error { _, err := c.RolloutDevices(ctx, "r1", "exploded"); return err }, client.ErrInvalid, 0, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			ae, isAPI := errors.AsType[*client.Error](err)
			if tc.status == 0 {
				if isAPI {
					t.Errorf("got an *Error %v, want none (nothing sent)", ae)
				}
				return
			}
			if !isAPI || ae.Status != tc.status || ae.Rollout != tc.rollout {
				t.Errorf("got %v, want an *Error with status %d and rollout %q", err, tc.status, tc.rollout)
			}
		})
	}
}

func TestRolloutNoPlanner(t *testing.T) {
	e := newRolloutEnv(t, false)
	if _, err := e.client.ListRollouts(t.Context()); !errors.Is(err, client.ErrUnavailable) {
		t.Errorf("ListRollouts without a planner = %v, want ErrUnavailable (503)", err)
	}
}

func TestRolloutAuth(t *testing.T) {
	e := newRolloutEnv(t, true)
	anon, err := client.New(client.Config{URL: e.url})
	if err != nil {
		t.Fatal(err)
	}
	_, err = anon.ListRollouts(t.Context())
	if ae, ok := errors.AsType[*client.Error](err); !ok || ae.Status != http.StatusUnauthorized || ae.Message != "who are you" || !errors.Is(err, client.ErrUnauthorized) {
		t.Errorf("ListRollouts without a token = %v, want a 401 *Error with the server's message", err)
	}
}

// shadowStore opens the bbolt shadow store at path and closes it on
// cleanup, after the engine given it (opened later, so closed first).
func shadowStore(tb testing.TB, path string) shadow.Store {
	tb.Helper()
	st, err := boltstore.Open(tb.Context(), boltstore.Config{Path: path})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { st.Close(context.Background()) })
	return st
}

// fwCatalog opens a bbolt firmware catalog in dir (created if missing)
// and closes it on cleanup, after the firmware store given it.
func fwCatalog(tb testing.TB, dir string) firmware.Catalog {
	tb.Helper()
	if err := os.MkdirAll(dir, 0o750); err != nil {
		tb.Fatal(err)
	}
	c, err := fwstore.Open(tb.Context(), fwstore.Config{Path: filepath.Join(dir, fwstore.File)})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close(context.Background()) })
	return c
}
