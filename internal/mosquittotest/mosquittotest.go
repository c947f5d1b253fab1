// Package mosquittotest runs Debian's mosquitto broker for tests and
// benchmarks that compare Umbra with it: one subprocess per call, on a free
// loopback port, with a configuration in the test's temporary directory,
// stopped at cleanup. A missing mosquitto fails the test (run make deps).
package mosquittotest

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
)

// Path is where Debian's mosquitto package installs the broker.
const Path = "/usr/sbin/mosquitto"

const (
	// startTimeout bounds the wait for mosquitto to report it is running.
	startTimeout = 10 * time.Second
	// stopTimeout bounds the wait for mosquitto to exit after SIGTERM.
	stopTimeout = 10 * time.Second
)

// baseConf is every instance's configuration: one loopback listener,
// anonymous clients, no persistence, logs on stderr. Run as root (as in CI
// containers), mosquitto would switch to the mosquitto user, which cannot
// read files in the test's temporary directory (an acl_file); "user root"
// keeps it as it was started, and has no effect for other users. Start
// appends the caller's lines.
const baseConf = `per_listener_settings false
user root
listener %d 127.0.0.1
allow_anonymous true
persistence false
log_dest stderr
log_type error
log_type warning
log_type notice
log_type information
`

// Start runs mosquitto with baseConf plus extra (mosquitto.conf lines)
// until tb's cleanup and returns its address, "127.0.0.1:port".
func Start(tb testing.TB, extra string) string {
	tb.Helper()
	addr, _ := StartPID(tb, extra)
	return addr
}

// StartPID is Start that also returns mosquitto's process ID, for
// benchmarks that measure its CPU time (see CPUTime).
func StartPID(tb testing.TB, extra string) (string, int) {
	tb.Helper()
	if _, err := os.Stat(Path); err != nil {
		tb.Fatalf("mosquitto not found at %s (%v): run make deps, which installs Debian's mosquitto", Path, err)
	}
	port := freePort(tb)
	conf := filepath.Join(tb.TempDir(), "mosquitto.conf")
	if err := os.WriteFile(conf, append(fmt.Appendf(nil, baseConf, port), extra...), 0o600); err != nil {
		tb.Fatalf("write mosquitto config: %v", err)
	}
	out := &readyWriter{marker: []byte(" running"), ready: make(chan struct{})}
	cmd := exec.Command(Path, "-c", conf)
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
		case <-time.After(stopTimeout):
			_ = cmd.Process.Kill()
			<-exited
			tb.Errorf("mosquitto did not stop within %v of SIGTERM; killed", stopTimeout)
		}
	})
	select {
	case <-out.ready:
	case err := <-exited:
		exited <- err // for the cleanup
		tb.Fatalf("mosquitto exited at start: %v\n%s", err, out)
	case <-time.After(startTimeout):
		tb.Fatalf("mosquitto not running after %v:\n%s", startTimeout, out)
	}
	return fmt.Sprintf("127.0.0.1:%d", port), cmd.Process.Pid
}

// CPUTime returns the CPU time (user and system) process pid has used so
// far, from /proc (in clock ticks of 10 ms), or 0 if it cannot be read.
func CPUTime(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name (field 2) may hold spaces; fields count from after it.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := bytes.Fields(b[i+1:])
	if len(f) < 13 {
		return 0
	}
	var utime, stime int64
	_, err1 := fmt.Sscan(string(f[11]), &utime)
	_, err2 := fmt.Sscan(string(f[12]), &stime)
	if err1 != nil || err2 != nil {
		return 0
	}
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

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

// Version returns mosquitto's version ("2.0.11"), or "" if it cannot tell.
func Version() string {
	out, _ := exec.Command(Path, "-h").CombinedOutput() // -h exits 3 after printing the version
	_, v, ok := bytes.Cut(out, []byte("mosquitto version "))
	if !ok {
		return ""
	}
	v, _, _ = bytes.Cut(v, []byte("\n"))
	return string(bytes.TrimSpace(v))
}
