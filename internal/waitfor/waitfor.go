package waitfor

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Interval is how often Poll and Until try their condition.
const Interval = 10 * time.Millisecond

// LeakGrace is how long Main waits for goroutines to end after the tests.
const LeakGrace = 10 * time.Second

// Poll calls cond every Interval until it returns true, and fails tb
// (Fatal, with "waitfor: <what> not within <timeout>") if it has not
// within timeout. Use it only when no event tells of the change.
func Poll(tb testing.TB, timeout time.Duration, what string, cond func() bool) {
	tb.Helper()
	if !Until(timeout, cond) {
		tb.Fatalf("waitfor: %s not within %v", what, timeout)
	}
}

// PollExplained is Poll for a condition that can say why it does not
// hold yet: cond returns "" once it holds, and otherwise what it sees;
// the failure after timeout quotes its last answer.
func PollExplained(tb testing.TB, timeout time.Duration, what string, cond func() string) {
	tb.Helper()
	var last string
	if !Until(timeout, func() bool { last = cond(); return last == "" }) {
		tb.Fatalf("waitfor: %s not within %v: %s", what, timeout, last)
	}
}

// Until calls cond every Interval until it returns true or timeout has
// passed, and reports whether it returned true. For helpers that report
// the failure themselves.
func Until(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(Interval)
	}
}

// Main runs the package's tests and exits with their code. When they
// pass it then checks for leaked goroutines: those started during the run
// that are still running LeakGrace later (polled: there is no event for
// a goroutine's end), or, with markers, only those whose stack contains
// one of markers (for a package whose tests leave goroutines of others,
// such as an HTTP client's idle connections). Leaks fail the run, with
// their stacks. Fuzzing runs are not checked: the fuzzing engine keeps
// goroutines of its own. Use it as TestMain's last call.
func Main(m *testing.M, markers ...string) {
	os.Exit(Run(m, markers...))
}

// Run is Main without the exit, for a TestMain with more to do.
func Run(m *testing.M, markers ...string) int {
	before := goroutineIDs(stacks())
	code := m.Run()
	if code != 0 || fuzzing() {
		return code
	}
	if leaked := Leaked(LeakGrace, before, markers...); leaked != "" {
		fmt.Fprintf(os.Stderr, "waitfor: goroutines leaked by the tests:\n\n%s\n", leaked)
		return 1
	}
	return 0
}

// Leaked polls until no goroutine outside before (IDs from Goroutines;
// nil: none excluded) matches markers (any goroutine with none), or
// grace has passed, and returns the stacks of those still running.
func Leaked(grace time.Duration, before map[int]bool, markers ...string) string {
	var leaked []string
	Until(grace, func() bool {
		leaked = leaked[:0]
		for _, g := range stacks() {
			id, ok := goroutineID(g)
			if !ok || before[id] || strings.Contains(g, "waitfor.stacks") {
				continue
			}
			if len(markers) == 0 || slices.ContainsFunc(markers, func(m string) bool { return strings.Contains(g, m) }) {
				leaked = append(leaked, g)
			}
		}
		return len(leaked) == 0
	})
	return strings.Join(leaked, "\n\n")
}

// Goroutines returns the IDs of the goroutines running now, for Leaked.
func Goroutines() map[int]bool { return goroutineIDs(stacks()) }

func stacks() []string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return strings.Split(string(buf[:n]), "\n\n")
		}
		buf = make([]byte, 2*len(buf))
	}
}

func goroutineIDs(gs []string) map[int]bool {
	ids := make(map[int]bool, len(gs))
	for _, g := range gs {
		if id, ok := goroutineID(g); ok {
			ids[id] = true
		}
	}
	return ids
}

// goroutineID parses "goroutine 17 [running]:…".
func goroutineID(g string) (int, bool) {
	rest, ok := strings.CutPrefix(g, "goroutine ")
	if !ok {
		return 0, false
	}
	n, _, _ := strings.Cut(rest, " ")
	id, err := strconv.Atoi(n)
	return id, err == nil
}

func fuzzing() bool {
	f := flag.Lookup("test.fuzz")
	return f != nil && f.Value.String() != ""
}
