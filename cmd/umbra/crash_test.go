package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/internal/brokertest"
	"github.com/umbra-iot/umbra/internal/testbin"
)

// buildUmbra returns this command's binary, built once per test run
// (testbin.Umbra; the Makefile builds it and passes it in UMBRA_TEST_BIN).
func buildUmbra(t *testing.T) string {
	t.Helper()
	return testbin.Umbra(t)
}

var (
	mqttAddrRe = regexp.MustCompile(`mqtt=(127\.0\.0\.1:\d+)`)
	httpAddrRe = regexp.MustCompile(`http=(127\.0\.0\.1:\d+)`)
)

// startProcess runs `umbra serve` on dataDir with an ephemeral MQTT port and
// returns the process and its MQTT URL once it logs that it is serving.
func startProcess(t *testing.T, bin, dataDir string) (*exec.Cmd, string) {
	t.Helper()
	cmd, mqttURL, _ := startServeProcess(t, bin, dataDir, "")
	return cmd, mqttURL
}

// startServeProcess is startProcess with the HTTP API on httpAddr ("" to
// disable it); it also returns the API's base URL ("" when disabled).
func startServeProcess(t *testing.T, bin, dataDir, httpAddr string) (cmd *exec.Cmd, mqttURL, httpURL string) {
	t.Helper()
	cmd, mqttAddr, boundHTTP := startServe(t, bin, dataDir,
		"--mqtt-addr", "127.0.0.1:0", "--ws-addr", "", "--http-addr", httpAddr, "--insecure-anonymous")
	if boundHTTP != "" {
		httpURL = "http://" + boundHTTP
	}
	return cmd, "tcp://" + mqttAddr, httpURL
}

// startServe runs `umbra serve --data-dir dataDir args...` and returns the
// MQTT and HTTP addresses it logs when it is serving (HTTP "" when it has
// none, which is a failure if args give a --http-addr). Its log is shown
// if the test fails; the process is killed on cleanup.
func startServe(t *testing.T, bin, dataDir string, args ...string) (cmd *exec.Cmd, mqttAddr, httpAddr string) {
	t.Helper()
	cmd = exec.Command(bin, append([]string{"serve", "--data-dir", dataDir}, args...)...)
	mqttAddr, httpAddr, _ = startServeCmd(t, cmd)
	return cmd, mqttAddr, httpAddr
}

// startServeCmd starts cmd, an `umbra serve` command, and returns the MQTT
// and HTTP addresses of its "umbra serving" log line, and the line; as
// startServe for the rest.
func startServeCmd(t *testing.T, cmd *exec.Cmd) (mqttAddr, httpAddr, servingLine string) {
	t.Helper()
	args := cmd.Args[1:]
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var (
		mu  sync.Mutex // guards log
		log bytes.Buffer
	)
	found := make(chan [3]string, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(stderr)
		sent := false
		for sc.Scan() {
			line := sc.Text()
			mu.Lock()
			log.WriteString(line + "\n")
			mu.Unlock()
			if m := mqttAddrRe.FindStringSubmatch(line); !sent && m != nil && strings.Contains(line, "umbra serving") {
				addrs := [3]string{m[1], "", line}
				if h := httpAddrRe.FindStringSubmatch(line); h != nil {
					addrs[1] = h[1]
				}
				found <- addrs
				sent = true
			}
		}
		if !sent {
			found <- [3]string{}
		}
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		<-done
		if t.Failed() {
			mu.Lock()
			t.Logf("umbra serve %s log:\n%s", strings.Join(args, " "), log.String())
			mu.Unlock()
		}
	})
	wantHTTP := slices.ContainsFunc(args, func(a string) bool { return a == "--http-addr" }) &&
		args[slices.Index(args, "--http-addr")+1] != ""
	select {
	case a := <-found:
		if a[0] == "" {
			t.Fatalf("umbra serve %s exited before serving", strings.Join(args, " "))
		}
		if wantHTTP && a[1] == "" {
			t.Fatal("umbra serve did not log its http address")
		}
		return a[0], a[1], a[2]
	case <-time.After(20 * time.Second):
		t.Fatal("umbra serve did not report it was serving within 20s")
	}
	return "", "", ""
}

// TestCrashDurability: an update that was answered with accepted survives a
// SIGKILL of the server; a restarted server on the same data dir has it at
// the same version. A second server on a locked data dir fails fast.
func TestCrashDurability(t *testing.T) {
	bin := buildUmbra(t)
	dataDir := t.TempDir()
	proc, url := startProcess(t, bin, dataDir)

	// A second serve on the same data dir (other ports) must fail fast on
	// the database lock, not hang.
	start := time.Now()
	out, err := exec.CommandContext(t.Context(), bin, "serve", "--data-dir", dataDir, "--mqtt-addr", "127.0.0.1:0", "--ws-addr", "", "--http-addr", "").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "locked by another process") {
		t.Fatalf("second serve: err=%v output=%s, want a 'locked by another process' failure", err, out)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("second serve took %v to fail", d)
	}

	c := brokertest.Connect(t, url, "crash-dev")
	acc := brokertest.Subscribe(t, c, "state/crash-dev/update/accepted", 1)
	var version int
	for i := range 5 {
		brokertest.Publish(t, c, "state/crash-dev/update", 1, []byte(`{"state":{"reported":{"n":`+strconv.Itoa(i)+`}}}`))
		var a struct{ Version int }
		if err := json.Unmarshal(brokertest.Next(t, acc, 5*time.Second).Payload, &a); err != nil {
			t.Fatal(err)
		}
		version = a.Version
	}
	// Kill at once after the last accepted: no graceful shutdown.
	if err := proc.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	proc.Wait()
	c.Disconnect(0)

	_, url2 := startProcess(t, bin, dataDir)
	c2 := brokertest.Connect(t, url2, "crash-reader")
	got := brokertest.Subscribe(t, c2, "state/crash-dev/get/accepted", 1)
	brokertest.Publish(t, c2, "state/crash-dev/get", 1, nil)
	var doc struct {
		Version int
		State   struct{ Reported map[string]any }
	}
	if err := json.Unmarshal(brokertest.Next(t, got, 5*time.Second).Payload, &doc); err != nil {
		t.Fatal(err)
	}
	if doc.Version != version || doc.State.Reported["n"] != float64(4) {
		t.Fatalf("after SIGKILL and restart: version %d reported %v, want version %d with n=4", doc.Version, doc.State.Reported, version)
	}
	if _, err := os.Stat(filepath.Join(dataDir, "shadow.db")); err != nil {
		t.Fatal(err)
	}
}
