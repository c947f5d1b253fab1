package main

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
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/client"
	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/identity"
	"github.com/umbra-iot/umbra/internal/rolloutwire"
	"github.com/umbra-iot/umbra/internal/sim"
	"github.com/umbra-iot/umbra/rollout"
	"github.com/umbra-iot/umbra/wire"
)

// writeTemp writes content to a file in a temp dir and returns its path.
func writeTemp(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestRolloutFlagValidation: every bad argument is refused locally, before
// any request (the --api points at a closed port), with a clear message
// and a non-zero exit.
func TestRolloutFlagValidation(t *testing.T) {
	badFile := writeTemp(t, "bad.txt", "# fleet\nd1\n\nd 2\n")
	emptyFile := writeTemp(t, "empty.txt", "# nothing\n\n   \n")
	create := func(args ...string) []string {
		return append([]string{"rollout", "create", "--api", "http://127.0.0.1:1"}, args...)
	}
	fw := "--firmware=1.2.0"
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no firmware", create("--all"), "--firmware is required"},
		{"bad firmware", create("--firmware", "one", "--all"), `--firmware "one"`},
		{"no target", create(fw), "exactly one target"},
		{"two targets", create(fw, "--devices", "d1", "--all"), "exactly one target"},
		{"select and file", create(fw, "--select", "hw=m2", "--devices-file", badFile), "exactly one target"},
		{"all false", create(fw, "--all=false"), "give a target"},
		{"bad device ID", create(fw, "--devices", "d1,d 2"), `device ID "d 2"`},
		{"empty device list", create(fw, "--devices", " , "), "--devices: no device IDs"},
		{"bad line in devices file", create(fw, "--devices-file", badFile), "line 4: device ID \"d 2\""},
		{"devices file only comments", create(fw, "--devices-file", emptyFile), "no device IDs"},
		{"devices file missing", create(fw, "--devices-file", filepath.Join(t.TempDir(), "nope")), "no such file"},
		{"selector not key=value", create(fw, "--select", "hw"), "not key=value"},
		{"selector key twice", create(fw, "--select", "hw=m2,hw=m3"), "given twice"},
		{"selector empty", create(fw, "--select", ","), "--select: want key=value"},
		{"selector bad key", create(fw, "--select", "-x=1"), "--select"},
		{"dynamic with devices", create(fw, "--devices", "d1", "--dynamic"), "--dynamic needs --select or --all"},
		{"batch size zero", create(fw, "--all", "--batch-size", "0"), "--batch-size 0: must be at least 1"},
		{"start at not a time", create(fw, "--all", "--start-at", "tomorrow"), `--start-at "tomorrow"`},
		{"window malformed", create(fw, "--all", "--window", "2-5"), `--window "2-5"`},
		{"window empty", create(fw, "--all", "--window", "03:00-03:00"), "empty or the whole day"},
		{"window zone unknown", create(fw, "--all", "--window", "02:00-05:00", "--window-tz", "Mars/Base"), `window tz "Mars/Base"`},
		{"window zone alone", create(fw, "--all", "--window-tz", "UTC"), "--window-tz needs --window"},
		{"batch size and percent", create(fw, "--all", "--batch-size", "5", "--batch-percent", "10%"), "not both"},
		{"batch percent zero", create(fw, "--all", "--batch-percent", "0%"), `--batch-percent "0%"`},
		{"batch percent above 100", create(fw, "--all", "--batch-percent", "120"), "at most 100"},
		{"batch percent not a number", create(fw, "--all", "--batch-percent", "ten"), `--batch-percent "ten"`},
		{"first batch negative", create(fw, "--all", "--first-batch", "-1"), "--first-batch -1"},
		{"max in flight zero", create(fw, "--all", "--max-in-flight", "0"), "--max-in-flight 0"},
		{"min sample negative", create(fw, "--all", "--min-sample", "-3"), "--min-sample -3"},
		{"success threshold NaN", create(fw, "--all", "--success-threshold", "NaN"), "--success-threshold"},
		{"success threshold 101%", create(fw, "--all", "--success-threshold", "101%"), "--success-threshold"},
		{"failure threshold fraction", create(fw, "--all", "--failure-threshold", "5.5"), "want a count of failed devices (5) or a percentage (10%)"},
		{"failure threshold zero", create(fw, "--all", "--failure-threshold", "0"), "--failure-threshold \"0\""},
		{"failure threshold 150%", create(fw, "--all", "--failure-threshold", "150%"), "--failure-threshold \"150%\""},
		{"ramp below 1", create(fw, "--all", "--ramp", "0.5x"), `--ramp "0.5x"`},
		{"ramp above 10", create(fw, "--all", "--ramp", "11"), "factor from 1 to 10"},
		{"ramp word", create(fw, "--all", "--ramp", "double"), `--ramp "double"`},
		{"max batch size without ramp", create(fw, "--all", "--max-batch-size", "100"), "give --ramp too"},
		{"on failure unknown", create(fw, "--all", "--on-failure", "explode"), "want pause, abort or rollback"},
		{"device timeout too short", create(fw, "--all", "--device-timeout", "10ms"), "--device-timeout 10ms"},
		{"device timeout too long", create(fw, "--all", "--device-timeout", "200h"), "--device-timeout 200h0m0s"},
		{"retries above max", create(fw, "--all", "--retries", "11"), "--retries 11: at most 10"},
		{"retry backoff zero", create(fw, "--all", "--retry-backoff", "0s"), "--retry-backoff 0s"},
		{"url ttl zero", create(fw, "--all", "--url-ttl", "0s"), "--url-ttl 0s"},
		{"bad output", create(fw, "--all", "-o", "xml"), `--output "xml"`},
		{"bad timeout", create(fw, "--all", "--timeout", "0s"), "--timeout 0s"},
		{"bad token", create(fw, "--all", "--token", "nocolon"), "--token"},
		{"bad api", create(fw, "--all", "--api", "ftp://x"), "--api"},
		{"status bad id", []string{"rollout", "status", "r 3"}, `rollout ID "r 3"`},
		{"status id with slash", []string{"rollout", "status", "../r3"}, `rollout ID "../r3"`},
		{"status interval too short", []string{"rollout", "status", "r3", "--watch", "--interval", "1ms"}, "--interval 1ms"},
		{"status no id", []string{"rollout", "status"}, "missing <id>"},
		{"devices bad state", []string{"rollout", "devices", "r3", "--state", "failed,exploded"}, `--state "exploded"`},
		{"pause two ids", []string{"rollout", "pause", "r3", "r4"}, "too many arguments"},
		{"abort bad id", []string{"rollout", "abort", "", "--rollback"}, `rollout ID ""`},
		{"retry bad id", []string{"rollout", "retry", "r#1"}, `rollout ID "r#1"`},
		{"unknown subcommand", []string{"rollout", "launch"}, "unknown command"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := runCLI(t.Context(), "", tc.args...)
			if r.err == nil {
				t.Fatalf("umbra %s: no error, want one containing %q (stdout %q)", strings.Join(tc.args, " "), tc.want, r.stdout)
			}
			if !strings.Contains(r.err.Error(), tc.want) {
				t.Errorf("umbra %s: error %q, want it to contain %q", strings.Join(tc.args, " "), r.err, tc.want)
			}
			if code := exitCode(r.err); code == 0 {
				t.Errorf("exit code %d, want non-zero", code)
			}
			if r.stdout != "" {
				t.Errorf("stdout %q, want nothing", r.stdout)
			}
		})
	}
}

