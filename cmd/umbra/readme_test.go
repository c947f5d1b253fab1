package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/internal/testbin"
)

// The README's walk-through is a test: TestREADME runs its ```sh blocks in
// order, in one bash process, against a fresh `umbra serve` on free
// loopback ports, so the README cannot rot. A block is run as it is
// unless the line before its fence is a marker:
//
//	<!-- readme-test: skip (why) -->   not run (make run, Ctrl-C, root, Docker, fixed ports)
//	<!-- readme-test: background -->   run in the background (a terminal left running), stopped at the end
//
// The test plays "the repository": its temp dir holds bin/umbra, the
// server's data in umbra-data/ and the blocks' scratch/; UMBRA_API and
// UMBRA_MQTT point at the test's server (the README's settings block
// keeps values already set), and XDG_CONFIG_HOME is private.

// readmeBlock is one ```sh block of the README.
type readmeBlock struct {
	line       int    // of the opening fence
	code       string // the block's lines
	skip       string // the reason given by a skip marker; "" to run it
	background bool
}

var readmeMarker = regexp.MustCompile(`^<!-- readme-test: (skip \((.+)\)|background) -->$`)

// readmeBlocks parses the README's ```sh blocks and their markers. A
// marker that is not followed by a ```sh fence, or an unknown
// readme-test marker, is an error.
func readmeBlocks(path string) ([]readmeBlock, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var (
		blocks  []readmeBlock
		cur     *readmeBlock
		pending *readmeBlock // the marker of the next fence
	)
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		switch {
		case cur != nil && strings.HasPrefix(line, "```"):
			blocks = append(blocks, *cur)
			cur = nil
		case cur != nil:
			cur.code += line + "\n"
		case strings.HasPrefix(line, "<!-- readme-test"):
			m := readmeMarker.FindStringSubmatch(line)
			if m == nil {
				return nil, fmt.Errorf("%s:%d: unknown marker %q: want <!-- readme-test: skip (reason) --> or <!-- readme-test: background -->", path, n, line)
			}
			pending = &readmeBlock{skip: m[2], background: m[1] == "background"}
		case line == "```sh":
			cur = &readmeBlock{line: n}
			if pending != nil {
				cur.skip, cur.background = pending.skip, pending.background
				pending = nil
			}
		default:
			if pending != nil {
				return nil, fmt.Errorf("%s:%d: a readme-test marker must be followed by a ```sh fence", path, n)
			}
		}
	}
	if cur != nil {
		return nil, fmt.Errorf("%s:%d: unclosed ```sh block", path, cur.line)
	}
	return blocks, sc.Err()
}

// readmeScript is the bash script of the blocks to run: each foreground
// block announced on stderr (so a failure names its line), each
// background block started with its output in scratch/, and every
// background process stopped at the end.
func readmeScript(blocks []readmeBlock) string {
	var sb strings.Builder
	sb.WriteString("set -eo pipefail\nbg_pids=()\ntrap 'for p in \"${bg_pids[@]}\"; do kill \"$p\" 2>/dev/null || true; done' EXIT\nmkdir -p scratch\n")
	for _, b := range blocks {
		switch {
		case b.skip != "":
			continue
		case b.background:
			fmt.Fprintf(&sb, "echo '### README.md:%d (background)' >&2\n( %s) > scratch/readme-bg-%d.log 2>&1 &\nbg_pids+=($!)\n",
				b.line, strings.TrimRight(b.code, "\n")+"\n", b.line)
		default:
			fmt.Fprintf(&sb, "echo '### README.md:%d' >&2\n%s", b.line, b.code)
		}
	}
	sb.WriteString("echo '### README.md: done' >&2\n")
	return sb.String()
}

// readmeTimeout bounds the whole walk-through: the rollout of 50
// simulated devices is its longest part (about 20 s alone).
const readmeTimeout = 4 * time.Minute

