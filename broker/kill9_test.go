package broker_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/broker/boltstore"
	"github.com/umbra-iot/umbra/internal/brokertest"
)

// envDurableChild makes the test binary a broker child process (see
// runDurableChild) on the broker.db in the directory it names.
const envDurableChild = "UMBRA_TEST_DURABLE_BROKER"

// runDurableChild runs a broker with a boltstore on dir/broker.db, as
// umbra serve does, prints "addr <host:port>" and serves until it is
// killed.
func runDurableChild(dir string) int {
	st, err := boltstore.Open(context.Background(), boltstore.Config{Path: filepath.Join(dir, "broker.db")})
	if err != nil {
		fmt.Printf("error: %v\n", err)
		return 1
	}
	b, err := broker.Open(context.Background(), broker.Config{TCPAddr: "127.0.0.1:0", Store: st,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, nil))})
	if err != nil {
		fmt.Printf("error: %v\n", err)
		return 1
	}
	fmt.Printf("addr %s\n", b.Addr())
	select {} // until SIGKILL
}

// startDurableChild starts the test binary as a broker child process on
// dir and returns it with its address.
func startDurableChild(t *testing.T, dir string) (*exec.Cmd, string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envDurableChild+"="+dir)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("broker child log:\n%s", stderr.String())
		}
	})
	line := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		sc.Scan()
		line <- sc.Text()
		for sc.Scan() { // keep the pipe drained
		}
	}()
	select {
	case l := <-line:
		addr, ok := strings.CutPrefix(l, "addr ")
		if !ok {
			t.Fatalf("broker child: %q", l)
		}
		return cmd, addr
	case <-time.After(10 * time.Second):
		t.Fatal("broker child did not start within 10s")
	}
	return nil, ""
}

// TestDurableKill9: what the broker acknowledged to mosquitto's clients
// survives a SIGKILL of its process: retained messages set, replaced and
// cleared, and a persistent session (mosquitto_sub -c) with its
// subscription and the QoS 1 messages queued for it. umbra serve's
// kill -9 test (cmd/umbra) covers the same through the whole server.
func TestDurableKill9(t *testing.T) {
	dir := t.TempDir()
	proc, addr := startDurableChild(t, dir)
	pub := func(id string, args ...string) {
		t.Helper()
		brokertest.Mosquitto(t, addr, "mosquitto_pub", append([]string{"-i", id, "-q", "1"}, args...)...)
	}
	pub("p1", "-r", "-t", "r/keep", "-m", "v1")
	pub("p2", "-r", "-t", "r/keep", "-m", "v2")
	pub("p3", "-r", "-t", "r/clear", "-m", "x")
	pub("p4", "-r", "-t", "r/clear", "-n")                                                             // an empty retained message clears it
	brokertest.Mosquitto(t, addr, "mosquitto_sub", "-c", "-i", "k9-sub", "-q", "1", "-t", "s/#", "-E") // exits after SUBACK
	for i := range 3 {
		pub(fmt.Sprintf("q%d", i), "-t", "s/1", "-m", fmt.Sprintf("m%d", i))
	}
	if err := proc.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	proc.Wait()

	_, addr = startDurableChild(t, dir)
	if got := retainedAt(t, addr, "r/#", "r/zz"); got != "r/keep v2\n" {
		t.Errorf("retained messages after kill -9: got %q, want only \"r/keep v2\"", got)
	}
	out := brokertest.Mosquitto(t, addr, "mosquitto_sub", "-c", "-i", "k9-sub", "-q", "1", "-t", "s/#", "-v", "-C", "3", "-W", "10")
	if want := "s/1 m0\ns/1 m1\ns/1 m2\n"; out != want {
		t.Errorf("mosquitto_sub -c after kill -9: got %q, want %q", out, want)
	}
}

// retainedAt returns the retained messages matching filter as mosquitto_sub
// -v prints them. mosquitto_sub --retained-only exits at the first message
// without the retain flag: once it has printed the first retained message
// (so it has subscribed, and the broker has queued the retained messages),
// a message is published on sentinel, a topic matching filter.
func retainedAt(t *testing.T, addr, filter, sentinel string) string {
	t.Helper()
	host, port, _ := strings.Cut(addr, ":")
	path, err := exec.LookPath("mosquitto_sub")
	if err != nil {
		t.Fatalf("mosquitto_sub not found in PATH (%v): run `make deps`, which installs Debian's mosquitto-clients", err)
	}
	cmd := exec.CommandContext(t.Context(), path, "-h", host, "-p", port, "-i", "retained-reader", "-t", filter,
		"-v", "-q", "1", "--retained-only", "-W", "10")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(out)
	first, err := r.ReadString('\n')
	if err != nil {
		_ = cmd.Wait()
		t.Fatalf("mosquitto_sub %s: no retained message: %v", filter, err)
	}
	brokertest.Mosquitto(t, addr, "mosquitto_pub", "-i", "sentinel", "-q", "1", "-t", sentinel, "-m", "not retained")
	rest := new(bytes.Buffer)
	_, _ = rest.ReadFrom(r)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("mosquitto_sub %s: %v", filter, err)
	}
	return first + rest.String()
}