// fakeRolloutAPI is an HTTP server standing in for Umbra's rollout API: it
// records each request and answers from a table of "METHOD path" → answer;
// more answers for a path (queued) are given one per request, the last
// one repeated.
type fakeRolloutAPI struct {
	*httptest.Server
	mu      sync.Mutex // guards answers, queued and reqs
	answers map[string]fakeAnswer
	queued  map[string][]fakeAnswer
	reqs    []fakeRequest
}

type fakeAnswer struct {
	status int
	body   string
}

type fakeRequest struct {
	method, uri, auth string
	body              []byte
}

func newFakeRolloutAPI(t *testing.T, answers map[string]fakeAnswer) *fakeRolloutAPI {
	f := &fakeRolloutAPI{answers: answers, queued: map[string][]fakeAnswer{}}
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		f.mu.Lock()
		f.reqs = append(f.reqs, fakeRequest{r.Method, r.URL.RequestURI(), r.Header.Get("Authorization"), b})
		key := r.Method + " " + r.URL.Path
		a, ok := f.answers[key]
		if q := f.queued[key]; len(q) > 0 {
			a, ok = q[0], true
			if len(q) > 1 {
				f.queued[key] = q[1:]
			}
		}
		f.mu.Unlock()
		if !ok {
			a = fakeAnswer{http.StatusNotFound, `{"code":404,"message":"rollout: not found"}`}
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(a.status)
		io.WriteString(w, a.body)
	}))
	t.Cleanup(f.Close)
	return f
}

// last returns the last request received.
func (f *fakeRolloutAPI) last(t *testing.T) fakeRequest {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.reqs) == 0 {
		t.Fatal("no request received")
	}
	return f.reqs[len(f.reqs)-1]
}

const createdRollout = `{"id":"r7","firmware":"1.2.0","state":"created","policy":{},"targets":3,"batches":[{"start":0,"size":1},{"start":1,"size":2}],"batches_started":0,"created":"2026-11-23T12:00:00Z","updated":"2026-11-23T12:00:00Z"}`

