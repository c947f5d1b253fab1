package sim

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// world is a fake env: it records reports and holds the machine's pending
// work (a download, a timer, a get, a reboot) until the test runs it.
type world struct {
	reports []report
	image   []byte   // what the fake server returns
	dlErr   error    // or this error
	desired *command // what a get answers (nil: no firmware)
	pending struct {
		download func()
		timer    func()
		get      bool
		reboot   bool
	}
	timerDur time.Duration
}

func (w *world) report(r report) { w.reports = append(w.reports, r) }

func (w *world) download(url string, limit int64, done func(int64, [32]byte, error)) {
	img, err := w.image, w.dlErr
	w.pending.download = func() {
		if err != nil {
			done(0, [32]byte{}, err)
			return
		}
		n := min(int64(len(img)), limit+1)
		done(n, sha256.Sum256(img[:n]), nil)
	}
}

func (w *world) after(d time.Duration, f func()) { w.timerDur, w.pending.timer = d, f }
func (w *world) get()                            { w.pending.get = true }
func (w *world) reboot()                         { w.pending.reboot = true }

// step runs one pending item; false when nothing is pending.
func (w *world) step(m *machine) bool {
	p := &w.pending
	switch {
	case p.download != nil:
		f := p.download
		p.download = nil
		f()
	case p.get:
		p.get = false
		doc := map[string]any{"state": map[string]any{"desired": map[string]any{}}}
		if w.desired != nil {
			doc["state"].(map[string]any)["desired"] = map[string]any{"firmware": w.desired}
		}
		if err := m.document(mustJSON(doc)); err != nil {
			panic(err)
		}
	case p.reboot:
		p.reboot = false
		m.connected()
	case p.timer != nil:
		f := p.timer
		p.timer = nil
		f()
	default:
		return false
	}
	return true
}

func (w *world) settle(m *machine) {
	for i := 0; i < 50 && w.step(m); i++ {
	}
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

var (
	testKey      = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, ed25519.SeedSize))
	otherKey     = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{9}, ed25519.SeedSize))
	testImage    = bytes.Repeat([]byte("firmware-image-"), 100)
	testImageSum = sha256.Sum256(testImage)
)

// signedCommand returns a command for testImage signed with key.
func signedCommand(key ed25519.PrivateKey, version, job string) command {
	c := command{
		Version: version, HW: "m2", URL: "http://127.0.0.1:1/fw/x?d=dev&e=1&s=2",
		SHA256: hex.EncodeToString(testImageSum[:]), Size: int64(len(testImage)), Job: job,
	}
	msg := mustJSON(manifest{Version: c.Version, HW: c.HW, Size: c.Size, SHA256: c.SHA256})
	c.Signature = base64.StdEncoding.EncodeToString(ed25519.Sign(key, msg))
	return c
}

// deltaFor is the delta the shadow service would publish for desired
// firmware c against the machine's last report: only differing leaves.
func deltaFor(c command, reported report, version int64) []byte {
	fw := map[string]any{"hw": c.HW, "url": c.URL, "sha256": c.SHA256, "size": c.Size, "signature": c.Signature}
	if c.Version != reported.Version {
		fw["version"] = c.Version
	}
	if c.Job != reported.Job {
		fw["job"] = c.Job
	}
	return mustJSON(map[string]any{"state": map[string]any{"firmware": fw}, "version": version})
}

func newTestMachine(w *world, faulty FailMode) *machine {
	m := newMachine(w, "1.0.0")
	m.key, m.hw, m.maxSize, m.faulty = testKey.Public().(ed25519.PublicKey), "m2", 1<<20, faulty
	m.installTime = func() time.Duration { return time.Second }
	return m
}

