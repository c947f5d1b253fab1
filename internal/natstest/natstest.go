package natstest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// EnvBinary names the environment variable that, when set, is the path of
// the nats-server binary to run.
const EnvBinary = "UMBRA_NATS_SERVER"

const (
	// readyTimeout bounds the wait for a server (or a cluster) to be ready.
	readyTimeout = 30 * time.Second
	// stopTimeout bounds the wait for a server to exit after SIGTERM at
	// cleanup; then it is killed.
	stopTimeout = 10 * time.Second
	// startAttempts is how often a start is tried with fresh ports when a
	// port picked as free was taken before the server bound it.
	startAttempts = 3
	// logTail is how much of a server's log a failing test shows.
	logTail = 4 << 10
)

// Binary returns the path of the nats-server to run: $UMBRA_NATS_SERVER,
// else .tools/bin/nats-server under the module root, else nats-server on
// PATH. The error says to run make deps.
func Binary() (string, error) {
	if p := os.Getenv(EnvBinary); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("nats-server not found: %s=%s: %w (unset it, or run `make deps`)", EnvBinary, p, err)
		}
		return p, nil
	}
	if root := moduleRoot(); root != "" {
		p := filepath.Join(root, ".tools", "bin", "nats-server")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	if p, err := exec.LookPath("nats-server"); err == nil {
		return p, nil
	}
	return "", errors.New("nats-server not found: run `make deps` (it builds the pinned nats-server into .tools/bin)")
}

// moduleRoot returns the directory holding this module's go.mod, found from
// the working directory (a test runs in its package's directory) or, failing
// that, from this source file's path; "" if neither leads to it.
func moduleRoot() string {
	var starts []string
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	if _, file, _, ok := runtime.Caller(0); ok {
		starts = append(starts, filepath.Dir(file))
	}
	for _, dir := range starts {
		for {
			b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
			if err == nil && bytes.Contains(b, []byte("module github.com/umbra-iot/umbra\n")) {
				return dir
			}
			parent := filepath.Dir(dir)
			if parent == dir {
				break
			}
			dir = parent
		}
	}
	return ""
}

// Server is one nats-server child process with JetStream enabled.
type Server struct {
	// Name is the server's name (server_name), unique in its cluster.
	Name string

	tb          testing.TB
	bin         string
	conf        string
	logPath     string
	clientPort  int
	clusterPort int // 0 for a server outside a cluster

	mu     sync.Mutex    // guards cmd and exited
	cmd    *exec.Cmd     // nil while stopped
	exited chan struct{} // closed when cmd has ended
}

// URL returns the server's client URL, nats://127.0.0.1:port.
func (s *Server) URL() string { return fmt.Sprintf("nats://127.0.0.1:%d", s.clientPort) }

// URLs returns the server's client URL alone, so a Server and a Cluster can
// be used alike.
func (s *Server) URLs() []string { return []string{s.URL()} }

// Replicas returns 1: a single server holds one replica of each stream.
func (s *Server) Replicas() int { return 1 }

// Start runs one nats-server with JetStream (no cluster) until tb's cleanup
// and returns it once it is ready.
func Start(tb testing.TB) *Server {
	tb.Helper()
	bin := mustBinary(tb)
	var err error
	for range startAttempts {
		s := &Server{Name: "n1", tb: tb, bin: bin, clientPort: freePort(tb)}
		dir := tb.TempDir()
		if err = s.configure(dir, ""); err != nil {
			tb.Fatal(err)
		}
		if err = s.start(); err != nil {
			continue
		}
		tb.Cleanup(s.stop)
		ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
		err = s.awaitReady(ctx)
		cancel()
		if err != nil && s.portTaken() {
			s.stop() // a port picked as free was taken meanwhile: try others
			continue
		}
		if err != nil {
			tb.Fatalf("nats-server %s not ready: %v\n%s", s.Name, err, s.Log())
		}
		return s
	}
	tb.Fatalf("start nats-server: %v", err)
	return nil
}

