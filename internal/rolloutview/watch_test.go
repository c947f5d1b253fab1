package rolloutview_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/internal/rolloutview"
	"github.com/umbra-iot/umbra/wire"
)

// fakeFetch returns seq one by one and fails the test when called more
// often; calls counts the calls.
func fakeFetch(t *testing.T, seq []wire.RolloutStatus, calls *int) func(context.Context) (wire.RolloutStatus, error) {
	return func(ctx context.Context) (wire.RolloutStatus, error) {
		if *calls >= len(seq) {
			t.Errorf("fetch called %d times, want at most %d", *calls+1, len(seq))
			return wire.RolloutStatus{}, errors.New("fake: no more statuses")
		}
		*calls++
		return seq[*calls-1], nil
	}
}

// progress is a status of a 10-device rollout with ok devices done.
func progress(state wire.RolloutState, ok int, reason string) wire.RolloutStatus {
	return mkStatus(state, reason, 1, counts{succeeded: ok, installing: 10 - ok})
}

func TestWatchPipe(t *testing.T) {
	for _, tc := range []struct {
		name      string
		seq       []wire.RolloutStatus
		wantLines int
		wantState wire.RolloutState
	}{
		{"succeeds", []wire.RolloutStatus{progress(wire.RolloutCreated, 0, ""), progress(wire.RolloutRunning, 2, ""),
			progress(wire.RolloutRunning, 2, ""), progress(wire.RolloutRunning, 2, ""), progress(wire.RolloutRunning, 7, ""),
			progress(wire.RolloutSucceeded, 10, "done")}, 4, wire.RolloutSucceeded},
		{"pauses", []wire.RolloutStatus{progress(wire.RolloutRunning, 2, ""), progress(wire.RolloutPaused, 3, "failure threshold")},
			2, wire.RolloutPaused},
		{"already finished", []wire.RolloutStatus{progress(wire.RolloutAborted, 1, "by operator")}, 1, wire.RolloutAborted},
		{"failed", []wire.RolloutStatus{progress(wire.RolloutRunning, 9, ""), progress(wire.RolloutFailed, 9, "last batch below threshold")},
			2, wire.RolloutFailed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			calls := 0
			st, err := rolloutview.Watch(t.Context(), fakeFetch(t, tc.seq, &calls), &out, false, 0)
			if err != nil {
				t.Fatalf("Watch: %v", err)
			}
			if st.State != tc.wantState {
				t.Errorf("Watch returned state %s, want %s", st.State, tc.wantState)
			}
			if calls != len(tc.seq) {
				t.Errorf("fetch called %d times, want %d", calls, len(tc.seq))
			}
			lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
			if len(lines) != tc.wantLines {
				t.Errorf("got %d lines, want %d:\n%s", len(lines), tc.wantLines, out.String())
			}
			if last, want := lines[len(lines)-1], rolloutview.Line(tc.seq[len(tc.seq)-1]); last != want {
				t.Errorf("last line %q, want %q", last, want)
			}
			if strings.Contains(out.String(), "\x1b") {
				t.Errorf("escape sequence in pipe output %q", out.String())
			}
		})
	}
}

// TestWatchTTY: each frame after the first moves the cursor up over the
// previous one and clears the screen below, then draws the new frame.
func TestWatchTTY(t *testing.T) {
	seq := []wire.RolloutStatus{progress(wire.RolloutRunning, 2, ""), progress(wire.RolloutRunning, 2, ""),
		progress(wire.RolloutPaused, 5, "by operator")}
	clock := t0.Add(time.Minute)
	now := func() time.Time { clock = clock.Add(time.Second); return clock }
	var out bytes.Buffer
	calls := 0
	w := rolloutview.Watcher{TTY: true, Render: rolloutview.Options{Width: 60, Color: true}, Now: now}
	st, err := w.Watch(t.Context(), fakeFetch(t, seq, &calls), &out)
	if err != nil || st.State != wire.RolloutPaused {
		t.Fatalf("Watch = %s, %v; want paused, nil", st.State, err)
	}
	var want bytes.Buffer
	prev := 0
	for i, s := range seq {
		if prev > 0 {
			fmt.Fprintf(&want, "\x1b[%dA\x1b[J", prev)
		}
		var frame bytes.Buffer
		rolloutview.Render(&frame, s, rolloutview.Options{Width: 60, Color: true, Now: t0.Add(time.Minute + time.Duration(i+1)*time.Second)})
		prev = strings.Count(frame.String(), "\n")
		want.Write(frame.Bytes())
	}
	if out.String() != want.String() {
		t.Errorf("TTY output =\n%q\nwant\n%q", out.String(), want.String())
	}
}

func TestWatchStops(t *testing.T) {
	boom := errors.New("connection refused")
	t.Run("fetch error", func(t *testing.T) {
		n := 0
		fetch := func(ctx context.Context) (wire.RolloutStatus, error) {
			n++
			if n == 2 {
				return wire.RolloutStatus{}, boom
			}
			return progress(wire.RolloutRunning, 1, ""), nil
		}
		st, err := rolloutview.Watch(t.Context(), fetch, &bytes.Buffer{}, false, 0)
		if !errors.Is(err, boom) {
			t.Errorf("Watch error = %v, want %v", err, boom)
		}
		if st.ID != "r3" {
			t.Errorf("Watch returned %+v, want the last good status", st.Rollout)
		}
	})
	t.Run("context canceled while waiting", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		fetch := func(context.Context) (wire.RolloutStatus, error) {
			cancel() // the watch now waits an hour, or until ctx ends
			return progress(wire.RolloutRunning, 1, ""), nil
		}
		done := make(chan error, 1)
		go func() {
			_, err := rolloutview.Watch(ctx, fetch, &bytes.Buffer{}, false, time.Hour)
			done <- err
		}()
		select {
		case err := <-done:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("Watch error = %v, want context.Canceled", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Watch did not return within 5s of cancel")
		}
	})
	t.Run("context canceled during fetch", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		fetch := func(ctx context.Context) (wire.RolloutStatus, error) {
			cancel()
			return wire.RolloutStatus{}, ctx.Err()
		}
		if _, err := rolloutview.Watch(ctx, fetch, &bytes.Buffer{}, true, 0); !errors.Is(err, context.Canceled) {
			t.Errorf("Watch error = %v, want context.Canceled", err)
		}
	})
}

// TestWatchFormat: a custom format (the CLI's JSON lines) is printed per
// change; an empty line is not printed.
func TestWatchFormat(t *testing.T) {
	seq := []wire.RolloutStatus{progress(wire.RolloutRunning, 1, ""), progress(wire.RolloutRunning, 2, ""),
		progress(wire.RolloutRunning, 3, ""), progress(wire.RolloutSucceeded, 10, "")}
	calls := 0
	var out bytes.Buffer
	w := rolloutview.Watcher{Format: func(st wire.RolloutStatus) string {
		if st.Counts[succeeded] == 2 {
			return ""
		}
		return fmt.Sprintf("ok=%d", st.Counts[succeeded])
	}}
	if _, err := w.Watch(t.Context(), fakeFetch(t, seq, &calls), &out); err != nil {
		t.Fatal(err)
	}
	if got, want := out.String(), "ok=1\nok=3\nok=10\n"; got != want {
		t.Errorf("output %q, want %q", got, want)
	}
}
