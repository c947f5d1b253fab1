package rolloutview

import (
	"bytes"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/umbra-iot/umbra/wire"
)

// Rendering limits.
const (
	// DefaultWidth is the line width when Options.Width is 0.
	DefaultWidth = 80
	// MinWidth is the narrowest width Render lays out for.
	MinWidth = 20
	// MaxFailingLines is how many failing devices Render lists.
	MaxFailingLines = 20
	// MaxBatchLines is how many lines Render gives the batches.
	MaxBatchLines = 12
	// collapseDone is the shortest run of finished batches without
	// failures that Render shows as one line.
	collapseDone = 4
)

// Options control Render.
type Options struct {
	// Width is the maximum line width in display cells (runes); 0 means
	// DefaultWidth, and less than MinWidth means MinWidth.
	Width int
	// Color selects Unicode bars and ANSI colours; false gives plain ASCII.
	Color bool
	// Now is the time the elapsed time of an active rollout counts to;
	// zero means the rollout's last update (deterministic).
	Now time.Time
}

// category groups device states for bars and counts.
type category int

const (
	catOK      category = iota // on the target version
	catFail                    // failed or timed out
	catFlight                  // notified, downloading, installing
	catOther                   // canceled or rolled back
	catPending                 // not notified yet
	numCats
)

func categorize(s wire.DeviceState) category {
	switch {
	case s == wire.DeviceSucceeded || s == wire.DeviceAlreadyInstalled:
		return catOK
	case s.Failure():
		return catFail
	case s == wire.DeviceNotified || s == wire.DeviceDownloading || s == wire.DeviceInstalling:
		return catFlight
	case s == wire.DevicePending:
		return catPending
	default:
		return catOther
	}
}

// style is the glyph set and colours of one output mode.
type style struct {
	color  bool
	cells  [numCats]string // bar cell per category
	sgr    [numCats]string // colour per category
	dash   string          // in "batches 3–5"
	more   string          // in "… and 3 more"
	open   string
	closed string
}

var (
	plainStyle = style{cells: [numCats]string{"#", "!", "~", "-", "."}, dash: "-", more: "...", open: "[", closed: "]"}
	colorStyle = style{color: true, cells: [numCats]string{"█", "!", "▒", "-", "░"}, // distinct without colour too
		sgr: [numCats]string{"\x1b[32m", "\x1b[31m", "\x1b[33m", "\x1b[34m", "\x1b[2m"}, dash: "–", more: "…", open: "▕", closed: "▏"}
)

const sgrReset = "\x1b[0m"

// paint wraps s in code when the style has colour.
func (st style) paint(code, s string) string {
	if !st.color || code == "" {
		return s
	}
	return code + s + sgrReset
}

// stateColor is the colour of a rollout state in the header.
func stateColor(s wire.RolloutState) string {
	switch s {
	case wire.RolloutSucceeded:
		return "\x1b[1;32m"
	case wire.RolloutFailed, wire.RolloutAborted:
		return "\x1b[1;31m"
	case wire.RolloutPaused:
		return "\x1b[1;33m"
	default:
		return "\x1b[1;36m"
	}
}

// tally is device counts by state, with the derived category sums.
type tally struct {
	by    map[wire.DeviceState]int
	cats  [numCats]int
	total int
}

func newTally(counts map[wire.DeviceState]int, targets int) tally {
	t := tally{by: counts}
	for s, n := range counts {
		if n > 0 {
			t.cats[categorize(s)] += n
			t.total += n
		}
	}
	if targets > t.total { // targets not counted yet are pending
		t.cats[catPending] += targets - t.total
		t.total = targets
	}
	return t
}

// percent is the share of devices on the target version.
func (t tally) percent() float64 {
	if t.total == 0 {
		return 0
	}
	return 100 * float64(t.cats[catOK]) / float64(t.total)
}

// finished is the count of devices done with the rollout.
func (t tally) finished() int { return t.cats[catOK] + t.cats[catFail] + t.cats[catOther] }

