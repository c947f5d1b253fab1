package main

import (
	"bytes"
	"fmt"
	"log/slog"
	"os/exec"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/spf13/cobra"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/identity"
	"github.com/umbra-iot/umbra/internal/waitfor"
)

// TestSharedSubscriptionTelemetry: integrators spread devices' telemetry
// over consumers with an MQTT 5 shared subscription (mosquitto_sub -V 5,
// $share/workers/devices/+/telemetry): each message reaches one member,
// in turn, while an ordinary subscriber gets them all; a device may not
// join the group, whose filter it may not read.
func TestSharedSubscriptionTelemetry(t *testing.T) {
	srv := startServerConfig(t, nil)
	host, port := hostPort(t, srv.brk.Addr())
	const perMember, members = 6, 2
	var subs []*bytes.Buffer
	var cmds []*exec.Cmd
	for i := range members {
		name := fmt.Sprintf("worker-%d", i)
		secret, err := srv.ids.CreateToken(t.Context(), identity.RoleIntegrator, name)
		if err != nil {
			t.Fatal(err)
		}
		var out, errOut bytes.Buffer
		cmd := exec.CommandContext(t.Context(), mosquittoTool(t, "mosquitto_sub"), "-V", "mqttv5", "-h", host, "-p", port,
			"-i", name, "-u", name, "-P", secret, "-q", "1", "-t", "$share/workers/devices/+/telemetry",
			"-C", fmt.Sprint(perMember), "-W", "20")
		cmd.Stdout, cmd.Stderr = &out, &errOut
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if cmd.ProcessState == nil {
				_ = cmd.Process.Kill()
				_ = cmd.Wait()
			}
		})
		subs, cmds = append(subs, &out), append(cmds, cmd)
	}
	all := make(chan paho.Message, 64)
	dashSecret, err := srv.ids.CreateToken(t.Context(), identity.RoleIntegrator, "dash")
	if err != nil {
		t.Fatal(err)
	}
	dash := mustMQTT(t, srv.mqttURL(), "dash-1", "dash", dashSecret, all)
	if code := subscribe(t, dash, "devices/+/telemetry"); code != 1 {
		t.Fatalf("integrator SUBACK %#x", code)
	}
	// Both members' SUBSCRIBEs are in before anything is published: a
	// member that joined late would see fewer than its turns.
	waitSubscribers(t, srv, members+1)

	devs := make([]paho.Client, 3)
	for i := range devs {
		id := fmt.Sprintf("sensor-%d", i)
		secret, err := srv.ids.AddDevice(t.Context(), device.ID(id), nil)
		if err != nil {
			t.Fatal(err)
		}
		devs[i] = mustMQTT(t, srv.mqttURL(), id, id, secret, nil)
	}
	if code := subscribeOne(t, devs[0], "$share/workers/devices/+/telemetry"); code != 0x80 {
		t.Errorf("device joining the shared group: SUBACK %#x, want 0x80", code)
	}
	for n := range perMember * members {
		dev := devs[n%len(devs)]
		publish(t, dev, fmt.Sprintf("devices/sensor-%d/telemetry", n%len(devs)), fmt.Sprintf(`{"n":%d}`, n))
	}
	for range perMember * members {
		nextMsg(t, all)
	}
	seen := map[string]bool{}
	for i, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Fatalf("member %d: mosquitto_sub: %v (got %q)", i, err, subs[i].String())
		}
		lines := strings.Split(strings.TrimSpace(subs[i].String()), "\n")
		if len(lines) != perMember {
			t.Errorf("member %d got %d messages, want %d (in turn)", i, len(lines), perMember)
		}
		for _, l := range lines {
			if seen[l] {
				t.Errorf("%s delivered to two members", l)
			}
			seen[l] = true
		}
	}
}

// subscribeOne subscribes c to filter at QoS 1 and returns SUBACK's code.
// paho keys a shared subscription's result by the filter after the group,
// so this reads the one result whatever its key.
func subscribeOne(t *testing.T, c paho.Client, filter string) byte {
	t.Helper()
	tok := c.Subscribe(filter, 1, nil)
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe %s: %v", filter, tok.Error())
	}
	for _, code := range tok.(*paho.SubscribeToken).Result() {
		return code
	}
	t.Fatalf("subscribe %s: no result", filter)
	return 0
}

// nextMsg returns the next message from msgs, waiting up to 10s.
func nextMsg(t *testing.T, msgs <-chan paho.Message) paho.Message {
	t.Helper()
	select {
	case m := <-msgs:
		return m
	case <-time.After(10 * time.Second):
		t.Fatal("no message within 10s")
		return nil
	}
}

// waitSubscribers polls until the broker holds n client subscriptions:
// other clients' SUBACKs are no event this process sees.
func waitSubscribers(t *testing.T, srv *server, n int64) {
	t.Helper()
	waitfor.PollExplained(t, 10*time.Second, fmt.Sprintf("%d subscriptions", n), func() string {
		if got := srv.brk.Stats().Subscriptions; got < n {
			return fmt.Sprintf("%d subscriptions", got)
		}
		return ""
	})
}

