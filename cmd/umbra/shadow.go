package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/umbra-iot/umbra/client"
	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/internal/shadowclient"
	"github.com/umbra-iot/umbra/shadow"
	"github.com/umbra-iot/umbra/wire"
)

// maxUpdateFile caps the size of an update read with --file; the server's
// own limit is far lower, this only stops a mistaken multi-gigabyte read.
const maxUpdateFile = 1 << 20

// parseID validates a device ID argument.
func parseID(s string) (device.ID, error) {
	id, err := device.ParseID(s)
	if err != nil {
		return "", fmt.Errorf("device ID %q: %w", s, err)
	}
	return id, nil
}

func newShadowCmd() *cobra.Command {
	o := &shadowOptions{}
	cmd := &cobra.Command{
		Use:   "shadow",
		Short: "Read, update, delete and list device shadows",
		Long: `Read, update and delete device shadows through a running Umbra server, over
the same MQTT topics devices use; --name addresses one of the device's named
shadows instead of its classic one. "shadow list" lists a device's shadows
over the HTTP API. A rejected request exits non-zero with the server's code
and message on stderr.`,
		Args: cobra.NoArgs, // an unknown subcommand is an error, not help
		RunE: func(cmd *cobra.Command, args []string) error { return cmd.Help() },
	}
	o.addFlags(cmd.PersistentFlags())
	cmd.AddCommand(newShadowGetCmd(o), newShadowUpdateCmd(o), newShadowDeleteCmd(o), newShadowListCmd(o))
	return cmd
}

// shadowOptions are the flags of shadow get, update and delete.
type shadowOptions struct {
	clientOptions
	name string
}

func (o *shadowOptions) addFlags(fs *pflag.FlagSet) {
	o.clientOptions.addFlags(fs)
	fs.StringVar(&o.name, "name", "", "a named shadow of the device ([a-zA-Z0-9:_-], 1 to 64 bytes); default the classic shadow")
}

// shadowName validates --name ("" when not given).
func (o *shadowOptions) shadowName(fs *pflag.FlagSet) (shadow.Name, error) {
	if !fs.Changed("name") {
		return "", nil
	}
	n, err := shadow.ParseName(o.name)
	if err != nil {
		return "", fmt.Errorf("--name %q: %s", o.name, shadowMessage(err))
	}
	return n, nil
}

// shadowMessage is the message of a shadow error without its code.
func shadowMessage(err error) string {
	if re, ok := errors.AsType[*shadow.RequestError](err); ok {
		return re.Message
	}
	return err.Error()
}

// runRequest validates the ID and --name, connects, runs one request on
// that shadow and prints its answer.
func (o *shadowOptions) runRequest(cmd *cobra.Command, arg, verb string, req func(context.Context, *shadowclient.Client, device.ID, shadow.Name) ([]byte, error)) error {
	id, err := parseID(arg)
	if err != nil {
		return err
	}
	name, err := o.shadowName(cmd.Flags())
	if err != nil {
		return err
	}
	ctx := cmd.Context()
	c, err := o.dial(cmd)
	if err != nil {
		return err
	}
	defer c.Close()
	b, err := req(ctx, c, id, name)
	if err != nil {
		return err
	}
	return printAnswer(cmd.OutOrStdout(), o.output, verb, id, name, b)
}

func newShadowGetCmd(o *shadowOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "get <id> [--name N]",
		Short: "Print a device's shadow",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.runRequest(cmd, args[0], "get", func(ctx context.Context, c *shadowclient.Client, id device.ID, n shadow.Name) ([]byte, error) {
				return c.GetNamed(ctx, id, n)
			})
		},
	}
}

func newShadowDeleteCmd(o *shadowOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "delete <id> [--name N]",
		Short: "Delete a device's shadow",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.runRequest(cmd, args[0], "delete", func(ctx context.Context, c *shadowclient.Client, id device.ID, n shadow.Name) ([]byte, error) {
				return c.DeleteNamed(ctx, id, n)
			})
		},
	}
}