// TestRolloutCreateRequest: the create flags become the request body the
// server expects (targets, percentages vs counts, ramp, durations as
// strings), the ID is printed, and a 409 names the conflicting rollout.
func TestRolloutCreateRequest(t *testing.T) {
	api := newFakeRolloutAPI(t, map[string]fakeAnswer{"POST /v1/rollouts": {http.StatusCreated, createdRollout}})
	file := writeTemp(t, "fleet.txt", "# canaries\nlamp-1   # desk\n\nlamp-2\n  lamp-3\n")
	for _, tc := range []struct {
		name  string
		stdin string
		args  []string
		want  map[string]any
	}{
		{"devices and defaults", "", []string{"--devices", "lamp-1, lamp-2,lamp-3,"},
			map[string]any{"firmware": "1.2.0", "devices": []any{"lamp-1", "lamp-2", "lamp-3"}}},
		{"devices file", "", []string{"--devices-file", file, "--batch-size", "2", "--failure-threshold", "5"},
			map[string]any{"firmware": "1.2.0", "devices": []any{"lamp-1", "lamp-2", "lamp-3"}, "batch_size": 2.0, "failure_count": 5.0}},
		{"devices from stdin", "a\nb # second\n", []string{"--devices-file", "-"},
			map[string]any{"firmware": "1.2.0", "devices": []any{"a", "b"}}},
		{"selector with policy", "", []string{"--select", "hw=m2, region=eu", "--dynamic", "--batch-percent", "10%",
			"--first-batch", "5", "--ramp", "2x", "--max-batch-size", "100", "--max-in-flight", "20", "--success-threshold", "95",
			"--failure-threshold", "12.5%", "--min-sample", "10", "--on-failure", "rollback", "--device-timeout", "45m",
			"--retries", "2", "--retry-backoff", "90s", "--url-ttl", "2h"},
			map[string]any{"firmware": "1.2.0", "select": map[string]any{"hw": "m2", "region": "eu"}, "dynamic": true,
				"batch_percent": 10.0, "first_batch": 5.0, "ramp": 2.0, "max_batch_size": 100.0, "max_in_flight": 20.0,
				"success_threshold": 95.0, "failure_percent": 12.5, "min_sample": 10.0, "on_failure": "rollback",
				"device_timeout": "45m0s", "retries": 2.0, "retry_backoff": "1m30s", "url_ttl": "2h0m0s"}},
		{"all", "", []string{"--all", "--ramp", "1.5"}, map[string]any{"firmware": "1.2.0", "all": true, "ramp": 1.5}},
		{"schedule", "", []string{"--all", "--pause-between-batches", "--start-at", "2026-11-24T02:00:00+01:00",
			"--window", "22:00-04:00", "--window-tz", "Europe/Berlin"},
			map[string]any{"firmware": "1.2.0", "all": true, "pause_between_batches": true,
				"start_at": "2026-11-24T02:00:00+01:00", "window": "22:00-04:00", "window_tz": "Europe/Berlin"}},
		{"skip incompatible", "", []string{"--select", "site=x", "--skip-incompatible"},
			map[string]any{"firmware": "1.2.0", "select": map[string]any{"site": "x"}, "skip_incompatible": true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"rollout", "create", "--api", api.URL, "--token", "op:secret", "--firmware", "v1.2.0"}, tc.args...)
			r := runCLI(t.Context(), tc.stdin, args...)
			if r.err != nil {
				t.Fatalf("create: %v", r.err)
			}
			if r.stdout != "r7\n" {
				t.Errorf("stdout %q, want %q", r.stdout, "r7\n")
			}
			if !strings.Contains(r.stderr, "rollout r7 created: 3 targets in 2 batches") {
				t.Errorf("stderr %q, want the summary", r.stderr)
			}
			req := api.last(t)
			if req.method != "POST" || req.uri != "/v1/rollouts" || req.auth != "Bearer op:secret" {
				t.Errorf("request %s %s auth %q, want POST /v1/rollouts with the bearer token", req.method, req.uri, req.auth)
			}
			var got map[string]any
			if err := json.Unmarshal(req.body, &got); err != nil {
				t.Fatalf("body %s: %v", req.body, err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("body %s\nwant %v", req.body, tc.want)
			}
		})
	}

	t.Run("json output", func(t *testing.T) {
		r := runCLI(t.Context(), "", "rollout", "create", "--api", api.URL, "--firmware", "1.2.0", "--all", "-o", "json")
		var ro rollout.Rollout
		if r.err != nil || json.Unmarshal([]byte(r.stdout), &ro) != nil || ro.ID != "r7" || len(ro.Batches) != 2 {
			t.Errorf("create -o json = %q, %v; want the rollout r7", r.stdout, r.err)
		}
	})

	t.Run("conflict names the rollout", func(t *testing.T) {
		conflict := newFakeRolloutAPI(t, map[string]fakeAnswer{"POST /v1/rollouts": {http.StatusConflict,
			`{"code":409,"message":"device lamp-2 is in another active rollout","rollout":"r4"}`}})
		r := runCLI(t.Context(), "", "rollout", "create", "--api", conflict.URL, "--firmware", "1.2.0", "--devices", "lamp-2")
		if r.err == nil || !strings.Contains(r.err.Error(), "r4") || !errors.Is(r.err, client.ErrConflict) {
			t.Errorf("create over a conflict: error %v, want one naming r4 and matching client.ErrConflict", r.err)
		}
		if r.stdout != "" {
			t.Errorf("stdout %q, want nothing", r.stdout)
		}
	})
}

