package sim_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/internal/waitfor"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/internal/loadgen/loadgentest"
	"github.com/umbra-iot/umbra/internal/sim"
)

// engine plays the shadow service's role for firmware: it keeps each
// device's reported and desired firmware, answers updates with accepted
// and a delta of the differing leaves, and answers get.
type engine struct {
	srv *broker.Server

	mu       sync.Mutex
	version  map[string]int64
	reported map[string]map[string]any
	desired  map[string]map[string]any
	history  map[string][]map[string]any // every reported firmware, in order
	changed  chan struct{}               // closed and replaced on every update
	// intercept, when set, sees every report before it is applied and
	// says what to do with it: apply (0), reject with that code, or drop
	// without an answer (-1). It runs on the publisher's broker goroutine,
	// without e.mu, and may block.
	intercept func(id string, fw map[string]any) int
}

func newEngine(tb testing.TB, srv *broker.Server) *engine {
	tb.Helper()
	e, err := startEngine(srv)
	if err != nil {
		tb.Fatal(err)
	}
	return e
}

func startEngine(srv *broker.Server) (*engine, error) {
	e := &engine{srv: srv, version: map[string]int64{}, reported: map[string]map[string]any{},
		desired: map[string]map[string]any{}, history: map[string][]map[string]any{},
		changed: make(chan struct{})}
	for filter, h := range map[string]broker.HandlerFunc{"state/+/update": e.update, "state/+/get": e.get} {
		if err := srv.Subscribe(filter, h); err != nil {
			return nil, err
		}
	}
	return e, nil
}

func deviceOf(topic string) string { return strings.Split(topic, "/")[1] }

func (e *engine) update(_, topic string, payload []byte) {
	id := deviceOf(topic)
	var req struct {
		State struct {
			Reported struct {
				Firmware map[string]any `json:"firmware"`
			} `json:"reported"`
		} `json:"state"`
		ClientToken string `json:"clientToken"`
	}
	if err := json.Unmarshal(payload, &req); err != nil {
		return
	}
	e.mu.Lock()
	intercept := e.intercept
	e.mu.Unlock()
	if intercept != nil {
		switch code := intercept(id, req.State.Reported.Firmware); {
		case code < 0:
			return
		case code > 0:
			_ = e.srv.Publish(topic+"/rejected", fmt.Appendf(nil, `{"code":%d,"message":"rejected","clientToken":%q}`, code, req.ClientToken), false, 0)
			return
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.version[id]++
	if e.reported[id] == nil {
		e.reported[id] = map[string]any{}
	}
	for k, v := range req.State.Reported.Firmware {
		e.reported[id][k] = v
	}
	e.history[id] = append(e.history[id], req.State.Reported.Firmware)
	close(e.changed)
	e.changed = make(chan struct{})
	_ = e.srv.Publish(topic+"/accepted", fmt.Appendf(nil, `{"version":%d,"clientToken":%q}`, e.version[id], req.ClientToken), false, 0)
	e.publishDelta(id)
}

// deltaOf returns the differing leaves of desired.firmware as a delta
// state ({} when nothing differs); e.mu held.
func (e *engine) deltaOf(id string) map[string]any {
	fw := map[string]any{}
	for k, v := range e.desired[id] {
		if !reflect.DeepEqual(e.reported[id][k], v) {
			fw[k] = v
		}
	}
	if len(fw) == 0 {
		return map[string]any{}
	}
	return map[string]any{"firmware": fw}
}

// publishDelta publishes the delta if it is not empty; e.mu held.
func (e *engine) publishDelta(id string) {
	delta := e.deltaOf(id)
	if len(delta) == 0 {
		return
	}
	b, _ := json.Marshal(map[string]any{"state": delta, "version": e.version[id]})
	_ = e.srv.Publish("state/"+id+"/update/delta", b, false, 1)
}

func (e *engine) get(_, topic string, payload []byte) {
	id := deviceOf(topic)
	var req struct {
		ClientToken string `json:"clientToken"`
	}
	_ = json.Unmarshal(payload, &req)
	e.mu.Lock()
	defer e.mu.Unlock()
	desired := map[string]any{}
	if e.desired[id] != nil {
		desired["firmware"] = e.desired[id]
	}
	reported := map[string]any{}
	if e.reported[id] != nil {
		reported["firmware"] = e.reported[id]
	}
	state := map[string]any{"desired": desired, "reported": reported, "delta": e.deltaOf(id)}
	b, _ := json.Marshal(map[string]any{"state": state, "version": e.version[id], "clientToken": req.ClientToken})
	_ = e.srv.Publish(topic+"/accepted", b, false, 1)
}

// setDesired writes desired.firmware (a JSON round trip of cmd, so values
// compare like decoded reports) and publishes the delta.
func (e *engine) setDesired(id string, cmd any) {
	var fw map[string]any
	b, _ := json.Marshal(cmd)
	_ = json.Unmarshal(b, &fw)
	e.mu.Lock()
	defer e.mu.Unlock()
	e.version[id]++
	e.desired[id] = fw
	e.publishDelta(id)
}

// waitFor blocks until cond (called with e.mu held) holds after an update.
func (e *engine) waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		e.mu.Lock()
		ok, changed := cond(), e.changed
		e.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("engine: timed out waiting for %s", what)
		}
	}
}

