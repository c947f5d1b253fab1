package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/umbra-iot/umbra/client"
	"github.com/umbra-iot/umbra/wire"
)

// credOptions locate the credential a client command presents: --token
// (or UMBRA_TOKEN), else <data-dir>/admin.token written by umbra serve.
type credOptions struct {
	token   string
	dataDir string
}

func (c *credOptions) addFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.token, "token", "", "credential <name>:<secret> (default: <data-dir>/admin.token when it exists)")
	fs.StringVar(&c.dataDir, "data-dir", "./umbra-data", "server data dir whose admin.token is used when --token is not set")
}

// resolve returns the credential, "" when there is none (a server run
// with --insecure-anonymous needs none).
func (c *credOptions) resolve() (string, error) {
	if t := strings.TrimSpace(c.token); t != "" {
		if !strings.Contains(t, ":") {
			return "", errors.New("--token: want <name>:<secret>")
		}
		return t, nil
	}
	path := filepath.Join(c.dataDir, adminTokenFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read operator token: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// splitToken splits "name:secret" into MQTT user name and password.
func splitToken(tok string) (user, pass string) {
	i := strings.LastIndexByte(tok, ':')
	if i < 0 {
		return "", ""
	}
	return tok[:i], tok[i+1:]
}

func newTokenCmd() *cobra.Command {
	o := &apiOptions{}
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Create, list and revoke operator and integrator tokens",
		Long: `Manage tokens through the HTTP API of a running server (operator only).
A token is "<name>:<secret>": the MQTT user name and password, the HTTP bearer
token, and the value of UMBRA_TOKEN. Operators may do everything; integrators
may only read (shadows over HTTP; accepted, delta, documents and presence over MQTT).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error { return cmd.Help() },
	}
	o.addFlags(cmd.PersistentFlags())

	var role, name string
	create := &cobra.Command{
		Use:   "create --role operator|integrator --name NAME",
		Short: "Create a token and print it (shown once)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if name == "" {
				return errors.New("--name is required")
			}
			var resp wire.TokenResponse
			err := o.withClient(cmd, func(ctx context.Context, c *client.Client) (err error) {
				resp, err = c.CreateToken(ctx, name, wire.Role(role))
				return err
			})
			if err != nil {
				return err
			}
			if o.output != "text" {
				return printData(cmd.OutOrStdout(), o.output, resp, nil)
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "token %s (%s) created; store it now, it cannot be shown again\n", resp.Name, resp.Role)
			fmt.Fprintln(cmd.OutOrStdout(), resp.Token)
			return nil
		},
	}
	create.Flags().StringVar(&role, "role", "", "operator or integrator (required)")
	_ = registerEnumCompletion(create.Flags(), "role", string(wire.RoleOperator), string(wire.RoleIntegrator))
	create.Flags().StringVar(&name, "name", "", "token name, also its MQTT user name (required)")

	list := &cobra.Command{
		Use:   "list",
		Short: "List tokens (never their secrets)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var toks []wire.Token
			err := o.withClient(cmd, func(ctx context.Context, c *client.Client) (err error) {
				toks, err = c.ListTokens(ctx)
				return err
			})
			if err != nil {
				return err
			}
			return printData(cmd.OutOrStdout(), o.output, wire.TokenList{Tokens: nonNil(toks)}, func(w io.Writer, l wire.TokenList) error {
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "NAME\tROLE\tCREATED")
				for _, t := range l.Tokens {
					fmt.Fprintf(tw, "%s\t%s\t%s\n", t.Name, t.Role, t.CreatedAt.Format(timeLayout))
				}
				return tw.Flush()
			})
		},
	}
	revoke := &cobra.Command{
		Use:   "revoke <name>",
		Short: "Revoke a token: new connections and requests with it are refused",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.withClient(cmd, func(ctx context.Context, c *client.Client) error { return c.RevokeToken(ctx, args[0]) }); err != nil {
				return err
			}
			return printData(cmd.OutOrStdout(), o.output, removed{ID: args[0], Removed: true}, func(w io.Writer, r removed) error {
				_, err := fmt.Fprintf(w, "revoked %s\n", r.ID)
				return err
			})
		},
	}
	cmd.AddCommand(create, list, revoke)
	return cmd
}