// TestRolloutReadCommands: list, devices and events print tables from the
// server's answers, pass filters on, and keep a device's error on one row.
func TestRolloutReadCommands(t *testing.T) {
	api := newFakeRolloutAPI(t, map[string]fakeAnswer{
		"GET /v1/rollouts": {200, `{"rollouts":[` + createdRollout + `]}`},
		"GET /v1/rollouts/r7/devices": {200, `{"devices":[{"device":"lamp-2","batch":2,"state":"failed","attempt":2,` +
			`"since":"2026-11-23T12:05:00Z","from":"1.1.0","error":"flash\nfailed"}],"next":""}`},
		"GET /v1/rollouts/r7/events": {200, `{"events":[{"seq":1,"time":"2026-11-23T12:00:00Z","kind":"created","state":"created","reason":"3 targets in 2 batches"},` +
			`{"seq":2,"time":"2026-11-23T12:00:01Z","kind":"batch_started","batch":1,"reason":"canary"},` +
			`{"seq":3,"time":"2026-11-23T12:05:00Z","kind":"device_failed","device":"lamp-2","reason":"failed: flash failed"}]}`},
	})
	for _, tc := range []struct {
		name    string
		args    []string
		wantURI string
		want    []string // lines, columns collapsed to single spaces
	}{
		{"list", []string{"list"}, "/v1/rollouts", []string{
			"ID STATE FIRMWARE TARGETS BATCHES CREATED",
			"r7 created 1.2.0 3 0/2 2026-11-23T12:00:00Z"}},
		{"devices", []string{"devices", "r7", "--state", "failed,timed_out"}, "/v1/rollouts/r7/devices?state=failed%2Ctimed_out", []string{
			"DEVICE BATCH STATE ATTEMPT SINCE FROM ERROR",
			"lamp-2 2 failed 2 2026-11-23T12:05:00Z 1.1.0 flash failed"}},
		{"events", []string{"events", "r7"}, "/v1/rollouts/r7/events", []string{
			"TIME KIND BATCH DEVICE STATE REASON",
			"2026-11-23T12:00:00Z created - - created 3 targets in 2 batches",
			"2026-11-23T12:00:01Z batch_started 1 - - canary",
			"2026-11-23T12:05:00Z device_failed - lamp-2 - failed: flash failed"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := runCLI(t.Context(), "", append(append([]string{"rollout"}, tc.args...), "--api", api.URL)...)
			if r.err != nil {
				t.Fatalf("umbra rollout %s: %v", strings.Join(tc.args, " "), r.err)
			}
			var got []string
			for l := range strings.Lines(r.stdout) {
				got = append(got, strings.Join(strings.Fields(l), " "))
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("output\n%s\nwant lines\n%s", r.stdout, strings.Join(tc.want, "\n"))
			}
			if req := api.last(t); !strings.HasPrefix(req.uri, strings.SplitN(tc.wantURI, "?", 2)[0]) ||
				(strings.Contains(tc.wantURI, "?") && !sameQueryState(req.uri, tc.wantURI)) {
				t.Errorf("request %s, want %s", req.uri, tc.wantURI)
			}
		})
	}
}

// sameQueryState reports whether both URIs ask for the same device states.
func sameQueryState(a, b string) bool {
	states := func(u string) string {
		_, q, _ := strings.Cut(u, "?")
		q = strings.ReplaceAll(q, "%2C", ",")
		var out []string
		for kv := range strings.SplitSeq(q, "&") {
			if v, ok := strings.CutPrefix(kv, "state="); ok {
				out = append(out, v)
			}
		}
		return strings.Join(out, ",")
	}
	return states(a) == states(b)
}

// queue makes the fake answer "METHOD path" with bodies in turn (200).
func (f *fakeRolloutAPI) queue(key string, bodies ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, b := range bodies {
		f.queued[key] = append(f.queued[key], fakeAnswer{http.StatusOK, b})
	}
}

// statusJSON is rollout r7's status JSON in state with ok of 4 devices
// succeeded and the rest installing.
func statusJSON(state rollout.State, ok int, reason string) string {
	st := rollout.Status{
		Rollout: rollout.Rollout{ID: "r7", Firmware: "1.2.0", State: state, Reason: reason, Targets: 4,
			Batches: []rollout.Batch{{Start: 0, Size: 4}}, Started: 1},
		Counts:  map[rollout.DeviceState]int{rollout.DeviceSucceeded: ok, rollout.DeviceInstalling: 4 - ok},
		Batches: []rollout.BatchStatus{{Index: 0, Size: 4, State: "running", Counts: map[rollout.DeviceState]int{rollout.DeviceSucceeded: ok, rollout.DeviceInstalling: 4 - ok}}},
	}
	if ok == 0 {
		delete(st.Counts, rollout.DeviceSucceeded)
	}
	b, err := json.Marshal(rolloutwire.Status(st)) // what the server sends
	if err != nil {
		panic(err)
	}
	return string(b)
}

