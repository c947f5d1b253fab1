package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/umbra-iot/umbra/client"
	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/firmware"
	"github.com/umbra-iot/umbra/identity"
	"github.com/umbra-iot/umbra/internal/rolloutview"
	"github.com/umbra-iot/umbra/rollout"
	"github.com/umbra-iot/umbra/wire"
)

// rolloutOptions are the flags shared by the rollout commands: the same
// --api, -o, --timeout and credential flags as the firmware commands.
type rolloutOptions struct{ fwOptions }

// rolloutCall is query with a conflict naming the rollout that holds the
// device.
func rolloutCall[T any](cmd *cobra.Command, o *rolloutOptions, call func(context.Context, *client.Client) (T, error), text func(io.Writer, T) error) error {
	return query(cmd, &o.fwOptions, func(ctx context.Context, c *client.Client) (T, error) {
		v, err := call(ctx, c)
		return v, explainRolloutError(err)
	}, text)
}

// rolloutIDCmd is a command of one rollout <id> argument, validated before
// run is called.
func rolloutIDCmd(use, short string, run func(cmd *cobra.Command, id string) error) *cobra.Command {
	return &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := idArg(args[0])
			if err != nil {
				return err
			}
			return run(cmd, id)
		},
	}
}

// writeJSONLine writes v as one line of JSON (URLs keep their "&").
func writeJSONLine(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

// explainRolloutError adds the conflicting rollout's ID to a 409 that
// names one, when the server's message does not already say it.
func explainRolloutError(err error) error {
	if ae, ok := errors.AsType[*client.Error](err); ok && ae.Rollout != "" && !strings.Contains(err.Error(), ae.Rollout) {
		return fmt.Errorf("%w (conflicting rollout %s)", err, ae.Rollout)
	}
	return err
}

func newRolloutCmd() *cobra.Command {
	o := &rolloutOptions{}
	cmd := &cobra.Command{
		Use:   "rollout",
		Short: "Create, watch and control batched firmware rollouts over the HTTP API",
		Long: `Roll a firmware image out to a fleet in batches through a running Umbra
server's HTTP API: create a rollout, list rollouts, show or watch one's
progress, list its devices and events, and pause, resume, abort, roll back
or retry it. Arguments are checked before anything is sent; a refusal from
the server exits non-zero with its status and message.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error { return cmd.Help() },
	}
	o.addFlags(cmd.PersistentFlags())
	cmd.AddCommand(newRolloutCreateCmd(o), newRolloutListCmd(o), newRolloutStatusCmd(o), newRolloutDevicesCmd(o),
		newRolloutEventsCmd(o))
	for _, c := range []struct {
		name, short, verb string
		call              func(*client.Client, context.Context, string) (wire.Rollout, error)
	}{
		{"pause", "Pause a rollout: no new devices are notified, notified ones continue", "paused", (*client.Client).PauseRollout},
		{"resume", "Resume a paused rollout (overrides a tripped threshold once)", "resumed", (*client.Client).ResumeRollout},
		{"rollback", "Abort a rollout and write each updated device's previous version back", "rolling back", (*client.Client).RollbackRollout},
	} {
		cmd.AddCommand(newRolloutControlCmd(o, c.name, c.short, c.verb, c.call))
	}
	cmd.AddCommand(newRolloutAbortCmd(o), newRolloutRetryCmd(o))
	return cmd
}

// createOptions are the flags of `umbra rollout create`.
type createOptions struct {
	firmware                        string
	devices, devicesFile, selector  string
	all, dynamic, skipIncompatible  bool
	pauseBetween                    bool
	startAt, window, windowTZ       string
	batchSize, firstBatch           int
	maxBatchSize, maxInFlight       int
	minSample, retries              int
	batchPercent, ramp              string
	successThreshold, failThreshold string
	onFailure                       string
	deviceTimeout, retryBackoff     time.Duration
	urlTTL                          time.Duration
}

func (c *createOptions) addFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.firmware, "firmware", "", "firmware version to install, e.g. 1.2.0 (required; uploaded first)")
	fs.StringVar(&c.devices, "devices", "", "target device IDs, comma separated, in rollout order")
	fs.StringVar(&c.devicesFile, "devices-file", "", "file of target device IDs, one per line ('#' comments; - for stdin)")
	fs.StringVar(&c.selector, "select", "", "target the enrolled devices whose labels match, e.g. hw=m2,region=eu")
	fs.BoolVar(&c.all, "all", false, "target every device")
	fs.BoolVar(&c.dynamic, "dynamic", false, "also take matching devices enrolled later (with --select or --all)")
	fs.BoolVar(&c.pauseBetween, "pause-between-batches", false, "pause after each finished, healthy batch; 'rollout resume' starts the next")
	fs.StringVar(&c.startAt, "start-at", "", "notify no device before this time (RFC 3339, e.g. 2026-11-24T02:00:00+01:00)")
	fs.StringVar(&c.window, "window", "", "daily maintenance window HH:MM-HH:MM (may cross midnight); devices are notified only inside it")
	fs.StringVar(&c.windowTZ, "window-tz", "", "IANA time zone of --window, e.g. Europe/Berlin (default UTC)")
	fs.BoolVar(&c.skipIncompatible, "skip-incompatible", false, "leave out targets whose hw label differs from the image's --hw (default: refuse the rollout)")
	fs.IntVar(&c.batchSize, "batch-size", 0, "devices per batch (default: one batch of every target)")
	fs.StringVar(&c.batchPercent, "batch-percent", "", "batch size as a percentage of the targets, e.g. 10%")
	fs.IntVar(&c.firstBatch, "first-batch", 0, "size of a canary batch before the others")
	fs.StringVar(&c.ramp, "ramp", "", "grow the batch size by this factor after each batch, e.g. 2x (1 to 10)")
	fs.IntVar(&c.maxBatchSize, "max-batch-size", 0, "cap of the ramped batch size")
	fs.IntVar(&c.maxInFlight, "max-in-flight", 0, "most devices notified and not finished at once (default: the whole batch)")
	fs.StringVar(&c.successThreshold, "success-threshold", "", "percentage of a batch that must succeed before the next starts (default 100%)")
	fs.StringVar(&c.failThreshold, "failure-threshold", "", "trip --on-failure at this share (10%) or count (5) of failed devices")
	fs.IntVar(&c.minSample, "min-sample", 0, "finished devices needed before the failure threshold is evaluated")
	fs.StringVar(&c.onFailure, "on-failure", "", "what a tripped threshold does: pause (default), abort or rollback")
	fs.DurationVar(&c.deviceTimeout, "device-timeout", 0, "how long a notified device may stay silent (default 30m)")
	fs.IntVar(&c.retries, "retries", 0, "how often a failed or timed-out device is notified again (0 to 10)")
	fs.DurationVar(&c.retryBackoff, "retry-backoff", 0, "wait before the first retry, doubled per attempt (default 30s)")
	fs.DurationVar(&c.urlTTL, "url-ttl", 0, "lifetime of the download URLs in the commands (default 1h)")
}

// createSpec is what the create flags describe, validated.
type createSpec struct {
	firmware firmware.Version
	devices  []device.ID
	selector map[string]string
	all      bool
	skip     bool // leave out targets of another hardware model
	policy   wire.Policy
}

// spec validates the flags (fs tells which were given) and returns the
// request; a --devices-file of "-" is read from stdin.
func (c *createOptions) spec(fs *pflag.FlagSet, stdin io.Reader) (createSpec, error) {
	var s createSpec
	if c.firmware == "" {
		return s, errors.New("--firmware is required")
	}
	v, err := firmware.ParseVersion(c.firmware)
	if err != nil {
		return s, fmt.Errorf("--firmware %q: %w", c.firmware, err)
	}
	s.firmware = v
	kinds := 0
	for _, name := range []string{"devices", "devices-file", "select", "all"} {
		if fs.Changed(name) {
			kinds++
		}
	}
	if kinds != 1 {
		return s, errors.New("give exactly one target: --devices, --devices-file, --select or --all")
	}
	switch {
	case fs.Changed("devices"):
		s.devices, err = parseDeviceList(c.devices)
	case fs.Changed("devices-file"):
		s.devices, err = readDevicesFile(c.devicesFile, stdin)
	case fs.Changed("select"):
		s.selector, err = parseSelector(c.selector)
	default:
		s.all = c.all
		if !s.all {
			err = errors.New("--all=false: give a target")
		}
	}
	if err != nil {
		return s, err
	}
	if c.dynamic && s.selector == nil && !s.all {
		return s, errors.New("--dynamic needs --select or --all: an explicit device list does not grow")
	}
	s.skip = c.skipIncompatible
	s.policy, err = c.policy(fs)
	return s, err
}

// request is the create request s describes.
func (s createSpec) request() wire.CreateRollout {
	return wire.CreateRollout{Firmware: string(s.firmware), Devices: s.devices, Select: s.selector, All: s.all,
		SkipIncompatible: s.skip, Policy: s.policy}
}

// policy validates the policy flags.
func (c *createOptions) policy(fs *pflag.FlagSet) (wire.Policy, error) {
	p := wire.Policy{Dynamic: c.dynamic, BatchSize: c.batchSize, FirstBatch: c.firstBatch,
		MaxBatchSize: c.maxBatchSize, MaxInFlight: c.maxInFlight, MinSample: c.minSample, Retries: c.retries,
		DeviceTimeout: wire.Duration(c.deviceTimeout), RetryBackoff: wire.Duration(c.retryBackoff), URLTTL: wire.Duration(c.urlTTL),
		PauseBetweenBatches: c.pauseBetween, Window: c.window, WindowTZ: c.windowTZ}
	for _, f := range []struct {
		name string
		v    int
		min  int
	}{{"batch-size", c.batchSize, 1}, {"first-batch", c.firstBatch, 1}, {"max-batch-size", c.maxBatchSize, 1},
		{"max-in-flight", c.maxInFlight, 1}, {"min-sample", c.minSample, 0}, {"retries", c.retries, 0}} {
		if fs.Changed(f.name) && f.v < f.min {
			return p, fmt.Errorf("--%s %d: must be at least %d", f.name, f.v, f.min)
		}
	}
	if c.retries > rollout.MaxRetries {
		return p, fmt.Errorf("--retries %d: at most %d", c.retries, rollout.MaxRetries)
	}
	if fs.Changed("batch-size") && fs.Changed("batch-percent") {
		return p, errors.New("give --batch-size or --batch-percent, not both")
	}
	var err error
	if fs.Changed("batch-percent") {
		if p.BatchPercent, err = parsePercent("batch-percent", c.batchPercent); err != nil {
			return p, err
		}
	}
	if fs.Changed("success-threshold") {
		if p.SuccessThreshold, err = parsePercent("success-threshold", c.successThreshold); err != nil {
			return p, err
		}
	}
	if fs.Changed("failure-threshold") {
		if p.FailurePercent, p.FailureCount, err = parseFailureThreshold(c.failThreshold); err != nil {
			return p, err
		}
	}
	if fs.Changed("ramp") {
		if p.Ramp, err = parseRamp(c.ramp); err != nil {
			return p, err
		}
	}
	if fs.Changed("start-at") {
		if p.StartAt, err = time.Parse(time.RFC3339, c.startAt); err != nil {
			return p, fmt.Errorf("--start-at %q: want an RFC 3339 time such as 2026-11-24T02:00:00Z", c.startAt)
		}
	}
	if fs.Changed("window-tz") && !fs.Changed("window") {
		return p, errors.New("--window-tz needs --window")
	}
	if fs.Changed("window") {
		if err := rollout.CheckWindow(c.window, c.windowTZ); err != nil {
			return p, fmt.Errorf("--window %q --window-tz %q: %w", c.window, c.windowTZ, err)
		}
	}
	if fs.Changed("max-batch-size") && p.Ramp <= 1 {
		return p, errors.New("--max-batch-size caps a --ramp: give --ramp too")
	}
	if fs.Changed("on-failure") {
		switch a := wire.FailureAction(c.onFailure); a {
		case wire.OnFailurePause, wire.OnFailureAbort, wire.OnFailureRollback:
			p.OnFailure = a
		default:
			return p, fmt.Errorf("--on-failure %q: want pause, abort or rollback", c.onFailure)
		}
	}
	for _, f := range []struct {
		name     string
		v        time.Duration
		min, max time.Duration
	}{{"device-timeout", c.deviceTimeout, rollout.MinDeviceTimeout, rollout.MaxDeviceTimeout},
		{"retry-backoff", c.retryBackoff, time.Millisecond, rollout.MaxRetryBackoff},
		{"url-ttl", c.urlTTL, time.Second, firmware.MaxURLTTL}} {
		if fs.Changed(f.name) && (f.v < f.min || f.v > f.max) {
			return p, fmt.Errorf("--%s %s: must be between %s and %s", f.name, f.v, f.min, f.max)
		}
	}
	return p, nil
}

// parsePercent parses "95%" or "95" as a percentage in (0, 100].
func parsePercent(flag, s string) (float64, error) {
	v, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(s), "%"), 64)
	if err != nil || math.IsNaN(v) || v <= 0 || v > 100 {
		return 0, fmt.Errorf("--%s %q: want a percentage above 0 and at most 100, e.g. 95%%", flag, s)
	}
	return v, nil
}

// parseFailureThreshold parses "10%" as a percentage of the finished
// devices or "5" as a count of failed devices.
func parseFailureThreshold(s string) (percent float64, count int, err error) {
	s = strings.TrimSpace(s)
	if strings.HasSuffix(s, "%") {
		percent, err = parsePercent("failure-threshold", s)
		return percent, 0, err
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		return 0, 0, fmt.Errorf("--failure-threshold %q: want a count of failed devices (5) or a percentage (10%%)", s)
	}
	return 0, n, nil
}

// parseRamp parses "2x" or "2" as a batch growth factor in [1, 10].
func parseRamp(s string) (float64, error) {
	t := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSpace(s), "x"), "X")
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || math.IsNaN(v) || v < 1 || v > 10 {
		return 0, fmt.Errorf("--ramp %q: want a factor from 1 to 10, e.g. 2x", s)
	}
	return v, nil
}

// parseDeviceList parses comma-separated device IDs (spaces around them
// and empty entries are ignored).
func parseDeviceList(s string) ([]device.ID, error) {
	var ids []device.ID
	for f := range strings.SplitSeq(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		id, err := parseID(f)
		if err != nil {
			return nil, fmt.Errorf("--devices: %w", err)
		}
		ids = append(ids, id)
	}
	if len(ids) == 0 {
		return nil, errors.New("--devices: no device IDs")
	}
	if len(ids) > rollout.MaxTargets {
		return nil, fmt.Errorf("--devices: %d devices, at most %d", len(ids), rollout.MaxTargets)
	}
	return ids, nil
}

// readDevicesFile reads one device ID per line from name ("-": stdin):
// '#' starts a comment, blank lines are skipped, errors give the line.
func readDevicesFile(name string, stdin io.Reader) ([]device.ID, error) {
	r := stdin
	if name != "-" {
		f, err := os.Open(name)
		if err != nil {
			return nil, fmt.Errorf("--devices-file: %w", err)
		}
		defer f.Close()
		r = f
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 4096), 4096)
	var ids []device.ID
	for line := 1; sc.Scan(); line++ {
		text, _, _ := strings.Cut(sc.Text(), "#")
		text = strings.TrimSpace(text)
		if text == "" {
			continue
		}
		id, err := parseID(text)
		if err != nil {
			return nil, fmt.Errorf("--devices-file %s line %d: %w", name, line, err)
		}
		if len(ids) == rollout.MaxTargets {
			return nil, fmt.Errorf("--devices-file %s line %d: more than %d devices", name, line, rollout.MaxTargets)
		}
		ids = append(ids, id)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("--devices-file %s: %w", name, err)
	}
	if len(ids) == 0 {
		return nil, fmt.Errorf("--devices-file %s: no device IDs", name)
	}
	return ids, nil
}

// parseSelector parses "hw=m2,region=eu" into labels every target must
// carry.
func parseSelector(s string) (map[string]string, error) {
	var kvs []string
	for f := range strings.SplitSeq(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			kvs = append(kvs, f)
		}
	}
	if len(kvs) == 0 {
		return nil, errors.New("--select: want key=value[,key=value…]")
	}
	sel, err := identity.ParseLabels(kvs)
	if err != nil {
		return nil, fmt.Errorf("--select: %w", err)
	}
	return sel, nil
}

func newRolloutCreateCmd(o *rolloutOptions) *cobra.Command {
	c := &createOptions{}
	cmd := &cobra.Command{
		Use:   "create --firmware <version> (--devices a,b | --devices-file F | --select k=v,… | --all) [flags]",
		Short: "Create a rollout and print its ID",
		Long: `Create a rollout of an uploaded firmware version over a frozen list of target
devices: explicit IDs (--devices, --devices-file), the enrolled devices whose
labels match --select, or --all. Devices already running the version are
skipped. The targets are split into batches (--batch-size or --batch-percent,
an optional --first-batch canary, an optional --ramp); the next batch starts
when --success-threshold of the current one succeeded, and --on-failure
applies when --failure-threshold is passed after --min-sample devices
finished. A device in another active rollout makes the server refuse the
rollout with 409 naming that rollout. An image uploaded with --hw is refused
(409 listing them) for targets enrolled with another hw label, unless
--skip-incompatible leaves those out. Prints the new rollout's ID (or with
-o json the rollout).`,
		Example: `  umbra rollout create --firmware 1.2.0 --select hw=m2 --first-batch 5 --batch-percent 10% --ramp 2x
  umbra rollout create --firmware 1.2.0 --devices-file fleet.txt --batch-size 50 --failure-threshold 5%`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := c.spec(cmd.Flags(), cmd.InOrStdin())
			if err != nil {
				return err
			}
			return rolloutCall(cmd, o, func(ctx context.Context, cl *client.Client) (wire.Rollout, error) {
				return cl.CreateRollout(ctx, s.request())
			}, func(w io.Writer, r wire.Rollout) error {
				fmt.Fprintf(cmd.ErrOrStderr(), "rollout %s created: %d targets in %d batches\n", r.ID, r.Targets, len(r.Batches))
				if r.Excluded > 0 {
					fmt.Fprintf(cmd.ErrOrStderr(), "%d devices of another hardware model left out\n", r.Excluded)
				}
				_, err := fmt.Fprintln(w, r.ID)
				return err
			})
		},
	}
	c.addFlags(cmd.Flags())
	return cmd
}

func newRolloutListCmd(o *rolloutOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List rollouts, newest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return rolloutCall(cmd, o, func(ctx context.Context, c *client.Client) (wire.RolloutList, error) {
				rs, err := c.ListRollouts(ctx)
				return wire.RolloutList{Rollouts: nonNil(rs)}, err
			}, func(w io.Writer, l wire.RolloutList) error {
				tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
				fmt.Fprintln(tw, "ID\tSTATE\tFIRMWARE\tTARGETS\tBATCHES\tCREATED")
				for _, r := range l.Rollouts {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d/%d\t%s\n", r.ID, r.State, r.Firmware, r.Targets, r.Started, len(r.Batches),
						r.Created.Format(time.RFC3339))
				}
				return tw.Flush()
			})
		},
	}
}

// idArg validates a rollout <id> argument as the server does
// (wire.ParseRolloutID).
func idArg(s string) (string, error) {
	return wire.ParseRolloutID(s)
}

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
line). --watch exits 0 when the rollout succeeded and 1 when it ended
paused, failed or aborted, with the reason on stderr. Colours are left out
when NO_COLOR is set; $COLUMNS sets the width.`
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
	if o.output != "json" && o.output != "text" {
		return fmt.Errorf("--output %q: want json or text", o.output)
	}
	c, tok, err := newClient(o.api, o.timeout, &o.cred)
	if err != nil {
		return err
	}
	w := cmd.OutOrStdout()
	tty := isTerminal(w)
	view := rolloutview.Options{Width: termWidth(), Color: tty && os.Getenv("NO_COLOR") == ""}
	fetch := func(ctx context.Context) (wire.RolloutStatus, error) {
		st, err := c.GetRollout(ctx, id)
		return st, explainAPIError(explainRolloutError(err), tok)
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
			b, err := json.Marshal(st)
			if err != nil {
				return ""
			}
			return string(b)
		}
	}
	st, err := wt.Watch(cmd.Context(), rideOut(fetch, so.interval, cmd.ErrOrStderr()), w)
	if err != nil {
		return fmt.Errorf("watch %s: %w", id, err)
	}
	if st.State == wire.RolloutSucceeded {
		return nil
	}
	msg := fmt.Sprintf("rollout %s %s", st.ID, st.State)
	if st.Reason != "" {
		msg += ": " + st.Reason
	}
	return &exitError{code: 1, err: errors.New(msg)}
}

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

