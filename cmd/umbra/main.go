// Command umbra is Umbra's single binary: `umbra serve` runs the MQTT broker,
// the device shadow engine and the HTTP API; the other subcommands are the
// operator's tools.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRootCmd().ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "umbra:", err)
		os.Exit(exitCode(err))
	}
}

// exitError carries a specific exit code.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func exitCode(err error) int {
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	return 1
}

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "umbra",
		Short:         "MQTT-native device shadows and firmware rollouts",
		Long:          "Umbra hosts an MQTT broker and a device shadow engine in one process, and drives batched firmware rollouts.\nEvery flag can also be set with an environment variable UMBRA_<FLAG>, e.g. UMBRA_DATA_DIR.",
		Version:       buildVersion(),
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			return applyEnv(cmd.Flags())
		},
	}
	root.SetVersionTemplate(versionLine()) // umbra --version prints what umbra version does
	root.AddCommand(newServeCmd(), newVersionCmd())
	for _, c := range extraCommands() {
		root.AddCommand(c)
	}
	namedArgs(root)
	addCompletions(root)
	return root
}

// extraCommands is the list of operator subcommands; each lives in its own
// file.
func extraCommands() []*cobra.Command {
	return []*cobra.Command{newShadowCmd(), newWatchCmd(), newSimCmd(), newFirmwareCmd(), newRolloutCmd(), newDeviceCmd(), newTokenCmd(), newCACmd(), newConfigCmd(), newClusterCmd()}
}

// applyEnv sets every flag not given on the command line from UMBRA_<NAME>
// (upper case, dashes as underscores), so containers and systemd units can
// configure Umbra without flags.
func applyEnv(fs *pflag.FlagSet) error {
	var err error
	fs.VisitAll(func(f *pflag.Flag) {
		if err != nil || f.Changed {
			return
		}
		name := "UMBRA_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(name); ok {
			if e := fs.Set(f.Name, v); e != nil {
				err = fmt.Errorf("environment %s=%q: %w", name, v, e)
				return
			}
			// serve --print-config tells a variable's value from a flag's.
			err = fs.SetAnnotation(f.Name, envAnnotation, []string{name})
		}
	})
	return err
}
