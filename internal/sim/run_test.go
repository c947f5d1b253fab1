package sim_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/internal/loadgen/loadgentest"
	"github.com/umbra-iot/umbra/internal/sim"
)

// lines collects written JSON lines and signals every write.
type lines struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	wrote chan struct{}
}

func (l *lines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	select {
	case l.wrote <- struct{}{}:
	default:
	}
	return l.buf.Write(p)
}

func (l *lines) kinds() map[string]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := map[string]int{}
	for _, line := range strings.Split(strings.TrimSpace(l.buf.String()), "\n") {
		var v struct {
			Kind string `json:"kind"`
		}
		if json.Unmarshal([]byte(line), &v) != nil {
			n["invalid"]++
			continue
		}
		n[v.Kind]++
	}
	return n
}

func TestRunWritesEvents(t *testing.T) {
	_, url := loadgentest.MustBroker(t)
	out := &lines{wrote: make(chan struct{}, 1)}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- sim.Run(ctx, sim.Config{Server: url, Devices: 3, QoS: 1, StatsInterval: 20 * time.Millisecond}, out)
	}()
	deadline := time.After(10 * time.Second)
	for k := out.kinds(); k["device"] < 3 || k["stats"] < 1; k = out.kinds() {
		select {
		case <-out.wrote:
		case err := <-done:
			t.Fatalf("Run returned early: %v", err)
		case <-deadline:
			t.Fatalf("timed out waiting for 3 device events and a stats line, got %v", k)
		}
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run after cancel = %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if k := out.kinds(); k["invalid"] != 0 {
		t.Errorf("got %d lines that are not JSON objects with a kind", k["invalid"])
	}
}

func TestRunRejectsBadConfig(t *testing.T) {
	if err := sim.Run(t.Context(), sim.Config{}, nil); err == nil {
		t.Error("Run(empty config) = nil, want an error")
	}
}

// Open a small fleet against a broker and wait until every device is
// connected and running its initial firmware.
func ExampleOpen() {
	srv, url, err := loadgentest.Start()
	if err != nil {
		fmt.Println(err)
		return
	}
	defer srv.Close(context.Background())
	f, err := sim.Open(context.Background(), sim.Config{Server: url, Devices: 3, QoS: 1, FirmwareVersion: "1.4.0"})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer f.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := f.Wait(ctx, func(s sim.Stats) bool { return s.Connected == 3 })
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(f.IDs(), st.Versions)
	// Output: [sim-0001 sim-0002 sim-0003] map[1.4.0:3]
}