// termWidth is $COLUMNS when it is a sensible number, else the renderer's
// default.
func termWidth() int {
	if n, err := strconv.Atoi(os.Getenv("COLUMNS")); err == nil && n >= rolloutview.MinWidth && n <= 1000 {
		return n
	}
	return rolloutview.DefaultWidth
}

// stateFlag parses --state failed,timed_out.
func stateFlag(s string) ([]wire.DeviceState, error) {
	var out []wire.DeviceState
	for f := range strings.SplitSeq(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		st := wire.DeviceState(f)
		if !st.Valid() {
			return nil, fmt.Errorf("--state %q: want device states such as failed,timed_out", f)
		}
		out = append(out, st)
	}
	return out, nil
}

func newRolloutDevicesCmd(o *rolloutOptions) *cobra.Command {
	var states string
	cmd := rolloutIDCmd("devices <id> [--state failed,timed_out]", "List a rollout's target devices in rollout order, with their state",
		func(cmd *cobra.Command, id string) error {
			filter, err := stateFlag(states)
			if err != nil {
				return err
			}
			return rolloutCall(cmd, o, func(ctx context.Context, c *client.Client) (wire.RolloutDevices, error) {
				ds, err := c.RolloutDevices(ctx, id, filter...)
				return wire.RolloutDevices{Devices: nonNil(ds)}, err
			}, func(w io.Writer, l wire.RolloutDevices) error {
				tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
				fmt.Fprintln(tw, "DEVICE\tBATCH\tSTATE\tATTEMPT\tSINCE\tFROM\tERROR")
				for _, d := range l.Devices {
					fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%s\t%s\t%s\n", d.Device, d.Batch+1, d.State, d.Attempt, timeOrDash(d.Since),
						orDash(d.From), orDash(singleLine(d.Error)))
				}
				return tw.Flush()
			})
		})
	cmd.Flags().StringVar(&states, "state", "", "only devices in these states, comma separated (e.g. failed,timed_out)")
	return cmd
}

