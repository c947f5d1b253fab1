package main

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/spf13/cobra"

	"github.com/umbra-iot/umbra/internal/errtext"
)

// stripInternal drops the internal package and step names from an error
// text (errtext.Strip).
func stripInternal(s string) string { return errtext.Strip(s) }

// argPlaceholder matches the <name> placeholders of a command's Use.
var argPlaceholder = regexp.MustCompile(`<[a-z][a-z0-9 _-]*>(…)?`)

// namedArgs wraps the Args check of every command in the tree so that a
// wrong argument count names the arguments from the command's Use ("umbra
// device remove: missing <id>; usage: umbra device remove <id>") instead
// of cobra's "accepts 1 arg(s), received 0".
func namedArgs(root *cobra.Command) {
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if check := c.Args; check != nil {
			c.Args = func(cmd *cobra.Command, args []string) error {
				err := check(cmd, args)
				if err == nil {
					return nil
				}
				return argsError(cmd, args, err)
			}
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
}

// argsError explains a refused argument list in the command's terms.
func argsError(cmd *cobra.Command, args []string, err error) error {
	want := argPlaceholder.FindAllString(cmd.Use, -1)
	usage := cmd.UseLine()
	path := strings.TrimPrefix(cmd.CommandPath(), cmd.Root().Name()+" ")
	switch {
	case strings.HasPrefix(err.Error(), "unknown command"):
		return fmt.Errorf("%w; see %s --help", err, cmd.CommandPath())
	case len(want) == 0:
		return fmt.Errorf("%s takes no arguments, got %q; usage: %s", path, args, usage)
	case len(args) < len(want):
		return fmt.Errorf("%s: missing %s; usage: %s", path, strings.Join(want[len(args):], " "), usage)
	}
	return fmt.Errorf("%s: too many arguments (%q), want %s; usage: %s", path, args, strings.Join(want, " "), usage)
}
