package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/firmware"
	"github.com/umbra-iot/umbra/internal/brokertest"
	"github.com/umbra-iot/umbra/rollout"
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
	tests := []struct {
		args []string
		want string // in the error
	}{
		{[]string{"--devices", "0"}, "devices"},
		{[]string{"--fail-mode", "explode"}, "fail mode"},
		{[]string{"--fail-rate", "1.5"}, "fail"},
		{[]string{"--qos", "2"}, "--qos"},
		{[]string{"--label", "no-equals-sign", "--token", "admin:x", "--public-key", "AAAA"}, "--label"},
		{[]string{"--label", "hw=m2", "--username", "u"}, "--label"},
		// Several addresses: each is checked.
		{[]string{"--mqtt", "tcp://127.0.0.1:1,ftp://127.0.0.1:2"}, `server "ftp://127.0.0.1:2": unsupported scheme`},
		{[]string{"--mqtt", "tcp://127.0.0.1:1,,tcp://127.0.0.1:2"}, "empty address"},
		{[]string{"--mqtt", "tcp://127.0.0.1:1,127.0.0.1:2"}, `server "127.0.0.1:2"`},
		{[]string{"--stats-interval", "-1s"}, "stats interval"},
	}
	for _, tt := range tests {
		root := newRootCmd()
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetErr(&out)
		root.SetArgs(append([]string{"sim", "--server", "tcp://127.0.0.1:1"}, tt.args...))
		err := root.ExecuteContext(t.Context())
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("umbra sim %v: got error %v, want one mentioning %q", tt.args, err, tt.want)
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

// TestSimLabelsSelectRollout is the operator's path with security on: the
// simulator enrolls its devices with a label and fetches the fleet public
// key from the API by itself; a rollout selecting that label updates them
// and `rollout status --watch` returns when it succeeded.
func TestSimLabelsSelectRollout(t *testing.T) {
	srv, _ := startSecureServer(t)
	cred := []string{"--api", srv.apiURL(), "--data-dir", srv.dataDir}
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()

	simCtx, stopSim := context.WithCancel(ctx)
	simDone := make(chan cliResult, 1)
	go func() {
		simDone <- runCLI(simCtx, "", append([]string{"sim", "--server", srv.mqttURL(), "--devices", "3", "--id-prefix", "lab-",
			"--label", "hw=m2", "--install-time", "0", "--connect-rate", "0"}, cred...)...)
	}()
	defer func() {
		stopSim()
		if r := waitResult(t, simDone); r.err != nil || strings.Contains(r.stderr, "warning") {
			t.Errorf("umbra sim: %v\n%s", r.err, r.stderr)
		}
	}()
	// A device that does not match the selector.
	adminCLI(t, srv, "device", "add", "other-1", "--label", "hw=m1")

	if _, err := srv.fw.Upload(ctx, firmware.UploadRequest{Version: "1.1.0"}, strings.NewReader("image 1.1.0")); err != nil {
		t.Fatal(err)
	}
	// Enrolment happens as the simulator connects; wait until all three
	// carry the label (the selector freezes the targets at creation).
	for {
		devs, err := srv.ids.ListDevices(ctx)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, d := range devs {
			if d.Labels["hw"] == "m2" {
				n++
			}
		}
		if n == 3 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%d of 3 simulated devices enrolled with hw=m2", n)
		case <-time.After(20 * time.Millisecond):
		}
	}
	r := runCLI(ctx, "", append([]string{"rollout", "create", "--firmware", "1.1.0", "--select", "hw=m2", "--batch-size", "2"}, cred...)...)
	if r.err != nil {
		t.Fatalf("rollout create: %v\n%s", r.err, r.stderr)
	}
	id := strings.TrimSpace(r.stdout)
	r = runCLI(ctx, "", append([]string{"rollout", "status", id, "--watch", "--interval", "100ms", "-o", "json"}, cred...)...)
	if r.err != nil {
		t.Fatalf("rollout status --watch: %v\n%s\n%s", r.err, r.stdout, r.stderr)
	}
	st, err := srv.planner.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != rollout.StateSucceeded || st.Targets != 3 || st.Counts[rollout.DeviceSucceeded] != 3 {
		t.Fatalf("got state %s, %d targets, counts %v; want succeeded, 3 targets, 3 succeeded", st.State, st.Targets, st.Counts)
	}
}
