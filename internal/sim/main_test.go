package sim_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/umbra-iot/umbra/internal/loadgen/loadgentest"
)

// brokerEnv makes the test binary a bare broker (see startBrokerProcess).
const brokerEnv = "UMBRA_SIM_TEST_BROKER"

func TestMain(m *testing.M) {
	if os.Getenv(brokerEnv) == "1" {
		os.Exit(serveBroker())
	}
	os.Exit(loadgentest.RunChecked(m))
}

// serveBroker runs a bare broker with the fake engine and firmware server,
// prints the broker URL and the fleet public key, and serves until stdin
// closes. Each stdin line "update <version>" makes the engine desire that
// version on every device that has reported; it answers with the count.
func serveBroker() int {
	srv, url, err := loadgentest.Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer srv.Close(context.Background())
	eng, err := startEngine(srv)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fw, hs := startFWServer()
	defer hs.Close()
	fmt.Println(url, fw.publicKey())
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		if version, ok := strings.CutPrefix(in.Text(), "update "); ok {
			fmt.Println(eng.desireAll(fw, version))
		}
	}
	return 0
}

// brokerProcess is a broker, engine and firmware server in a child process.
type brokerProcess struct {
	url, key string
	in       io.Writer
	out      *bufio.Reader
}

// desireAll asks the child's engine to roll version out to every device
// that reported, and returns how many that is.
func (p *brokerProcess) desireAll(tb testing.TB, version string) int {
	tb.Helper()
	fmt.Fprintf(p.in, "update %s\n", version)
	line, err := p.out.ReadString('\n')
	if err != nil {
		tb.Fatal(err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		tb.Fatal(err)
	}
	return n
}

// startBrokerProcess runs serveBroker in a child process (this test
// binary, re-executed), so that memory and CPU measured in this process are
// the simulator's alone. The child exits on cleanup.
func startBrokerProcess(tb testing.TB) *brokerProcess {
	tb.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), brokerEnv+"=1")
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		_ = stdin.Close()
		_ = cmd.Wait()
	})
	out := bufio.NewReader(stdout)
	line, err := out.ReadString('\n')
	if err != nil {
		tb.Fatalf("broker process: %v", err)
	}
	url, key, _ := strings.Cut(strings.TrimSpace(line), " ")
	return &brokerProcess{url: url, key: key, in: stdin, out: out}
}
