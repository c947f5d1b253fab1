// Package loadgentest starts Umbra's MQTT broker (without the shadow engine
// or authentication) on 127.0.0.1:0 for tests and benchmarks of the load
// generator and the fleet simulator, with in-process responders such as
// loadgen.Echo. It is a test harness, like httptest: only _test.go files
// import it.
package loadgentest

import (
	"context"
	"flag"
	"testing"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/internal/waitfor"
)

// MustBroker starts a broker on 127.0.0.1:0 and returns it with its URL
// ("tcp://127.0.0.1:<port>"). It closes on cleanup.
func MustBroker(tb testing.TB) (*broker.Server, string) {
	tb.Helper()
	s, url, err := Start()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = s.Close(context.Background()) })
	return s, url
}

// Start is MustBroker for code without a testing.TB, such as a broker
// subprocess that keeps a benchmark's memory figures free of broker
// allocations. The caller closes the server.
//
// It is Umbra's own broker (no authentication, no engine), so tests of the
// simulator and load generator run on the same connection handling as
// production, including its per-client-ID serialisation of quick
// reconnects, which a bare mochi server lacks. Client queues are generous
// so that a test subscriber watching the whole fleet loses nothing.
func Start() (*broker.Server, string, error) {
	s, err := broker.Open(context.Background(), broker.Config{
		TCPAddr:             "127.0.0.1:0",
		MaxPacketSize:       1 << 20,
		ClientWritesPending: 8192,
		MaxInflight:         8192,
		// Load generators and echo clients publish far faster than a
		// device: no message rate.
		MaxMessageRate: -1,
	})
	if err != nil {
		return nil, "", err
	}
	return s, "tcp://" + s.Addr().String(), nil
}

// Handle subscribes h to filter in process. h gets the publishing client's
// ID, the topic and the payload, and runs on the publisher's goroutine.
func Handle(tb testing.TB, s *broker.Server, filter string, h func(clientID, topic string, payload []byte)) {
	tb.Helper()
	if err := s.Subscribe(filter, h); err != nil {
		tb.Fatalf("subscribe %s: %v", filter, err)
	}
}

func fuzzing() bool {
	for _, name := range []string{"test.fuzz", "test.fuzzworker"} {
		if f := flag.Lookup(name); f != nil && f.Value.String() != "" && f.Value.String() != "false" {
			return true
		}
	}
	return false
}

// RunChecked runs the tests and then fails the run (exit code 1, with the
// goroutines' stacks) if goroutines started during it are still running
// 10s later: every client, responder and broker must be closed. Use it as
// os.Exit(loadgentest.RunChecked(m)) in TestMain. It is waitfor.Run.
func RunChecked(m *testing.M) int { return waitfor.Run(m) }