// lastStateIs reports whether every device's latest reported state is
// state; e.mu held.
func (e *engine) lastStateIs(ids []device.ID, state string) func() bool {
	return func() bool {
		for _, id := range ids {
			h := e.history[string(id)]
			if len(h) == 0 || h[len(h)-1]["state"] != state {
				return false
			}
		}
		return true
	}
}

// desireAll sets desired firmware version on every device that reported.
func (e *engine) desireAll(fs *fwServer, version string) int {
	e.mu.Lock()
	ids := slices.Collect(maps.Keys(e.reported))
	e.mu.Unlock()
	for _, id := range ids {
		e.setDesired(id, fs.command(id, version, "job-"+version, "9999999999"))
	}
	return len(ids)
}

// states returns the device's reported firmware history as
// "state[:error]@version" with consecutive repeats folded.
func (e *engine) states(id string) []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for _, fw := range e.history[id] {
		s := fmt.Sprint(fw["state"])
		if er, _ := fw["error"].(string); er != "" {
			s += ":" + er
		}
		s += "@" + fmt.Sprint(fw["version"])
		if len(out) == 0 || out[len(out)-1] != s {
			out = append(out, s)
		}
	}
	return out
}

// setIntercept sets e.intercept.
func (e *engine) setIntercept(f func(id string, fw map[string]any) int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.intercept = f
}

// lastReported returns the device's reported firmware as "state@version".
func (e *engine) lastReported(id string) string {
	e.mu.Lock()
	defer e.mu.Unlock()
	fw := e.reported[id]
	return fmt.Sprintf("%v@%v", fw["state"], fw["version"])
}

func (e *engine) lastJob(id string) any {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.reported[id]["job"]
}

// fwCommand is desired.firmware as the firmware store mints it.
type fwCommand struct {
	Version   string `json:"version"`
	HW        string `json:"hw"`
	URL       string `json:"url"`
	SHA256    string `json:"sha256"`
	Size      int64  `json:"size"`
	Signature string `json:"signature"`
	Job       string `json:"job"`
}

type fwManifest struct {
	Version string `json:"version"`
	HW      string `json:"hw"`
	Size    int64  `json:"size"`
	SHA256  string `json:"sha256"`
}

// fwServer serves one image at /fw/<sha256>; a URL with e=0 has expired.
type fwServer struct {
	url   string
	image []byte
	sum   string
	key   ed25519.PrivateKey

	mu       sync.Mutex     // guards the fields below
	failures map[string]int // per device: requests still to fail
	failWith func(w http.ResponseWriter)
	requests map[string]int // per device
}

// failFirst makes the first n requests of each device fail with fail.
func (fs *fwServer) failFirst(n int, fail func(w http.ResponseWriter), ids ...device.ID) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.failWith = fail
	for _, id := range ids {
		fs.failures[string(id)] = n
	}
}

func (fs *fwServer) requestsOf(id device.ID) int {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return fs.requests[string(id)]
}

