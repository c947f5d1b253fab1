package conformance

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestSuiteArgsParse runs suite.py's own argument parser on suiteArgs'
// options. A password starting with "-" (a random token may) given as a
// separate argument was read by argparse as an option, and TestConformance
// failed with "expected one argument".
func TestSuiteArgsParse(t *testing.T) {
	python, err := Python(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "suite.py"), suite, 0o600); err != nil {
		t.Fatal(err)
	}
	const probe = "import sys; sys.path.insert(0, sys.argv.pop(1)); import suite; " +
		"a = suite.parser().parse_args(); print(a.host, a.port, a.username, a.password)"
	for _, tc := range []struct {
		name string
		t    Target
		want []string
	}{
		{"anonymous", Target{}, []string{"127.0.0.1", "1883", "None", "None"}},
		{"plain", Target{Username: "ops", Password: "s3cret"}, []string{"127.0.0.1", "1883", "ops", "s3cret"}},
		{"dash password", Target{Username: "ops", Password: "-Xk9_"}, []string{"127.0.0.1", "1883", "ops", "-Xk9_"}},
		{"option-like values", Target{Username: "-u", Password: "--help"}, []string{"127.0.0.1", "1883", "-u", "--help"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := suiteArgs("127.0.0.1", "1883", tc.t)
			out, err := exec.Command(python, append([]string{"-c", probe, dir}, args...)...).CombinedOutput()
			if err != nil {
				t.Fatalf("suite.py's parser refused %q: %v\n%s", args, err, out)
			}
			if got := strings.Fields(string(out)); !slices.Equal(got, tc.want) {
				t.Errorf("parsed %q as %q, want %q", args, got, tc.want)
			}
		})
	}
}
