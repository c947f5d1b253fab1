// Package rolloutview renders a rollout's progress (a wire.RolloutStatus) for
// people and for logs. It is pure: output depends only on the Status and
// the Options (including the clock, Options.Now), so it is golden-tested.
//
// # Output
//
// Render writes a multi-line report: a header (rollout ID, firmware, state
// with its reason, elapsed time), an overall progress bar with the count
// of devices in every state, one line per batch with its own bar (runs of
// two or more waiting batches collapse into one line such as
// "batches 5–40 waiting", runs of four or more finished batches without
// failures likewise, and beyond MaxBatchLines lines the earliest batches
// into one summary line), and the failing devices with their state, batch,
// attempt and error (at most MaxFailingLines, then "… and N more"). The
// report is therefore at most about 45 lines high, whatever the rollout's
// size, so an in-place redraw fits a terminal.
//
// The percentage is the share of targets that run the target version
// (succeeded or already installed). Bars have one cell per share of
// devices, split by category (on target, failing, in flight, other
// finished, pending); a category with devices always gets at least one
// cell when the bar has room.
//
// With Options.Color the bars use Unicode blocks ("█", "░") coloured with
// ANSI SGR codes. Without it the output is plain ASCII, safe for any
// terminal, file or log: "#" on target, "!" failing, "~" in flight,
// "-" other finished, "." pending. Every line is cut to Options.Width
// display cells (escape sequences take none), so a terminal never wraps a
// line and an in-place redraw knows how many lines to move up.
//
// Line is the one-line form for pipes and logs, stable enough to grep:
//
//	r3 running 1.1.0 batch 2/5 succeeded=120 in_flight=30 pending=50 failed=2 timed_out=0 (60.0%)
//
// # Watching
//
// Watch (or Watcher.Watch) polls a rollout until it is no longer created or
// running (succeeded, failed, aborted or paused) or its context ends. On a
// terminal it redraws the Render output in place (cursor up, clear to end
// of screen); otherwise it prints a Line only when the line changed. It
// starts no goroutines; fetch errors end it and are returned.
package rolloutview
