package broker_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/internal/brokertest"
)

// Idle-connection benchmark. The clients run in child processes (this test
// binary re-executed with envIdleClients set, see TestMain), so the memory
// measured in the benchmark process is the broker's alone.
const (
	envBenchConns     = "UMBRA_BENCH_CONNS"       // number of connections; default defaultBenchConns
	envIdleClients    = "UMBRA_BENCH_IDLE_CLIENT" // child mode: "addr,count,process index"
	defaultBenchConns = 2000
	connsPerProcess   = 20000 // one loopback source address per child: ephemeral ports suffice
	benchTimeout      = 5 * time.Minute
)

// BenchmarkIdleConnections opens UMBRA_BENCH_CONNS (default 2,000) MQTT
// 3.1.1 connections and reports the broker's memory per connection once
// they are idle: heap+stack bytes in use (runtime.MemStats) and resident
// set size, both after garbage collection. In "connect" the clients only
// CONNECT; in "active" each then subscribes to state/<id>/# and publishes
// one QoS 1 message, as a device does, which grows mochi's per-client
// reader stack. Run it with
//
//	go test -run '^$' -bench IdleConnections -benchtime 1x ./broker
func BenchmarkIdleConnections(b *testing.B) {
	n := defaultBenchConns
	if s := os.Getenv(envBenchConns); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 1 || v > 1_000_000 {
			b.Fatalf("%s=%q: want an integer in [1, 1000000]", envBenchConns, s)
		}
		n = v
	}
	if err := raiseFileLimit(uint64(n) + 1024); err != nil {
		b.Fatalf("%d connections need %d file descriptors: %v", n, n+1024, err)
	}
	for _, mode := range []string{"connect", "active"} {
		b.Run(mode, func(b *testing.B) {
			for b.Loop() {
				measureIdle(b, n, mode)
			}
		})
	}
}

func measureIdle(b *testing.B, n int, mode string) {
	ctx, cancel := context.WithTimeout(b.Context(), benchTimeout)
	defer cancel()
	srv, err := broker.Open(ctx, broker.Config{TCPAddr: "127.0.0.1:0"})
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Close(ctx)

	m0 := memNow()
	start := time.Now()
	var children []*idleClients
	defer func() {
		for _, c := range children {
			c.stop()
		}
	}()
	for k := 0; k*connsPerProcess < n; k++ {
		count := min(connsPerProcess, n-k*connsPerProcess)
		c, err := startIdleClients(ctx, srv.Addr().String(), count, k, mode)
		if err != nil {
			b.Fatal(err)
		}
		children = append(children, c)
	}
	for _, c := range children {
		if err := c.wait(ctx); err != nil {
			b.Fatal(err)
		}
	}
	if got := srv.Stats().ClientsConnected; got != int64(n) {
		b.Fatalf("ClientsConnected: got %d, want %d", got, n)
	}
	connectTime := time.Since(start)
	m1 := memNow()

	perConn := func(v0, v1 int64) float64 { return float64(v1-v0) / float64(n) }
	b.ReportMetric(perConn(m0.heap+m0.stack, m1.heap+m1.stack), "heap+stack-B/conn")
	b.ReportMetric(perConn(m0.heap, m1.heap), "heap-B/conn")
	b.ReportMetric(perConn(m0.stack, m1.stack), "stack-B/conn")
	b.ReportMetric(perConn(m0.rss, m1.rss), "rss-B/conn")
	b.ReportMetric(perConn(m0.goroutines, m1.goroutines), "goroutines/conn")
	b.ReportMetric(float64(n)/connectTime.Seconds(), "conns/s")
}

// memSample is the process's memory use at one point.
type memSample struct {
	heap, stack, rss, goroutines int64
}

// memNow returns heap and stack bytes in use, the resident set size and
// the goroutine count, after collecting garbage and returning it to the OS.
func memNow() memSample {
	// Each GC halves stacks using under a quarter of their size, once.
	for range 3 {
		runtime.GC()
	}
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return memSample{
		heap:       int64(ms.HeapInuse),
		stack:      int64(ms.StackInuse),
		rss:        residentBytes(),
		goroutines: int64(runtime.NumGoroutine()),
	}
}

// residentBytes reads this process's RSS from /proc/self/statm; 0 if it
// cannot be read.
func residentBytes() int64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0
	}
	pages, _ := strconv.ParseInt(f[1], 10, 64)
	return pages * int64(os.Getpagesize())
}

func raiseFileLimit(want uint64) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return err
	}
	if lim.Cur >= want {
		return nil
	}
	lim.Cur = want
	lim.Max = max(lim.Max, want)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("raise RLIMIT_NOFILE to %d: %w", want, err)
	}
	return nil
}

// idleClients is a child process holding idle connections.
type idleClients struct {
	cmd   *exec.Cmd
	stdin io.Closer
	ready chan error
}

func startIdleClients(ctx context.Context, addr string, count, index int, mode string) (*idleClients, error) {
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s,%d,%d,%s", envIdleClients, addr, count, index, mode))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start idle clients: %w", err)
	}
	c := &idleClients{cmd: cmd, stdin: stdin, ready: make(chan error, 1)}
	go func() {
		line, err := bufio.NewReader(stdout).ReadString('\n')
		switch {
		case err != nil:
			c.ready <- fmt.Errorf("idle clients %d: %w", index, err)
		case line != "ready\n":
			c.ready <- fmt.Errorf("idle clients %d: %s", index, strings.TrimSpace(line))
		default:
			c.ready <- nil
		}
		_, _ = io.Copy(io.Discard, stdout)
	}()
	return c, nil
}

