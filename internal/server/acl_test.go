package server_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/identity"
	"github.com/umbra-iot/umbra/internal/brokertest"
	"github.com/umbra-iot/umbra/internal/server"
	"github.com/umbra-iot/umbra/policy"
)

// fixture is a shared example policy under the repository's testdata/acl.
func fixture(name string) string { return filepath.Join("..", "..", "testdata", "acl", name) }

// mustOpenACLRig is mustOpenRig (secure) with Config.ACLFile set.
func mustOpenACLRig(t *testing.T, aclFile string) *rig {
	t.Helper()
	s := mustOpenServer(t, server.Config{
		DataDir:  t.TempDir(),
		MQTTAddr: "127.0.0.1:0",
		HTTPAddr: "127.0.0.1:0",
		ACLFile:  aclFile,
		Logger:   testLogger(t),
	})
	return &rig{Server: s, secure: true, secrets: map[device.ID]string{}}
}

// connectToken creates a token of role and connects with it as clientID,
// after applying opts.
func (r *rig) connectToken(t *testing.T, role identity.Role, name, clientID string, opts ...func(*paho.ClientOptions)) paho.Client {
	t.Helper()
	secret, err := r.Identity().CreateToken(t.Context(), role, name)
	if err != nil {
		t.Fatalf("create token %s: %v", name, err)
	}
	opts = append([]func(*paho.ClientOptions){func(o *paho.ClientOptions) { o.SetUsername(name).SetPassword(secret) }}, opts...)
	return brokertest.Connect(t, r.mqttURL(), clientID, opts...)
}

// subackCode subscribes c to filter and returns the SUBACK code.
func subackCode(t *testing.T, c paho.Client, filter string) byte {
	t.Helper()
	tok := c.Subscribe(filter, 1, func(paho.Client, paho.Message) {})
	if !tok.WaitTimeout(waitTimeout) || tok.Error() != nil {
		t.Fatalf("subscribe %s: %v", filter, tok.Error())
	}
	return tok.(*paho.SubscribeToken).Result()[filter]
}

// expectOnly receives from ch until a message on topic arrives and fails
// if any message before it has a topic in forbidden. A client's messages
// are delivered in order, so a forbidden message published before the
// awaited one would have arrived first.
func expectOnly(t *testing.T, who string, ch <-chan brokertest.Message, topic string, forbidden ...string) brokertest.Message {
	t.Helper()
	for {
		m := brokertest.Next(t, ch, waitTimeout)
		for _, f := range forbidden {
			if m.Topic == f {
				t.Errorf("%s received %v, which must have been refused", who, m)
			}
		}
		if m.Topic == topic {
			return m
		}
	}
}

