package awssdktest

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/internal/testbin"
)

// Timeout bounds every wait for a script's line: a step normally takes
// milliseconds; node starts in about 0.3 s; -race on two busy cores can
// slow the server many times over.
const Timeout = 30 * time.Second

// Packages are the npm packages package-lock.json pins, with their
// versions, as the tests check them in node_modules.
var Packages = map[string]string{
	"aws-iot-device-sdk":    "2.2.16",
	"aws-iot-device-sdk-v2": "1.28.0",
	"aws-crt":               "1.33.1",
}

// installHint tells how to get what the SDK tests need.
const installHint = "install Node.js and npm (Debian: apt-get install nodejs npm, or make deps) and the pinned SDKs (make sdk-deps: npm ci in testdata/aws-sdk)"

// Dir returns the absolute path of testdata/aws-sdk, the directory of
// the scripts and of package.json, found from the working directory
// upwards (go test runs in the package's directory).
func Dir(tb testing.TB) string {
	tb.Helper()
	wd, err := os.Getwd()
	if err != nil {
		tb.Fatal(err)
	}
	for d := wd; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return filepath.Join(d, "testdata", "aws-sdk")
		}
		if filepath.Dir(d) == d {
			tb.Fatalf("no go.mod above %s", wd)
		}
	}
}

var (
	nodeOnce sync.Once
	nodePath string
	nodeErr  error
)

// Node returns the node binary after checking that the pinned SDK
// packages are installed in Dir's node_modules; it fails the test,
// saying what to install, when either is missing.
func Node(tb testing.TB) string {
	tb.Helper()
	nodeOnce.Do(func() { nodePath, nodeErr = findNode(Dir(tb)) })
	if nodeErr != nil {
		tb.Fatalf("AWS IoT SDK tests: %v; %s", nodeErr, installHint)
	}
	return nodePath
}

func findNode(dir string) (string, error) {
	node, err := testbin.Find("node", "nodejs")
	if err != nil {
		var err2 error
		if node, err2 = testbin.Find("nodejs", "nodejs"); err2 != nil {
			return "", err // names node
		}
	}
	for name, version := range Packages {
		b, err := os.ReadFile(filepath.Join(dir, "node_modules", name, "package.json"))
		if err != nil {
			return "", fmt.Errorf("npm package %s not installed in %s", name, filepath.Join(dir, "node_modules"))
		}
		var pkg struct{ Version string }
		if err := json.Unmarshal(b, &pkg); err != nil || pkg.Version != version {
			return "", fmt.Errorf("npm package %s is %q in %s, want %s (stale node_modules)", name, pkg.Version, dir, version)
		}
	}
	return node, nil
}

// Line is one JSON object a script printed.
type Line map[string]any

// Str returns the string at key ("" if absent or not a string).
func (l Line) Str(key string) string {
	s, _ := l[key].(string)
	return s
}

// Event returns the line's "event" field, the kind of line every script
// prints.
func (l Line) Event() string { return l.Str("event") }

// Decode re-decodes the value at key into v.
func (l Line) Decode(tb testing.TB, key string, v any) {
	tb.Helper()
	b, err := json.Marshal(l[key])
	if err == nil {
		err = json.Unmarshal(b, v)
	}
	if err != nil {
		tb.Fatalf("line %v: decode %s: %v", l, key, err)
	}
}

func (l Line) String() string {
	b, _ := json.Marshal(map[string]any(l))
	return string(b)
}

// Script is a running Node script of Dir.
type Script struct {
	tb    testing.TB
	name  string
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan Line
	done  chan struct{} // closed when the process has exited
	err   error         // the process's exit; read after done

	mu      sync.Mutex   // guards stderr and seen
	stderr  bytes.Buffer // everything the script wrote on stderr
	seen    []string     // every stdout line, for failure messages
	closing bool
}