// TestRolloutStatus: status once (report or JSON) and --watch until the
// rollout stops: exit 0 on success, 1 with the reason otherwise; piped
// output is one line per change.
func TestRolloutStatus(t *testing.T) {
	const path = "GET /v1/rollouts/r7"
	for _, tc := range []struct {
		name      string
		args      []string
		seq       []string
		wantErr   string
		wantLines []string // prefixes of the output lines
	}{
		{"report", nil, []string{statusJSON(rollout.StateRunning, 1, "")}, "",
			[]string{"rollout r7  firmware 1.2.0  running  elapsed", "[##########~", "succeeded 1  failed 0  timed out 0", "in flight 3", "", "batches: 1 of 1 started", "  batch 1  running"}},
		{"json", []string{"-o", "json"}, []string{statusJSON(rollout.StatePaused, 2, "by operator")}, "",
			[]string{`{"id":"r7","firmware":"1.2.0","state":"paused","reason":"by operator"`}},
		{"watch succeeds", []string{"--watch", "--interval", "100ms"}, []string{statusJSON(rollout.StateRunning, 1, ""),
			statusJSON(rollout.StateRunning, 1, ""), statusJSON(rollout.StateRunning, 3, ""), statusJSON(rollout.StateSucceeded, 4, "4 succeeded")}, "",
			[]string{"r7 running 1.2.0 batch 1/1 succeeded=1 in_flight=3 pending=0 failed=0 timed_out=0 (25.0%)",
				"r7 running 1.2.0 batch 1/1 succeeded=3 in_flight=1",
				`r7 succeeded 1.2.0 batch 1/1 succeeded=4 in_flight=0 pending=0 failed=0 timed_out=0 (100.0%) reason="4 succeeded"`}},
		{"watch pauses", []string{"-w", "--interval", "100ms"}, []string{statusJSON(rollout.StateRunning, 1, ""),
			statusJSON(rollout.StatePaused, 1, "failure threshold: 1 of 2 finished devices failed")},
			"rollout r7 paused: failure threshold: 1 of 2 finished devices failed",
			[]string{"r7 running", "r7 paused"}},
		{"watch json", []string{"--watch", "--interval", "100ms", "-o", "json"}, []string{statusJSON(rollout.StateRunning, 2, ""),
			statusJSON(rollout.StateAborted, 2, "by operator")}, "rollout r7 aborted: by operator",
			[]string{`{"id":"r7","firmware":"1.2.0","state":"running"`, `{"id":"r7","firmware":"1.2.0","state":"aborted"`}},
		{"not found", nil, nil, "404", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			api := newFakeRolloutAPI(t, nil)
			api.queue(path, tc.seq...)
			r := runCLI(t.Context(), "", append([]string{"rollout", "status", "r7", "--api", api.URL}, tc.args...)...)
			switch {
			case tc.wantErr == "" && r.err != nil:
				t.Fatalf("status: %v", r.err)
			case tc.wantErr != "" && (r.err == nil || !strings.Contains(r.err.Error(), tc.wantErr)):
				t.Fatalf("status: error %v, want %q", r.err, tc.wantErr)
			case tc.wantErr != "" && exitCode(r.err) != 1:
				t.Errorf("exit code %d, want 1", exitCode(r.err))
			}
			lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
			if r.stdout == "" {
				lines = nil
			}
			if len(lines) < len(tc.wantLines) || (strings.Contains(tc.name, "watch") && len(lines) != len(tc.wantLines)) {
				t.Fatalf("output\n%s\nwant %d lines starting\n%s", r.stdout, len(tc.wantLines), strings.Join(tc.wantLines, "\n"))
			}
			for i, want := range tc.wantLines {
				if !strings.HasPrefix(lines[i], want) {
					t.Errorf("line %d = %q, want prefix %q", i+1, lines[i], want)
				}
			}
			if strings.Contains(r.stdout, "\x1b") {
				t.Errorf("escape sequences in piped output %q", r.stdout)
			}
		})
	}
}

