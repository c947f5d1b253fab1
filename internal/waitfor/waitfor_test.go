package waitfor_test

import (
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/internal/waitfor"
)

func TestMain(m *testing.M) { waitfor.Main(m) }

func TestUntil(t *testing.T) {
	var n atomic.Int32
	if !waitfor.Until(5*time.Second, func() bool { return n.Add(1) == 3 }) {
		t.Error("Until = false for a condition true at the third call")
	}
	if waitfor.Until(30*time.Millisecond, func() bool { return false }) {
		t.Error("Until = true for a condition never true")
	}
}

// TestPollExplained: a condition that becomes true passes; the
// explanation of one that does not is what a failing test would print.
func TestPollExplained(t *testing.T) {
	var n atomic.Int32
	waitfor.PollExplained(t, 5*time.Second, "the third call", func() string {
		if n.Add(1) < 3 {
			return "too early"
		}
		return ""
	})
}

// leakMarker names the function of the goroutine TestLeaked starts.
func leakMarker(started chan<- struct{}, stop <-chan struct{}) {
	close(started)
	<-stop
}

func TestLeaked(t *testing.T) {
	before := waitfor.Goroutines()
	started, stop, done := make(chan struct{}), make(chan struct{}), make(chan struct{})
	go func() { defer close(done); leakMarker(started, stop) }()
	<-started
	if got := waitfor.Leaked(0, before, "waitfor_test.leakMarker"); !strings.Contains(got, "leakMarker") {
		t.Errorf("Leaked with a running goroutine = %q, want its stack", got)
	}
	if got := waitfor.Leaked(0, before, "no such function"); got != "" {
		t.Errorf("Leaked with a marker nothing matches = %q, want none", got)
	}
	close(stop)
	<-done
	if got := waitfor.Leaked(5*time.Second, before); got != "" {
		t.Errorf("Leaked after the goroutine ended = %q, want none", got)
	}
}