// TestTelemetryNextToShadow: a device sends telemetry on devices/<id>/…
// over the connection it uses for its shadow; an integrator subscribed to
// devices/+/telemetry receives it; another device can neither read it nor
// publish in its place; only operators send commands. Denied publishes
// are QoS 0, which no MQTT version acknowledges.
func TestTelemetryNextToShadow(t *testing.T) {
	r := mustOpenRig(t, true)
	devA := r.connectDevice(t, "dev-a")
	devB := r.connectDevice(t, "dev-b")
	integ := r.connectToken(t, identity.RoleIntegrator, "dash", "dashboard-7")
	op := r.connectToken(t, identity.RoleOperator, "ops", "ops console")

	telemetry := brokertest.Subscribe(t, integ, "devices/+/telemetry", 1)
	aShadow := brokertest.Subscribe(t, devA, "state/dev-a/update/accepted", 1)
	aCommands := brokertest.Subscribe(t, devA, "devices/dev-a/commands/#", 1)
	for _, f := range []string{"devices/dev-a/telemetry", "devices/+/telemetry", "devices/#", "state/dev-a/#"} {
		if code := subackCode(t, devB, f); code < 0x80 {
			t.Errorf("dev-b subscribing %s: SUBACK %#x, want a failure code", f, code)
		}
	}

	// One connection, shadow and telemetry.
	brokertest.Publish(t, devA, "state/dev-a/update", 1, []byte(`{"state":{"reported":{"on":true}}}`))
	brokertest.Publish(t, devA, "devices/dev-a/telemetry", 1, []byte(`{"temp":21.5}`))
	if m := brokertest.Next(t, aShadow, waitTimeout); !strings.Contains(string(m.Payload), `"on":true`) {
		t.Errorf("dev-a accepted = %v, want its report", m)
	}
	if m := brokertest.Next(t, telemetry, waitTimeout); m.Topic != "devices/dev-a/telemetry" || string(m.Payload) != `{"temp":21.5}` {
		t.Errorf("integrator received %v, want dev-a's telemetry", m)
	}

	// dev-b writing in dev-a's place is dropped; its own telemetry, sent
	// after on the same connection, arrives alone.
	denied := r.Broker().Stats().PublishesDenied
	brokertest.Publish(t, devB, "devices/dev-a/telemetry", 0, []byte(`{"temp":99}`))
	brokertest.Publish(t, devB, "devices/dev-a/commands/reboot", 0, []byte(`forged`))
	brokertest.Publish(t, devB, "devices/dev-b/telemetry", 1, []byte(`{"temp":3}`))
	expectOnly(t, "integrator", telemetry, "devices/dev-b/telemetry", "devices/dev-a/telemetry")

	// Commands: the device may not send its own, the integrator none, the
	// operator any; the device receives the operator's only.
	brokertest.Publish(t, devA, "devices/dev-a/commands/reboot", 0, []byte(`self`))
	brokertest.Publish(t, integ, "devices/dev-a/commands/reboot", 0, []byte(`integrator`))
	brokertest.Publish(t, op, "devices/dev-a/commands/reboot", 1, []byte(`operator`))
	if m := brokertest.Next(t, aCommands, waitTimeout); string(m.Payload) != "operator" {
		t.Errorf("dev-a received command %v, want the operator's only", m)
	}
	// The denied QoS 0 publishes of dev-a and the integrator travel on
	// their own connections: nothing orders them before the operator's
	// command, so wait for the count.
	eventually(t, "the four denials counted", func() string {
		if got := r.Broker().Stats().PublishesDenied - denied; got != 4 {
			return fmt.Sprintf("PublishesDenied grew by %d, want 4 (two by dev-b, one by dev-a, one by the integrator)", got)
		}
		return ""
	})
	// The integrator saw no forged telemetry and no command.
	select {
	case m := <-telemetry:
		t.Errorf("integrator received %v after the test's messages", m)
	default:
	}
}

// TestACLFileExtendsDefault: a policy file adds to and takes from the
// built-in default for sessions of a real server.
func TestACLFileExtendsDefault(t *testing.T) {
	r := mustOpenACLRig(t, fixture("roles.acl"))
	if got, want := r.Identity().Policy().String(), fixture("roles.acl")+" + "+policy.DefaultName; got != want {
		t.Errorf("policy in force %q, want %q", got, want)
	}
	dev := r.connectDevice(t, "dev-a")
	integ := r.connectToken(t, identity.RoleIntegrator, "dash", "dash-1")
	feed := brokertest.Subscribe(t, integ, "devices/dev-a/#", 1)
	brokertest.Publish(t, dev, "devices/dev-a/logs", 0, []byte("denied by the file"))
	brokertest.Publish(t, dev, "devices/dev-a/status", 1, []byte("added by the file"))
	brokertest.Publish(t, dev, "devices/dev-a/telemetry", 1, []byte("from the default"))
	got := map[string]string{}
	for range 2 {
		m := brokertest.Next(t, feed, waitTimeout)
		got[m.Topic] = string(m.Payload)
	}
	if got["devices/dev-a/status"] != "added by the file" || got["devices/dev-a/telemetry"] != "from the default" {
		t.Errorf("integrator received %v, want the status and the telemetry", got)
	}
	if _, ok := got["devices/dev-a/logs"]; ok {
		t.Errorf("integrator received the logs the file denies")
	}
	brokertest.Publish(t, integ, "alarms/a1/ack", 1, []byte("ack"))
	if code := subackCode(t, dev, "fleet/announcements"); code >= 0x80 {
		t.Errorf("device subscribing fleet/announcements: SUBACK %#x, want granted", code)
	}
}

