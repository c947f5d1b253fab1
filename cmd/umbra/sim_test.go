package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/internal/brokertest"
	"github.com/umbra-iot/umbra/internal/device"
)

// TestSimCommand runs `umbra sim` against a real server: every simulated
// device reports its firmware (so its shadow exists), and the command
// returns cleanly when interrupted.
func TestSimCommand(t *testing.T) {
	srv := startServer(t)
	watcher := brokertest.Connect(t, srv.mqttURL(), "sim-watcher")
	accepted := brokertest.Subscribe(t, watcher, "state/+/update/accepted", 1)

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	root := newRootCmd()
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs([]string{"sim", "--server", srv.mqttURL(), "--devices", "3", "--id-prefix", "t-", "--connect-rate", "0"})
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()

	seen := map[string]bool{}
	for len(seen) < 3 {
		m := brokertest.Next(t, accepted, 10*time.Second)
		if strings.HasPrefix(m.Topic, "state/t-") {
			seen[strings.Split(m.Topic, "/")[1]] = true
		}
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("umbra sim: %v\n%s", err, errOut.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatal("umbra sim did not stop within 15s of interrupt")
	}
	for id := range seen {
		got, err := srv.eng.Get(t.Context(), deviceID(t, id), nil)
		if err != nil || !strings.Contains(string(got), `"firmware"`) {
			t.Errorf("shadow of %s = %s, %v; want a reported firmware", id, got, err)
		}
	}
}

func TestSimCommandRejectsBadFlags(t *testing.T) {
	tests := [][]string{
		{"sim", "--devices", "0"},
		{"sim", "--fail-mode", "explode"},
		{"sim", "--fail-rate", "1.5"},
		{"sim", "--qos", "2"},
	}
	for _, args := range tests {
		root := newRootCmd()
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetErr(&out)
		root.SetArgs(args)
		if err := root.ExecuteContext(t.Context()); err == nil {
			t.Errorf("umbra %v succeeded, want an error", args)
		}
	}
}

func deviceID(t *testing.T, s string) device.ID {
	t.Helper()
	id, err := device.ParseID(s)
	if err != nil {
		t.Fatal(err)
	}
	return id
}
