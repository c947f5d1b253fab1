package identity_test

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestMain fails the test binary if goroutines of this package, mochi or
// paho outlive the tests.
func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if leaked := leakedGoroutines(5 * time.Second); leaked != "" {
			fmt.Fprintf(os.Stderr, "identity: goroutines leaked by tests:\n%s\n", leaked)
			code = 1
		}
	}
	os.Exit(code)
}

var leakMarkers = []string{
	"github.com/umbra-iot/umbra/identity.",
	"github.com/umbra-iot/umbra/broker.",
	"github.com/mochi-mqtt/server",
	"github.com/eclipse/paho.mqtt.golang",
}

// leakedGoroutines polls (there is no event for "goroutine exited") until
// no goroutine stack mentions a marker, or returns the offending stacks
// after timeout.
func leakedGoroutines(timeout time.Duration) string {
	deadline := time.Now().Add(timeout)
	for {
		var leaked []string
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		for _, g := range strings.Split(string(buf), "\n\n") {
			if strings.Contains(g, "TestMain") || strings.Contains(g, "leakedGoroutines") {
				continue
			}
			for _, m := range leakMarkers {
				if strings.Contains(g, m) {
					leaked = append(leaked, g)
					break
				}
			}
		}
		if len(leaked) == 0 {
			return ""
		}
		if time.Now().After(deadline) {
			return strings.Join(leaked, "\n\n")
		}
		time.Sleep(50 * time.Millisecond)
	}
}