// TestRolloutPlannedPauseAndSchedule: status --watch exits 3 at a pause
// between batches that --pause-between-batches planned, printing the
// resume command, and 1 at any other pause; a rollout waiting for its
// start time shows as scheduled.
func TestRolloutPlannedPauseAndSchedule(t *testing.T) {
	planned := func(approval int) string {
		st := rollout.Status{Rollout: rollout.Rollout{ID: "r7", Firmware: "1.2.0", State: rollout.StatePaused, Targets: 4,
			Policy:  rollout.Policy{PauseBetweenBatches: true},
			Batches: []rollout.Batch{{Start: 0, Size: 2}, {Start: 2, Size: 2}}, Started: 1, Approval: approval,
			Reason: "batch 1 finished at 100.0% success; resume to start batch 2"}}
		b, _ := json.Marshal(rolloutwire.Status(st))
		return string(b)
	}
	for _, tc := range []struct {
		name     string
		status   string
		wantCode int
		want     []string
	}{
		{"planned pause", planned(1), exitPlannedPause, []string{"paused as planned after batch 1 of 2", "umbra rollout resume r7"}},
		{"other pause", planned(0), 1, []string{"rollout r7 paused"}},
	} {
		api := newFakeRolloutAPI(t, nil)
		api.queue("GET /v1/rollouts/r7", tc.status)
		r := runCLI(t.Context(), "", "rollout", "status", "r7", "--watch", "--api", api.URL)
		oneLine(t, tc.name, r.err, tc.want...)
		if got := exitCode(r.err); got != tc.wantCode {
			t.Errorf("%s: exit code %d, want %d", tc.name, got, tc.wantCode)
		}
	}
	st := rollout.Status{Rollout: rollout.Rollout{ID: "r8", Firmware: "1.2.0", State: rollout.StateRunning, Targets: 2,
		Policy:  rollout.Policy{StartAt: time.Date(2030, 1, 1, 2, 0, 0, 0, time.UTC)},
		Batches: []rollout.Batch{{Start: 0, Size: 2}}, Waiting: "start time 2030-01-01T02:00:00Z is ahead"}}
	b, _ := json.Marshal(rolloutwire.Status(st))
	api := newFakeRolloutAPI(t, nil)
	api.queue("GET /v1/rollouts/r8", string(b))
	r := runCLI(t.Context(), "", "rollout", "status", "r8", "--api", api.URL)
	if r.err != nil || !strings.Contains(r.stdout, " scheduled ") {
		t.Errorf("status of a scheduled rollout: %v\n%s\nwant it shown as scheduled", r.err, r.stdout)
	}
	lb, _ := json.Marshal(wire.RolloutList{Rollouts: []wire.Rollout{rolloutwire.Rollout(st.Rollout)}})
	api = newFakeRolloutAPI(t, map[string]fakeAnswer{"GET /v1/rollouts": {200, string(lb)}})
	r = runCLI(t.Context(), "", "rollout", "list", "--api", api.URL)
	if r.err != nil || !strings.Contains(r.stdout, "r8  scheduled") {
		t.Errorf("list with a scheduled rollout: %v\n%s", r.err, r.stdout)
	}
}

// TestRolloutControlCommands: pause, resume, abort [--rollback], rollback
// and retry send the right request and print the outcome.
func TestRolloutControlCommands(t *testing.T) {
	ro := func(id string, state rollout.State) string {
		b, _ := json.Marshal(rollout.Rollout{ID: id, Firmware: "1.2.0", State: state, Targets: 2})
		return string(b)
	}
	api := newFakeRolloutAPI(t, map[string]fakeAnswer{
		"POST /v1/rollouts/r7/pause":    {200, ro("r7", rollout.StatePaused)},
		"POST /v1/rollouts/r7/resume":   {200, ro("r7", rollout.StateRunning)},
		"POST /v1/rollouts/r7/abort":    {200, ro("r7", rollout.StateAborted)},
		"POST /v1/rollouts/r7/rollback": {200, ro("r7", rollout.StateAborted)},
		"POST /v1/rollouts/r7/retry":    {201, ro("r8", rollout.StateCreated)},
	})
	for _, tc := range []struct {
		args     []string
		wantPath string
		wantBody string
		want     string
	}{
		{[]string{"pause", "r7"}, "/v1/rollouts/r7/pause", "", "rollout r7 paused (now paused)\n"},
		{[]string{"resume", "r7"}, "/v1/rollouts/r7/resume", "", "rollout r7 resumed (now running)\n"},
		{[]string{"abort", "r7"}, "/v1/rollouts/r7/abort", `{}`, "rollout r7 aborted (now aborted)\n"},
		{[]string{"abort", "r7", "--rollback"}, "/v1/rollouts/r7/abort", `{"rollback":true}`, "rollout r7 aborted, rolling back (now aborted)\n"},
		{[]string{"rollback", "r7"}, "/v1/rollouts/r7/rollback", "", "rollout r7 rolling back its moved devices to their previous version (now aborted)\n"},
		{[]string{"retry", "r7"}, "/v1/rollouts/r7/retry", "", "r8\n"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			r := runCLI(t.Context(), "", append(append([]string{"rollout"}, tc.args...), "--api", api.URL)...)
			if r.err != nil {
				t.Fatalf("umbra rollout %s: %v", strings.Join(tc.args, " "), r.err)
			}
			if r.stdout != tc.want {
				t.Errorf("stdout %q, want %q", r.stdout, tc.want)
			}
			req := api.last(t)
			if req.method != "POST" || req.uri != tc.wantPath || string(req.body) != tc.wantBody {
				t.Errorf("request %s %s %s, want POST %s %s", req.method, req.uri, req.body, tc.wantPath, tc.wantBody)
			}
		})
	}
}