func newFWServer(tb testing.TB) *fwServer {
	fs, srv := startFWServer()
	tb.Cleanup(srv.Close)
	return fs
}

func startFWServer() (*fwServer, *httptest.Server) {
	_, key, _ := ed25519.GenerateKey(nil)
	image := bytes.Repeat([]byte("umbra firmware 1.2.0 "), 5000)
	h := sha256.Sum256(image)
	fs := &fwServer{image: image, sum: hex.EncodeToString(h[:]), key: key, failures: map[string]int{}, requests: map[string]int{}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/fw/"+fs.sum || r.URL.Query().Get("e") == "0" {
			http.Error(w, "forbidden", http.StatusForbidden)
			return
		}
		id := r.URL.Query().Get("d")
		fs.mu.Lock()
		fs.requests[id]++
		fail := fs.failures[id] > 0
		if fail {
			fs.failures[id]--
		}
		failWith := fs.failWith
		fs.mu.Unlock()
		if fail {
			failWith(w)
			return
		}
		_, _ = w.Write(fs.image)
	}))
	fs.url = srv.URL
	return fs, srv
}

func (fs *fwServer) publicKey() string {
	return base64.StdEncoding.EncodeToString(fs.key.Public().(ed25519.PublicKey))
}

func (fs *fwServer) command(id, version, job, expiry string) fwCommand {
	c := fwCommand{Version: version, HW: "m2", SHA256: fs.sum, Size: int64(len(fs.image)), Job: job,
		URL: fs.url + "/fw/" + fs.sum + "?d=" + id + "&e=" + expiry + "&s=sig"}
	msg, _ := json.Marshal(fwManifest{Version: c.Version, HW: c.HW, Size: c.Size, SHA256: c.SHA256})
	c.Signature = base64.StdEncoding.EncodeToString(ed25519.Sign(fs.key, msg))
	return c
}

// newRig starts a broker, the fake engine on it and a firmware server.
func newRig(t *testing.T) (*engine, *fwServer, string) {
	srv, url := loadgentest.MustBroker(t)
	return newEngine(t, srv), newFWServer(t), url
}

func mustOpen(tb testing.TB, cfg sim.Config) *sim.Fleet {
	tb.Helper()
	f, err := sim.Open(context.Background(), cfg)
	if err != nil {
		tb.Fatalf("Open: %v", err)
	}
	tb.Cleanup(func() {
		if err := f.Close(context.Background()); err != nil {
			tb.Errorf("Close: %v", err)
		}
	})
	return f
}

func wait(t *testing.T, f *sim.Fleet, what string, cond func(sim.Stats) bool) sim.Stats {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	st, err := f.Wait(ctx, cond)
	if err != nil {
		t.Fatalf("waiting for %s: %v; stats %+v", what, err, st)
	}
	return st
}

