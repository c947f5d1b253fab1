package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/umbra-iot/umbra/internal/waitfor"
)

// aclFixture is a shared example policy under the repository's
// testdata/acl, as an absolute path (the binary runs elsewhere).
func aclFixture(t *testing.T, name string) string {
	t.Helper()
	p, err := filepath.Abs(filepath.Join("..", "..", "testdata", "acl", name))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestServeRefusesBadACLFile: umbra serve with a bad --acl-file exits
// non-zero before serving, and stderr names every bad line as file:line.
func TestServeRefusesBadACLFile(t *testing.T) {
	bin := buildUmbra(t)
	bad := aclFixture(t, "bad.acl")
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "serve", "--data-dir", filepath.Join(t.TempDir(), "data"),
		"--mqtt-addr", "127.0.0.1:0", "--ws-addr", "", "--http-addr", "", "--acl-file", bad)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() == 0 {
		t.Fatalf("serve with a bad --acl-file: %v, want a non-zero exit (stderr %s)", err, stderr.String())
	}
	for _, want := range []string{
		bad + `:4: topic: unknown access "raed" (want read, write, readwrite or deny)`,
		bad + `:5: role "admin": unknown role (want device, operator, integrator)`,
		bad + `:6: pattern "devices/x%u": level "x%u": %c and %u must be whole levels`,
	} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr.String())
		}
	}
	if strings.Contains(stderr.String(), "umbra serving") {
		t.Errorf("serve started serving with a bad --acl-file:\n%s", stderr.String())
	}
	// The flag's environment variable works the same way.
	r := runCLI(t.Context(), "", "serve", "--data-dir", t.TempDir(), "--mqtt-addr", "127.0.0.1:0", "--ws-addr", "",
		"--http-addr", "", "--max-client-id-length", "0")
	if r.err == nil || !strings.Contains(r.err.Error(), "--max-client-id-length 0") {
		t.Errorf("serve --max-client-id-length 0: %v, want a refusal naming the flag", r.err)
	}
}

// TestServeSIGHUPReloadsACL: SIGHUP makes a running umbra serve read its
// --acl-file again. A good file applies to the connected client at once,
// a bad one keeps the policy in force; the client stays connected
// throughout, and /metrics counts both reloads.
func TestServeSIGHUPReloadsACL(t *testing.T) {
	bin := buildUmbra(t)
	file := filepath.Join(t.TempDir(), "acl.conf")
	write := func(src string) {
		t.Helper()
		if err := os.WriteFile(file, []byte(src), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// Anonymous clients get the topic lines before the first user line.
	write("default replace\ntopic readwrite a/#\n")
	cmd, mqttAddr, httpAddr := startServe(t, bin, t.TempDir(), "--mqtt-addr", "127.0.0.1:0", "--ws-addr", "",
		"--http-addr", "127.0.0.1:0", "--insecure-anonymous", "--acl-file", file)

	msgs := make(chan paho.Message, 64)
	lost := make(chan error, 1)
	c := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + mqttAddr).SetClientID("reload watcher").
		SetAutoReconnect(false).SetOrderMatters(false).SetConnectTimeout(10 * time.Second).
		SetConnectionLostHandler(func(_ paho.Client, err error) { lost <- err }).
		SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) {
			select {
			case msgs <- m:
			default:
			}
		}))
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	defer c.Disconnect(100)
	sub := func(filter string) byte {
		t.Helper()
		tok := c.Subscribe(filter, 0, nil)
		if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("subscribe %s: %v", filter, tok.Error())
		}
		return tok.(*paho.SubscribeToken).Result()[filter]
	}
	pub := func(topic string) {
		t.Helper()
		if tok := c.Publish(topic, 0, false, topic); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("publish %s: %v", topic, tok.Error())
		}
	}
	// next returns the next message's topic.
	next := func() string {
		t.Helper()
		select {
		case m := <-msgs:
			return m.Topic()
		case <-time.After(10 * time.Second):
			t.Fatal("no message within 10s")
			return ""
		}
	}
	hup := func(result string, n int) {
		t.Helper()
		if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		waitMetric(t, "http://"+httpAddr, `umbra_acl_reloads_total{result="`+result+`"} `+strconv.Itoa(n))
	}

	if code := sub("a/#"); code >= 0x80 {
		t.Fatalf("subscribe a/# under v1: %#x, want granted", code)
	}
	if code := sub("b/#"); code < 0x80 {
		t.Fatalf("subscribe b/# under v1: %#x, want refused", code)
	}
	pub("a/1")
	if got := next(); got != "a/1" {
		t.Fatalf("received %s, want a/1", got)
	}

	// v2 moves the client from a/ to b/.
	write("default replace\ntopic readwrite b/#\n")
	hup("ok", 1)
	if code := sub("b/#"); code >= 0x80 {
		t.Fatalf("subscribe b/# under v2: %#x, want granted", code)
	}
	pub("a/2") // denied: a QoS 0 publish, dropped
	pub("b/1")
	if got := next(); got != "b/1" {
		t.Fatalf("received %s first, want b/1 (a/2 is denied under v2)", got)
	}

	// A bad v3 keeps v2.
	write("default replace\ntopic readwrite c/#\ntopic raed x\n")
	hup("error", 1)
	pub("c/1") // still denied
	pub("b/2")
	if got := next(); got != "b/2" {
		t.Fatalf("received %s first, want b/2 (the bad file must not apply)", got)
	}
	select {
	case err := <-lost:
		t.Fatalf("the client lost its connection: %v", err)
	default:
	}
	if !c.IsConnectionOpen() {
		t.Error("the client was disconnected by a reload")
	}
}

