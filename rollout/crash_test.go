package rollout_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/firmware"
	"github.com/umbra-iot/umbra/rollout"
	"github.com/umbra-iot/umbra/rollout/boltstore"
)

const crashChildEnv = "ROLLOUT_CRASH_CHILD"

// logShadows appends every shadow write to a file ("device token url"), as
// the durable side effect a crash test can inspect, and makes the device
// install at once. Each write takes a little while, like a real shadow
// commit, so that the rollout is still mid-way when it is killed.
type logShadows struct {
	mu      sync.Mutex // guards f and reports
	f       *os.File
	reports map[device.ID]firmware.Report
	delay   time.Duration
	notify  func(device.ID)
}

func (l *logShadows) SetDesiredFirmware(ctx context.Context, id device.ID, cmd map[string]any, token string) error {
	time.Sleep(l.delay) // simulated commit latency, not synchronisation
	l.mu.Lock()
	_, err := fmt.Fprintf(l.f, "%s %s %v\n", id, token, cmd["url"])
	l.reports[id] = firmware.Report{Version: cmd["version"].(string), State: firmware.StateUpdated, Job: token}
	n := l.notify
	l.mu.Unlock()
	if n != nil {
		n(id)
	}
	return err
}

func (l *logShadows) ReportedFirmware(ctx context.Context, id device.ID) (firmware.Report, bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	r, ok := l.reports[id]
	return r, ok, nil
}

// runCrashChild is the process that gets killed: it starts a rollout of
// 200 devices in batches of 50 and runs it until SIGKILL.
func runCrashChild(dir string) int {
	f, err := os.OpenFile(filepath.Join(dir, "shadow.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	sh := &logShadows{f: f, reports: map[device.ID]firmware.Report{}, delay: 5 * time.Millisecond}
	st, err := boltstore.Open(context.Background(), boltstore.Config{Path: filepath.Join(dir, "rollout.db")})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	p, err := rollout.Open(context.Background(), rollout.Config{Store: st,
		Shadows: sh, Firmware: newFakeFirmware("2.0.0"), Tick: 5 * time.Millisecond})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	sh.mu.Lock()
	sh.notify = p.Notify
	sh.mu.Unlock()
	if _, err := p.Create(context.Background(), rollout.Spec{Firmware: "2.0.0", Devices: ids("d", 200),
		Policy: rollout.Policy{BatchSize: 50}}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	select {} // until killed
}

// TestKillMidRollout kills (SIGKILL) a process running a rollout mid-way,
// reopens its file and finishes the rollout: every device is notified once
// for attempt 1 (a re-issue after the crash carries the same URL), and the
// rollout succeeds.
func TestKillMidRollout(t *testing.T) {
	dir := t.TempDir()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(t.Context(), exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+dir)
	cmd.Stderr = t.Output()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "shadow.log")
	waitFor(t, func() bool { return len(readLog(t, logPath)) >= 75 })
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	before := readLog(t, logPath)
	if len(before) >= 200 {
		t.Fatalf("child finished before the kill (%d writes)", len(before))
	}

	// Restart: the devices that got their command have installed it.
	f, err := os.OpenFile(logPath, os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sh := &logShadows{f: f, reports: map[device.ID]firmware.Report{}}
	for _, w := range before {
		sh.reports[w.id] = firmware.Report{Version: "2.0.0", State: firmware.StateUpdated, Job: w.token}
	}
	p, err := rollout.Open(t.Context(), rollout.Config{Store: openStore(t, filepath.Join(dir, "rollout.db")),
		Shadows: sh, Firmware: newFakeFirmware("2.0.0"), Tick: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(context.Background())
	sh.mu.Lock()
	sh.notify = p.Notify
	sh.mu.Unlock()
	st := waitState(t, p, "r1", rollout.StateSucceeded)
	if st.Counts[rollout.DeviceSucceeded] != 200 {
		t.Errorf("counts %v, want 200 succeeded", st.Counts)
	}
	urls := map[string]string{}
	reissued := 0
	for _, w := range readLog(t, logPath) {
		if w.token != "r1/1" {
			t.Errorf("%s got job %s, want only r1/1", w.id, w.token)
		}
		k := string(w.id) + " " + w.token
		if u, seen := urls[k]; seen && u != w.url {
			t.Errorf("%s re-notified with another URL: %s then %s", k, u, w.url)
		} else if seen {
			reissued++
		}
		urls[k] = w.url
	}
	if len(urls) != 200 {
		t.Errorf("%d devices notified, want 200", len(urls))
	}
	t.Logf("killed after %d of 200 notifications; %d re-issued with the same URL", len(before), reissued)
}

type logEntry struct {
	id         device.ID
	token, url string
}

func readLog(tb testing.TB, path string) []logEntry {
	tb.Helper()
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	var out []logEntry
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) != 3 {
			continue // a line cut by the kill
		}
		out = append(out, logEntry{device.ID(fields[0]), fields[1], fields[2]})
	}
	return out
}