func newShadowListCmd(o *shadowOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "list <id>",
		Short: "List a device's shadows (the classic one and its named ones) over the HTTP API",
		Long: `List a device's shadows through the HTTP API (GET /v1/devices/{id}/shadows):
its classic shadow, shown with the name "-" in text and "" in JSON, and its
named shadows, with their versions and the time of their last change.
Deleted shadows are not listed.`,
		Example: `  umbra shadow list lamp-1
  umbra shadow list lamp-1 -o json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if cmd.Flags().Changed("name") {
				return errors.New("--name is not used by shadow list (it lists every shadow of the device)")
			}
			id, err := parseID(args[0])
			if err != nil {
				return err
			}
			var list wire.ShadowList
			err = o.withClient(cmd, func(ctx context.Context, c *client.Client) (err error) {
				list, err = c.ListShadows(ctx, id)
				return err
			})
			if err != nil {
				return err
			}
			return printShadows(cmd.OutOrStdout(), o.output, list)
		},
	}
}

// updateOptions are the flags of `umbra shadow update`.
type updateOptions struct {
	desired, reported string
	file              string
	version           uint64
}

func (u *updateOptions) addFlags(fs *pflag.FlagSet) {
	fs.StringVar(&u.desired, "desired", "", "JSON object merged into the desired state (null removes it)")
	fs.StringVar(&u.reported, "reported", "", "JSON object merged into the reported state (null removes it)")
	fs.StringVar(&u.file, "file", "", "file holding a whole update request {\"state\":{…}} (- for stdin)")
	fs.Uint64Var(&u.version, "version", 0, "apply only if the shadow is at this version (optimistic lock)")
}

func newShadowUpdateCmd(o *shadowOptions) *cobra.Command {
	u := &updateOptions{}
	cmd := &cobra.Command{
		Use:   "update <id> --desired JSON | --reported JSON | --file F [--name N]",
		Short: "Update a device's shadow",
		Long: `Update a device's shadow. --desired and --reported take JSON objects that are
merged into the shadow (objects key by key; null deletes a key); they may be
given together. --file sends a whole update request instead. With --version
the update applies only if the shadow is still at that version.`,
		Example: `  umbra shadow update lamp-1 --desired '{"color":"red"}'
  umbra shadow update lamp-1 --reported '{"color":"red"}' --version 4
  umbra shadow update lamp-1 --name cfg --desired '{"interval":30}'
  umbra shadow update lamp-1 --file update.json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := parseID(args[0])
			if err != nil {
				return err
			}
			body, err := u.body(cmd.Flags(), cmd.InOrStdin())
			if err != nil {
				return err
			}
			return o.runRequest(cmd, string(id), "update", func(ctx context.Context, c *shadowclient.Client, id device.ID, n shadow.Name) ([]byte, error) {
				return c.UpdateNamed(ctx, id, n, body)
			})
		},
	}
	u.addFlags(cmd.Flags())
	return cmd
}

// body builds the update request from the flags, validating every piece of
// JSON before anything is sent.
func (u *updateOptions) body(fs *pflag.FlagSet, stdin io.Reader) ([]byte, error) {
	hasDesired, hasReported, hasFile := fs.Changed("desired"), fs.Changed("reported"), fs.Changed("file")
	var req map[string]json.RawMessage
	switch {
	case hasFile && (hasDesired || hasReported):
		return nil, errors.New("--file cannot be combined with --desired or --reported")
	case hasFile:
		var err error
		if req, err = readRequestFile(u.file, stdin); err != nil {
			return nil, err
		}
	case hasDesired || hasReported:
		state := map[string]json.RawMessage{}
		for _, s := range []struct {
			name, value string
			set         bool
		}{{"desired", u.desired, hasDesired}, {"reported", u.reported, hasReported}} {
			if !s.set {
				continue
			}
			raw, err := section(s.value)
			if err != nil {
				return nil, fmt.Errorf("--%s: %w", s.name, err)
			}
			state[s.name] = raw
		}
		st, _ := json.Marshal(state)
		req = map[string]json.RawMessage{"state": st}
	default:
		return nil, errors.New("nothing to update: give --desired, --reported or --file")
	}
	if fs.Changed("version") {
		if _, ok := req["version"]; ok {
			return nil, errors.New("--version conflicts with the version in --file")
		}
		req["version"], _ = json.Marshal(u.version)
	}
	return json.Marshal(req)
}

// section validates a --desired or --reported value: a JSON object or null.
func section(s string) (json.RawMessage, error) {
	var v any
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		return nil, fmt.Errorf("invalid JSON: %w", err)
	}
	if _, ok := v.(map[string]any); !ok && v != nil {
		return nil, errors.New("must be a JSON object or null")
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, []byte(s)); err != nil {
		return nil, fmt.Errorf("invalid JSON: %w", err)
	}
	return buf.Bytes(), nil
}

// readRequestFile reads a whole update request: a JSON object.
func readRequestFile(name string, stdin io.Reader) (map[string]json.RawMessage, error) {
	r := stdin
	if name != "-" {
		f, err := os.Open(name)
		if err != nil {
			return nil, fmt.Errorf("--file: %w", err)
		}
		defer f.Close()
		r = f
	}
	b, err := io.ReadAll(io.LimitReader(r, maxUpdateFile+1))
	if err != nil {
		return nil, fmt.Errorf("--file %s: %w", name, err)
	}
	if len(b) > maxUpdateFile {
		return nil, fmt.Errorf("--file %s: larger than %d bytes", name, maxUpdateFile)
	}
	var req map[string]json.RawMessage
	if err := json.Unmarshal(b, &req); err != nil {
		return nil, fmt.Errorf("--file %s: invalid JSON: %w", name, err)
	}
	if req == nil {
		return nil, fmt.Errorf("--file %s: must hold a JSON object", name)
	}
	if _, ok := req["state"]; !ok {
		return nil, fmt.Errorf("--file %s: no \"state\" in the update request", name)
	}
	return req, nil
}
