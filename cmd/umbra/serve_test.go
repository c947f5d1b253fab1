package main

import (
	"bytes"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestServeFlagValidation(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"non-loopback mqtt", []string{"--insecure-anonymous", "--mqtt-addr", "0.0.0.0:1883"}, "only loopback addresses"},
		{"non-loopback http", []string{"--insecure-anonymous", "--http-addr", "10.1.2.3:80"}, "only loopback addresses"},
		{"non-loopback tls", []string{"--insecure-anonymous", "--tls-addr", "0.0.0.0:8883", "--tls-cert", "c", "--tls-key", "k"}, "only loopback addresses"},
		// With authentication on, any address may be used: this one passes
		// validation and fails only to bind (TEST-NET-1 is not local).
		{"non-loopback with auth", []string{"--mqtt-addr", "192.0.2.1:1883"}, "cannot assign requested address"},
		{"tls without cert", []string{"--tls-addr", "127.0.0.1:0"}, "--tls-addr needs --tls-cert and --tls-key"},
		{"cert without tls", []string{"--tls-cert", "c.pem"}, "need --tls-addr"},
		{"tls cert missing", []string{"--tls-addr", "127.0.0.1:0", "--tls-cert", "nope.pem", "--tls-key", "nope.key"}, "--tls-addr:"},
		{"mtls and anonymous", []string{"--insecure-anonymous", "--tls-addr", "127.0.0.1:0", "--tls-cert", "c", "--tls-key", "k", "--client-ca", "ca"}, "exclude each other"},
		{"bound CA and anonymous", []string{"--insecure-anonymous", "--tls-addr", "127.0.0.1:0", "--tls-cert", "c", "--tls-key", "k", "--bound-client-ca", "ca"}, "exclude each other"},
		{"client cert mode", []string{"--tls-addr", "127.0.0.1:0", "--tls-cert", "c", "--tls-key", "k", "--client-cert", "always"}, `--client-cert "always": want optional or required`},
		{"client cert required without CA", []string{"--tls-addr", "127.0.0.1:0", "--tls-cert", "c", "--tls-key", "k", "--client-cert", "required"}, "--client-cert required needs --client-ca or --bound-client-ca"},
		{"client cert without tls", []string{"--client-cert", "required"}, "need --tls-addr"},
		{"bound CA without tls", []string{"--bound-client-ca", "aws.pem"}, "need --tls-addr"},
		{"empty CA file name", []string{"--tls-addr", "127.0.0.1:0", "--tls-cert", "c", "--tls-key", "k", "--client-ca", "a.pem,,b.pem"}, "empty file name"},
		{"bad address", []string{"--ws-addr", "nonsense"}, "--ws-addr nonsense"},
		{"no mqtt at all", []string{"--mqtt-addr", "", "--ws-addr", ""}, "at least one of --mqtt-addr and --ws-addr"},
		{"log format", []string{"--log-format", "xml"}, `--log-format "xml"`},
		{"log level", []string{"--log-level", "loud"}, `--log-level "loud"`},
		{"shadow size", []string{"--max-shadow-size", "10"}, "--max-shadow-size 10"},
		{"named shadows negative", []string{"--max-named-shadows", "-1"}, "--max-named-shadows -1"},
		{"named shadows too many", []string{"--max-named-shadows", "1001"}, "--max-named-shadows 1001"},
		{"device rate zero", []string{"--device-rate", "0"}, "--device-rate 0"},
		{"jobs rate zero", []string{"--jobs-rate", "0"}, "--jobs-rate 0"},
		{"jobs rate NaN", []string{"--jobs-rate", "NaN"}, "--jobs-rate NaN"},
		{"retry cache entries", []string{"--retry-cache-entries", "0"}, "--retry-cache-entries 0"},
		{"retry cache bytes", []string{"--retry-cache-bytes", "100"}, "--retry-cache-bytes 100"},
		{"pending below a packet", []string{"--max-pending-bytes", "1000"}, "--max-pending-bytes 1000"},
		{"service pending negative", []string{"--service-max-pending-bytes", "-1"}, "--service-max-pending-bytes -1"},
		{"write timeout", []string{"--write-timeout", "10ms"}, "--write-timeout 10ms"},
		{"read loops negative", []string{"--read-loops", "-2"}, "--read-loops -2"},
		{"read loops too many", []string{"--read-loops", "5000"}, "--read-loops 5000"},
		{"subscriptions zero", []string{"--max-subscriptions", "0"}, "--max-subscriptions 0"},
		{"service subscriptions", []string{"--service-max-subscriptions", "-2"}, "--service-max-subscriptions -2"},
		{"max retained zero", []string{"--max-retained", "0"}, "--max-retained 0: must be positive, or -1"},
		{"max retained bytes", []string{"--max-retained-bytes", "-2"}, "--max-retained-bytes -2"},
		{"max queued bytes", []string{"--max-queued-bytes", "0"}, "--max-queued-bytes 0"},
		{"service queued bytes", []string{"--service-max-queued-bytes", "-5"}, "--service-max-queued-bytes -5"},
		{"sessions per identity", []string{"--max-sessions-per-identity", "0"}, "--max-sessions-per-identity 0"},
		{"message rate zero", []string{"--max-message-rate", "0"}, "--max-message-rate 0"},
		{"service message rate", []string{"--service-max-message-rate", "-2"}, "--service-max-message-rate -2"},
		{"message burst", []string{"--max-message-burst", "0"}, "--max-message-burst 0"},
		{"service message burst", []string{"--service-max-message-burst", "-1"}, "--service-max-message-burst -1"},
		{"connections per identity", []string{"--max-connections-per-identity", "0"}, "--max-connections-per-identity 0"},
		{"connect timeout", []string{"--connect-timeout", "10ms"}, "--connect-timeout 10ms"},
		{"sys interval", []string{"--sys-interval", "500ms"}, "--sys-interval 500ms"},
		{"sse connections", []string{"--max-sse-connections", "0"}, "--max-sse-connections 0"},
		{"sse connections per token", []string{"--max-sse-connections-per-token", "-1"}, "--max-sse-connections-per-token -1"},
		{"sse buffer", []string{"--sse-buffer", "0"}, "--sse-buffer 0"},
		{"public url", []string{"--public-url", "ftp://x"}, "--public-url"},
		{"url ttl", []string{"--url-ttl", "0s"}, "--url-ttl"},
		{"allowed origin with a path", []string{"--allowed-origins", "https://console.example.com/app"}, "--allowed-origins"},
		{"allowed origin without scheme", []string{"--allowed-origins", "http://ok.example,console.example.com"}, `--allowed-origins "console.example.com"`},
		{"nats without node id", []string{"--nats", "nats://127.0.0.1:4222"}, "--nats needs --node-id"},
		{"node id without nats", []string{"--node-id", "n1"}, "--node-id is for cluster mode"},
		{"nats not a URL", []string{"--nats", "127.0.0.1:4222", "--node-id", "n1"}, `--nats "127.0.0.1:4222": want nats://host:port`},
		{"nats replicas zero", []string{"--nats", "nats://127.0.0.1:4222", "--node-id", "n1", "--nats-replicas", "0"}, "--nats-replicas 0"},
		{"node id not an ID", []string{"--nats", "nats://127.0.0.1:4222", "--node-id", "n 1"}, `--node-id "n 1"`},
		{"node id with a dot", []string{"--nats", "nats://127.0.0.1:4222", "--node-id", "n.1"}, `--node-id "n.1": want 1 to 64`},
		{"cluster max subscriptions", []string{"--nats", "nats://127.0.0.1:4222", "--node-id", "n1", "--cluster-max-subscriptions", "0"}, "--cluster-max-subscriptions 0"},
		{"cluster outbound buffer", []string{"--nats", "nats://127.0.0.1:4222", "--node-id", "n1", "--cluster-outbound-buffer", "-1"}, "--cluster-outbound-buffer -1"},
		{"cluster inbound buffer", []string{"--nats", "nats://127.0.0.1:4222", "--node-id", "n1", "--cluster-inbound-buffer", "0"}, "--cluster-inbound-buffer 0"},
		{"planner rpc inflight", []string{"--nats", "nats://127.0.0.1:4222", "--node-id", "n1", "--planner-rpc-inflight", "0"}, "--planner-rpc-inflight 0"},
		{"planner rpc max body", []string{"--nats", "nats://127.0.0.1:4222", "--node-id", "n1", "--planner-rpc-max-body", "100"}, "--planner-rpc-max-body 100"},
		{"planner lease ttl", []string{"--nats", "nats://127.0.0.1:4222", "--node-id", "n1", "--planner-lease-ttl", "1500ms"}, "--planner-lease-ttl 1.5s: want whole seconds"},
		{"planner open retries", []string{"--nats", "nats://127.0.0.1:4222", "--node-id", "n1", "--planner-open-retries", "0"}, "--planner-open-retries 0: must be at least 1"},
		{"planner rpc max staged", []string{"--nats", "nats://127.0.0.1:4222", "--node-id", "n1", "--planner-rpc-max-staged", "0"}, "--planner-rpc-max-staged 0: must be at least 1"},
		{"planner stay out", []string{"--nats", "nats://127.0.0.1:4222", "--node-id", "n1", "--planner-stay-out", "500ms"}, "--planner-stay-out 500ms: want at least 1s"},
		{"empty data dir", []string{"--data-dir", ""}, "--data-dir must not be empty"},
		{"gc heap floor negative", []string{"--gc-heap-floor", "-1"}, "--gc-heap-floor -1: must not be negative"},
		{"stray argument", []string{"extra"}, "unknown command"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root := newRootCmd()
			var out bytes.Buffer
			root.SetOut(&out)
			root.SetErr(&out)
			root.SetArgs(append([]string{"serve", "--data-dir", t.TempDir()}, tc.args...))
			if tc.name == "empty data dir" {
				root.SetArgs(append([]string{"serve"}, tc.args...))
			}
			err := root.ExecuteContext(t.Context())
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("serve %v = %v, want an error containing %q", tc.args, err, tc.want)
			}
		})
	}
}