// bar draws t in width cells: one run per category, sized by largest
// remainder, with at least one cell for every category that has devices.
func (st style) bar(t tally, width int) string {
	var cells [numCats]int
	if t.total == 0 {
		cells[catPending] = width
	} else {
		used := 0
		var rem [numCats]int
		for c := range numCats {
			cells[c] = t.cats[c] * width / t.total
			rem[c] = t.cats[c] * width % t.total
			used += cells[c]
		}
		for ; used < width; used++ {
			best := category(0)
			for c := range numCats {
				if rem[c] > rem[best] {
					best = c
				}
			}
			cells[best]++
			rem[best] = -1
		}
		for c := range numCats {
			if t.cats[c] == 0 || cells[c] > 0 {
				continue
			}
			big := category(0)
			for d := range numCats {
				if cells[d] > cells[big] {
					big = d
				}
			}
			if cells[big] > 1 {
				cells[big]--
				cells[c]++
			}
		}
	}
	var b strings.Builder
	b.WriteString(st.open)
	for c := range numCats {
		if cells[c] > 0 {
			b.WriteString(st.paint(st.sgr[c], strings.Repeat(st.cells[c], cells[c])))
		}
	}
	b.WriteString(st.closed)
	return b.String()
}

// stateLabels name the states in Render's counts, in display order.
var stateLabels = []struct {
	state wire.DeviceState
	label string
}{
	{wire.DeviceSucceeded, "succeeded"},
	{wire.DeviceAlreadyInstalled, "already installed"},
	{wire.DeviceFailed, "failed"},
	{wire.DeviceTimedOut, "timed out"},
	{wire.DeviceCanceled, "canceled"},
	{wire.DeviceRolledBack, "rolled back"},
}

// overallCounts are the counts under the overall bar: succeeded, failed,
// timed out, in flight (by state) and pending always, the other states
// when they have devices.
func overallCounts(t tally) []string {
	var parts []string
	for _, sl := range stateLabels {
		if n := t.by[sl.state]; n > 0 || sl.state == wire.DeviceSucceeded || sl.state.Failure() {
			parts = append(parts, sl.label+" "+strconv.Itoa(n))
		}
	}
	flight := "in flight " + strconv.Itoa(t.cats[catFlight])
	if t.cats[catFlight] > 0 {
		flight += fmt.Sprintf(" (notified %d, downloading %d, installing %d)",
			t.by[wire.DeviceNotified], t.by[wire.DeviceDownloading], t.by[wire.DeviceInstalling])
	}
	return append(parts, flight, "pending "+strconv.Itoa(t.cats[catPending]))
}

// batchCounts lists a batch's non-zero counts, briefly: on target ("ok"),
// in flight, failing (failed or timed out), canceled, rolled back.
func batchCounts(t tally) string {
	var parts []string
	add := func(label string, n int) {
		if n > 0 {
			parts = append(parts, label+" "+strconv.Itoa(n))
		}
	}
	add("ok", t.cats[catOK])
	add("in flight", t.cats[catFlight])
	add("failing", t.cats[catFail])
	add("canceled", t.by[wire.DeviceCanceled])
	add("rolled back", t.by[wire.DeviceRolledBack])
	return strings.Join(parts, ", ")
}

// wrap packs parts, two spaces apart, into lines of at most width cells
// (a part wider than width gets a line of its own, cut later).
func wrap(parts []string, width int) []string {
	var out []string
	line, n := "", 0
	for _, p := range parts {
		pn := cells(p)
		if n > 0 && n+2+pn > width {
			out = append(out, line)
			line, n = "", 0
		}
		if n > 0 {
			line += "  "
			n += 2
		}
		line += p
		n += pn
	}
	if n > 0 {
		out = append(out, line)
	}
	return out
}

// elapsed is how long the rollout has run: to now while it is active, to
// its last update once it finished.
func elapsed(st wire.RolloutStatus, now time.Time) time.Duration {
	end := st.Updated
	if st.State.Active() && !now.IsZero() {
		end = now
	}
	return max(end.Sub(st.Created).Round(time.Second), 0)
}

