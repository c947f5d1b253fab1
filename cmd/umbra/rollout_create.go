package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/umbra-iot/umbra/client"
	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/firmware"
	"github.com/umbra-iot/umbra/identity"
	"github.com/umbra-iot/umbra/rollout"
	"github.com/umbra-iot/umbra/wire"
)

// umbra rollout create: its flags, checked before anything is sent, become
// one wire.CreateRollout.

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
	_ = registerEnumCompletion(fs, "on-failure", string(wire.OnFailurePause), string(wire.OnFailureAbort), string(wire.OnFailureRollback))
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
	sel, err := identity.ParseSelector(s)
	switch {
	case err != nil && strings.Trim(s, ", \t") == "":
		return nil, errors.New("--select: want key=value[,key=value…]")
	case err != nil:
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