// waitMetric polls the /metrics of base until it has the line want: a
// reload triggered by a signal has no other event to wait for.
func waitMetric(t *testing.T, base, want string) {
	t.Helper()
	waitfor.Poll(t, 10*time.Second, fmt.Sprintf("%q in /metrics", want), func() bool {
		res, err := http.Get(base + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		return slices.Contains(strings.Split(string(body), "\n"), want)
	})
}

// TestClientIDsForServices: operators and integrators may use any client
// ID, an empty one included (the broker assigns one), and mosquitto's
// default client IDs; a device keeps client ID = device ID, and a token
// may not take an enrolled device's ID.
func TestClientIDsForServices(t *testing.T) {
	srv, admin := startSecureServer(t)
	secret := adminCLI(t, srv, "device", "add", "lamp1")
	opUser, opPass := splitToken(admin)
	integ := adminCLI(t, srv, "token", "create", "--role", "integrator", "--name", "dash")
	intUser, intPass := splitToken(integ)

	msgs := make(chan paho.Message, 16)
	watcher := mustMQTT(t, srv.mqttURL(), "dashboard / ü #1", intUser, intPass, msgs)
	if code := subscribe(t, watcher, "TopicA/#"); code >= 0x80 {
		t.Fatalf("integrator subscribing TopicA/#: %#x, want granted", code)
	}
	for i, id := range []string{"ops console #1 / ü", "", strings.Repeat("x", 256)} {
		c := mustMQTT(t, srv.mqttURL(), id, opUser, opPass, nil)
		topic := "TopicA/" + string(rune('0'+i))
		publish(t, c, topic, "from "+id)
		if m := waitMsg(t, msgs, topic); string(m.Payload()) != "from "+id {
			t.Errorf("%q published %q, want %q", id, m.Payload(), "from "+id)
		}
	}

	// mosquitto_pub with its default client ID, as an operator.
	host, port := hostPort(t, srv.brk.Addr())
	out, err := exec.CommandContext(t.Context(), mosquittoTool(t, "mosquitto_pub"), "-h", host, "-p", port,
		"-u", opUser, "-P", opPass, "-t", "TopicA/mosquitto", "-q", "1", "-m", "default id").CombinedOutput()
	if err != nil {
		t.Fatalf("mosquitto_pub with its default client ID: %v: %s", err, out)
	}
	waitMsg(t, msgs, "TopicA/mosquitto")

	refused := []struct{ name, clientID, user, pass string }{
		{"device with another client ID", "lamp1-console", "lamp1", secret},
		{"token taking the device's client ID", "lamp1", opUser, opPass},
		{"over-long client ID", strings.Repeat("x", 257), opUser, opPass},
	}
	for _, tc := range refused {
		if c, err := mqttClient(t, srv.mqttURL(), tc.clientID, tc.user, tc.pass, nil, nil); err == nil {
			c.Disconnect(0)
			t.Errorf("%s: connected, want refused", tc.name)
		}
	}
	mustMQTT(t, srv.mqttURL(), "lamp1", "lamp1", secret, nil)
	// paho tries MQTT 3.1 after 3.1.1's "identifier rejected": at least one.
	if got := srv.brk.Stats().ClientIDsRefused; got < 1 {
		t.Errorf("ClientIDsRefused = %d, want the over-long one counted", got)
	}
}
