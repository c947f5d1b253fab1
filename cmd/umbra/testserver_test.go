package main

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	umbraserver "github.com/umbra-iot/umbra/internal/server"
	"github.com/umbra-iot/umbra/internal/waitfor"
)

// startServer runs runServe on 127.0.0.1:0 ports with a t.TempDir() data
// dir and --insecure-anonymous (for tests that are not about
// authentication), waits until every listener is bound, and on cleanup
// cancels it and checks that it returned without error.
func startServer(t *testing.T) *server {
	t.Helper()
	return startServerConfig(t, func(c *serveConfig) { c.Anonymous = true })
}

// startServerConfig is startServer with authentication on, after edit
// (if not nil) changed the configuration.
func startServerConfig(t *testing.T, edit func(*serveConfig)) *server {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan *server, 1)
	done := make(chan error, 1)
	cfg := serveConfig{
		Config: umbraserver.Config{
			DataDir:  t.TempDir(),
			MQTTAddr: "127.0.0.1:0",
			// A different string from MQTTAddr: the broker refuses two
			// equal addresses, even port 0.
			WSAddr:   "localhost:0",
			HTTPAddr: "127.0.0.1:0",
			Logger:   slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn})),
		},
		shutdownGrace: 5 * time.Second,
		ready:         func(s *server) { ready <- s },
	}
	if edit != nil {
		edit(&cfg)
	}
	go func() { done <- runServe(ctx, cfg) }()
	var srv *server
	select {
	case srv = <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("runServe returned before it was ready: %v", err)
	case <-time.After(10 * time.Second):
		cancel()
		t.Fatal("runServe not ready within 10s")
	}
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("runServe: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Error("runServe did not return within 15s of cancel")
		}
	})
	return srv
}

// mqttURL is the server's MQTT-over-TCP URL.
func (s *server) mqttURL() string { return "tcp://" + s.brk.Addr().String() }

// wsURL is the server's MQTT-over-WebSocket URL.
func (s *server) wsURL() string { return "ws://" + s.brk.WSAddr().String() + "/mqtt" }

// waitSubscribed waits until some subscription matches topic. Another
// client's SUBACK is not an event this process sees, so it polls.
func (s *server) waitSubscribed(t *testing.T, topic string) {
	t.Helper()
	waitfor.Poll(t, 10*time.Second, "a subscriber for "+topic, func() bool { return s.brk.HasSubscribers(topic) })
}

// cliResult is what one run of the CLI produced.
type cliResult struct {
	stdout, stderr string
	err            error
}

// runCLI runs the umbra command line in-process, as main does minus the
// exit.
func runCLI(ctx context.Context, stdin string, args ...string) cliResult {
	var out, errOut bytes.Buffer
	root := newRootCmd()
	root.SetArgs(args)
	root.SetIn(strings.NewReader(stdin))
	root.SetOut(&out)
	root.SetErr(&errOut)
	err := root.ExecuteContext(ctx)
	return cliResult{stdout: out.String(), stderr: errOut.String(), err: err}
}