// Cluster is three nats-servers with JetStream in one cluster, connected by
// routes, so buckets can have three replicas (R3).
type Cluster struct {
	// Servers are the cluster's members, n1, n2 and n3.
	Servers []*Server
}

// URLs returns every member's client URL.
func (c *Cluster) URLs() []string {
	urls := make([]string, len(c.Servers))
	for i, s := range c.Servers {
		urls[i] = s.URL()
	}
	return urls
}

// Replicas returns the number of members, the replica count of its buckets.
func (c *Cluster) Replicas() int { return len(c.Servers) }

// clusterSize is the number of servers StartCluster runs.
const clusterSize = 3

// StartCluster runs a three-server JetStream cluster until tb's cleanup and
// returns it once every member answers and an R3 stream can be created.
func StartCluster(tb testing.TB) *Cluster {
	tb.Helper()
	bin := mustBinary(tb)
	var err error
	for range startAttempts {
		var c *Cluster
		c, err = startCluster(tb, bin)
		if err != nil {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
		err = c.awaitReady(ctx)
		cancel()
		if err != nil && slices.ContainsFunc(c.Servers, (*Server).portTaken) {
			for _, s := range c.Servers { // a port picked as free was taken meanwhile: try others
				s.stop()
			}
			continue
		}
		if err != nil {
			var logs strings.Builder
			for _, s := range c.Servers {
				fmt.Fprintf(&logs, "--- %s\n%s\n", s.Name, s.Log())
			}
			tb.Fatalf("nats cluster not ready: %v\n%s", err, logs.String())
		}
		return c
	}
	tb.Fatalf("start nats cluster: %v", err)
	return nil
}

// startCluster configures and starts the members; on an error it stops
// those it started.
func startCluster(tb testing.TB, bin string) (*Cluster, error) {
	c := &Cluster{}
	for i := range clusterSize {
		c.Servers = append(c.Servers, &Server{
			Name: fmt.Sprintf("n%d", i+1), tb: tb, bin: bin,
			clientPort: freePort(tb), clusterPort: freePort(tb),
		})
	}
	for _, s := range c.Servers {
		var routes []string // to every other member
		for _, o := range c.Servers {
			if o != s {
				routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", o.clusterPort))
			}
		}
		if err := s.configure(tb.TempDir(), strings.Join(routes, ", ")); err != nil {
			tb.Fatal(err)
		}
	}
	for i, s := range c.Servers {
		if err := s.start(); err != nil {
			for _, started := range c.Servers[:i] {
				started.stop()
			}
			return nil, err
		}
		tb.Cleanup(s.stop)
	}
	return c, nil
}

// awaitReady waits until every member is ready and an R3 stream can be
// created (a meta leader is elected and knows all three peers).
func (c *Cluster) awaitReady(ctx context.Context) error {
	for _, s := range c.Servers {
		if err := s.awaitReady(ctx); err != nil {
			return fmt.Errorf("%s: %w", s.Name, err)
		}
	}
	nc, err := nats.Connect(strings.Join(c.URLs(), ","))
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	// No event says "the meta group knows every peer": poll the one
	// operation that needs it, at a short interval, until ctx ends.
	cfg := jetstream.StreamConfig{Name: "natstest_probe", Subjects: []string{"natstest.probe"}, Replicas: clusterSize, Storage: jetstream.MemoryStorage}
	for {
		attempt, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err = js.CreateStream(attempt, cfg)
		cancel()
		if err == nil {
			return js.DeleteStream(ctx, cfg.Name)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("create an R3 probe stream: %w", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// configure writes the server's configuration file into dir (its store
// directory and log are there too). routes, if not empty, makes it a member
// of the cluster "umbra-test".
func (s *Server) configure(dir, routes string) error {
	s.conf = filepath.Join(dir, "nats.conf")
	s.logPath = filepath.Join(dir, "nats.log")
	var b strings.Builder
	fmt.Fprintf(&b, "server_name: %s\nlisten: 127.0.0.1:%d\n", s.Name, s.clientPort)
	// sync_interval: always makes every acknowledged write reach the disk
	// (fsync) before the ack, the promise bbolt gives in single-node mode.
	fmt.Fprintf(&b, "jetstream {\n  store_dir: %q\n  max_memory_store: 256MB\n  max_file_store: 4GB\n  sync_interval: always\n}\n", filepath.Join(dir, "jetstream"))
	if routes != "" {
		fmt.Fprintf(&b, "cluster {\n  name: umbra-test\n  listen: 127.0.0.1:%d\n  routes: [%s]\n}\n", s.clusterPort, routes)
	}
	if err := os.WriteFile(s.conf, []byte(b.String()), 0o600); err != nil {
		return fmt.Errorf("write nats-server config: %w", err)
	}
	return nil
}

// start runs the process. It returns an error if the process cannot be
// started or exits at once (a port taken meanwhile).
func (s *Server) start() error {
	logf, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("open nats-server log: %w", err)
	}
	defer logf.Close() // the child holds its own descriptor
	cmd := exec.Command(s.bin, "-c", s.conf)
	cmd.Stdout, cmd.Stderr = logf, logf
	setParentDeathSignal(cmd)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", s.bin, err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }() // ends with the process; awaited by stop and Kill
	s.mu.Lock()
	s.cmd, s.exited = cmd, exited
	s.mu.Unlock()
	return nil
}

// awaitReady waits until a client connects and JetStream answers an
// account-info request through this server, or the process exits.
func (s *Server) awaitReady(ctx context.Context) error {
	s.mu.Lock()
	exited := s.exited
	s.mu.Unlock()
	for {
		err := s.probe(ctx)
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("nats-server exited: %w", err)
		case <-ctx.Done():
			return err
		case <-time.After(25 * time.Millisecond):
		}
	}
}

// probe connects once (no reconnects) and asks JetStream for the account's
// information.
func (s *Server) probe(ctx context.Context) error {
	nc, err := nats.Connect(s.URL(), nats.NoReconnect(), nats.Timeout(time.Second))
	if err != nil {
		return fmt.Errorf("connect %s: %w", s.URL(), err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	attempt, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if _, err := js.AccountInfo(attempt); err != nil {
		return fmt.Errorf("jetstream account info: %w", err)
	}
	return nil
}

// Kill sends SIGKILL to the server (kill -9) and waits for it to end.
func (s *Server) Kill() {
	s.tb.Helper()
	s.mu.Lock()
	cmd, exited := s.cmd, s.exited
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		s.tb.Fatalf("kill nats-server %s: not running", s.Name)
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-exited
}

// Restart starts a killed server again with the same ports and store and
// waits until it is ready.
func (s *Server) Restart() {
	s.tb.Helper()
	s.mu.Lock()
	running := s.cmd != nil
	s.mu.Unlock()
	if running {
		s.tb.Fatalf("restart nats-server %s: still running (Kill it first)", s.Name)
	}
	if err := s.start(); err != nil {
		s.tb.Fatalf("restart nats-server %s: %v", s.Name, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	if err := s.awaitReady(ctx); err != nil {
		s.tb.Fatalf("nats-server %s not ready after restart: %v\n%s", s.Name, err, s.Log())
	}
}

// portTaken reports whether the server's log says a port it was given was
// bound by another process first (freePort's ports are free only a moment).
func (s *Server) portTaken() bool {
	return strings.Contains(s.Log(), "address already in use")
}

// PID returns the process ID of the running server, or 0.
func (s *Server) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return 0
	}
	return s.cmd.Process.Pid
}

// stop ends the server with SIGTERM (SIGKILL after stopTimeout) and, if the
// test failed, shows the end of its log.
func (s *Server) stop() {
	s.mu.Lock()
	cmd, exited := s.cmd, s.exited
	s.cmd = nil
	s.mu.Unlock()
	if cmd != nil {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(stopTimeout):
			_ = cmd.Process.Kill()
			<-exited
			s.tb.Errorf("nats-server %s did not stop within %v of SIGTERM; killed", s.Name, stopTimeout)
		}
	}
	if s.tb.Failed() {
		s.tb.Logf("nats-server %s log (tail):\n%s", s.Name, s.Log())
	}
}

// Log returns the end of the server's log.
func (s *Server) Log() string {
	f, err := os.Open(s.logPath)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Size() > logTail {
		_, _ = f.Seek(-logTail, io.SeekEnd)
	}
	b, _ := io.ReadAll(f)
	return string(b)
}

// Connect returns a client connection to urls (any member may answer),
// which reconnects forever with a short wait, closed at tb's cleanup.
func Connect(tb testing.TB, urls []string) *nats.Conn {
	tb.Helper()
	nc, err := nats.Connect(strings.Join(urls, ","),
		nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond), nats.Timeout(2*time.Second))
	if err != nil {
		tb.Fatalf("connect to nats %v: %v", urls, err)
	}
	tb.Cleanup(nc.Close)
	return nc
}

// JetStream returns a JetStream context on a new connection to urls (see
// Connect).
func JetStream(tb testing.TB, urls []string) jetstream.JetStream {
	tb.Helper()
	js, err := jetstream.New(Connect(tb, urls))
	if err != nil {
		tb.Fatalf("jetstream: %v", err)
	}
	return js
}

func mustBinary(tb testing.TB) string {
	tb.Helper()
	bin, err := Binary()
	if err != nil {
		tb.Fatal(err)
	}
	return bin
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

// PinnedVersion is the nats-server version `make deps` installs (the
// Makefile's NATS_SERVER_VERSION, without the v).
const PinnedVersion = "2.15.3"

// Version returns what bin --version reports ("2.15.3"), or "" if it
// cannot tell.
func Version(ctx context.Context, bin string) string {
	out, err := exec.CommandContext(ctx, bin, "--version").Output()
	if err != nil {
		return ""
	}
	_, v, ok := strings.Cut(strings.TrimSpace(string(out)), "nats-server: v")
	if !ok {
		return ""
	}
	return v
}

// Target is a single server or a cluster: where a test connects and how
// many replicas its buckets get.
type Target interface {
	URLs() []string
	Replicas() int
}

var (
	_ Target = (*Server)(nil)
	_ Target = (*Cluster)(nil)
)

// RestartAll starts every killed member again on its ports and store, all
// before waiting (a member alone has no quorum to become ready), then
// waits until the cluster is ready. It restarts the whole cluster after
// every member was killed.
func (c *Cluster) RestartAll() {
	tb := c.Servers[0].tb
	tb.Helper()
	for _, s := range c.Servers {
		s.mu.Lock()
		running := s.cmd != nil
		s.mu.Unlock()
		if running {
			continue
		}
		if err := s.start(); err != nil {
			tb.Fatalf("restart nats-server %s: %v", s.Name, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	if err := c.awaitReady(ctx); err != nil {
		tb.Fatalf("nats cluster not ready after restart: %v", err)
	}
}

// BucketNames returns a function that names one bucket per test
// directory, prefix_0, prefix_1, …: a store contract that reopens a
// directory reopens the same bucket. It is safe for concurrent use.
func BucketNames(prefix string) func(dir string) string {
	var mu sync.Mutex
	names := map[string]string{}
	return func(dir string) string {
		mu.Lock()
		defer mu.Unlock()
		n, ok := names[dir]
		if !ok {
			n = fmt.Sprintf("%s_%d", prefix, len(names))
			names[dir] = n
		}
		return n
	}
}