// seq renders reports compactly: "state[:error][@version]".
func seq(rs []report) string {
	var parts []string
	for _, r := range rs {
		s := r.State
		if r.Error != "" {
			s += ":" + r.Error
		}
		if r.Version != "1.0.0" {
			s += "@" + r.Version
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, " ")
}

func TestMachineUpdate(t *testing.T) {
	good := signedCommand(testKey, "1.2.0", "job-1")
	tests := []struct {
		name      string
		faulty    FailMode
		cmd       command
		image     []byte
		dlErr     error
		noKey     bool
		anyHW     bool // the device accepts any hw
		want      string
		retryable bool // of the last report
	}{
		{name: "success", cmd: good, want: "downloading verifying installing rebooting updated@1.2.0"},
		{name: "sha256 mismatch", cmd: good, image: append(bytes.Clone(testImage[:len(testImage)-1]), '!'),
			want: "downloading verifying failed:sha256_mismatch", retryable: true},
		{name: "size mismatch", cmd: good, image: append(bytes.Clone(testImage), 'x'),
			want: "downloading verifying failed:size_mismatch", retryable: true},
		{name: "bad signature", cmd: signedCommand(otherKey, "1.2.0", "job-1"),
			want: "downloading verifying failed:bad_signature"},
		{name: "other hardware", cmd: func() command { c := good; c.HW = "m3"; return c }(),
			want: "failed:hw_mismatch"},
		{name: "tampered manifest", anyHW: true, cmd: func() command { c := good; c.HW = "m3"; return c }(),
			want: "downloading verifying failed:bad_signature"},
		{name: "no pinned key", cmd: good, noKey: true, want: "downloading verifying failed:untrusted"},
		{name: "url rejected", cmd: good, dlErr: fmt.Errorf("get: %w", errURLRejected),
			want: "downloading failed:url_rejected", retryable: true},
		{name: "download error", cmd: good, dlErr: errors.New("connection reset"),
			want: "downloading failed:download_failed", retryable: true},
		{name: "bad command", cmd: func() command { c := good; c.SHA256 = "zz"; return c }(),
			want: "failed:bad_command"},
		{name: "already running", cmd: signedCommand(testKey, "1.0.0", "job-1"), want: "updated"},
		{name: "fail mode download", faulty: FailDownload, cmd: good,
			want: "downloading failed:download_failed", retryable: true},
		{name: "fail mode verify", faulty: FailVerify, cmd: good,
			want: "downloading verifying failed:sha256_mismatch", retryable: true},
		{name: "fail mode install", faulty: FailInstall, cmd: good,
			want: "downloading verifying installing failed:install_failed", retryable: true},
		{name: "fail mode silent", faulty: FailSilent, cmd: good, want: ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := &world{image: testImage, dlErr: tc.dlErr, desired: &tc.cmd}
			if tc.image != nil {
				w.image = tc.image
			}
			m := newTestMachine(w, tc.faulty)
			if tc.noKey {
				m.key = nil
			}
			if tc.anyHW {
				m.hw = ""
			}
			if err := m.delta(deltaFor(tc.cmd, m.last, 5)); err != nil {
				t.Fatalf("delta: %v", err)
			}
			w.settle(m)
			if got := seq(w.reports); got != tc.want {
				t.Fatalf("reports = %q, want %q", got, tc.want)
			}
			if len(w.reports) == 0 {
				return
			}
			last := w.reports[len(w.reports)-1]
			if last.Retryable != tc.retryable {
				t.Errorf("last report retryable = %v, want %v", last.Retryable, tc.retryable)
			}
			if last.Job != tc.cmd.Job {
				t.Errorf("last report job = %q, want %q", last.Job, tc.cmd.Job)
			}
			// The shadow answers every report with a delta; none of them
			// may make the device report again (no loops).
			n := len(w.reports)
			for v := int64(6); v < 9; v++ {
				if err := m.delta(deltaFor(tc.cmd, m.last, v)); err != nil {
					t.Fatal(err)
				}
				w.settle(m)
			}
			if len(w.reports) != n {
				t.Errorf("repeated deltas caused reports %q, want none", seq(w.reports[n:]))
			}
		})
	}
}

func TestMachineInstallTimeAndVersionDuringInstall(t *testing.T) {
	cmd := signedCommand(testKey, "1.2.0", "j")
	w := &world{image: testImage, desired: &cmd}
	m := newTestMachine(w, "")
	if err := m.delta(deltaFor(cmd, m.last, 1)); err != nil {
		t.Fatal(err)
	}
	w.step(m) // download
	if w.timerDur != time.Second {
		t.Errorf("install timer = %v, want 1s", w.timerDur)
	}
	for _, r := range w.reports {
		if r.Version != "1.0.0" {
			t.Errorf("report %s has version %q, want the running 1.0.0", r.State, r.Version)
		}
	}
	w.settle(m)
	if m.running != "1.2.0" || m.installs != 1 {
		t.Errorf("running %q after %d installs, want 1.2.0 after 1", m.running, m.installs)
	}
}

func TestMachineAbort(t *testing.T) {
	cmd := signedCommand(testKey, "1.2.0", "j")
	tests := []struct {
		name  string
		abort func(w *world, m *machine)
		want  string
	}{
		{
			name: "delta without firmware",
			abort: func(w *world, m *machine) {
				if err := m.delta([]byte(`{"state":{"led":"on"},"version":9}`)); err != nil {
					t.Fatal(err)
				}
			},
			want: "downloading verifying installing updated",
		},
		{
			name:  "get shows no firmware before activation",
			abort: func(w *world, m *machine) { w.desired = nil },
			want:  "downloading verifying installing updated",
		},
		{
			name:  "get shows another version",
			abort: func(w *world, m *machine) { w.desired = &command{Version: "1.3.0"} },
			want:  "downloading verifying installing updated",
		},
		{
			name: "no shadow",
			abort: func(w *world, m *machine) {
				w.step(m) // the install timer: the machine asks for the document
				w.pending.get = false
				m.documentMissing()
			},
			want: "downloading verifying installing updated",
		},
		{
			name: "rollback to the running version",
			abort: func(w *world, m *machine) {
				back := signedCommand(testKey, "1.0.0", "j2")
				if err := m.delta(deltaFor(back, m.last, 9)); err != nil {
					t.Fatal(err)
				}
			},
			want: "downloading verifying installing updated",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := &world{image: testImage, desired: &cmd}
			m := newTestMachine(w, "")
			if err := m.delta(deltaFor(cmd, m.last, 1)); err != nil {
				t.Fatal(err)
			}
			w.step(m) // download done: installing, timer pending
			tc.abort(w, m)
			w.settle(m)
			if got := seq(w.reports); got != tc.want {
				t.Fatalf("reports = %q, want %q", got, tc.want)
			}
			if m.running != "1.0.0" || m.busy() {
				t.Errorf("after abort running %q busy %v, want 1.0.0 idle", m.running, m.busy())
			}
		})
	}
}

