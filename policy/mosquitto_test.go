package policy_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/internal/testbin"
	"github.com/umbra-iot/umbra/policy"
)

// mosquittoAccepts starts mosquitto 2.0 (Debian package mosquitto) with
// the acl_file at path on a unix socket listener and reports whether it
// started serving (true) or refused the file (false, with its log).
func mosquittoAccepts(t *testing.T, path string) (bool, string) {
	t.Helper()
	bin := testbin.Need(t, "mosquitto", "mosquitto")
	dir := t.TempDir()
	conf := filepath.Join(dir, "mosquitto.conf")
	abs, err := filepath.Abs(path)
	if err != nil {
		t.Fatal(err)
	}
	text := fmt.Sprintf("listener 0 %s\nallow_anonymous true\nacl_file %s\nlog_dest stderr\n", filepath.Join(dir, "sock"), abs)
	if os.Geteuid() == 0 {
		text = "user root\n" + text // mosquitto would drop to a user that cannot read the files
	}
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "-c", conf)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}()
	var log strings.Builder
	sc := bufio.NewScanner(stderr)
	for sc.Scan() {
		log.WriteString(sc.Text() + "\n")
		if strings.Contains(sc.Text(), " running") {
			return true, log.String()
		}
	}
	if ctx.Err() != nil {
		t.Fatalf("mosquitto neither served nor failed within 10s:\n%s", log.String())
	}
	return false, log.String()
}

// TestMosquittoAgrees runs mosquitto 2.0 itself on the shared fixtures and
// on single lines, and pins where Umbra's parser agrees and where it
// differs (as documented in the package documentation and docs/acl.md).
func TestMosquittoAgrees(t *testing.T) {
	tests := []struct {
		name            string
		file            string // a fixture, or "" to use line
		line            string
		mosquitto, want bool // accepted by mosquitto, by Umbra
	}{
		{name: "mosquitto fixture", file: "mosquitto.acl", mosquitto: true, want: true},
		{name: "roles fixture: role lines are Umbra's", file: "roles.acl", mosquitto: false, want: true},
		{name: "bad fixture", file: "bad.acl", mosquitto: false, want: false},
		{name: "rule", line: "topic read a/#", mosquitto: true, want: true},
		{name: "deny", line: "topic deny a/+/b", mosquitto: true, want: true},
		{name: "no access word", line: "topic a/b", mosquitto: true, want: true},
		{name: "space in filter", line: "topic read a b", mosquitto: true, want: true},
		{name: "unknown access", line: "topic a b", mosquitto: false, want: false},
		{name: "hash not last", line: "topic read a/#/b", mosquitto: false, want: false},
		{name: "unknown keyword", line: "bogus a", mosquitto: false, want: false},
		{name: "missing user", line: "user", mosquitto: false, want: false},
		{name: "pattern with %c", line: "pattern read a/%c/#", mosquitto: true, want: true},
		{name: "role line", line: "role device", mosquitto: false, want: true},
		{name: "default line", line: "default replace", mosquitto: false, want: true},
		{name: "tab separator", line: "topic\tread a", mosquitto: false, want: true},
		{name: "indented comment", line: "  # note", mosquitto: false, want: true},
		{name: "access word alone", line: "topic read", mosquitto: true, want: false},
		{name: "%c in a topic line", line: "topic read a/%c", mosquitto: true, want: false},
		{name: "%c inside a level", line: "pattern read a/x%c", mosquitto: true, want: false},
		{name: "shared subscription", line: "topic read $share/g/a", mosquitto: true, want: false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := fixture(tc.file)
			if tc.file == "" {
				path = filepath.Join(t.TempDir(), "line.acl")
				if err := os.WriteFile(path, []byte(tc.line+"\n"), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			if got, log := mosquittoAccepts(t, path); got != tc.mosquitto {
				t.Errorf("mosquitto accepted %s: %t, want %t; its log:\n%s", tc.name, got, tc.mosquitto, log)
			}
			if _, err := policy.Load(path); (err == nil) != tc.want {
				t.Errorf("Load(%s) = %v, want accepted %t", tc.name, err, tc.want)
			}
		})
	}
}
