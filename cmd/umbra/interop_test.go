package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/umbra-iot/umbra/internal/testbin"
)

// mosquittoTool returns the path of a mosquitto client binary. A missing
// binary fails the test: interop is part of the suite, not optional.
func mosquittoTool(t *testing.T, name string) string {
	t.Helper()
	return testbin.Need(t, name, "mosquitto-clients")
}

// mosquittoSub is a running mosquitto_sub waiting for a number of messages.
type mosquittoSub struct {
	cmd            *exec.Cmd
	stdout, stderr bytes.Buffer
}

// startMosquittoSub subscribes to topic at QoS 1 with client ID id, and
// exits after count messages or 10 seconds (-W 10).
func startMosquittoSub(t *testing.T, ctx context.Context, addr net.Addr, id, topic string, count int) *mosquittoSub {
	t.Helper()
	host, port := hostPort(t, addr)
	s := &mosquittoSub{}
	s.cmd = exec.CommandContext(ctx, mosquittoTool(t, "mosquitto_sub"),
		"-h", host, "-p", port, "-i", id, "-t", topic, "-q", "1", "-C", strconv.Itoa(count), "-W", "10")
	s.cmd.Stdout, s.cmd.Stderr = &s.stdout, &s.stderr
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("start mosquitto_sub: %v", err)
	}
	t.Cleanup(func() {
		if s.cmd.ProcessState == nil { // not waited for: the test failed early
			_ = s.cmd.Process.Kill()
			_ = s.cmd.Wait()
		}
	})
	return s
}

// lines waits for mosquitto_sub to exit and returns the payloads it printed.
func (s *mosquittoSub) lines(t *testing.T) []string {
	t.Helper()
	if err := s.cmd.Wait(); err != nil {
		t.Fatalf("mosquitto_sub %v: %v (stderr %q, stdout %q)", s.cmd.Args[1:], err, s.stderr.String(), s.stdout.String())
	}
	return strings.Split(strings.TrimSuffix(s.stdout.String(), "\n"), "\n")
}

// mosquittoPub publishes one message at QoS 1 and waits for it to be sent.
func mosquittoPub(t *testing.T, ctx context.Context, addr net.Addr, id, topic, msg string) {
	t.Helper()
	host, port := hostPort(t, addr)
	out, err := exec.CommandContext(ctx, mosquittoTool(t, "mosquitto_pub"),
		"-h", host, "-p", port, "-i", id, "-t", topic, "-q", "1", "-m", msg).CombinedOutput()
	if err != nil {
		t.Fatalf("mosquitto_pub %s: %v: %s", topic, err, out)
	}
}

func hostPort(t *testing.T, addr net.Addr) (string, string) {
	t.Helper()
	host, port, err := net.SplitHostPort(addr.String())
	if err != nil {
		t.Fatal(err)
	}
	return host, port
}

// checkFields compares fields of a JSON object, each as JSON.
func checkFields(t *testing.T, name, doc string, want map[string]any) {
	t.Helper()
	got := decodeJSON(t, doc)
	for k, v := range want {
		g, _ := json.Marshal(got[k])
		w, _ := json.Marshal(v)
		if !bytes.Equal(g, w) {
			t.Errorf("%s: %s = %s, want %s (in %s)", name, k, g, w, doc)
		}
	}
}

// checkSettled checks with `umbra shadow get` that the shadow of id is at
// version with reported color red and no delta left.
func checkSettled(t *testing.T, server, id string, version int) {
	t.Helper()
	r := runCLI(t.Context(), "", "shadow", "get", id, "-o", "json", "--server", server)
	if r.err != nil {
		t.Fatalf("shadow get %s: %v", id, r.err)
	}
	checkFields(t, "final get", r.stdout, map[string]any{
		"version": version,
		"state":   map[string]any{"desired": map[string]any{"color": "red"}, "reported": map[string]any{"color": "red"}},
	})
}

