package rolloutview

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"time"

	"github.com/umbra-iot/umbra/wire"
)

// DefaultInterval is the polling interval of a Watcher whose Interval is
// negative. (Zero polls without pause, for tests.)
const DefaultInterval = time.Second

// Watcher polls a rollout and shows its progress until the rollout stops.
// The zero value prints a Line per change, polling without pause.
type Watcher struct {
	// TTY redraws the Render output in place instead of printing lines.
	TTY bool
	// Interval is the pause between polls; negative means DefaultInterval.
	Interval time.Duration
	// Render is the TTY frame's layout; Render.Now is ignored (Now is used).
	Render Options
	// Now is the clock for the elapsed time on a TTY; nil means time.Now.
	Now func() time.Time
	// Format is the line printed per change when not on a TTY; nil means
	// Line. A format that returns "" prints nothing.
	Format func(wire.RolloutStatus) string
}

// Watch polls with fetch every interval and writes progress to w: on a
// TTY a coloured Render frame redrawn in place, otherwise a Line whenever
// it changed. It returns the last status once the rollout is no longer
// created or running (succeeded, failed, aborted or paused), or the fetch
// error, or ctx's error when ctx ends first.
func Watch(ctx context.Context, fetch func(context.Context) (wire.RolloutStatus, error), w io.Writer, tty bool, interval time.Duration) (wire.RolloutStatus, error) {
	return Watcher{TTY: tty, Interval: interval, Render: Options{Color: tty}}.Watch(ctx, fetch, w)
}

// Watch polls and shows progress like the package-level Watch, with wt's
// settings.
func (wt Watcher) Watch(ctx context.Context, fetch func(context.Context) (wire.RolloutStatus, error), w io.Writer) (wire.RolloutStatus, error) {
	interval := wt.Interval
	if interval < 0 {
		interval = DefaultInterval
	}
	now := wt.Now
	if now == nil {
		now = time.Now
	}
	format := wt.Format
	if format == nil {
		format = Line
	}
	var (
		last      wire.RolloutStatus
		prevLine  string
		prevLines int // lines of the frame on screen
		frame     bytes.Buffer
		timer     *time.Timer
	)
	for {
		st, err := fetch(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return last, ctx.Err()
			}
			return last, fmt.Errorf("rolloutview: watch: %w", err)
		}
		last = st
		if wt.TTY {
			frame.Reset()
			if prevLines > 0 { // cursor up to the frame's first line, clear to the end of the screen
				fmt.Fprintf(&frame, "\x1b[%dA\x1b[J", prevLines)
			}
			o := wt.Render
			o.Now = now()
			start := frame.Len()
			Render(&frame, st, o)
			prevLines = bytes.Count(frame.Bytes()[start:], []byte("\n"))
			if _, err := w.Write(frame.Bytes()); err != nil {
				return last, fmt.Errorf("rolloutview: watch: %w", err)
			}
		} else if l := format(st); l != prevLine && l != "" {
			prevLine = l
			if _, err := io.WriteString(w, l+"\n"); err != nil {
				return last, fmt.Errorf("rolloutview: watch: %w", err)
			}
		}
		if st.State != wire.RolloutCreated && st.State != wire.RolloutRunning {
			return st, nil
		}
		if timer == nil {
			timer = time.NewTimer(interval)
			defer timer.Stop()
		} else {
			timer.Reset(interval)
		}
		select {
		case <-ctx.Done():
			return last, ctx.Err()
		case <-timer.C:
		}
	}
}