// TestACLReload: ReloadACL swaps a valid file in for existing sessions,
// whose connections stay; a bad file keeps the policy in force; both are
// counted in umbra_acl_reloads_total.
func TestACLReload(t *testing.T) {
	file := filepath.Join(t.TempDir(), "acl.conf")
	write := func(src string) {
		t.Helper()
		if err := os.WriteFile(file, []byte(src), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("role device\npattern write devices/%u/status\n")
	r := mustOpenACLRig(t, file)
	lost := make(chan error, 3)
	onLost := func(o *paho.ClientOptions) {
		o.SetConnectionLostHandler(func(_ paho.Client, err error) { lost <- err })
	}
	dev := r.connectDevice(t, "dev-a")
	op := r.connectToken(t, identity.RoleOperator, "ops", "ops-1", onLost)
	watch := r.connectToken(t, identity.RoleOperator, "watcher", "watch-1", onLost)
	feed := brokertest.Subscribe(t, watch, "devices/dev-a/#", 1)
	devAll := brokertest.Subscribe(t, dev, "devices/dev-a/#", 1)

	brokertest.Publish(t, dev, "devices/dev-a/status", 1, []byte("v1"))
	expectOnly(t, "watcher", feed, "devices/dev-a/status")
	brokertest.Publish(t, op, "devices/dev-a/commands/reboot", 1, []byte("v1"))
	expectOnly(t, "device", devAll, "devices/dev-a/commands/reboot")

	// A bad file: the old policy stays, the error names the line.
	write("role device\npattern write devices/%u/status\ntopic raed x\n")
	err := r.ReloadACL()
	var pe *policy.ParseError
	if !errors.As(err, &pe) || pe.Line != 3 || !strings.Contains(err.Error(), file+":3: topic: unknown access \"raed\"") {
		t.Errorf("ReloadACL(bad) = %v, want %s:3: …", err, file)
	}
	brokertest.Publish(t, dev, "devices/dev-a/status", 1, []byte("still v1"))
	expectOnly(t, "watcher", feed, "devices/dev-a/status")

	// A good file that drops the status and denies the device its
	// commands: the same sessions follow it at once. The device's
	// subscription stays but receives no command; subscribing again to
	// the commands is refused.
	write("role device\npattern deny devices/%u/commands/#\n")
	if err := r.ReloadACL(); err != nil {
		t.Fatalf("ReloadACL(good): %v", err)
	}
	brokertest.Publish(t, op, "devices/dev-a/commands/reboot", 1, []byte("not for the device"))
	brokertest.Publish(t, op, "devices/dev-a/events/marker", 1, []byte("marker"))
	expectOnly(t, "device", devAll, "devices/dev-a/events/marker", "devices/dev-a/commands/reboot")
	brokertest.Publish(t, dev, "devices/dev-a/status", 0, []byte("denied by v2"))
	brokertest.Publish(t, dev, "devices/dev-a/telemetry", 1, []byte("marker"))
	expectOnly(t, "watcher", feed, "devices/dev-a/telemetry", "devices/dev-a/status")
	if code := subackCode(t, dev, "devices/dev-a/commands/#"); code < 0x80 {
		t.Errorf("subscribing again under the new policy: SUBACK %#x, want a failure code", code)
	}
	select {
	case err := <-lost:
		t.Errorf("a client lost its connection during the reloads: %v", err)
	default:
	}
	for _, c := range []paho.Client{dev, op, watch} {
		if !c.IsConnectionOpen() {
			t.Errorf("a client was disconnected by a reload")
		}
	}

	metrics := scrapeMetrics(t, "http://"+r.HTTPAddr().String()+"/metrics")
	for _, series := range []string{`umbra_acl_reloads_total{result="ok"}`, `umbra_acl_reloads_total{result="error"}`} {
		if got := metrics[series]; got != 1 {
			t.Errorf("/metrics %s = %v, want 1", series, got)
		}
	}

	// Without a file there is nothing to reload.
	plain := mustOpenRig(t, true)
	if err := plain.ReloadACL(); !errors.Is(err, server.ErrNoACLFile) {
		t.Errorf("ReloadACL without a file = %v, want ErrNoACLFile", err)
	}
}

// TestOpenBadACLFile: a bad file fails Open with every bad line as
// file:line, before the data dir is created.
func TestOpenBadACLFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	_, err := server.Open(t.Context(), server.Config{DataDir: dir, MQTTAddr: "127.0.0.1:0", ACLFile: fixture("bad.acl")})
	for _, line := range []string{":4: topic: unknown access", ":5: role \"admin\"", ":6: pattern \"devices/x%u\""} {
		if err == nil || !strings.Contains(err.Error(), fixture("bad.acl")+line) {
			t.Errorf("Open with bad.acl = %v, want an error naming %s%s", err, fixture("bad.acl"), line)
		}
	}
	if _, statErr := os.Stat(dir); !errors.Is(statErr, os.ErrNotExist) {
		t.Errorf("data dir after the refused Open: %v, want it not created", statErr)
	}
	_, err = server.Open(t.Context(), server.Config{DataDir: dir, MQTTAddr: "127.0.0.1:0", ACLFile: filepath.Join(dir, "missing.acl")})
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Open with a missing file = %v, want ErrNotExist", err)
	}
}
