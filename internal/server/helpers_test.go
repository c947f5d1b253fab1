package server_test

import (
	"context"
	"encoding/base64"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/firmware"
	"github.com/umbra-iot/umbra/internal/brokertest"
	"github.com/umbra-iot/umbra/internal/server"
	"github.com/umbra-iot/umbra/internal/sim"
	"github.com/umbra-iot/umbra/internal/waitfor"
	"github.com/umbra-iot/umbra/rollout"
)

// TestMain fails the package if a broker, mochi or paho goroutine outlives
// the tests: every server and simulated fleet must be closed.
func TestMain(m *testing.M) { brokertest.Main(m) }

// waitTimeout bounds every wait of the end-to-end tests. A wait normally
// takes a few seconds; the bound is generous because -race on two busy
// cores can slow every fsync and MQTT round trip many times over.
const waitTimeout = 45 * time.Second

// testLogger logs warnings and errors of every component into the test
// output.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// rig is a whole Umbra run in-process for end-to-end tests.
type rig struct {
	*server.Server
	// secure is true when devices must be enrolled and authenticate; false
	// for an anonymous server.
	secure  bool
	secrets map[device.ID]string // enrolled devices (only the test goroutine uses it)
	fleets  []*sim.Fleet         // for failure messages
	reports reportLog            // every simulated device's reports, for failure messages
}

// reportLog keeps the reports of the simulated devices.
type reportLog struct {
	mu       sync.Mutex // guards byDevice
	byDevice map[device.ID][]string
}

// add is sim.Config.OnEvent: it must not block.
func (l *reportLog) add(ev sim.Event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.byDevice == nil {
		l.byDevice = map[device.ID][]string{}
	}
	l.byDevice[ev.Device] = append(l.byDevice[ev.Device],
		fmt.Sprintf("%s %s@%s/%s%s", ev.Time.Format(time.StampMilli), ev.State, ev.Version, ev.Job, ev.Error))
}

func (l *reportLog) of(id device.ID) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.byDevice[id])
}

// mustOpenRig runs a whole Umbra on 127.0.0.1:0 ports with a t.TempDir()
// data dir and a 50ms planner pass, anonymous or with authentication
// (secure), after applying opts to its Config, and closes it on cleanup.
func mustOpenRig(t *testing.T, secure bool, opts ...func(*server.Config)) *rig {
	t.Helper()
	cfg := server.Config{
		DataDir:     t.TempDir(),
		MQTTAddr:    "127.0.0.1:0",
		HTTPAddr:    "127.0.0.1:0",
		Anonymous:   !secure,
		RolloutTick: 50 * time.Millisecond,
		Logger:      testLogger(t),
	}
	for _, o := range opts {
		o(&cfg)
	}
	s := mustOpenServer(t, cfg)
	return &rig{Server: s, secure: secure, secrets: map[device.ID]string{}}
}

// mustOpenServer opens a server with cfg and closes it on cleanup.
func mustOpenServer(t *testing.T, cfg server.Config) *server.Server {
	t.Helper()
	s, err := server.Open(t.Context(), cfg)
	if err != nil {
		t.Fatalf("server.Open: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Close(ctx); err != nil {
			t.Errorf("server Close: %v", err)
		}
	})
	return s
}

// mqttURL is the server's MQTT-over-TCP URL.
func (r *rig) mqttURL() string { return "tcp://" + r.Broker().Addr().String() }

// mustUpload stores a generated image of version v.
func (r *rig) mustUpload(t *testing.T, v string) firmware.Image {
	t.Helper()
	img, err := r.Firmware().Upload(t.Context(), firmware.UploadRequest{Version: v},
		strings.NewReader(strings.Repeat("umbra firmware "+v+"\n", 4096)))
	if err != nil {
		t.Fatalf("upload %s: %v", v, err)
	}
	return img
}

