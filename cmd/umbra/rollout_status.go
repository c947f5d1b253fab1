package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/umbra-iot/umbra/client"
	"github.com/umbra-iot/umbra/internal/rolloutview"
	"github.com/umbra-iot/umbra/wire"
)

// umbra rollout status [--watch]: one GetRollout, or a poll until the
// rollout stops, rendered by internal/rolloutview.

// statusOptions are the flags of `umbra rollout status`.
type statusOptions struct {
	watch    bool
	interval time.Duration
}

func newRolloutStatusCmd(o *rolloutOptions) *cobra.Command {
	so := &statusOptions{}
	cmd := rolloutIDCmd("status <id> [--watch] [--interval 1s]", "Show a rollout's progress, once or live until it stops",
		func(cmd *cobra.Command, id string) error { return so.run(cmd, o, id) })
	cmd.Long = `Show a rollout's progress: its state, an overall progress bar with the count
of devices in every state, one bar per batch, and the failing devices with
their errors. -o json prints the server's status JSON.

With --watch the status is polled every --interval until the rollout is no
longer running: on a terminal the report is redrawn in place; piped, a line
is printed whenever the progress changed (with -o json, one JSON status per
line). --watch exits 0 when the rollout succeeded; 3 at a planned pause
between batches (--pause-between-batches), printing the resume command;
and 1 when it ended paused otherwise, failed or aborted, with the reason
on stderr. Colours are left out
when NO_COLOR is set; the bars tell done (█ or #), in flight (▒ or ~),
failing (!) and pending (░ or .) apart without colour too. The width is the
terminal's (else $COLUMNS, else 80).`
	cmd.Example = `  umbra rollout status r3 --watch
  umbra rollout status r3 --watch | tee rollout.log`
	cmd.Flags().BoolVarP(&so.watch, "watch", "w", false, "poll until the rollout is no longer running")
	cmd.Flags().DurationVar(&so.interval, "interval", time.Second, "how often --watch polls (at least 100ms)")
	return cmd
}

func (so *statusOptions) run(cmd *cobra.Command, o *rolloutOptions, id string) error {
	if so.interval < 100*time.Millisecond {
		return fmt.Errorf("--interval %s: must be at least 100ms", so.interval)
	}
	c, err := o.httpClient(cmd)
	if err != nil {
		return err
	}
	w := cmd.OutOrStdout()
	tty := isTerminal(w)
	view := rolloutview.Options{Width: termWidth(w), Color: tty && os.Getenv("NO_COLOR") == ""}
	fetch := func(ctx context.Context) (wire.RolloutStatus, error) {
		st, err := c.GetRollout(ctx, id)
		return st, o.explain(cmd, explainRolloutError(err), "api")
	}
	if !so.watch {
		st, err := fetch(cmd.Context())
		switch {
		case err != nil:
			return err
		case o.output == "json":
			return writeJSONLine(w, st)
		}
		view.Now = time.Now()
		rolloutview.Render(w, st, view)
		return nil
	}
	wt := rolloutview.Watcher{TTY: tty && o.output == "text", Interval: so.interval, Render: view}
	if o.output == "json" {
		wt.Format = func(st wire.RolloutStatus) string {
			var b strings.Builder
			if writeJSONLine(&b, st) != nil {
				return ""
			}
			return strings.TrimSuffix(b.String(), "\n")
		}
	}
	st, err := wt.Watch(cmd.Context(), rideOut(fetch, so.interval, cmd.ErrOrStderr()), w)
	if err != nil {
		return fmt.Errorf("watch %s: %w", id, err)
	}
	if st.State == wire.RolloutSucceeded {
		return nil
	}
	if st.AwaitingApproval {
		return &exitError{code: exitPlannedPause, err: fmt.Errorf("rollout %s paused as planned after batch %d of %d (--pause-between-batches); "+
			"start the next batch with: umbra rollout resume %s", st.ID, st.Started, len(st.Rollout.Batches), st.ID)}
	}
	msg := fmt.Sprintf("rollout %s %s", st.ID, st.State)
	if st.Reason != "" {
		msg += ": " + st.Reason
	}
	return &exitError{code: 1, err: errors.New(msg)}
}

// exitPlannedPause is the exit code of status --watch at a planned pause
// between batches (pause_between_batches), told apart from a failure (1).
const exitPlannedPause = 3

// watchOutage is how long status --watch keeps polling through transport
// errors (the server restarting) before it gives up.
const watchOutage = time.Minute

// rideOut wraps fetch for a long watch: a transport error (no answer from
// the server, e.g. while it restarts) is noted on stderr and the fetch
// retried every interval, for up to watchOutage; an error answer from the
// server ends the watch at once.
func rideOut(fetch func(context.Context) (wire.RolloutStatus, error), interval time.Duration, stderr io.Writer) func(context.Context) (wire.RolloutStatus, error) {
	return func(ctx context.Context) (wire.RolloutStatus, error) {
		deadline := time.Now().Add(watchOutage)
		for {
			st, err := fetch(ctx)
			var ae *client.Error
			if err == nil || errors.As(err, &ae) || ctx.Err() != nil || time.Now().After(deadline) {
				return st, err
			}
			fmt.Fprintf(stderr, "umbra: %v; retrying\n", err)
			t := time.NewTimer(interval)
			select {
			case <-ctx.Done():
				t.Stop()
				return st, ctx.Err()
			case <-t.C:
			}
		}
	}
}

// isTerminal reports whether w is a character device (a terminal) and
// TERM allows cursor movement.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok || os.Getenv("TERM") == "dumb" {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// termWidth is the width of the terminal w is (read from the terminal
// itself: bash does not export $COLUMNS), else $COLUMNS when it is a
// sensible number, else the renderer's default. The frame is one column
// narrower than the terminal, so that a full line never wraps (a wrapped
// line would leave the redraw one line short, and an old header behind).
func termWidth(w io.Writer) int {
	if f, ok := w.(*os.File); ok {
		if n := ttyColumns(f); n > 1 {
			return max(n-1, rolloutview.MinWidth)
		}
	}
	if n, err := strconv.Atoi(os.Getenv("COLUMNS")); err == nil && n >= rolloutview.MinWidth && n <= 1000 {
		return n
	}
	return rolloutview.DefaultWidth
}
