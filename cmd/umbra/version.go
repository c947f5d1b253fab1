package main

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"strings"

	"github.com/spf13/cobra"
)

// version is set at build time with -ldflags "-X main.version=…" (make
// build, make dist and the Dockerfile do); buildVersion falls back to the
// module version or VCS revision Go stamps into the binary.
var version = ""

func newVersionCmd() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print umbra's version",
		Long: `Print umbra's version, the Go release it was built with and its platform.
"umbra --version" prints the same line.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			v := versionInfo{Version: buildVersion(), Go: runtime.Version(), OS: runtime.GOOS, Arch: runtime.GOARCH}
			return printData(cmd.OutOrStdout(), output, v, func(w io.Writer, _ versionInfo) error {
				_, err := fmt.Fprint(w, versionLine())
				return err
			})
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "text", "output format: text, json or yaml")
	_ = registerEnumCompletion(cmd.Flags(), "output", outputFormats...)
	return cmd
}

// versionInfo is what umbra version -o json prints.
type versionInfo struct {
	Version string `json:"version"`
	Go      string `json:"go"`
	OS      string `json:"os"`
	Arch    string `json:"arch"`
}

// versionLine is the output of umbra version and umbra --version.
func versionLine() string {
	return fmt.Sprintf("umbra %s (%s %s/%s)\n", buildVersion(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

// buildVersion is the version stamped with -ldflags; without one, the
// module version of `go install …@version`, or for a build in a checkout
// the VCS revision (with "-dirty" for uncommitted changes); else "dev".
func buildVersion() string {
	if version != "" {
		return version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "dev"
	}
	return versionFromBuildInfo(bi)
}

func versionFromBuildInfo(bi *debug.BuildInfo) string {
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	var rev string
	var dirty bool
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if rev == "" {
		return "dev"
	}
	rev = rev[:min(len(rev), 12)]
	if dirty {
		rev += "-dirty"
	}
	return "dev-" + strings.TrimSpace(rev)
}