// Render writes st's progress report to w (see the package documentation
// for its layout). Write errors are ignored: the report is best effort.
func Render(w io.Writer, st wire.RolloutStatus, o Options) {
	width := o.Width
	switch {
	case width == 0:
		width = DefaultWidth
	case width < MinWidth:
		width = MinWidth
	}
	sty := plainStyle
	if o.Color {
		sty = colorStyle
	}
	var lines []string
	add := func(format string, a ...any) { lines = append(lines, fmt.Sprintf(format, a...)) }

	head := []string{"rollout " + clean(st.ID), "firmware " + clean(string(st.Firmware)),
		sty.paint(stateColor(st.State), st.DisplayState()), "elapsed " + elapsed(st, o.Now).String()}
	if st.RetryOf != "" {
		head = append(head, "retry of "+clean(st.RetryOf))
	}
	if st.Reason != "" {
		head = append(head, "("+clean(st.Reason)+")")
	}
	if st.Excluded > 0 {
		head = append(head, fmt.Sprintf("%d excluded (hardware)", st.Excluded))
	}
	if st.Waiting != "" {
		head = append(head, "waiting: "+clean(st.Waiting))
	}
	lines = append(lines, wrap(head, width)...)

	all := newTally(st.Counts, st.Targets)
	add("%s %5.1f%%  %d of %d on %s", sty.bar(all, min(max(width/2, 10), 50)), all.percent(), all.cats[catOK], all.total, clean(string(st.Firmware)))
	lines = append(lines, wrap(overallCounts(all), width)...)

	if len(st.Batches) > 0 {
		add("")
		add("batches: %d of %d started", st.Started, len(st.Batches))
		lines = append(lines, batchLines(st.Batches, sty, min(max(width/5, 5), 20))...)
	}
	lines = append(lines, failingLines(st, all, sty)...)

	var buf bytes.Buffer
	for _, l := range lines {
		buf.WriteString(cut(l, width, o.Color))
		buf.WriteByte('\n')
	}
	w.Write(buf.Bytes())
}

// batchRun is batches [i, j) shown as one line: one batch, a run of
// waiting or of finished clean batches, or (merged) the earliest batches
// when there are too many lines.
type batchRun struct {
	i, j   int
	merged bool
}

// batchLines draws one line per batch, collapsing runs of waiting batches
// and long runs of finished batches without failures, and at most
// MaxBatchLines lines: the earliest batches beyond that share one line.
func batchLines(batches []wire.BatchStatus, sty style, barWidth int) []string {
	clean := func(b wire.BatchStatus) bool {
		t := newTally(b.Counts, b.Size)
		return b.State == "done" && t.cats[catFail] == 0
	}
	var runs []batchRun
	for i := 0; i < len(batches); {
		b := batches[i]
		j := i + 1 // batches[i:j] is the run of b's kind
		switch {
		case b.State == "waiting":
			for j < len(batches) && batches[j].State == "waiting" {
				j++
			}
		case clean(b):
			for j < len(batches) && clean(batches[j]) {
				j++
			}
		}
		if collapse := (b.State == "waiting" && j-i >= 2) || (b.State == "done" && j-i >= collapseDone); !collapse {
			j = i + 1
		}
		runs = append(runs, batchRun{i: i, j: j})
		i = j
	}
	if extra := len(runs) - MaxBatchLines; extra > 0 {
		runs = append([]batchRun{{i: 0, j: runs[extra].j, merged: true}}, runs[extra+1:]...)
	}
	digits := len(strconv.Itoa(len(batches)))
	out := make([]string, 0, len(runs))
	for _, r := range runs {
		b := batches[r.i]
		if r.j-r.i == 1 && !r.merged {
			t := newTally(b.Counts, b.Size)
			line := fmt.Sprintf("  batch %*d  %-7s  %s  %d/%d", digits, b.Index, b.State, sty.bar(t, barWidth), t.finished(), b.Size)
			if c := batchCounts(t); c != "" {
				line += "  " + c
			}
			out = append(out, line)
			continue
		}
		sum := map[wire.DeviceState]int{}
		devices := 0
		for _, x := range batches[r.i:r.j] {
			devices += x.Size
			for s, n := range x.Counts {
				sum[s] += n
			}
		}
		what := "waiting"
		switch {
		case r.merged:
			what = "earlier: " + batchCounts(newTally(sum, devices))
		case b.State == "done":
			what = "done, no failures"
		}
		out = append(out, fmt.Sprintf("  batches %d%s%d %s (%d devices)", b.Index, sty.dash, batches[r.j-1].Index, what, devices))
	}
	return out
}

