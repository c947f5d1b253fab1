package rolloutview_test

import (
	"bytes"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/internal/goldentest"
	"github.com/umbra-iot/umbra/internal/rolloutview"
	"github.com/umbra-iot/umbra/wire"
)

var t0 = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)

// counts is one batch's devices by state.
type counts = map[wire.DeviceState]int

const (
	pending     = wire.DevicePending
	notified    = wire.DeviceNotified
	downloading = wire.DeviceDownloading
	installing  = wire.DeviceInstalling
	succeeded   = wire.DeviceSucceeded
	failed      = wire.DeviceFailed
	timedOut    = wire.DeviceTimedOut
	canceled    = wire.DeviceCanceled
	already     = wire.DeviceAlreadyInstalled
	rolledBack  = wire.DeviceRolledBack
)

// mkStatus builds rollout r3's status from its batches' counts, as
// rollout.Planner.Get would: started batches are running or done, the
// others waiting.
func mkStatus(state wire.RolloutState, reason string, started int, batches ...counts) wire.RolloutStatus {
	st := wire.RolloutStatus{
		Rollout: wire.Rollout{ID: "r3", Firmware: "1.1.0", State: state, Reason: reason, Started: started,
			Created: t0, Updated: t0.Add(90 * time.Second)},
		Counts: counts{},
	}
	start := 0
	for i, c := range batches {
		size, done := 0, 0
		bc := counts{}
		for s, n := range c {
			size += n
			if s.Terminal() {
				done += n
			}
			if n > 0 {
				bc[s] = n
				st.Counts[s] += n
			}
		}
		bs := wire.BatchStatus{Index: i + 1, Start: start, Size: size, State: "waiting", Counts: bc}
		switch {
		case i >= started:
		case done == size:
			bs.State = "done"
		default:
			bs.State = "running"
		}
		st.Batches = append(st.Batches, bs)
		st.Rollout.Batches = append(st.Rollout.Batches, wire.Batch{Start: start, Size: size})
		start += size
	}
	st.Targets = start
	return st
}

// failing lists n failing devices of batch b.
func failing(n, b int, errText string) []wire.RolloutDevice {
	var out []wire.RolloutDevice
	for i := range n {
		s := failed
		if i%3 == 2 {
			s = timedOut
		}
		out = append(out, wire.RolloutDevice{Device: device.ID(fmt.Sprintf("dev-%03d", i)), Batch: b + 1, State: s,
			Attempt: 1 + i%2, Error: errText})
	}
	return out
}

type renderCase struct {
	name string
	st   wire.RolloutStatus
	opts rolloutview.Options
}

func cases() []renderCase {
	created := mkStatus(wire.RolloutCreated, "", 0, counts{pending: 5}, counts{pending: 50}, counts{pending: 50}, counts{pending: 45})
	created.Waiting = "outside the maintenance window 02:00-05:00 Europe/Berlin"
	created.Excluded = 3

	running := mkStatus(wire.RolloutRunning, "", 2,
		counts{succeeded: 5},
		counts{succeeded: 30, failed: 2, timedOut: 1, notified: 4, downloading: 6, installing: 5, already: 2},
		counts{pending: 50}, counts{pending: 50}, counts{pending: 50}, counts{pending: 43})
	running.Failing = []wire.RolloutDevice{
		{Device: "lamp-7", Batch: 2, State: failed, Attempt: 2, Error: "sha256 mismatch"},
		{Device: "lamp-19", Batch: 2, State: failed, Attempt: 1, Error: "flash write\nfailed \x1b[31mred\x1b[0m"},
		{Device: "lamp-23", Batch: 2, State: timedOut, Attempt: 1},
	}
	running.Policy.Retries = 2

	paused := mkStatus(wire.RolloutPaused, "failure threshold: 30 of 120 finished devices failed (> 10%)", 3,
		counts{succeeded: 10}, counts{succeeded: 45, failed: 5}, counts{succeeded: 35, failed: 15, timedOut: 10, installing: 3},
		counts{pending: 100})
	paused.Failing = failing(25, 2, "download: connection reset by peer")

	var many []counts
	for range 12 {
		many = append(many, counts{succeeded: 9, already: 1})
	}
	succ := mkStatus(wire.RolloutSucceeded, "120 succeeded, 0 failed", 12, many...)

	mixed := mkStatus(wire.RolloutRunning, "", 9,
		counts{succeeded: 10}, counts{succeeded: 10}, counts{succeeded: 9, failed: 1}, counts{succeeded: 10},
		counts{succeeded: 10}, counts{succeeded: 10}, counts{succeeded: 10}, counts{succeeded: 10}, counts{succeeded: 3, notified: 7},
		counts{pending: 10})
	mixed.Failing = failing(1, 2, "")

	aborted := mkStatus(wire.RolloutAborted, "aborted by operator, rolling back", 2,
		counts{succeeded: 2, rolledBack: 8}, counts{canceled: 6, failed: 4}, counts{canceled: 10})
	aborted.RetryOf = "r2"
	aborted.Failing = failing(4, 1, "verify: bad signature")

	var long []counts
	for i := range 25 {
		long = append(long, counts{succeeded: 9, failed: 1 - i%2, timedOut: i % 2})
	}
	long = append(long, counts{succeeded: 4, downloading: 6}, counts{notified: 10}, counts{pending: 10}, counts{pending: 10})
	capped := mkStatus(wire.RolloutRunning, "", 27, long...)

	empty := wire.RolloutStatus{Rollout: wire.Rollout{ID: "r9", Firmware: "2.0.0", State: wire.RolloutCreated, Created: t0, Updated: t0}}

	return []renderCase{
		{"created", created, rolloutview.Options{Now: t0.Add(3 * time.Second)}},
		{"running", running, rolloutview.Options{Now: t0.Add(12*time.Minute + 30*time.Second)}},
		{"running_color", running, rolloutview.Options{Color: true, Now: t0.Add(12*time.Minute + 30*time.Second)}},
		{"running_narrow", running, rolloutview.Options{Width: 44, Now: t0.Add(time.Hour)}},
		{"running_tiny", running, rolloutview.Options{Width: 5, Color: true}},
		{"paused_many_failing", paused, rolloutview.Options{Width: 100, Now: t0.Add(2 * time.Hour)}},
		{"succeeded_collapsed", succ, rolloutview.Options{Now: t0.Add(24 * time.Hour)}},
		{"mixed_batches", mixed, rolloutview.Options{}},
		{"aborted_retry", aborted, rolloutview.Options{Color: true, Now: t0.Add(time.Minute)}},
		{"empty", empty, rolloutview.Options{}},
		{"many_batches_capped", capped, rolloutview.Options{Now: t0.Add(3 * time.Hour)}},
	}
}