// TestInteropMosquitto drives the operator → delta → report → accepted flow
// with Debian's mosquitto_pub and mosquitto_sub.
func TestInteropMosquitto(t *testing.T) {
	srv := startServer(t)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	addr := srv.brk.Addr()

	delta := startMosquittoSub(t, ctx, addr, "lamp-mq", "state/lamp-mq/update/delta", 1)
	srv.waitSubscribed(t, "state/lamp-mq/update/delta")
	accepted := startMosquittoSub(t, ctx, addr, "operator-acc", "state/lamp-mq/update/accepted", 2)
	srv.waitSubscribed(t, "state/lamp-mq/update/accepted")

	// The operator sets desired; the device receives exactly that delta.
	mosquittoPub(t, ctx, addr, "operator-pub", "state/lamp-mq/update", `{"state":{"desired":{"color":"red"}},"clientToken":"op-1"}`)
	d := delta.lines(t)
	if len(d) != 1 {
		t.Fatalf("delta subscriber got %q, want one message", d)
	}
	checkFields(t, "delta", d[0], map[string]any{"state": map[string]any{"color": "red"}, "version": 1, "clientToken": "op-1"})

	// The device reports; both updates were accepted, in order.
	mosquittoPub(t, ctx, addr, "lamp-mq-pub", "state/lamp-mq/update", `{"state":{"reported":{"color":"red"}},"clientToken":"dev-1"}`)
	acc := accepted.lines(t)
	if len(acc) != 2 {
		t.Fatalf("accepted subscriber got %q, want two messages", acc)
	}
	checkFields(t, "operator's accepted", acc[0], map[string]any{"version": 1, "clientToken": "op-1"})
	checkFields(t, "device's accepted", acc[1], map[string]any{
		"version": 2, "clientToken": "dev-1", "state": map[string]any{"reported": map[string]any{"color": "red"}}})

	checkSettled(t, srv.mqttURL(), "lamp-mq", 2)
}

// TestInteropWebSocket runs the same flow over the WebSocket listener: the
// operator is the CLI, the device a paho client.
func TestInteropWebSocket(t *testing.T) {
	srv := startServer(t)
	msgs := make(chan paho.Message, 16)
	opts := paho.NewClientOptions().
		AddBroker(srv.wsURL()).
		SetClientID("lamp-ws").
		SetAutoReconnect(false).
		SetOrderMatters(false).
		SetConnectTimeout(5 * time.Second).
		SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) {
			select {
			case msgs <- m:
			default: // the test reads far fewer; never block paho
			}
		})
	dev := paho.NewClient(opts)
	if tok := dev.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("device connect over %s: %v", srv.wsURL(), tok.Error())
	}
	defer dev.Disconnect(250)
	sub := dev.SubscribeMultiple(map[string]byte{"state/lamp-ws/update/delta": 1, "state/lamp-ws/update/accepted": 1}, nil)
	if !sub.WaitTimeout(5*time.Second) || sub.Error() != nil {
		t.Fatalf("device subscribe: %v", sub.Error())
	}
	// waitFor returns the next message on topic whose clientToken is token.
	waitFor := func(topic, token string) string {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for {
			select {
			case m := <-msgs:
				if m.Topic() == topic && decodeJSON(t, string(m.Payload()))["clientToken"] == token {
					return string(m.Payload())
				}
			case <-deadline:
				t.Fatalf("no message on %s with clientToken %s within 10s", topic, token)
				return ""
			}
		}
	}

	// The operator sets desired with the CLI over WebSocket.
	r := runCLI(t.Context(), `{"state":{"desired":{"color":"red"}},"clientToken":"op-ws"}`,
		"shadow", "update", "lamp-ws", "--file", "-", "-o", "json", "--server", srv.wsURL())
	if r.err != nil {
		t.Fatalf("shadow update over WebSocket: %v", r.err)
	}
	checkFields(t, "operator's answer", r.stdout, map[string]any{"version": 1, "clientToken": "op-ws"})
	d := waitFor("state/lamp-ws/update/delta", "op-ws")
	checkFields(t, "delta", d, map[string]any{"state": map[string]any{"color": "red"}, "version": 1})

	// The device reports and sees its update accepted.
	pub := dev.Publish("state/lamp-ws/update", 1, false, `{"state":{"reported":{"color":"red"}},"clientToken":"dev-ws"}`)
	if !pub.WaitTimeout(5*time.Second) || pub.Error() != nil {
		t.Fatalf("device publish: %v", pub.Error())
	}
	a := waitFor("state/lamp-ws/update/accepted", "dev-ws")
	checkFields(t, "device's accepted", a, map[string]any{"version": 2, "state": map[string]any{"reported": map[string]any{"color": "red"}}})

	checkSettled(t, srv.wsURL(), "lamp-ws", 2)
}