// rolloutCLI runs `umbra rollout <args>` against api and fails the test on
// error.
func rolloutCLI(t *testing.T, api fwAPI, args ...string) string {
	t.Helper()
	r := runCLI(t.Context(), "", append(append([]string{"rollout"}, args...), "--api", api.url, "--token", api.token)...)
	if r.err != nil {
		t.Fatalf("umbra rollout %s: %v\nstderr: %s", strings.Join(args, " "), r.err, r.stderr)
	}
	return r.stdout
}

// rolloutStatus runs `umbra rollout status <id> -o json`.
func rolloutStatus(t *testing.T, api fwAPI, id string) rollout.Status {
	t.Helper()
	var st rollout.Status
	out := rolloutCLI(t, api, "status", id, "-o", "json")
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status -o json %q: %v", out, err)
	}
	return st
}

// TestRolloutCLIEndToEnd drives a real server through the CLI with three
// simulated devices: upload an image, create a rollout in batches of one
// while the devices are still offline, pause it (deterministically
// mid-rollout), bring the devices up, resume, watch it to success, and
// read its devices and events.
func TestRolloutCLIEndToEnd(t *testing.T) {
	srv := startServer(t)
	api := newFWAPI(t, srv)
	file, _ := fwImageFile(t, 64<<10)
	fwCLI(t, api, "upload", file, "--version", "1.2.0")
	pubkey := fwCLI(t, api, "pubkey")
	ids := []string{"e2e-0001", "e2e-0002", "e2e-0003"} // the simulator's IDs

	id := strings.TrimSpace(rolloutCLI(t, api, "create", "--firmware", "1.2.0", "--devices", strings.Join(ids, ","),
		"--batch-size", "1", "--device-timeout", "1m"))
	if id == "" {
		t.Fatal("create printed no rollout ID")
	}
	// A device cannot be in two active rollouts: the refusal names id.
	r := runCLI(t.Context(), "", "rollout", "create", "--api", api.url, "--token", api.token, "--firmware", "1.2.0", "--devices", ids[1])
	if r.err == nil || !strings.Contains(r.err.Error(), id) || !errors.Is(r.err, client.ErrConflict) {
		t.Errorf("conflicting create: error %v, want a conflict naming %s", r.err, id)
	}

	if out := rolloutCLI(t, api, "pause", id); out != "rollout "+id+" paused (now paused)\n" {
		t.Errorf("pause output %q", out)
	}
	if st := rolloutStatus(t, api, id); st.State != rollout.StatePaused || st.Targets != 3 || len(st.Batches) != 3 {
		t.Fatalf("status after pause: state %s, %d targets, %d batches; want paused, 3, 3", st.State, st.Targets, len(st.Batches))
	}
	// --watch on a paused rollout stops at once with exit code 1.
	r = runCLI(t.Context(), "", "rollout", "status", id, "--watch", "--api", api.url, "--token", api.token)
	if r.err == nil || exitCode(r.err) != 1 || !strings.Contains(r.err.Error(), "rollout "+id+" paused") {
		t.Errorf("status --watch of a paused rollout: error %v (exit %d), want exit 1 naming the pause", r.err, exitCode(r.err))
	}
	if list := rolloutCLI(t, api, "list"); !strings.Contains(list, id+"  ") || !strings.Contains(list, "paused") {
		t.Errorf("list output:\n%s\nwant %s paused", list, id)
	}

	fleet, err := sim.Open(t.Context(), sim.Config{Server: srv.mqttURL(), Devices: 3, IDPrefix: "e2e-", QoS: 1, Seed: 1,
		PublicKey: pubkey, Logger: slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		t.Fatalf("sim.Open: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		fleet.Close(ctx)
	})
	if got := fmt.Sprint(fleet.IDs()); got != fmt.Sprint(ids) {
		t.Fatalf("fleet IDs %s, want %s", got, ids)
	}

	if out := rolloutCLI(t, api, "resume", id); out != "rollout "+id+" resumed (now running)\n" {
		t.Errorf("resume output %q", out)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	r = runCLI(ctx, "", "rollout", "status", id, "--watch", "--interval", "100ms", "--api", api.url, "--token", api.token)
	if r.err != nil {
		t.Fatalf("status --watch: %v\nstdout:\n%s", r.err, r.stdout)
	}
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if last := lines[len(lines)-1]; !strings.HasPrefix(last, id+" succeeded 1.2.0 batch 3/3 succeeded=3 in_flight=0 pending=0 failed=0") {
		t.Errorf("last watch line %q, want %s succeeded with 3 devices", last, id)
	}

	devs := rolloutCLI(t, api, "devices", id, "--state", "succeeded")
	if got := strings.Count(devs, " succeeded "); got != 3 {
		t.Errorf("devices --state succeeded:\n%s\nwant 3 succeeded devices", devs)
	}
	if devs := rolloutCLI(t, api, "devices", id, "--state", "failed,timed_out"); strings.Count(devs, "\n") != 1 {
		t.Errorf("devices --state failed,timed_out:\n%s\nwant only the header", devs)
	}
	var evs struct{ Events []rollout.Event }
	if err := json.Unmarshal([]byte(rolloutCLI(t, api, "events", id, "-o", "json")), &evs); err != nil {
		t.Fatal(err)
	}
	var states []rollout.State
	started := 0
	for _, ev := range evs.Events {
		switch ev.Kind {
		case rollout.EventState:
			states = append(states, ev.State)
		case rollout.EventBatchStarted:
			started++
		}
	}
	if want := []rollout.State{rollout.StateRunning, rollout.StatePaused, rollout.StateRunning, rollout.StateSucceeded}; !reflect.DeepEqual(states, want) || started != 3 {
		t.Errorf("events: states %v and %d batches started, want %v and 3", states, started, want)
	}
	if text := rolloutCLI(t, api, "events", id); !strings.HasPrefix(text, "TIME") || !strings.Contains(text, "batch_started") {
		t.Errorf("events output:\n%s", text)
	}
	if st, err := fleet.Wait(ctx, func(st sim.Stats) bool { return st.Versions["1.2.0"] == 3 }); err != nil {
		t.Errorf("fleet: %v devices on 1.2.0 (%v), want 3", st.Versions, err)
	}
}

// TestRideOut: status --watch polls through transport errors (a server
// restart) but stops at an error answer from the server.
func TestRideOut(t *testing.T) {
	refused := errors.New("dial tcp 127.0.0.1:8080: connection refused")
	notFound := &client.Error{Status: http.StatusNotFound, Message: "rollout: not found"}
	running := wire.RolloutStatus{Rollout: wire.Rollout{ID: "r7", State: wire.RolloutRunning}}
	for _, tc := range []struct {
		name      string
		errs      []error // returned by the fetches before the status
		wantErr   error
		wantCalls int
	}{
		{"through an outage", []error{refused, refused}, nil, 3},
		{"server refuses", []error{notFound}, notFound, 1},
		{"outage then refusal", []error{refused, notFound}, notFound, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			calls := 0
			fetch := func(context.Context) (wire.RolloutStatus, error) {
				calls++
				if calls <= len(tc.errs) {
					return wire.RolloutStatus{}, tc.errs[calls-1]
				}
				return running, nil
			}
			var stderr strings.Builder
			st, err := rideOut(fetch, time.Millisecond, &stderr)(t.Context())
			if !errors.Is(err, tc.wantErr) {
				t.Errorf("error %v, want %v", err, tc.wantErr)
			}
			if calls != tc.wantCalls {
				t.Errorf("%d fetches, want %d", calls, tc.wantCalls)
			}
			if tc.wantErr == nil && st.ID != "r7" {
				t.Errorf("status %+v, want r7", st.Rollout)
			}
			if got, want := strings.Count(stderr.String(), "retrying"), strings.Count(fmt.Sprint(tc.errs), "refused"); got != want {
				t.Errorf("stderr %q: %d retry notes, want %d", stderr.String(), got, want)
			}
		})
	}
}

// FuzzRolloutTargetParsers: the devices file, device list and selector
// parsers never panic and return only valid IDs and labels.
func FuzzRolloutTargetParsers(f *testing.F) {
	for _, s := range []string{"# fleet\nd1\n\nd 2\n", "a,b, c,", "hw=m2,region=eu", "lamp-1 # desk\r\nlamp-2", "\x00", "=,=", "a#b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		check := func(ids []device.ID, err error) {
			for _, id := range ids {
				if _, perr := device.ParseID(string(id)); perr != nil || err != nil {
					t.Fatalf("%q: returned invalid ID %q (error %v)", s, id, err)
				}
			}
		}
		check(readDevicesFile("-", strings.NewReader(s)))
		check(parseDeviceList(s))
		if sel, err := parseSelector(s); err == nil && (len(sel) == 0 || identity.ValidateLabels(sel) != nil) {
			t.Fatalf("parseSelector(%q) = %v, want valid labels", s, sel)
		}
	})
}

// FuzzRolloutNumberParsers: percentages, failure thresholds and ramps are
// in range whenever they parse.
func FuzzRolloutNumberParsers(f *testing.F) {
	for _, s := range []string{"95%", "95", "0", "100%", "12.5%", "5", "2x", "1.5X", "NaN", "Inf%", "-1", "1e2", "0x10"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if p, err := parsePercent("p", s); err == nil && !(p > 0 && p <= 100) {
			t.Fatalf("parsePercent(%q) = %v, want (0, 100]", s, p)
		}
		if p, n, err := parseFailureThreshold(s); err == nil && !((p > 0 && p <= 100 && n == 0) || (p == 0 && n >= 1)) {
			t.Fatalf("parseFailureThreshold(%q) = %v, %d", s, p, n)
		}
		if r, err := parseRamp(s); err == nil && !(r >= 1 && r <= 10) {
			t.Fatalf("parseRamp(%q) = %v, want [1, 10]", s, r)
		}
	})
}
