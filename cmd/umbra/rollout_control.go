package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/umbra-iot/umbra/client"
	"github.com/umbra-iot/umbra/wire"
)

// umbra rollout pause, resume, rollback, abort and retry: one control call
// each.

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
