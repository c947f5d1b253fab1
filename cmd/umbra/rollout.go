package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/umbra-iot/umbra/client"
	"github.com/umbra-iot/umbra/wire"
)

// rolloutOptions are the flags shared by the rollout commands: the same
// --api, -o, --timeout and credential flags as the firmware commands.
type rolloutOptions struct{ connOptions }

// rolloutCall is query with a conflict naming the rollout that holds the
// device.
func rolloutCall[T any](cmd *cobra.Command, o *rolloutOptions, call func(context.Context, *client.Client) (T, error), text func(io.Writer, T) error) error {
	return query(cmd, &o.connOptions, func(ctx context.Context, c *client.Client) (T, error) {
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
		{"rollback", "Abort a rollout and write each updated device's previous version back (refused when nothing can be rolled back)", "rolling back its moved devices to their previous version", (*client.Client).RollbackRollout},
	} {
		cmd.AddCommand(newRolloutControlCmd(o, c.name, c.short, c.verb, c.call))
	}
	cmd.AddCommand(newRolloutAbortCmd(o), newRolloutRetryCmd(o))
	return cmd
}

// idArg validates a rollout <id> argument as the server does
// (wire.ParseRolloutID).
func idArg(s string) (string, error) {
	return wire.ParseRolloutID(s)
}

// nonNil returns s, or an empty slice for nil (JSON [] rather than null).
func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
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