// credentials returns the MQTT user name and password of device id,
// enrolling it first on a secure rig; both are empty on an anonymous one.
func (r *rig) credentials(t *testing.T, id device.ID) (user, pass string) {
	t.Helper()
	if !r.secure {
		return "", ""
	}
	if _, ok := r.secrets[id]; !ok {
		secret, err := r.Identity().AddDevice(t.Context(), id, nil)
		if err != nil {
			t.Fatalf("enroll %s: %v", id, err)
		}
		r.secrets[id] = secret
	}
	return string(id), r.secrets[id]
}

// connectDevice connects a hand-written paho device as id.
func (r *rig) connectDevice(t *testing.T, id device.ID) paho.Client {
	t.Helper()
	user, pass := r.credentials(t, id)
	return brokertest.Connect(t, r.mqttURL(), string(id), func(o *paho.ClientOptions) {
		if user != "" {
			o.SetUsername(user).SetPassword(pass)
		}
	})
}

// simIDs returns the device IDs sim gives a fleet of n with prefix.
func simIDs(prefix string, n int) []device.ID {
	width := max(4, len(strconv.Itoa(n)))
	ids := make([]device.ID, n)
	for i := range ids {
		ids[i] = device.ID(fmt.Sprintf("%s%0*d", prefix, width, i+1))
	}
	return ids
}

// mustOpenFleet starts a simulated fleet against r that pins r's firmware
// key and runs 1.0.0 (enrolled first on a secure rig); cfg sets the size,
// prefix and behaviour. The fleet is closed on cleanup (before r, which
// was opened first).
func (r *rig) mustOpenFleet(t *testing.T, cfg sim.Config) *sim.Fleet {
	t.Helper()
	if r.secure {
		creds := map[device.ID][2]string{}
		for _, id := range simIDs(cfg.IDPrefix, cfg.Devices) {
			user, pass := r.credentials(t, id)
			creds[id] = [2]string{user, pass}
		}
		cfg.Credentials = func(id device.ID) (string, string) { return creds[id][0], creds[id][1] }
	}
	if cfg.OnEvent == nil {
		cfg.OnEvent = r.reports.add
	}
	cfg.Server = r.mqttURL()
	cfg.PublicKey = base64.StdEncoding.EncodeToString(r.Firmware().PublicKey())
	cfg.QoS = 1
	if cfg.Seed == 0 {
		cfg.Seed = 1
	}
	cfg.Logger = testLogger(t)
	// The fleet's idle keep-alive connections are closed after it (the
	// HTTP API's Close no longer waits for connections that sent no
	// request, which held net/http's Shutdown for 5 s).
	tr := &http.Transport{}
	cfg.HTTPClient = &http.Client{Transport: tr, Timeout: time.Minute}
	t.Cleanup(tr.CloseIdleConnections)
	f, err := sim.Open(t.Context(), cfg)
	if err != nil {
		t.Fatalf("sim.Open %s: %v", cfg.IDPrefix, err)
	}
	if got, want := f.IDs(), simIDs(cfg.IDPrefix, cfg.Devices); !slices.Equal(got, want) {
		t.Fatalf("fleet IDs %v, want %v", got, want)
	}
	t.Cleanup(func() { closeFleet(t, f) })
	r.fleets = append(r.fleets, f)
	return f
}

func closeFleet(t *testing.T, f *sim.Fleet) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := f.Close(ctx); err != nil {
		t.Errorf("fleet Close: %v", err)
	}
}

// waitFleet waits until cond holds for f's stats.
func waitFleet(t *testing.T, f *sim.Fleet, what string, cond func(sim.Stats) bool) sim.Stats {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	defer cancel()
	st, err := f.Wait(ctx, cond)
	if err != nil {
		t.Fatalf("fleet: waiting for %s: %v (stats %+v)", what, err, st)
	}
	return st
}

// eventually polls cond until it returns "" (done) or waitTimeout passes,
// then fails with cond's last complaint. It is for state that raises no
// event in this process (the planner's status, shadows).
func eventually(t *testing.T, what string, cond func() string) {
	t.Helper()
	waitfor.PollExplained(t, waitTimeout, what, cond)
}