func TestMachineDeltaOrderingAndRetry(t *testing.T) {
	cmd := signedCommand(testKey, "1.2.0", "j1")
	w := &world{image: testImage, dlErr: errURLRejected, desired: &cmd}
	m := newTestMachine(w, "")
	if err := m.delta(deltaFor(cmd, m.last, 10)); err != nil {
		t.Fatal(err)
	}
	w.settle(m)
	if got, want := seq(w.reports), "downloading failed:url_rejected"; got != want {
		t.Fatalf("reports = %q, want %q", got, want)
	}
	// An older delta is ignored even if it carries a new command.
	retry := cmd
	retry.URL += "&fresh=1"
	w.dlErr = nil
	if err := m.delta(deltaFor(retry, m.last, 9)); err != nil {
		t.Fatal(err)
	}
	w.settle(m)
	if len(w.reports) != 2 {
		t.Fatalf("stale delta caused reports %q, want none", seq(w.reports[2:]))
	}
	// The same version repeats (equal versions are not dropped), with a
	// fresh URL: the planner's retry. The device tries again.
	if err := m.delta(deltaFor(retry, m.last, 10)); err != nil {
		t.Fatal(err)
	}
	w.settle(m)
	if got, want := seq(w.reports[2:]), "downloading verifying installing rebooting updated@1.2.0"; got != want {
		t.Fatalf("retry reports = %q, want %q", got, want)
	}
}

func TestMachinePowerOff(t *testing.T) {
	cmd := signedCommand(testKey, "1.2.0", "j")
	w := &world{image: testImage, desired: &cmd}
	m := newTestMachine(w, "")
	if err := m.delta(deltaFor(cmd, m.last, 1)); err != nil {
		t.Fatal(err)
	}
	w.step(m) // installing
	m.powerOff()
	w.settle(m) // the stale install timer must do nothing
	m.connected()
	if got, want := seq(w.reports), "downloading verifying installing updated"; got != want {
		t.Fatalf("reports = %q, want %q", got, want)
	}
	// The shadow still wants 1.2.0: the catch-up delta restarts the update.
	if err := m.delta(deltaFor(cmd, m.last, 2)); err != nil {
		t.Fatal(err)
	}
	w.settle(m)
	if m.running != "1.2.0" {
		t.Fatalf("running %q after catch-up, want 1.2.0 (reports %q)", m.running, seq(w.reports))
	}
}

func TestMachineBadDelta(t *testing.T) {
	m := newTestMachine(&world{}, "")
	if err := m.delta([]byte(`{"state":`)); err == nil {
		t.Error("delta(truncated JSON) = nil, want an error")
	}
}

// FuzzMachineDelta feeds arbitrary delta and document payloads to a
// machine: it must never panic, and never report a version it does not run.
func FuzzMachineDelta(f *testing.F) {
	good := signedCommand(testKey, "1.2.0", "j")
	f.Add(deltaFor(good, report{Version: "1.0.0"}, 1), []byte(`{"state":{"desired":{"firmware":{"version":"1.2.0"}}}}`))
	f.Add([]byte(`{"state":{"firmware":{"version":"1.0.0"}},"version":2}`), []byte(`{}`))
	f.Add([]byte(`{"state":{"firmware":null},"version":-1}`), []byte(`null`))
	f.Add([]byte(`{"state":{"firmware":{"size":-5,"url":"ftp://x"}}}`), []byte(`{"state":{"desired":{"firmware":[]}}}`))
	f.Fuzz(func(t *testing.T, delta, doc []byte) {
		w := &world{image: testImage, desired: &good}
		m := newTestMachine(w, "")
		m.behind(delta)
		_ = m.delta(delta)
		w.step(m)
		w.step(m)
		_, _, _ = m.shows(doc)
		_ = m.document(doc)
		w.settle(m)
		for _, r := range w.reports {
			if r.Version != "1.0.0" && r.Version != m.running {
				t.Fatalf("reported version %q, running %q", r.Version, m.running)
			}
		}
	})
}