func (c *idleClients) wait(ctx context.Context) error {
	select {
	case err := <-c.ready:
		return err
	case <-ctx.Done():
		return fmt.Errorf("idle clients: %w", ctx.Err())
	}
}

// stop closes the child's stdin, which makes it close its connections
// and exit, and waits for it.
func (c *idleClients) stop() {
	_ = c.stdin.Close()
	_ = c.cmd.Wait()
}

// runIdleClients is the child process: it opens the connections described
// by spec ("addr,count,index,mode"), prints "ready" (or an error), and holds
// them until stdin is closed.
func runIdleClients(spec string) int {
	fail := func(err error) int {
		fmt.Printf("error: %v\n", err)
		return 1
	}
	f := strings.Split(spec, ",")
	if len(f) != 4 || (f[3] != "connect" && f[3] != "active") {
		return fail(fmt.Errorf("bad spec %q", spec))
	}
	count, err1 := strconv.Atoi(f[1])
	index, err2 := strconv.Atoi(f[2])
	if err := errors.Join(err1, err2); err != nil || index > 250 {
		return fail(fmt.Errorf("bad spec %q: %v", spec, err))
	}
	if err := raiseFileLimit(uint64(count) + 256); err != nil {
		return fail(err)
	}
	dialer := net.Dialer{
		Timeout:   10 * time.Second,
		LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+index))},
	}
	conns := make([]net.Conn, count)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	const workers = 8
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			for i := w; i < count; i += workers {
				c, err := idleConnect(&dialer, f[0], fmt.Sprintf("idle-%d-%d", index, i), f[3] == "active")
				if err != nil {
					errs <- err
					return
				}
				conns[i] = c
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return fail(err)
	}
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	return 0
}

// idleConnect dials addr, sends CONNECT (keepalive 10 min) and reads the
// 4-byte MQTT 3.1.1 CONNACK; if active, it then subscribes and publishes
// one QoS 1 message as a device would.
func idleConnect(d *net.Dialer, addr, clientID string, active bool) (net.Conn, error) {
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(connectPacket(v311, clientID, true, 600)); err != nil {
		c.Close()
		return nil, err
	}
	var ack [4]byte
	if _, err := io.ReadFull(c, ack[:]); err != nil {
		c.Close()
		return nil, fmt.Errorf("read CONNACK: %w", err)
	}
	if ack[0] != typeConnack<<4 || ack[3] != 0 {
		c.Close()
		return nil, fmt.Errorf("CONNACK % x: refused", ack)
	}
	if active {
		if err := deviceTraffic(c, clientID); err != nil {
			c.Close()
			return nil, err
		}
	}
	_ = c.SetDeadline(time.Time{})
	return c, nil
}

// deviceTraffic subscribes c to state/<clientID>/# and publishes one
// 200-byte QoS 1 message to state/<clientID>/update, reading SUBACK and
// PUBACK (the broker sends nothing else: no one else subscribes).
func deviceTraffic(c net.Conn, clientID string) error {
	prefix := "state/" + clientID + "/"
	if _, err := c.Write(subscribePacket(v311, 1, prefix+"#", 1)); err != nil {
		return err
	}
	var suback [5]byte
	if _, err := io.ReadFull(c, suback[:]); err != nil {
		return fmt.Errorf("read SUBACK: %w", err)
	}
	if suback[0] != typeSuback<<4 || suback[4] != 1 {
		return fmt.Errorf("SUBACK % x: want QoS 1 granted", suback)
	}
	payload := []byte(`{"state":{"reported":{"firmware":"1.0.0","uptime":12345}}}`)
	payload = append(payload, make([]byte, 200-len(payload))...)
	if _, err := c.Write(publishPacket(v311, prefix+"update", 1, 2, payload)); err != nil {
		return err
	}
	var puback [4]byte
	if _, err := io.ReadFull(c, puback[:]); err != nil {
		return fmt.Errorf("read PUBACK: %w", err)
	}
	if puback[0] != typePuback<<4 {
		return fmt.Errorf("PUBACK % x: unexpected", puback)
	}
	return nil
}

// BenchmarkSysRefresh measures the part of a $SYS refresh that affects
// every client: runtime.ReadMemStats, which stops the world, with 2,000
// device connections (4,000 goroutines) open. It decides
// Config.SysInterval's default (see the package documentation). Run it
// with
//
//	go test -run '^$' -bench SysRefresh ./broker
func BenchmarkSysRefresh(b *testing.B) {
	const n = 2000
	if err := raiseFileLimit(n + 1024); err != nil {
		b.Fatalf("%d connections need %d file descriptors: %v", n, n+1024, err)
	}
	srv := brokertest.New(b, broker.Config{Logger: slog.New(slog.DiscardHandler)})
	ctx, cancel := context.WithTimeout(b.Context(), benchTimeout)
	defer cancel()
	c, err := startIdleClients(ctx, srv.Addr().String(), n, 0, "active")
	if err != nil {
		b.Fatal(err)
	}
	defer c.stop()
	if err := c.wait(ctx); err != nil {
		b.Fatal(err)
	}
	var m runtime.MemStats
	for b.Loop() {
		runtime.ReadMemStats(&m)
	}
}