// waitRollout polls rollout id's status until cond holds and returns it.
func (r *rig) waitRollout(t *testing.T, id, what string, cond func(rollout.Status) bool) rollout.Status {
	t.Helper()
	var st rollout.Status
	eventually(t, "rollout "+id+" "+what, func() string {
		var err error
		if st, err = r.Planner().Get(t.Context(), id); err != nil {
			t.Fatalf("Get %s: %v", id, err)
		}
		if cond(st) {
			return ""
		}
		return fmt.Sprintf("state %s (%s), batches started %d, counts %v%s", st.State, st.Reason, st.Started, st.Counts, r.diagnose(t, id))
	})
	return st
}

// diagnose describes the fleets and up to 3 in-flight devices of rollout
// id, for failure messages.
func (r *rig) diagnose(t *testing.T, id string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "\nbroker %+v", r.Broker().Stats())
	fmt.Fprintf(&b, "\nengine %+v", r.Engine().Stats())
	for _, f := range r.fleets {
		fmt.Fprintf(&b, "\nfleet %+v", f.Stats())
	}
	list, _ := r.Planner().Devices(t.Context(), id, rollout.DeviceNotified, rollout.DeviceDownloading, rollout.DeviceInstalling)
	for _, d := range list[:min(3, len(list))] {
		doc, err := r.Engine().Read(t.Context(), d.Device)
		fmt.Fprintf(&b, "\n%s %s attempt %d since %v: shadow v%d %v (%v)", d.Device, d.State, d.Attempt,
			d.Since.Format(time.StampMilli), doc.Version, doc.State, err)
		if reps := r.reports.of(d.Device); len(reps) > 0 {
			fmt.Fprintf(&b, "\n  device reports: %s", strings.Join(reps, "; "))
		}
		for _, f := range r.fleets {
			if desc := f.Describe(d.Device); desc != "" {
				fmt.Fprintf(&b, "\n  %s", desc)
			}
		}
	}
	return b.String()
}

// inFlight counts st's notified, downloading and installing devices.
func inFlight(st rollout.Status) int {
	return st.Counts[rollout.DeviceNotified] + st.Counts[rollout.DeviceDownloading] + st.Counts[rollout.DeviceInstalling]
}

// shadowFirmware returns reported.firmware and desired.firmware of id's
// shadow (nil when absent).
func (r *rig) shadowFirmware(t *testing.T, id device.ID) (reported, desired map[string]any) {
	t.Helper()
	doc, err := r.Engine().Read(t.Context(), id)
	if err != nil {
		t.Fatalf("read shadow %s: %v", id, err)
	}
	reported, _ = doc.State.Reported["firmware"].(map[string]any)
	desired, _ = doc.State.Desired["firmware"].(map[string]any)
	return reported, desired
}

// waitReported waits until every shadow of ids reports firmware version v.
func (r *rig) waitReported(t *testing.T, ids []device.ID, v string) {
	t.Helper()
	eventually(t, fmt.Sprintf("%d shadows to report firmware %s", len(ids), v), func() string {
		for _, id := range ids {
			doc, err := r.Engine().Read(t.Context(), id)
			if err != nil {
				return fmt.Sprintf("%s: %v", id, err)
			}
			if fw, _ := doc.State.Reported["firmware"].(map[string]any); fw["version"] != v {
				return fmt.Sprintf("%s: reported.firmware %v", id, fw)
			}
		}
		return ""
	})
}

// rolloutDevices returns rollout id's devices by ID.
func (r *rig) rolloutDevices(t *testing.T, id string) map[device.ID]rollout.DeviceStatus {
	t.Helper()
	list, err := r.Planner().Devices(t.Context(), id)
	if err != nil {
		t.Fatalf("Devices %s: %v", id, err)
	}
	out := make(map[device.ID]rollout.DeviceStatus, len(list))
	for _, d := range list {
		out[d.Device] = d
	}
	return out
}

// mustEvents returns rollout id's event log.
func (r *rig) mustEvents(t *testing.T, id string) []rollout.Event {
	t.Helper()
	evs, err := r.Planner().Events(t.Context(), id)
	if err != nil {
		t.Fatalf("Events %s: %v", id, err)
	}
	return evs
}