func TestFleetUpdatesOverMQTT(t *testing.T) {
	eng, fw, url := newRig(t)
	const n = 20
	f := mustOpen(t, sim.Config{
		Server: url, Devices: n, IDPrefix: "dev-", HW: "m2", QoS: 1, Seed: 42,
		InstallTime: 20 * time.Millisecond, FailRate: 0.1, FailMode: sim.FailVerify,
		PublicKey: fw.publicKey(), Logger: slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	wait(t, f, "all connected", func(s sim.Stats) bool { return s.Connected == n })

	for _, id := range f.IDs() {
		eng.setDesired(string(id), fw.command(string(id), "1.2.0", "job-"+string(id), "9999999999"))
	}
	st := wait(t, f, "18 updated and 2 failed", func(s sim.Stats) bool {
		return s.Versions["1.2.0"] == n-2 && s.Failed == 2
	})
	if st.Updated != n-2 || st.Updating != 0 || st.Versions["1.0.0"] != 2 {
		t.Errorf("stats = %+v, want 18 updated, 0 updating, 2 still on 1.0.0", st)
	}
	wait(t, f, "all reconnected after reboot", func(s sim.Stats) bool { return s.Connected == n })
	eng.waitFor(t, "final reports", func() bool {
		var updated, failed int
		for _, id := range f.IDs() {
			h := eng.history[string(id)]
			last := h[len(h)-1]
			switch {
			case last["state"] == sim.StateUpdated && last["version"] == "1.2.0":
				updated++
			case last["state"] == sim.StateFailed:
				failed++
			}
		}
		return updated == n-2 && failed == 2
	})

	var ok, failed int
	for _, id := range f.IDs() {
		got := strings.Join(eng.states(string(id)), " ")
		switch got {
		case "updated@1.0.0 downloading@1.0.0 verifying@1.0.0 installing@1.0.0 rebooting@1.0.0 updated@1.2.0":
			ok++
		case "updated@1.0.0 downloading@1.0.0 verifying@1.0.0 failed:sha256_mismatch@1.0.0":
			failed++
		default:
			t.Errorf("%s reported %q, want the full update sequence or a verify failure", id, got)
		}
		if job := eng.lastJob(string(id)); job != "job-"+string(id) {
			t.Errorf("%s last reported job %v, want job-%s", id, job, id)
		}
	}
	if ok != n-2 || failed != 2 {
		t.Errorf("got %d updated and %d failed sequences, want %d and 2", ok, failed, n-2)
	}
}

func TestFleetFailurePaths(t *testing.T) {
	tests := []struct {
		name   string
		cfg    sim.Config
		expiry string
		want   string // the last state folded, e.g. "failed:url_rejected@1.0.0"
	}{
		{name: "expired url", expiry: "0", want: "failed:url_rejected@1.0.0"},
		{name: "wrong key", cfg: sim.Config{PublicKey: base64.StdEncoding.EncodeToString(make([]byte, 32))},
			want: "failed:bad_signature@1.0.0"},
		{name: "install failure", cfg: sim.Config{FailRate: 1, FailMode: sim.FailInstall}, want: "failed:install_failed@1.0.0"},
		{name: "download failure", cfg: sim.Config{FailRate: 1, FailMode: sim.FailDownload}, want: "failed:download_failed@1.0.0"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			eng, fw, url := newRig(t)
			cfg := tc.cfg
			cfg.Server, cfg.Devices, cfg.QoS, cfg.Seed = url, 3, 1, 7
			if cfg.PublicKey == "" {
				cfg.PublicKey = fw.publicKey()
			}
			f := mustOpen(t, cfg)
			wait(t, f, "all connected", func(s sim.Stats) bool { return s.Connected == 3 })
			expiry := tc.expiry
			if expiry == "" {
				expiry = "9999999999"
			}
			for _, id := range f.IDs() {
				eng.setDesired(string(id), fw.command(string(id), "1.2.0", "j", expiry))
			}
			wait(t, f, "all failed", func(s sim.Stats) bool { return s.Failed == 3 })
			eng.waitFor(t, "failures reported", eng.lastStateIs(f.IDs(), sim.StateFailed))
			for _, id := range f.IDs() {
				states := eng.states(string(id))
				if got := states[len(states)-1]; got != tc.want {
					t.Errorf("%s last state %q, want %q (history %q)", id, got, tc.want, states)
				}
			}
		})
	}
}

// TestFleetDownloadRetries: a download answered 503 (a server node that
// cannot read its image store for a moment) or cut off mid-transfer (a
// node that died) is tried again, and the device updates without a
// failed report; one that keeps failing is reported download_failed after
// the retries; a 404 is not retried.
func TestFleetDownloadRetries(t *testing.T) {
	unavailable := func(w http.ResponseWriter) {
		w.Header().Set("Retry-After", "0")
		http.Error(w, `{"code":503}`, http.StatusServiceUnavailable)
	}
	cut := func(w http.ResponseWriter) {
		w.Header().Set("Content-Length", "100000")
		_, _ = w.Write([]byte("partial"))
	}
	notFound := func(w http.ResponseWriter) { http.NotFound(w, nil) }
	tests := []struct {
		name     string
		fails    int
		with     func(http.ResponseWriter)
		want     string // the last state folded
		requests int    // per device
	}{
		{name: "503 then served", fails: 2, with: unavailable, want: "updated@1.2.0", requests: 3},
		{name: "cut then served", fails: 1, with: cut, want: "updated@1.2.0", requests: 2},
		{name: "503 every time", fails: 100, with: unavailable, want: "failed:download_failed@1.0.0", requests: 4},
		{name: "404 not retried", fails: 100, with: notFound, want: "failed:download_failed@1.0.0", requests: 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			eng, fw, url := newRig(t)
			f := mustOpen(t, sim.Config{Server: url, Devices: 2, QoS: 1, Seed: 3, PublicKey: fw.publicKey()})
			wait(t, f, "all connected", func(s sim.Stats) bool { return s.Connected == 2 })
			fw.failFirst(tc.fails, tc.with, f.IDs()...)
			for _, id := range f.IDs() {
				eng.setDesired(string(id), fw.command(string(id), "1.2.0", "j", "9999999999"))
			}
			if strings.HasPrefix(tc.want, "failed") {
				wait(t, f, "all failed", func(s sim.Stats) bool { return s.Failed == 2 })
			} else {
				wait(t, f, "all updated", func(s sim.Stats) bool { return s.Versions["1.2.0"] == 2 })
			}
			state, version, _ := strings.Cut(tc.want, "@")
			state, _, _ = strings.Cut(state, ":")
			eng.waitFor(t, "final reports", func() bool { // eng.mu held
				for _, id := range f.IDs() {
					h := eng.history[string(id)]
					if len(h) == 0 || h[len(h)-1]["state"] != state || h[len(h)-1]["version"] != version {
						return false
					}
				}
				return true
			})
			for _, id := range f.IDs() {
				states := eng.states(string(id))
				for _, s := range states {
					if strings.HasPrefix(s, "failed") && s != tc.want {
						t.Errorf("%s reported %s (history %q)", id, s, states)
					}
				}
				if got := fw.requestsOf(id); got != tc.requests {
					t.Errorf("%s made %d requests, want %d", id, got, tc.requests)
				}
				// The report can reach the engine before the device's connect
				// goroutine has marked the connection up (the report is sent
				// from paho's on-connect handler): await it.
				waitfor.PollExplained(t, 5*time.Second, fmt.Sprintf("Describe(%s) saying conn up and phase idle", id), func() string {
					if desc := f.Describe(id); !strings.Contains(desc, "conn up (online true)") || !strings.Contains(desc, "phase idle") {
						return desc
					}
					return ""
				})
			}
			if desc := f.Describe("not-in-the-fleet"); desc != "" {
				t.Errorf("Describe of an unknown device = %q, want \"\"", desc)
			}
			if got, want := f.Stats().DownloadRetries, uint64(2*(tc.requests-1)); got != want {
				t.Errorf("DownloadRetries = %d, want %d", got, want)
			}
		})
	}
}