// nonNil returns s, or an empty slice for nil (JSON [] rather than null).
func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

func newRolloutEventsCmd(o *rolloutOptions) *cobra.Command {
	var after uint64
	cmd := rolloutIDCmd("events <id> [--after SEQ]", "Show a rollout's event log, oldest first",
		func(cmd *cobra.Command, id string) error {
			return rolloutCall(cmd, o, func(ctx context.Context, c *client.Client) (wire.RolloutEvents, error) {
				evs, err := c.RolloutEvents(ctx, id, after)
				return wire.RolloutEvents{Events: nonNil(evs)}, err
			}, func(w io.Writer, l wire.RolloutEvents) error {
				tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
				fmt.Fprintln(tw, "TIME\tKIND\tBATCH\tDEVICE\tSTATE\tREASON")
				for _, ev := range l.Events {
					batch := "-"
					if ev.Kind == wire.EventBatchStarted || ev.Kind == wire.EventBatchFinished {
						batch = strconv.Itoa(ev.Batch + 1)
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", ev.Time.Format(time.RFC3339), ev.Kind, batch,
						orDash(string(ev.Device)), orDash(string(ev.State)), orDash(singleLine(ev.Reason)))
				}
				return tw.Flush()
			})
		})
	cmd.Flags().Uint64Var(&after, "after", 0, "only events after this sequence number")
	return cmd
}

