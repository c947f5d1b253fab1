package conformance

import (
	"bufio"
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

//go:embed suite.py
var suite []byte

// Tests are the suite's tests, in the order it runs them.
var Tests = []string{
	"basic", "retained_messages", "zero_length_clientid", "will_message",
	"offline_message_queueing", "overlapping_subscriptions", "keepalive",
	"redelivery_on_reconnect", "dollar_topics", "unsubscribe", "subscribe_failure",
}

// ErrNoPython is wrapped by Run when no Python 3 with paho-mqtt is found.
var ErrNoPython = errors.New("conformance: no python3 with paho-mqtt (install Debian's python3-paho-mqtt: make deps)")

// Target is a broker to run the suite against.
type Target struct {
	// Addr is the broker's MQTT-over-TCP address, "host:port".
	Addr string
	// Username and Password are sent in every CONNECT when Username is
	// not empty.
	Username, Password string
}

// Result is the outcome of one test.
type Result struct {
	Test    string  `json:"test"`
	Passed  bool    `json:"passed"`
	Detail  string  `json:"detail"` // why it failed; "" when it passed
	Seconds float64 `json:"seconds"`
}

// Run runs the suite against t (only the tests named in only, if any) and
// returns its results in the order of Tests. dir receives the suite's
// file. The error is about running it (no Python, a crash); a failed test
// is a Result.
func Run(ctx context.Context, dir string, t Target, only ...string) ([]Result, error) {
	py, err := Python(ctx)
	if err != nil {
		return nil, err
	}
	host, port, err := net.SplitHostPort(t.Addr)
	if err != nil {
		return nil, fmt.Errorf("conformance: target %q: %w", t.Addr, err)
	}
	script := filepath.Join(dir, "suite.py")
	if err := os.WriteFile(script, suite, 0o600); err != nil {
		return nil, fmt.Errorf("conformance: write suite: %w", err)
	}
	args := append([]string{script}, suiteArgs(host, port, t)...)
	for _, name := range only {
		args = append(args, "--test", name)
	}
	cmd := exec.CommandContext(ctx, py, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("conformance: %s: %w\n%s", strings.Join(cmd.Args, " "), err, stderr.String())
	}
	var results []Result
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		var r Result
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return nil, fmt.Errorf("conformance: suite printed %q: %w", sc.Text(), err)
		}
		results = append(results, r)
	}
	if want := len(Tests); len(only) == 0 && len(results) != want {
		return nil, fmt.Errorf("conformance: %d results, want %d\n%s", len(results), want, stderr.String())
	}
	return results, nil
}

// Python returns a Python 3 that can import paho-mqtt: python3 on PATH,
// else Debian's /usr/bin/python3 (PATH may name another Python, such as
// pyenv's, without Debian's packages).
func Python(ctx context.Context) (string, error) {
	var tried []string
	for _, name := range []string{"python3", "/usr/bin/python3"} {
		p, err := exec.LookPath(name)
		if err != nil {
			continue
		}
		if exec.CommandContext(ctx, p, "-c", "import paho.mqtt.client").Run() == nil {
			return p, nil
		}
		tried = append(tried, p)
	}
	return "", fmt.Errorf("%w (tried %v)", ErrNoPython, tried)
}

// Passed returns the names of the tests rs passed.
func Passed(rs []Result) map[string]bool {
	m := make(map[string]bool, len(rs))
	for _, r := range rs {
		if r.Passed {
			m[r.Test] = true
		}
	}
	return m
}

// Missing returns, in suite order, the tests that ref passed and rs did
// not.
func Missing(ref, rs []Result) []string {
	want, got := Passed(ref), Passed(rs)
	var missing []string
	for _, t := range Tests {
		if want[t] && !got[t] {
			missing = append(missing, t)
		}
	}
	return missing
}

// Table renders the results of several brokers side by side as a Markdown
// table: a row per test, a column per broker (names), ✔ or ✘ with the
// failure's detail, and a total row.
func Table(names []string, results [][]Result) string {
	var b strings.Builder
	b.WriteString("| Test |")
	for _, n := range names {
		fmt.Fprintf(&b, " %s |", n)
	}
	b.WriteString("\n|---|")
	for range names {
		b.WriteString("---|")
	}
	b.WriteString("\n")
	byTest := make([]map[string]Result, len(results))
	for i, rs := range results {
		byTest[i] = make(map[string]Result, len(rs))
		for _, r := range rs {
			byTest[i][r.Test] = r
		}
	}
	for _, t := range Tests {
		fmt.Fprintf(&b, "| %s |", t)
		for i := range names {
			r, ok := byTest[i][t]
			switch {
			case !ok:
				b.WriteString(" — |")
			case r.Passed:
				b.WriteString(" ✔ |")
			default:
				fmt.Fprintf(&b, " ✘ %s |", strings.ReplaceAll(r.Detail, "|", `\|`))
			}
		}
		b.WriteString("\n")
	}
	b.WriteString("| **passed** |")
	for _, rs := range results {
		fmt.Fprintf(&b, " **%d of %d** |", len(Passed(rs)), len(Tests))
	}
	b.WriteString("\n")
	return b.String()
}

// suiteArgs are suite.py's options for the target. Values are joined to
// their option with "=": argparse would take a separate value starting with
// "-" (a random password may) for an option of its own.
func suiteArgs(host, port string, t Target) []string {
	args := []string{"--host=" + host, "--port=" + port}
	if t.Username != "" {
		args = append(args, "--username="+t.Username, "--password="+t.Password)
	}
	return args
}
