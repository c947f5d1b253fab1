package main

import (
	"bufio"
	"bytes"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/umbra-iot/umbra/internal/brokertest"
)

// metric returns the value of a series in the server's /metrics.
func metric(t *testing.T, httpAddr, series string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + httpAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %v", series, err)
			}
			return f
		}
	}
	t.Fatalf("%s not in /metrics", series)
	return 0
}

// TestDurableBrokerKill9 runs the real binary: retained messages (set,
// replaced, cleared) and persistent sessions (mosquitto_sub -c, and paho
// with clean session off) with the QoS 1 messages queued for them, all
// acknowledged before a SIGKILL, are there after a restart on the same
// data dir. The clients are anonymous operators, who may use any topic
// outside Umbra's own; mosquitto_sub -c follows shadow requests
// (state/<id>/get), which reach the shadow engine too.
func TestDurableBrokerKill9(t *testing.T) {
	bin := buildUmbra(t)
	dataDir := t.TempDir()
	args := []string{"--mqtt-addr", "127.0.0.1:0", "--ws-addr", "", "--http-addr", "127.0.0.1:0", "--insecure-anonymous"}
	proc, addr, _ := startServe(t, bin, dataDir, args...)

	pub := func(id string, extra ...string) {
		t.Helper()
		brokertest.Mosquitto(t, addr, "mosquitto_pub", append([]string{"-i", id, "-q", "1"}, extra...)...)
	}
	pub("rp1", "-r", "-t", "lab/r/keep", "-m", "v1")
	pub("rp2", "-r", "-t", "lab/r/keep", "-m", "v2")
	pub("rp3", "-r", "-t", "lab/r/clear", "-m", "x")
	pub("rp4", "-r", "-t", "lab/r/clear", "-n") // an empty retained message clears it
	// mosquitto_sub -c: a persistent session that subscribes and exits
	// once SUBACK arrives (-E).
	brokertest.Mosquitto(t, addr, "mosquitto_sub", "-c", "-i", "dur-sub", "-q", "1", "-t", "state/+/get", "-E")
	// paho, clean session off, subscribed, gone.
	pahoSub := brokertest.Connect(t, "tcp://"+addr, "dur-paho", func(o *mqtt.ClientOptions) { o.SetCleanSession(false) })
	brokertest.Subscribe(t, pahoSub, "lab/d/#", 1)
	pahoSub.Disconnect(100)
	for i := range 3 {
		pub(fmt.Sprintf("sp%d", i), "-t", "state/dev-1/get", "-m", fmt.Sprintf(`{"clientToken":"g%d"}`, i))
		pub(fmt.Sprintf("pp%d", i), "-t", "lab/d/1", "-m", fmt.Sprintf(`{"clientToken":"d%d"}`, i))
	}
	if err := proc.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	proc.Wait()

	_, addr, httpAddr := startServe(t, bin, dataDir, args...)
	if got := metric(t, httpAddr, "umbra_broker_persistent_sessions"); got != 2 {
		t.Errorf("umbra_broker_persistent_sessions after kill -9: got %v, want 2", got)
	}
	if got := brokertest.Mosquitto(t, addr, "mosquitto_sub", "-i", "rs", "-t", "lab/r/#", "-v", "-C", "1", "-W", "10"); got != "lab/r/keep v2\n" {
		t.Errorf("retained after kill -9: got %q, want \"lab/r/keep v2\\n\"", got)
	}
	// lab/r/clear stayed cleared: the only retained message clients hold is v2.
	if got := metric(t, httpAddr, "umbra_broker_retained_bytes"); got != 2 {
		t.Errorf("umbra_broker_retained_bytes after kill -9: got %v, want 2 (lab/r/keep's v2 only)", got)
	}
	got := brokertest.Mosquitto(t, addr, "mosquitto_sub", "-c", "-i", "dur-sub", "-q", "1", "-t", "state/+/get", "-C", "3", "-W", "10")
	if want := "{\"clientToken\":\"g0\"}\n{\"clientToken\":\"g1\"}\n{\"clientToken\":\"g2\"}\n"; got != want {
		t.Errorf("mosquitto_sub -c after kill -9: got %q, want %q", got, want)
	}
	// paho does not subscribe again: the restored subscription delivers.
	msgs := make(chan brokertest.Message, 16)
	brokertest.Connect(t, "tcp://"+addr, "dur-paho", func(o *mqtt.ClientOptions) {
		o.SetCleanSession(false)
		o.SetDefaultPublishHandler(func(_ mqtt.Client, m mqtt.Message) {
			msgs <- brokertest.Message{Topic: m.Topic(), Payload: m.Payload(), QoS: m.Qos()}
		})
	})
	seen := map[string]bool{}
	for range 3 {
		seen[string(brokertest.Next(t, msgs, brokertest.Timeout).Payload)] = true
	}
	for i := range 3 {
		if p := fmt.Sprintf(`{"clientToken":"d%d"}`, i); !seen[p] {
			t.Errorf("paho's queued messages after kill -9: got %v, missing %s", seen, p)
		}
	}
	pub("pp-live", "-t", "lab/d/2", "-m", "live")
	if m := brokertest.Next(t, msgs, brokertest.Timeout); m.Topic != "lab/d/2" || string(m.Payload) != "live" {
		t.Errorf("paho after kill -9: got %v, want lab/d/2 \"live\" through the restored subscription", m)
	}
}

// TestServeBrokerDB: serve refuses a broker.db it cannot read, with an
// error that names it and leaves it alone, and starts on an existing data
// dir that has none (made by an older Umbra).
func TestServeBrokerDB(t *testing.T) {
	refuse := []struct {
		name  string
		setup func(t *testing.T, path string)
		want  []string
	}{
		{"damaged", func(t *testing.T, path string) {
			if err := os.WriteFile(path, bytes.Repeat([]byte("garbage!"), 1024), 0o600); err != nil {
				t.Fatal(err)
			}
		}, []string{"broker.db", "unreadable", "move broker.db out of the data dir"}},
		{"not a file", func(t *testing.T, path string) {
			if err := os.Mkdir(path, 0o700); err != nil {
				t.Fatal(err)
			}
		}, []string{"broker.db"}},
	}
	for _, tc := range refuse {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "broker.db")
			tc.setup(t, path)
			before, _ := os.ReadFile(path)
			root := newRootCmd()
			var out bytes.Buffer
			root.SetOut(&out)
			root.SetErr(&out)
			root.SetArgs([]string{"serve", "--data-dir", dir, "--mqtt-addr", "127.0.0.1:0", "--ws-addr", "", "--http-addr", "", "--insecure-anonymous"})
			err := root.ExecuteContext(t.Context())
			if err == nil {
				t.Fatal("serve with a bad broker.db: got nil error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("serve with a bad broker.db: got %q, want it to mention %q", err, w)
				}
			}
			if after, _ := os.ReadFile(path); !bytes.Equal(after, before) {
				t.Error("serve changed the broker.db it refused")
			}
		})
	}
	t.Run("missing", func(t *testing.T) {
		dir := t.TempDir()
		t.Run("first start", func(t *testing.T) {
			startServerConfig(t, func(c *serveConfig) { c.Anonymous, c.DataDir = true, dir })
		})
		if err := os.Remove(filepath.Join(dir, "broker.db")); err != nil {
			t.Fatal(err)
		}
		startServerConfig(t, func(c *serveConfig) { c.Anonymous, c.DataDir = true, dir })
		if _, err := os.Stat(filepath.Join(dir, "broker.db")); err != nil {
			t.Errorf("broker.db after starting without one: %v", err)
		}
	})
}
