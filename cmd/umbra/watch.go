package main

import (
	"context"
	"encoding/json"
	"errors"
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
	from   string
}

func newWatchCmd() *cobra.Command {
	o := &watchOptions{}
	cmd := &cobra.Command{
		Use:   "watch [<id>…]",
		Short: "Stream shadow updates",
		Long: `Stream the accepted, delta and documents messages of the given devices (of
every device when none is given): "<device> <kind> <payload>" lines, or with
-o json one JSON object per line: {"device":…,"kind":…,"topic":…,"payload":{…}}.
Stops on SIGINT, or after --count events. By default the devices' classic
shadows are watched; --name N watches their named shadow N instead, --name +
all their named shadows (events then carry "name").

--from says where the stream starts. "next" (the default) shows only updates
made after the watch started: the delta still pending from before (which the
server sends to a client that subscribes to one device's delta) is skipped,
so --count 1 waits for the next update. "current" shows that pending delta
first. With --name + or without device IDs there is no pending delta to
skip, and both are the same.`,
		Example: `  umbra watch
  umbra watch lamp-1 lamp-2 --kind delta
  umbra watch lamp-1 --count 1                  # wait for the next update, then exit
  umbra watch lamp-1 --kind delta --from current --count 1   # the pending delta, now
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
			if o.from != "next" && o.from != "current" {
				return fmt.Errorf("--from %q: want next or current", o.from)
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
	cmd.Flags().StringVar(&o.from, "from", "next", "next: only updates after the watch started; current: the pending delta first")
	_ = registerEnumCompletion(cmd.Flags(), "from", "next", "current")
	cmd.Flags().StringVar(&o.name, "name", "", "watch this named shadow of the devices (+: every named shadow); default the classic shadow")
	return cmd
}

// run streams events until ctx ends, --count events were printed or
// printing fails.
func (o *watchOptions) run(ctx context.Context, cmd *cobra.Command, c *shadowclient.Client, ids []device.ID) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	out := cmd.OutOrStdout()
	// --from next: the versions before the watch; an event at or below its
	// device's is the pending delta the server replays on subscribing.
	before := map[device.ID]uint64{}
	if o.from == "next" && o.name != shadowclient.AllNamed {
		for _, id := range ids {
			v, err := shadowVersion(ctx, c, id, shadow.Name(o.name))
			if err != nil {
				return err
			}
			before[id] = v
		}
	}
	var printed int
	var printErr error
	err := c.WatchNamed(ctx, ids, o.name, o.kinds, func(e shadowclient.Event) {
		if v, ok := before[e.Device]; ok && eventVersion(e) <= v {
			return
		}
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

// shadowVersion is the version of a device's shadow, 0 when it has none.
func shadowVersion(ctx context.Context, c *shadowclient.Client, id device.ID, name shadow.Name) (uint64, error) {
	b, err := c.GetNamed(ctx, id, name)
	if errors.Is(err, shadow.ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	var doc struct {
		Version uint64 `json:"version"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		return 0, fmt.Errorf("get %s: %w", id, err)
	}
	return doc.Version, nil
}

// eventVersion is the shadow version an event carries: its "version", or
// for documents its current document's.
func eventVersion(e shadowclient.Event) uint64 {
	var p struct {
		Version *uint64 `json:"version"`
		Current struct {
			Version uint64 `json:"version"`
		} `json:"current"`
	}
	if json.Unmarshal(e.Payload, &p) != nil {
		return 0
	}
	if p.Version != nil {
		return *p.Version
	}
	return p.Current.Version
}