// failingLines lists up to MaxFailingLines failing devices with their
// errors, then how many more there are.
func failingLines(st wire.RolloutStatus, all tally, sty style) []string {
	total := max(all.cats[catFail], len(st.Failing))
	if total == 0 {
		return nil
	}
	out := []string{"", fmt.Sprintf("failing devices: %d", total)}
	shown := st.Failing[:min(len(st.Failing), MaxFailingLines)]
	if len(shown) > 0 {
		var buf bytes.Buffer
		tw := tabwriter.NewWriter(&buf, 0, 8, 2, ' ', 0)
		fmt.Fprintln(tw, "  DEVICE\tSTATE\tBATCH\tATTEMPT\tERROR")
		for _, d := range shown {
			fmt.Fprintf(tw, "  %s\t%s\t%d\t%d\t%s\n", clean(string(d.Device)), d.State, d.Batch, d.Attempt, orDash(clean(d.Error)))
		}
		tw.Flush()
		out = append(out, strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")...)
	}
	if more := total - len(shown); more > 0 {
		out = append(out, fmt.Sprintf("  %s and %d more", sty.more, more))
	}
	return out
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// clean replaces control characters (newlines, escape sequences a device
// put in its error text) with spaces, so text from the wire cannot break
// the layout or drive the terminal.
func clean(s string) string {
	if strings.IndexFunc(s, unicode.IsControl) < 0 {
		return s
	}
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, s)
}

// cut shortens line to width display cells, not counting ANSI CSI
// sequences; a cut line ends with "…" (or "~" in plain ASCII) and, with
// colour, a reset.
func cut(line string, width int, color bool) string {
	n := 0
	for i := 0; i < len(line); {
		if j := csiEnd(line, i); j > i {
			i = j
			continue
		}
		if n == width-1 && cells(line[i:]) > 1 {
			if color {
				return line[:i] + "…" + sgrReset
			}
			return line[:i] + "~"
		}
		_, size := utf8.DecodeRuneInString(line[i:])
		n++
		i += size
	}
	return line
}

// csiEnd returns the index after the ANSI CSI sequence starting at s[i],
// or i when none starts there.
func csiEnd(s string, i int) int {
	if !strings.HasPrefix(s[i:], "\x1b[") {
		return i
	}
	j := i + 2
	for j < len(s) && (s[j] < 0x40 || s[j] > 0x7e) {
		j++
	}
	return min(j+1, len(s))
}

// cells counts the display cells of s (runes outside CSI sequences).
func cells(s string) int {
	n := 0
	for i := 0; i < len(s); {
		if j := csiEnd(s, i); j > i {
			i = j
			continue
		}
		_, size := utf8.DecodeRuneInString(s[i:])
		n++
		i += size
	}
	return n
}

// Line returns st as one plain line for pipes and logs, e.g.
//
//	r3 running 1.1.0 batch 2/5 succeeded=120 in_flight=30 pending=50 failed=2 timed_out=0 (60.0%)
//
// Already installed, canceled and rolled back devices are added when there
// are any, and the state's reason at the end when there is one.
func Line(st wire.RolloutStatus) string {
	t := newTally(st.Counts, st.Targets)
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s %s batch %d/%d succeeded=%d in_flight=%d pending=%d failed=%d timed_out=%d",
		clean(st.ID), st.State, clean(string(st.Firmware)), st.Started, len(st.Batches),
		t.by[wire.DeviceSucceeded], t.cats[catFlight], t.cats[catPending], t.by[wire.DeviceFailed], t.by[wire.DeviceTimedOut])
	for _, s := range []wire.DeviceState{wire.DeviceAlreadyInstalled, wire.DeviceCanceled, wire.DeviceRolledBack} {
		if n := t.by[s]; n > 0 {
			fmt.Fprintf(&b, " %s=%d", strings.ReplaceAll(string(s), "-", "_"), n)
		}
	}
	fmt.Fprintf(&b, " (%.1f%%)", t.percent())
	if st.Reason != "" && st.State != wire.RolloutRunning && st.State != wire.RolloutCreated { // "started" says nothing
		fmt.Fprintf(&b, " reason=%q", st.Reason)
	}
	if st.Waiting != "" {
		fmt.Fprintf(&b, " waiting=%q", st.Waiting)
	}
	return b.String()
}
