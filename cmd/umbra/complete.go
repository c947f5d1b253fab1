package main

import (
	"context"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/umbra-iot/umbra/client"
)

// Shell completion (umbra completion bash|zsh|fish|powershell, cobra's)
// completes subcommands and flags, the values of enumerated flags, and,
// by asking the server the profile names, device IDs, rollout IDs and
// firmware versions. A server that does not answer within
// completionTimeout completes nothing.

// completionTimeout bounds the server call of one completion.
const completionTimeout = 2 * time.Second

// registerEnumCompletion completes flag name with values.
func registerEnumCompletion(fs *pflag.FlagSet, name string, values ...string) error {
	f := fs.Lookup(name)
	if f == nil {
		return nil
	}
	if f.Annotations == nil {
		f.Annotations = map[string][]string{}
	}
	// cobra reads the completion function from its own registry; the flag
	// set is not yet attached to a command here, so the values are kept
	// on the flag and registered by addCompletions.
	f.Annotations[enumAnnotation] = values
	return nil
}

// enumAnnotation holds a flag's completion values until addCompletions
// registers them.
const enumAnnotation = "umbra_enum"

// addCompletions registers the enum values of every flag in cmd's tree
// (registerEnumCompletion) and the dynamic completion of the arguments
// named <id>, <version> and of the --device and --firmware flags.
func addCompletions(root *cobra.Command) {
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for _, fs := range []*pflag.FlagSet{c.LocalNonPersistentFlags(), c.PersistentFlags()} {
			fs.VisitAll(func(f *pflag.Flag) {
				vals, ok := f.Annotations[enumAnnotation]
				if ok {
					_ = c.RegisterFlagCompletionFunc(f.Name, fixed(vals))
				}
			})
		}
		if c.ValidArgsFunction == nil && c.ValidArgs == nil {
			if fn := argCompletion(c); fn != nil {
				c.ValidArgsFunction = fn
			}
		}
		for _, name := range []string{"device", "devices"} {
			if c.LocalNonPersistentFlags().Lookup(name) != nil {
				_ = c.RegisterFlagCompletionFunc(name, completeFrom(c, listDeviceIDs))
			}
		}
		if c.LocalNonPersistentFlags().Lookup("firmware") != nil && c.Parent() != nil && c.Parent().Name() == "rollout" {
			_ = c.RegisterFlagCompletionFunc("firmware", completeFrom(c, listVersions))
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
}

func fixed(vals []string) cobra.CompletionFunc {
	return func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return vals, cobra.ShellCompDirectiveNoFileComp
	}
}

// argCompletion is the completion of c's first argument, from its Use:
// "<id>" under device, shadow and watch (device IDs), under rollout
// (rollout IDs), and "<version>" (firmware versions).
func argCompletion(c *cobra.Command) cobra.CompletionFunc {
	use := c.Use
	group := ""
	if p := c.Parent(); p != nil {
		group = p.Name()
	}
	switch {
	case strings.Contains(use, "<version>"):
		return completeFrom(c, listVersions)
	case strings.Contains(use, "<id>") && group == "rollout":
		return completeFrom(c, listRolloutIDs)
	case strings.Contains(use, "<id>") && (group == "device" || group == "shadow") || c.Name() == "watch":
		return completeFrom(c, listDeviceIDs)
	}
	return nil
}

// completeFrom completes with what list returns from the server the
// command's flags and profile name.
func completeFrom(c *cobra.Command, list func(context.Context, *client.Client) ([]string, error)) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
		if len(args) > 0 && cmd.Name() != "watch" {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		o := &connOptions{}
		fs := pflag.NewFlagSet("completion", pflag.ContinueOnError)
		o.addFlags(fs)
		// The flags the user typed so far: copy what the command parsed.
		cmd.Flags().Visit(func(f *pflag.Flag) {
			if g := fs.Lookup(f.Name); g != nil {
				_ = fs.Set(f.Name, f.Value.String())
			}
		})
		_ = applyEnv(fs)
		o.timeout = completionTimeout
		if err := o.resolve(fs); err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp | cobra.ShellCompDirectiveError
		}
		hc, err := client.New(client.Config{URL: o.api, Token: o.cred.token, Timeout: completionTimeout})
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp | cobra.ShellCompDirectiveError
		}
		ctx, cancel := context.WithTimeout(cmd.Context(), completionTimeout)
		defer cancel()
		all, err := list(ctx, hc)
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp | cobra.ShellCompDirectiveError
		}
		out := all[:0]
		for _, s := range all {
			if strings.HasPrefix(s, toComplete) {
				out = append(out, s)
			}
		}
		return out, cobra.ShellCompDirectiveNoFileComp
	}
}

func listDeviceIDs(ctx context.Context, c *client.Client) ([]string, error) {
	devs, err := c.ListEnrolled(ctx)
	ids := make([]string, 0, len(devs))
	for _, d := range devs {
		ids = append(ids, string(d.ID))
	}
	return ids, err
}

func listRolloutIDs(ctx context.Context, c *client.Client) ([]string, error) {
	rs, err := c.ListRollouts(ctx)
	ids := make([]string, 0, len(rs))
	for _, r := range rs {
		ids = append(ids, r.ID)
	}
	return ids, err
}

func listVersions(ctx context.Context, c *client.Client) ([]string, error) {
	imgs, err := c.ListFirmware(ctx)
	vs := make([]string, 0, len(imgs))
	for _, i := range imgs {
		vs = append(vs, i.Version)
	}
	return vs, err
}
