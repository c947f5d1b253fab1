package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/internal/shadowclient"
	"github.com/umbra-iot/umbra/shadow"
)

// watchOptions are the flags of `umbra watch`.
type watchOptions struct {
	client clientOptions
	kinds  []string
	count  int
	name   string
}

func newWatchCmd() *cobra.Command {
	o := &watchOptions{}
	cmd := &cobra.Command{
		Use:   "watch [<id>…]",
		Short: "Stream shadow updates as JSON lines",
		Long: `Stream the accepted, delta and documents messages of the given devices (of
every device when none is given), one JSON object per line:
{"device":…,"kind":…,"topic":…,"payload":{…}}. Stops on SIGINT, or after
--count events. By default the devices' classic shadows are watched;
--name N watches their named shadow N instead, --name + all their named
shadows (events then carry "name").`,
		Example: `  umbra watch
  umbra watch lamp-1 lamp-2 --kind delta
  umbra watch lamp-1 --count 1   # wait for the next update, then exit
  umbra watch lamp-1 --name cfg`,
		RunE: func(cmd *cobra.Command, args []string) error {
			ids := make([]device.ID, 0, len(args))
			for _, a := range args {
				id, err := parseID(a)
				if err != nil {
					return err
				}
				ids = append(ids, id)
			}
			if o.count < 0 {
				return fmt.Errorf("--count %d: must not be negative", o.count)
			}
			if cmd.Flags().Changed("name") && o.name != shadowclient.AllNamed {
				if _, err := shadow.ParseName(o.name); err != nil {
					return fmt.Errorf("--name %q: %s (or + for every named shadow)", o.name, shadowMessage(err))
				}
			}
			c, err := o.client.dial(cmd)
			if err != nil {
				return err
			}
			defer c.Close()
			return o.run(cmd.Context(), cmd, c, ids)
		},
	}
	o.client.addFlags(cmd.Flags())
	cmd.Flags().StringSliceVar(&o.kinds, "kind", shadowclient.Kinds, "kinds of message to stream: accepted, delta, documents")
	_ = registerEnumCompletion(cmd.Flags(), "kind", shadowclient.Kinds...)
	cmd.Flags().IntVar(&o.count, "count", 0, "exit after this many events (0: run until interrupted)")
	cmd.Flags().StringVar(&o.name, "name", "", "watch this named shadow of the devices (+: every named shadow); default the classic shadow")
	return cmd
}

// run streams events until ctx ends, --count events were printed or
// printing fails.
func (o *watchOptions) run(ctx context.Context, cmd *cobra.Command, c *shadowclient.Client, ids []device.ID) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	out := cmd.OutOrStdout()
	var printed int
	var printErr error
	err := c.WatchNamed(ctx, ids, o.name, o.kinds, func(e shadowclient.Event) {
		if printErr = printEvent(out, o.client.output, e); printErr != nil {
			cancel()
			return
		}
		if printed++; o.count > 0 && printed >= o.count {
			cancel()
		}
	})
	if printErr != nil {
		return printErr
	}
	return err
}