func TestFleetOfflineDevicesCatchUp(t *testing.T) {
	eng, fw, url := newRig(t)
	const n = 10
	f := mustOpen(t, sim.Config{
		Server: url, Devices: n, QoS: 1, Seed: 3, PublicKey: fw.publicKey(),
		OfflineRate: 0.5, OfflineAfter: 300 * time.Millisecond, OfflineFor: 100 * time.Millisecond,
		RebootTime: 10 * time.Millisecond,
	})
	wait(t, f, "someone connected", func(s sim.Stats) bool { return s.Connected > 0 })
	for _, id := range f.IDs() {
		eng.setDesired(string(id), fw.command(string(id), "2.0.0", "j", "9999999999"))
	}
	wait(t, f, "all on 2.0.0", func(s sim.Stats) bool { return s.Versions["2.0.0"] == n })
}

func TestFleetSilentDevicesNeverReport(t *testing.T) {
	eng, fw, url := newRig(t)
	f := mustOpen(t, sim.Config{Server: url, Devices: 4, QoS: 1, Seed: 5, PublicKey: fw.publicKey(),
		FailRate: 0.5, FailMode: sim.FailSilent})
	wait(t, f, "all connected", func(s sim.Stats) bool { return s.Connected == 4 })
	for _, id := range f.IDs() {
		eng.setDesired(string(id), fw.command(string(id), "1.2.0", "j", "9999999999"))
	}
	wait(t, f, "2 updated, 2 silent", func(s sim.Stats) bool { return s.Versions["1.2.0"] == 2 && s.Silent == 2 })
	for _, id := range f.IDs() {
		states := eng.states(string(id))
		if len(states) == 1 && states[0] != "updated@1.0.0" {
			t.Errorf("silent %s reported %q, want only its boot report", id, states)
		}
	}
}