func TestServeEnvironment(t *testing.T) {
	t.Setenv("UMBRA_MQTT_ADDR", "192.0.2.1:1883")
	t.Setenv("UMBRA_INSECURE_ANONYMOUS", "true") // beyond loopback is refused only without auth
	root := newRootCmd()
	root.SetArgs([]string{"serve", "--data-dir", t.TempDir()})
	var out bytes.Buffer
	root.SetErr(&out)
	err := root.ExecuteContext(t.Context())
	if err == nil || !strings.Contains(err.Error(), "--mqtt-addr 192.0.2.1:1883") {
		t.Fatalf("serve with UMBRA_MQTT_ADDR = %v, want the env value to be used (and refused)", err)
	}
	t.Setenv("UMBRA_DEVICE_RATE", "fast")
	root = newRootCmd()
	root.SetArgs([]string{"serve", "--data-dir", t.TempDir()})
	if err := root.ExecuteContext(t.Context()); err == nil || !strings.Contains(err.Error(), "UMBRA_DEVICE_RATE") {
		t.Fatalf("serve with UMBRA_DEVICE_RATE=fast = %v, want an error naming the variable", err)
	}
}

// TestGracefulShutdown: SIGTERM makes serve close its listeners and
// database and exit 0; the data dir is then free for a new server.
func TestGracefulShutdown(t *testing.T) {
	bin := buildUmbra(t)
	dataDir := t.TempDir()
	proc, _ := startProcess(t, bin, dataDir)
	if err := proc.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- proc.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("serve after SIGTERM exited with %v, want status 0", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("serve did not exit within 15s of SIGTERM")
	}
	startProcess(t, bin, dataDir) // the lock was released
}