// Start runs `node <Dir>/<name> args…` with env added to the test's
// environment. Its stdout must be JSON objects, one per line; a line that
// is not one fails the test. The script is ended (stdin closed, then
// killed if it does not exit within Timeout) when the test ends, and its
// output is logged if the test failed.
func Start(tb testing.TB, name string, env []string, args ...string) *Script {
	tb.Helper()
	node := Node(tb)
	dir := Dir(tb)
	cmd := exec.Command(node, append([]string{filepath.Join(dir, name)}, args...)...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	s := &Script{tb: tb, name: name, cmd: cmd, stdin: stdin, lines: make(chan Line, 1024), done: make(chan struct{})}
	cmd.Stderr = &lockedWriter{s: s}
	if err := cmd.Start(); err != nil {
		tb.Fatalf("start %s: %v", name, err)
	}
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 4<<20)
		for sc.Scan() {
			text := sc.Text()
			s.mu.Lock()
			s.seen = append(s.seen, text)
			s.mu.Unlock()
			var l Line
			if err := json.Unmarshal([]byte(text), &l); err != nil {
				l = Line{"event": "bad-output", "text": text}
			}
			s.lines <- l // buffered; a script prints far fewer lines
		}
	}()
	go func() {
		<-scanned
		s.err = cmd.Wait()
		close(s.done)
		close(s.lines)
	}()
	tb.Cleanup(func() {
		s.Close()
		if tb.Failed() {
			tb.Logf("%s stdout:\n%s\n%s stderr:\n%s", name, s.Output(), name, s.Stderr())
		}
	})
	return s
}

type lockedWriter struct{ s *Script }

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.s.mu.Lock()
	defer w.s.mu.Unlock()
	return w.s.stderr.Write(p)
}

// Send writes v as one JSON line to the script's stdin.
func (s *Script) Send(v any) {
	s.tb.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		s.tb.Fatal(err)
	}
	if _, err := s.stdin.Write(append(b, '\n')); err != nil {
		s.tb.Fatalf("%s: send %s: %v (stderr: %s)", s.name, b, err, s.Stderr())
	}
}

// Next returns the script's next line, failing the test if none comes
// within Timeout or the script exits first. A line that is not JSON fails
// the test.
func (s *Script) Next() Line {
	s.tb.Helper()
	select {
	case l, ok := <-s.lines:
		if !ok {
			s.tb.Fatalf("%s exited (%v) before printing another line; stderr:\n%s", s.name, s.err, s.Stderr())
		}
		if l.Event() == "bad-output" {
			s.tb.Fatalf("%s printed a line that is not a JSON object: %q", s.name, l.Str("text"))
		}
		return l
	case <-time.After(Timeout):
		s.tb.Fatalf("%s printed no line within %v; stderr:\n%s", s.name, Timeout, s.Stderr())
	}
	return nil
}

// Await returns the first line that match accepts, skipping the others,
// within Timeout in all.
func (s *Script) Await(what string, match func(Line) bool) Line {
	s.tb.Helper()
	deadline := time.After(Timeout)
	for {
		select {
		case l, ok := <-s.lines:
			if !ok {
				s.tb.Fatalf("%s exited (%v) before printing %s; output:\n%s\nstderr:\n%s", s.name, s.err, what, s.Output(), s.Stderr())
			}
			if l.Event() == "bad-output" {
				s.tb.Fatalf("%s printed a line that is not a JSON object: %q", s.name, l.Str("text"))
			}
			if match(l) {
				return l
			}
		case <-deadline:
			s.tb.Fatalf("%s printed no %s within %v; output:\n%s\nstderr:\n%s", s.name, what, Timeout, s.Output(), s.Stderr())
		}
	}
}

// AwaitEvent is Await for the first line whose event is event.
func (s *Script) AwaitEvent(event string) Line {
	s.tb.Helper()
	return s.Await(fmt.Sprintf("%q event", event), func(l Line) bool { return l.Event() == event })
}

// Wait closes the script's stdin (scripts end when it closes) and waits
// up to Timeout for the script to exit, returning its exit error.
func (s *Script) Wait() error {
	s.stdin.Close()
	select {
	case <-s.done:
		return s.err
	case <-time.After(Timeout):
		s.cmd.Process.Kill()
		<-s.done
		return fmt.Errorf("%s did not exit within %v of its stdin closing; killed", s.name, Timeout)
	}
}

// Close ends the script (as Wait, ignoring its exit status); it is
// idempotent.
func (s *Script) Close() {
	s.mu.Lock()
	closing := s.closing
	s.closing = true
	s.mu.Unlock()
	if !closing {
		_ = s.Wait()
	}
}

// Output returns every line the script printed on stdout so far.
func (s *Script) Output() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Join(s.seen, "\n")
}

// Stderr returns what the script wrote on stderr so far.
func (s *Script) Stderr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stderr.String()
}