func timeOrDash(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Format(time.RFC3339)
}

// singleLine replaces control characters (from device error texts) with
// spaces, so one entry stays one table row.
func singleLine(s string) string {
	return strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f {
			return ' '
		}
		return r
	}, s)
}

// newRolloutControlCmd is pause, resume or rollback: <id> in, the rollout
// out, printed as "rollout r3 <verb> (now <state>)".
func newRolloutControlCmd(o *rolloutOptions, name, short, verb string, call func(*client.Client, context.Context, string) (wire.Rollout, error)) *cobra.Command {
	return rolloutIDCmd(name+" <id>", short, func(cmd *cobra.Command, id string) error {
		return rolloutCall(cmd, o, func(ctx context.Context, c *client.Client) (wire.Rollout, error) {
			return call(c, ctx, id)
		}, printControlled(verb))
	})
}

// printControlled prints "rollout r3 paused (now paused)".
func printControlled(verb string) func(io.Writer, wire.Rollout) error {
	return func(w io.Writer, r wire.Rollout) error {
		_, err := fmt.Fprintf(w, "rollout %s %s (now %s)\n", r.ID, verb, r.State)
		return err
	}
}

func newRolloutAbortCmd(o *rolloutOptions) *cobra.Command {
	var rollback bool
	cmd := rolloutIDCmd("abort <id> [--rollback]", "Abort a rollout: cancel pending devices and clear in-flight commands",
		func(cmd *cobra.Command, id string) error {
			verb := "aborted"
			if rollback {
				verb = "aborted, rolling back"
			}
			return rolloutCall(cmd, o, func(ctx context.Context, c *client.Client) (wire.Rollout, error) {
				return c.AbortRollout(ctx, id, rollback)
			}, printControlled(verb))
		})
	cmd.Long = `Abort a rollout: devices not yet notified are canceled and the firmware
command is cleared from the desired state of notified ones. With --rollback
the previous version is also written back to the devices that already moved.`
	cmd.Flags().BoolVar(&rollback, "rollback", false, "write the previous version back to devices that moved")
	return cmd
}

func newRolloutRetryCmd(o *rolloutOptions) *cobra.Command {
	return rolloutIDCmd("retry <id>", "Start a new rollout over a finished rollout's failed and timed-out devices; prints its ID",
		func(cmd *cobra.Command, id string) error {
			return rolloutCall(cmd, o, func(ctx context.Context, c *client.Client) (wire.Rollout, error) {
				return c.RetryRollout(ctx, id)
			}, func(w io.Writer, r wire.Rollout) error {
				fmt.Fprintf(cmd.ErrOrStderr(), "rollout %s created: retrying %d devices of %s\n", r.ID, r.Targets, id)
				_, err := fmt.Fprintln(w, r.ID)
				return err
			})
		})
}