func TestOpenValidatesConfig(t *testing.T) {
	_, url := loadgentest.MustBroker(t)
	tests := []struct {
		name string
		cfg  sim.Config
	}{
		{"no server", sim.Config{Devices: 1}},
		{"bad scheme", sim.Config{Server: "http://127.0.0.1:1", Devices: 1}},
		{"no devices", sim.Config{Server: url}},
		{"fail rate above 1", sim.Config{Server: url, Devices: 1, FailRate: 1.5}},
		{"negative offline rate", sim.Config{Server: url, Devices: 1, OfflineRate: -0.1}},
		{"unknown fail mode", sim.Config{Server: url, Devices: 1, FailMode: "explode"}},
		{"qos 2", sim.Config{Server: url, Devices: 1, QoS: 2}},
		{"bad id prefix", sim.Config{Server: url, Devices: 1, IDPrefix: "a/b"}},
		{"negative install time", sim.Config{Server: url, Devices: 1, InstallTime: -time.Second}},
		{"bad public key", sim.Config{Server: url, Devices: 1, PublicKey: "not-a-key"}},
		{"bad second server", sim.Config{Server: url + ",http://127.0.0.1:1", Devices: 1}},
		{"empty server in list", sim.Config{Server: url + ",", Devices: 1}},
		{"negative reconnect delay", sim.Config{Server: url, Devices: 1, ReconnectDelay: -time.Second}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, err := sim.Open(t.Context(), tc.cfg)
			if err == nil {
				_ = f.Close(t.Context())
			}
			if !errors.Is(err, sim.ErrInvalidConfig) {
				t.Errorf("Open(%s) error = %v, want ErrInvalidConfig", tc.name, err)
			}
		})
	}
	t.Run("unreachable server", func(t *testing.T) {
		_, err := sim.Open(t.Context(), sim.Config{Server: "tcp://127.0.0.1:1", Devices: 1})
		if err == nil || errors.Is(err, sim.ErrInvalidConfig) {
			t.Errorf("Open(unreachable) error = %v, want a connection error", err)
		}
	})
	t.Run("one of two servers unreachable", func(t *testing.T) {
		_, err := sim.Open(t.Context(), sim.Config{Server: url + ",tcp://127.0.0.1:1", Devices: 1})
		if err == nil || !strings.Contains(err.Error(), "tcp://127.0.0.1:1 unreachable") {
			t.Errorf("Open(second unreachable) error = %v, want one naming tcp://127.0.0.1:1", err)
		}
	})
}

// TestFleetRepeatedRollouts rolls several versions out in a row with very
// short reboots. Quick reconnects race with mochi's session takeover, which
// can leave a reconnected device deaf; the connect-time get detects that
// and the device reconnects, so every round must converge.
func TestFleetRepeatedRollouts(t *testing.T) {
	eng, fw, url := newRig(t)
	const n = 100
	f := mustOpen(t, sim.Config{Server: url, Devices: n, QoS: 1, Seed: 11, PublicKey: fw.publicKey(),
		RebootTime: time.Millisecond, SyncTimeout: time.Second})
	wait(t, f, "all connected", func(s sim.Stats) bool { return s.Connected == n })
	eng.waitFor(t, "boot reports", func() bool { return len(eng.reported) == n })
	for _, v := range []string{"2.0.0", "3.0.0", "4.0.0"} {
		if got := eng.desireAll(fw, v); got != n {
			t.Fatalf("desired %s on %d devices, want %d", v, got, n)
		}
		st := wait(t, f, "all on "+v, func(s sim.Stats) bool { return s.Versions[v] == n })
		t.Logf("%s: %+v", v, st)
	}
}
