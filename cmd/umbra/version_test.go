package main

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
)

func TestVersionCommand(t *testing.T) {
	want := versionLine()
	if !strings.HasPrefix(want, "umbra "+buildVersion()+" (go") || !strings.HasSuffix(want, "/"+runtime.GOARCH+")\n") {
		t.Fatalf("versionLine() = %q, want \"umbra <version> (<go> <os>/<arch>)\"", want)
	}
	for _, args := range [][]string{{"version"}, {"--version"}} {
		r := runCLI(t.Context(), "", args...)
		if r.err != nil || r.stdout != want {
			t.Errorf("umbra %s = %q, %v; want %q", strings.Join(args, " "), r.stdout, r.err, want)
		}
	}
	if r := runCLI(t.Context(), "", "version", "extra"); r.err == nil {
		t.Error("umbra version extra: no error, want one for the stray argument")
	}
}

func TestVersionFromBuildInfo(t *testing.T) {
	tests := []struct {
		name string
		bi   debug.BuildInfo
		want string
	}{
		{"go install at a version", debug.BuildInfo{Main: debug.Module{Version: "v1.2.3"}}, "v1.2.3"},
		{"pseudo-version of a checkout", debug.BuildInfo{Main: debug.Module{Version: "v0.0.0-20260101000000-0123456789ab+dirty"}}, "v0.0.0-20260101000000-0123456789ab+dirty"},
		{"devel with a revision", debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: []debug.BuildSetting{
			{Key: "vcs.revision", Value: "0123456789abcdef0123"}, {Key: "vcs.modified", Value: "false"}}}, "dev-0123456789ab"},
		{"devel with changes", debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: []debug.BuildSetting{
			{Key: "vcs.revision", Value: "abc"}, {Key: "vcs.modified", Value: "true"}}}, "dev-abc-dirty"},
		{"nothing known", debug.BuildInfo{Main: debug.Module{Version: "(devel)"}}, "dev"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := versionFromBuildInfo(&tc.bi); got != tc.want {
				t.Errorf("versionFromBuildInfo = %q, want %q", got, tc.want)
			}
		})
	}
}

// TestVersionStamped builds the binary as make build does, with
// -ldflags -X main.version, and checks both ways of asking for it.
func TestVersionStamped(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "umbra")
	out, err := exec.CommandContext(t.Context(), "go", "build", "-ldflags", "-X main.version=v9.8.7-test", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	for _, arg := range []string{"version", "--version"} {
		out, err := exec.CommandContext(t.Context(), bin, arg).Output()
		if err != nil || !strings.HasPrefix(string(out), "umbra v9.8.7-test (go") {
			t.Errorf("umbra %s = %q, %v; want \"umbra v9.8.7-test (go…\"", arg, out, err)
		}
	}
}