var csi = regexp.MustCompile("\x1b\\[[0-9;]*[A-Za-z]")

// TestRenderGolden compares Render's output with testdata/render/<case>.golden
// (go test -run TestRenderGolden -update rewrites them) and checks that no
// line is wider than the width asked for and that no control character
// from the wire reaches the output.
func TestRenderGolden(t *testing.T) {
	for _, tc := range cases() {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			rolloutview.Render(&buf, tc.st, tc.opts)
			got := buf.Bytes()
			goldentest.Check(t, filepath.Join("testdata", "render", tc.name+".golden"), got)
			width := max(tc.opts.Width, rolloutview.MinWidth)
			if tc.opts.Width == 0 {
				width = rolloutview.DefaultWidth
			}
			for i, line := range strings.Split(strings.TrimSuffix(string(got), "\n"), "\n") {
				plain := csi.ReplaceAllString(line, "")
				if n := utf8.RuneCountInString(plain); n > width {
					t.Errorf("line %d %q: %d cells, want at most %d", i+1, plain, n, width)
				}
				if strings.ContainsAny(plain, "\x1b\r\t") {
					t.Errorf("line %d %q: control character in the output", i+1, plain)
				}
				if !tc.opts.Color && strings.ContainsFunc(line, func(r rune) bool { return r > 0x7e }) {
					t.Errorf("line %d %q: not ASCII without Color", i+1, line)
				}
			}
		})
	}
}

// TestRenderDeterministic renders the same status many times: map order
// must not show.
func TestRenderDeterministic(t *testing.T) {
	for _, tc := range cases() {
		var first bytes.Buffer
		rolloutview.Render(&first, tc.st, tc.opts)
		for range 20 {
			var again bytes.Buffer
			rolloutview.Render(&again, tc.st, tc.opts)
			if again.String() != first.String() {
				t.Fatalf("Render(%s) changed between runs:\n%s\nthen\n%s", tc.name, first.String(), again.String())
			}
		}
	}
}

func TestLine(t *testing.T) {
	byName := map[string]wire.RolloutStatus{}
	for _, tc := range cases() {
		byName[tc.name] = tc.st
	}
	for _, tc := range []struct {
		name string
		want string
	}{
		{"created", `r3 created 1.1.0 batch 0/4 succeeded=0 in_flight=0 pending=150 failed=0 timed_out=0 (0.0%) waiting="outside the maintenance window 02:00-05:00 Europe/Berlin"`},
		{"running", "r3 running 1.1.0 batch 2/6 succeeded=35 in_flight=15 pending=193 failed=2 timed_out=1 already_installed=2 (14.9%)"},
		{"paused_many_failing", `r3 paused 1.1.0 batch 3/4 succeeded=90 in_flight=3 pending=100 failed=20 timed_out=10 (40.4%) reason="failure threshold: 30 of 120 finished devices failed (> 10%)"`},
		{"succeeded_collapsed", `r3 succeeded 1.1.0 batch 12/12 succeeded=108 in_flight=0 pending=0 failed=0 timed_out=0 already_installed=12 (100.0%) reason="120 succeeded, 0 failed"`},
		{"aborted_retry", `r3 aborted 1.1.0 batch 2/3 succeeded=2 in_flight=0 pending=0 failed=4 timed_out=0 canceled=16 rolled_back=8 (6.7%) reason="aborted by operator, rolling back"`},
		{"empty", "r9 created 2.0.0 batch 0/0 succeeded=0 in_flight=0 pending=0 failed=0 timed_out=0 (0.0%)"},
	} {
		if got := rolloutview.Line(byName[tc.name]); got != tc.want {
			t.Errorf("Line(%s) = %q, want %q", tc.name, got, tc.want)
		}
	}
}

// TestLineEscapesReason: a reason with a newline stays on one line.
func TestLineEscapesReason(t *testing.T) {
	st := mkStatus(wire.RolloutPaused, "bad\nthing\x1b[2J", 0, counts{pending: 1})
	got := rolloutview.Line(st)
	if strings.ContainsAny(got, "\n\x1b") {
		t.Errorf("Line = %q, want no newline or escape", got)
	}
}
