package bench_test

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/internal/loadgen"
)

// mosquittoPath is where Debian's mosquitto package installs the broker.
const mosquittoPath = "/usr/sbin/mosquitto"

// mosquittoStart bounds the wait for mosquitto to report it is running.
const mosquittoStart = 10 * time.Second

// mosquittoConf is the reference broker's configuration: one loopback
// listener, no persistence, no limit on queued messages so that the echo
// client's queue never drops a request (mosquitto's default of 1000 would,
// at 1000 clients), and TCP_NODELAY like Go's sockets (mosquitto's default
// leaves Nagle on, which with delayed ACKs adds ~40 ms to every round trip
// and would make the reference look 20× slower than it is).
const mosquittoConf = `per_listener_settings false
set_tcp_nodelay true
listener %d 127.0.0.1
allow_anonymous true
persistence false
max_queued_messages 0
log_dest stderr
log_type error
log_type warning
log_type notice
log_type information
`

// readyWriter collects a subprocess's output and closes ready when a line
// containing marker has been written.
type readyWriter struct {
	marker []byte
	ready  chan struct{}

	mu   sync.Mutex // guards buf and seen
	buf  bytes.Buffer
	seen bool
}

func (w *readyWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	if !w.seen && bytes.Contains(w.buf.Bytes(), w.marker) {
		w.seen = true
		close(w.ready)
	}
	return len(p), nil
}

func (w *readyWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort(tb testing.TB) int {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("find a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startMosquitto runs mosquitto on a free loopback port until cleanup and
// returns its URL. It fails the benchmark if mosquitto is not installed.
func startMosquitto(tb testing.TB) string {
	tb.Helper()
	if _, err := os.Stat(mosquittoPath); err != nil {
		tb.Fatalf("mosquitto not found at %s (%v): run make deps", mosquittoPath, err)
	}
	port := freePort(tb)
	conf := filepath.Join(tb.TempDir(), "mosquitto.conf")
	if err := os.WriteFile(conf, fmt.Appendf(nil, mosquittoConf, port), 0o600); err != nil {
		tb.Fatalf("write mosquitto config: %v", err)
	}
	out := &readyWriter{marker: []byte(" running"), ready: make(chan struct{})}
	cmd := exec.Command(mosquittoPath, "-c", conf)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		tb.Fatalf("start mosquitto: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }() // ends when the process does; awaited at cleanup
	tb.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(closeTimeout):
			_ = cmd.Process.Kill()
			<-exited
			tb.Errorf("mosquitto did not stop within %v of SIGTERM; killed", closeTimeout)
		}
	})
	select {
	case <-out.ready:
	case err := <-exited:
		exited <- err // for the cleanup
		tb.Fatalf("mosquitto exited at start: %v\n%s", err, out)
	case <-time.After(mosquittoStart):
		tb.Fatalf("mosquitto not running after %v:\n%s", mosquittoStart, out)
	}
	return fmt.Sprintf("tcp://127.0.0.1:%d", port)
}

// runExternalEcho runs the closed loop against url with requests answered
// by an ordinary MQTT client (loadgen.OpenEcho) subscribed through the
// broker: request → broker → echo client → broker → requester.
func runExternalEcho(b *testing.B, url string, clients int) (loadgen.Result, cpuUse) {
	b.Helper()
	echo, err := loadgen.OpenEcho(b.Context(), loadgen.EchoConfig{Server: url, QoS: 1})
	if err != nil {
		b.Fatalf("open echo client on %s: %v", url, err)
	}
	defer closeWithin(b, "echo client", echo)
	return runLoad(b, loadConfig(b, url, clients))
}

// BenchmarkMosquittoReference runs the round trip of BenchmarkShadowUpdate
// (K clients, QoS 1, window 1) against Debian's mosquitto broker, started as
// a subprocess on 127.0.0.1, with an external echo client answering every
// request. In the same iteration it runs the identical setup against
// Umbra's embedded broker (external echo client, no shadow engine), so
// umbra-broker/mosquitto compares the two brokers like for like. Note that
// the single echo client carries every response, so this measures a
// different (and narrower) path than the in-process echo baseline.
func BenchmarkMosquittoReference(b *testing.B) {
	k := numClients(b)
	url := startMosquitto(b)
	// The echo client receives every request: up to K QoS 1 messages in
	// flight to one session. Umbra's defaults (64 queued writes, 256
	// inflight per client) are sized for devices and would drop them, as
	// mosquitto's would without max_queued_messages 0; lift both above K.
	// It also publishes every reply, far beyond a device's message rate,
	// which mosquitto does not limit: no limit here either.
	brk := openBroker(b, broker.Config{ClientWritesPending: int32(4 * k), MaxInflight: uint16(min(4*k, 65535)), MaxMessageRate: -1})
	var m means
	for b.Loop() {
		r, cpu := runExternalEcho(b, url, k)
		ru, cpuu := runExternalEcho(b, brokerURL(brk), k)
		if st := brk.Stats(); st.PacketsDropped != 0 {
			b.Errorf("umbra broker dropped %d messages (queue %d, inflight %d), want 0",
				st.PacketsDropped, st.MessagesDropped, st.InflightDropped)
		}
		m.add("mosquitto-updates/s", r.PerSecond)
		m.add("mosquitto-p50-ms", ms(r.P50))
		m.add("mosquitto-p99-ms", ms(r.P99))
		m.add("mosquitto-gen-cpu-cores", cpu.Self)      // generator + echo client
		m.add("mosquitto-others-cpu-cores", cpu.Others) // mosquitto and anything else running
		m.add("umbra-broker-updates/s", ru.PerSecond)
		m.add("umbra-broker-p50-ms", ms(ru.P50))
		m.add("umbra-broker-p99-ms", ms(ru.P99))
		m.add("umbra-broker-cpu-cores", cpuu.Self)
	}
	m.add("umbra-broker/mosquitto", m.mean("umbra-broker-updates/s")/m.mean("mosquitto-updates/s"))
	m.report(b)
}