// TestSysTopicsByRole: operators read the broker's statistics on $SYS
// (mosquitto_sub), integrators and devices may not (SUBACK failure), "#"
// never carries them, and nobody publishes there: an operator's QoS 1
// PUBLISH to $SYS is acknowledged and dropped.
func TestSysTopicsByRole(t *testing.T) {
	srv := startServerConfig(t, nil)
	host, port := hostPort(t, srv.brk.Addr())
	opSecret, err := srv.ids.CreateToken(t.Context(), identity.RoleOperator, "ops")
	if err != nil {
		t.Fatal(err)
	}
	sysSub := func() string {
		t.Helper()
		out, err := exec.CommandContext(t.Context(), mosquittoTool(t, "mosquitto_sub"), "-h", host, "-p", port,
			"-u", "ops", "-P", opSecret, "-t", "$SYS/broker/version", "-C", "1", "-W", "10").CombinedOutput()
		if err != nil {
			t.Fatalf("mosquitto_sub $SYS/broker/version as an operator: %v: %s", err, out)
		}
		return strings.TrimSpace(string(out))
	}
	version := sysSub()
	if version == "" {
		t.Error("$SYS/broker/version is empty, want the broker's version")
	}
	out, err := exec.CommandContext(t.Context(), mosquittoTool(t, "mosquitto_pub"), "-h", host, "-p", port,
		"-u", "ops", "-P", opSecret, "-q", "1", "-r", "-t", "$SYS/broker/version", "-m", "forged").CombinedOutput()
	if err != nil {
		t.Errorf("mosquitto_pub to $SYS: %v: %s (want acknowledged and dropped)", err, out)
	}
	if v := sysSub(); v != version {
		t.Errorf("$SYS/broker/version = %q after an operator's PUBLISH, want the broker's %q", v, version)
	}

	intSecret, err := srv.ids.CreateToken(t.Context(), identity.RoleIntegrator, "dash")
	if err != nil {
		t.Fatal(err)
	}
	msgs := make(chan paho.Message, 64)
	integ := mustMQTT(t, srv.mqttURL(), "dash-1", "dash", intSecret, msgs)
	if code := subscribe(t, integ, "$SYS/#"); code != 0x80 {
		t.Errorf("integrator SUBACK for $SYS/#: %#x, want 0x80", code)
	}
	devSecret, err := srv.ids.AddDevice(t.Context(), "lamp-1", nil)
	if err != nil {
		t.Fatal(err)
	}
	dev := mustMQTT(t, srv.mqttURL(), "lamp-1", "lamp-1", devSecret, nil)
	if code := subscribe(t, dev, "$SYS/broker/uptime"); code != 0x80 {
		t.Errorf("device SUBACK for $SYS/broker/uptime: %#x, want 0x80", code)
	}
	// "#" does not match $SYS, neither the retained values nor live ones.
	if code := subscribe(t, integ, "#"); code != 1 {
		t.Fatalf("integrator SUBACK for #: %#x", code)
	}
	publish(t, dev, "devices/lamp-1/telemetry", "marker")
	for {
		m := nextMsg(t, msgs)
		if strings.HasPrefix(m.Topic(), "$") {
			t.Fatalf("integrator's # got %s", m.Topic())
		}
		if m.Topic() == "devices/lamp-1/telemetry" {
			break
		}
	}
}

// TestMessageRateFlags: --max-message-rate and --max-message-burst limit a
// device's PUBLISHes; over them an MQTT 3.1.1 device's QoS 1 messages are
// acknowledged and dropped, and /metrics counts them.
func TestMessageRateFlags(t *testing.T) {
	o := &serveOptions{}
	cmd := &cobra.Command{Use: "serve"}
	o.addFlags(cmd)
	if err := cmd.Flags().Parse([]string{"--data-dir", t.TempDir(), "--max-message-rate", "0.001", "--max-message-burst", "3"}); err != nil {
		t.Fatal(err)
	}
	cfg, err := o.config(slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("serve flags: %v", err)
	}
	srv := startServerConfig(t, func(c *serveConfig) { c.MaxMessageRate, c.MaxMessageBurst = cfg.MaxMessageRate, cfg.MaxMessageBurst })
	intSecret, err := srv.ids.CreateToken(t.Context(), identity.RoleIntegrator, "dash")
	if err != nil {
		t.Fatal(err)
	}
	msgs := make(chan paho.Message, 64)
	integ := mustMQTT(t, srv.mqttURL(), "dash-1", "dash", intSecret, msgs)
	subscribe(t, integ, "devices/+/telemetry")
	devSecret, err := srv.ids.AddDevice(t.Context(), "chatty", nil)
	if err != nil {
		t.Fatal(err)
	}
	dev := mustMQTT(t, srv.mqttURL(), "chatty", "chatty", devSecret, nil)
	for n := range 5 {
		publish(t, dev, "devices/chatty/telemetry", fmt.Sprint(n)) // all acknowledged
	}
	got := map[string]bool{}
	for range 3 { // the burst; paho hands them over in any order
		got[string(waitMsg(t, msgs, "devices/chatty/telemetry").Payload())] = true
	}
	if !got["0"] || !got["1"] || !got["2"] {
		t.Errorf("delivered %v, want the first three (0, 1, 2)", got)
	}
	waitMetric(t, srv.apiURL(), `umbra_broker_messages_dropped_total{reason="rate_limited"} 2`)
	if !dev.IsConnectionOpen() {
		t.Error("the device was disconnected for its rate")
	}
	// That the refused messages are not delivered is TestMessageRate's
	// (broker), which has an ordering barrier to wait for.
}