// TestREADME runs the README's walk-through; see the top of this file.
// It needs bash, mosquitto-clients and curl (make deps installs them).
func TestREADME(t *testing.T) {
	for _, tool := range [][2]string{{"bash", "bash"}, {"mosquitto_pub", "mosquitto-clients"}, {"mosquitto_sub", "mosquitto-clients"}, {"curl", "curl"}} {
		testbin.Need(t, tool[0], tool[1])
	}
	blocks, err := readmeBlocks("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	run := 0
	for _, b := range blocks {
		if b.skip == "" {
			run++
		}
	}
	if run < 8 {
		t.Fatalf("only %d runnable blocks in README.md: the markers skip too much", run)
	}

	dir := t.TempDir()
	bin := buildUmbra(t)
	if err := os.MkdirAll(filepath.Join(dir, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(bin, filepath.Join(dir, "bin", "umbra")); err != nil {
		if b, rerr := os.ReadFile(bin); rerr != nil || os.WriteFile(filepath.Join(dir, "bin", "umbra"), b, 0o755) != nil {
			t.Fatalf("copy umbra into bin/: %v", err)
		}
	}
	_, mqttAddr, httpAddr := startServe(t, bin, filepath.Join(dir, "umbra-data"),
		"--mqtt-addr", "127.0.0.1:0", "--ws-addr", "", "--http-addr", "127.0.0.1:0")

	ctx, cancel := context.WithTimeout(t.Context(), readmeTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-c", readmeScript(blocks))
	cmd.Dir = dir
	// The caller's UMBRA_* settings stay out: the README runs on defaults.
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "UMBRA_") })
	cmd.Env = append(env,
		"UMBRA_API=http://"+httpAddr, "UMBRA_MQTT=tcp://"+mqttAddr,
		"XDG_CONFIG_HOME="+filepath.Join(dir, "config"), "HOME="+filepath.Join(dir, "home"),
		"NO_COLOR=1", "TERM=dumb")
	// Its own process group: a timeout kills the background blocks too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	if err != nil || !strings.Contains(stderr.String(), "### README.md: done") {
		last := "(none)"
		if i := strings.LastIndex(stderr.String(), "### README.md:"); i >= 0 {
			last, _, _ = strings.Cut(stderr.String()[i+4:], "\n")
		}
		var bg strings.Builder
		logs, _ := filepath.Glob(filepath.Join(dir, "scratch", "readme-bg-*.log"))
		for _, l := range logs {
			b, _ := os.ReadFile(l)
			fmt.Fprintf(&bg, "--- %s (last 2000 bytes)\n%s\n", filepath.Base(l), tail(b, 2000))
		}
		t.Fatalf("the README's walk-through failed in the block at %s: %v\nstdout:\n%s\nstderr:\n%s\n%s",
			last, err, tail(stdout.Bytes(), 4000), tail(stderr.Bytes(), 4000), bg.String())
	}
	// A few outcomes that exit codes alone would not show.
	for _, want := range []string{"lamp1 version", `"color":"red"`, "refused: integrators may not write"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("the walk-through's output lacks %q:\n%s", want, tail(stdout.Bytes(), 4000))
		}
	}
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// TestREADMEBlocks: the parser finds the blocks and their markers, and
// refuses a marker it does not know.
func TestREADMEBlocks(t *testing.T) {
	dir := t.TempDir()
	write := func(s string) string {
		p := filepath.Join(dir, "R.md")
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	blocks, err := readmeBlocks(write("x\n```sh\necho a\n```\n<!-- readme-test: skip (no) -->\n```sh\necho b\n```\n<!-- readme-test: background -->\n```sh\nsleep 9\n```\n```go\nx\n```\n"))
	if err != nil || len(blocks) != 3 || blocks[0].code != "echo a\n" || blocks[1].skip != "no" || !blocks[2].background {
		t.Fatalf("blocks %+v, %v", blocks, err)
	}
	for _, bad := range []string{"<!-- readme-test: sometimes -->\n```sh\nx\n```\n", "<!-- readme-test: background -->\ntext\n```sh\nx\n```\n", "```sh\nx\n"} {
		if _, err := readmeBlocks(write(bad)); err == nil {
			t.Errorf("readmeBlocks(%q): no error", bad)
		}
	}
}
