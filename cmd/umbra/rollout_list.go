package main

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/umbra-iot/umbra/client"
	"github.com/umbra-iot/umbra/wire"
)

// umbra rollout list, devices and events: one read each.

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
					fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d/%d\t%s\n", r.ID, r.DisplayState(), r.Firmware, r.Targets, r.Started, len(r.Batches),
						r.Created.Format(time.RFC3339))
				}
				return tw.Flush()
			})
		},
	}
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
					fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%s\t%s\t%s\n", d.Device, d.Batch, d.State, d.Attempt, timeOrDash(d.Since),
						orDash(d.From), orDash(singleLine(d.Error)))
				}
				return tw.Flush()
			})
		})
	cmd.Flags().StringVar(&states, "state", "", "only devices in these states, comma separated (e.g. failed,timed_out)")
	return cmd
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
						batch = strconv.Itoa(ev.Batch)
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
