package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/umbra-iot/umbra/identity"
	"github.com/umbra-iot/umbra/wire"
)

// startSecureServer runs a server with authentication on and returns it
// with its operator token (admin.token).
func startSecureServer(t *testing.T) (*server, string) {
	t.Helper()
	srv := startServerConfig(t, nil)
	tok := adminToken(t, srv.dataDir)
	if tok == "" {
		t.Fatal("serve wrote no admin.token")
	}
	return srv, tok
}

// adminCLI runs an identity command against srv with the operator token
// picked up from the data dir, and fails the test on error.
func adminCLI(t *testing.T, srv *server, args ...string) string {
	t.Helper()
	r := runCLI(t.Context(), "", append(args, "--api", srv.apiURL(), "--data-dir", srv.dataDir)...)
	if r.err != nil {
		t.Fatalf("umbra %s: %v (stderr %s)", strings.Join(args, " "), r.err, r.stderr)
	}
	return strings.TrimSpace(r.stdout)
}

// mqttClient connects to url; msgs (if not nil) receives every message
// without ever blocking paho.
func mqttClient(t *testing.T, url, clientID, user, pass string, tlsCfg *tls.Config, msgs chan<- paho.Message) (paho.Client, error) {
	t.Helper()
	opts := paho.NewClientOptions().AddBroker(url).SetClientID(clientID).
		SetUsername(user).SetPassword(pass).SetOrderMatters(false).
		SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(5 * time.Second).
		SetTLSConfig(tlsCfg).
		SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) {
			if msgs == nil {
				return
			}
			select {
			case msgs <- m:
			default:
			}
		})
	c := paho.NewClient(opts)
	tok := c.Connect()
	if !tok.WaitTimeout(10 * time.Second) {
		return nil, io.ErrNoProgress
	}
	if err := tok.Error(); err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Disconnect(0) })
	return c, nil
}

// mustMQTT is mqttClient that fails the test when the connection is refused.
func mustMQTT(t *testing.T, url, clientID, user, pass string, msgs chan<- paho.Message) paho.Client {
	t.Helper()
	c, err := mqttClient(t, url, clientID, user, pass, nil, msgs)
	if err != nil {
		t.Fatalf("connect %s as %s: %v", clientID, user, err)
	}
	return c
}

func subscribe(t *testing.T, c paho.Client, filter string) byte {
	t.Helper()
	tok := c.Subscribe(filter, 1, nil)
	if !tok.WaitTimeout(5 * time.Second) {
		t.Fatalf("subscribe %s: no SUBACK", filter)
	}
	if err := tok.Error(); err != nil {
		t.Fatalf("subscribe %s: %v", filter, err)
	}
	return tok.(*paho.SubscribeToken).Result()[filter]
}

// subscribeSettled is subscribe for a filter that presence or other
// retained messages published next will match: it returns once mochi has
// also looked up the retained messages matching filter. mochi sends the
// SUBACK first and looks them up after, so a retained message published
// in between reaches the client twice (live, and as a retained copy that
// may arrive after later live messages), and the lookup races the publish
// inside mochi (see docs/testing.md). A client's packets are handled in
// order: once a second SUBSCRIBE, of a filter nothing matches, is
// acknowledged, the first one's lookup is done.
func subscribeSettled(t *testing.T, c paho.Client, filter string) byte {
	t.Helper()
	got := subscribe(t, c, filter)
	subscribe(t, c, "state/no-such-device/presence")
	return got
}

func publish(t *testing.T, c paho.Client, topic, payload string) {
	t.Helper()
	tok := c.Publish(topic, 1, false, payload)
	if !tok.WaitTimeout(5 * time.Second) {
		t.Fatalf("publish %s: no PUBACK", topic)
	}
	// A denied QoS 1 publish may be acknowledged or refused depending on
	// the protocol version; what matters is its effect, checked by callers.
}

// httpDoTimeout bounds each httpDo call, answer read included: a node whose
// API hangs fails the test instead of stalling it.
const httpDoTimeout = 60 * time.Second

// httpDo sends a request with an optional bearer token; a body is declared
// JSON, or a raw image for POST /v1/firmware.
func httpDo(t *testing.T, method, url, token, body string) (int, http.Header, []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), httpDoTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	switch {
	case body == "":
	case method == http.MethodPost && req.URL.Path == "/v1/firmware":
		req.Header.Set("Content-Type", "application/octet-stream") // a raw image
	default:
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res.StatusCode, res.Header, b
}

// waitMsg waits for a message on topic, skipping others.
func waitMsg(t *testing.T, msgs <-chan paho.Message, topic string) paho.Message {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case m := <-msgs:
			if m.Topic() == topic {
				return m
			}
		case <-deadline:
			t.Fatalf("no message on %s within 10s", topic)
		}
	}
}

// TestSecurityRefusesBadCredentials: wrong secret, unknown device, revoked
// token, missing credentials and a device posing as another client ID are
// refused over MQTT; the right credentials are accepted.
func TestSecurityRefusesBadCredentials(t *testing.T) {
	srv, admin := startSecureServer(t)
	secret := adminCLI(t, srv, "device", "add", "dev-a", "--label", "site=lab")
	integ := adminCLI(t, srv, "token", "create", "--role", "integrator", "--name", "dash")
	adminCLI(t, srv, "token", "revoke", "dash")
	user, pass := splitToken(admin)
	iu, ip := splitToken(integ)

	tests := []struct {
		name, clientID, user, pass string
		ok                         bool
	}{
		{"device", "dev-a", "dev-a", secret, true},
		{"operator", "op-1", user, pass, true},
		{"wrong secret", "dev-a", "dev-a", secret + "x", false},
		{"unknown device", "dev-z", "dev-z", secret, false},
		{"revoked token", "dash-1", iu, ip, false},
		{"no credentials", "dev-a", "", "", false},
		{"client ID of another device", "dev-b", "dev-a", secret, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := mqttClient(t, srv.mqttURL(), tc.clientID, tc.user, tc.pass, nil, nil)
			if got := err == nil; got != tc.ok {
				t.Fatalf("connect accepted = %v (err %v), want %v", got, err, tc.ok)
			}
			if c != nil {
				c.Disconnect(0)
			}
		})
	}
}

// TestSecurityDeviceIsolation: device A cannot read or write device B's
// shadow over MQTT or HTTP (403), an integrator sees every device's
// accepted events but cannot write, and HTTP answers 401 without a token.
func TestSecurityDeviceIsolation(t *testing.T) {
	srv, admin := startSecureServer(t)
	secA := adminCLI(t, srv, "device", "add", "dev-a")
	secB := adminCLI(t, srv, "device", "add", "dev-b")
	integ := adminCLI(t, srv, "token", "create", "--role", "integrator", "--name", "dash")
	api := srv.apiURL()

	// Forbidden writes, each on a connection of its own: MQTT 3.1.1 cannot
	// refuse a PUBLISH, so the broker may disconnect the client.
	iu, ip := splitToken(integ)
	for _, w := range []struct{ clientID, user, pass, topic, payload string }{
		{"dev-a", "dev-a", secA, "state/dev-b/update", `{"state":{"reported":{"hacked":true}}}`},
		{"dev-a", "dev-a", secA, "state/dev-a/update/accepted", `{"state":{"reported":{"fake":true}}}`},
		{"dash-2", iu, ip, "state/dev-a/update", `{"state":{"reported":{"byIntegrator":true}}}`},
	} {
		c := mustMQTT(t, srv.mqttURL(), w.clientID, w.user, w.pass, nil)
		publish(t, c, w.topic, w.payload)
		c.Disconnect(0)
	}

	aMsgs := make(chan paho.Message, 64)
	a := mustMQTT(t, srv.mqttURL(), "dev-a", "dev-a", secA, aMsgs)
	if got := subscribe(t, a, "state/dev-b/#"); got < 0x80 {
		t.Errorf("dev-a SUBSCRIBE state/dev-b/# granted QoS %d, want a failure code (>= 0x80)", got)
	}
	if got := subscribe(t, a, "state/dev-a/#"); got >= 0x80 {
		t.Errorf("dev-a SUBSCRIBE state/dev-a/# = %#x, want granted", got)
	}
	iMsgs := make(chan paho.Message, 64)
	integC := mustMQTT(t, srv.mqttURL(), "dash-1", iu, ip, iMsgs)
	if got := subscribe(t, integC, "state/+/update/accepted"); got >= 0x80 {
		t.Fatalf("integrator SUBSCRIBE state/+/update/accepted = %#x, want granted", got)
	}

	// B's own update goes through; the integrator sees it and A does not.
	b := mustMQTT(t, srv.mqttURL(), "dev-b", "dev-b", secB, nil)
	publish(t, b, "state/dev-b/update", `{"state":{"reported":{"temp":1}}}`)
	waitMsg(t, iMsgs, "state/dev-b/update/accepted")
	// A's own update goes through too, and as it is after B's on the same
	// server, A has received its own accepted by then and nothing of B's.
	publish(t, a, "state/dev-a/update", `{"state":{"reported":{"temp":2}}}`)
	waitMsg(t, iMsgs, "state/dev-a/update/accepted")
	waitMsg(t, aMsgs, "state/dev-a/update/accepted")
	for len(aMsgs) > 0 {
		if m := <-aMsgs; strings.HasPrefix(m.Topic(), "state/dev-b/") {
			t.Errorf("dev-a received %s, want nothing of dev-b", m.Topic())
		}
	}

	// Shadows over HTTP as the operator: only the legitimate writes landed.
	for id, want := range map[string]string{"dev-b": `"temp":1`, "dev-a": `"temp":2`} {
		st, _, body := httpDo(t, "GET", api+"/v1/devices/"+id+"/shadow", admin, "")
		if st != http.StatusOK || !strings.Contains(string(body), want) {
			t.Errorf("GET %s shadow = %d %s, want 200 with %s", id, st, body, want)
		}
		for _, bad := range []string{"hacked", "fake", "byIntegrator"} {
			if strings.Contains(string(body), bad) {
				t.Errorf("%s shadow holds %q from a forbidden publish: %s", id, bad, body)
			}
		}
	}

	httpTests := []struct {
		name, method, path, token string
		want                      int
	}{
		{"no token", "GET", "/v1/devices/dev-a/shadow", "", http.StatusUnauthorized},
		{"bad token", "GET", "/v1/devices/dev-a/shadow", "dev-a:nope", http.StatusUnauthorized},
		{"device reads own", "GET", "/v1/devices/dev-a/shadow", "dev-a:" + secA, http.StatusOK},
		{"device writes own", "POST", "/v1/devices/dev-a/shadow", "dev-a:" + secA, http.StatusOK},
		{"device reads other", "GET", "/v1/devices/dev-b/shadow", "dev-a:" + secA, http.StatusForbidden},
		{"device writes other", "POST", "/v1/devices/dev-b/shadow", "dev-a:" + secA, http.StatusForbidden},
		{"device lists", "GET", "/v1/devices", "dev-a:" + secA, http.StatusForbidden},
		{"device enrolls", "POST", "/v1/devices", "dev-a:" + secA, http.StatusForbidden},
		{"integrator reads", "GET", "/v1/devices/dev-b/shadow", integ, http.StatusOK},
		{"integrator writes", "POST", "/v1/devices/dev-b/shadow", integ, http.StatusForbidden},
		{"integrator lists tokens", "GET", "/v1/tokens", integ, http.StatusForbidden},
		{"integrator lists identities", "GET", "/v1/identities/devices", integ, http.StatusOK},
		{"health needs no token", "GET", "/healthz", "", http.StatusOK},
	}
	for _, tc := range httpTests {
		t.Run(tc.name, func(t *testing.T) {
			body := ""
			if tc.method == "POST" {
				body = `{"state":{"reported":{"http":true}}}`
			}
			st, h, b := httpDo(t, tc.method, api+tc.path, tc.token, body)
			if st != tc.want {
				t.Fatalf("%s %s = %d %s, want %d", tc.method, tc.path, st, b, tc.want)
			}
			if st == http.StatusUnauthorized && !strings.HasPrefix(h.Get("WWW-Authenticate"), "Bearer") {
				t.Errorf("WWW-Authenticate = %q, want Bearer …", h.Get("WWW-Authenticate"))
			}
			if st >= 400 && !json.Valid(b) {
				t.Errorf("error body %q is not JSON", b)
			}
		})
	}
}

// TestSecurityPresence: connect, clean disconnect and kill -9 of a device
// process show in `umbra device list`, GET /v1/devices and on the
// state/<id>/presence topic.
func TestSecurityPresence(t *testing.T) {
	srv, admin := startSecureServer(t)
	sec := adminCLI(t, srv, "device", "add", "dev-p")
	if st, _, b := httpDo(t, "POST", srv.apiURL()+"/v1/devices/dev-p/shadow", admin, `{"state":{"desired":{"on":true}}}`); st != http.StatusOK {
		t.Fatalf("create shadow = %d %s, want 200", st, b)
	}
	integ := adminCLI(t, srv, "token", "create", "--role", "integrator", "--name", "dash")
	iMsgs := make(chan paho.Message, 64)
	iu, ip := splitToken(integ)
	integC := mustMQTT(t, srv.mqttURL(), "dash-1", iu, ip, iMsgs)
	// Settled: otherwise dev-p's presence below can reach dash-1 twice,
	// live and as a retained copy that may arrive after the live message
	// of a later step, so that a step reads the previous step's state.
	if got := subscribeSettled(t, integC, "state/+/presence"); got >= 0x80 {
		t.Fatalf("integrator SUBSCRIBE state/+/presence = %#x, want granted", got)
	}
	presence := func(want bool) {
		t.Helper()
		m := waitMsg(t, iMsgs, "state/dev-p/presence")
		if m.Retained() {
			t.Fatalf("presence message %s has the retain flag: a retained copy, not the live event", m.Payload())
		}
		var p identity.Presence
		if err := json.Unmarshal(m.Payload(), &p); err != nil || p.Connected != want {
			t.Fatalf("presence message %s (err %v), want connected=%v", m.Payload(), err, want)
		}
		var list wire.IdentityList
		if err := json.Unmarshal([]byte(adminCLI(t, srv, "device", "list", "--json")), &list); err != nil {
			t.Fatal(err)
		}
		if len(list.Devices) != 1 || list.Devices[0].Presence.Connected != want {
			t.Fatalf("device list --json = %+v, want dev-p connected=%v", list.Devices, want)
		}
		var shadows struct {
			Devices []struct {
				ID       string             `json:"id"`
				Presence *identity.Presence `json:"presence"`
			} `json:"devices"`
		}
		st, _, b := httpDo(t, "GET", srv.apiURL()+"/v1/devices", admin, "")
		if err := json.Unmarshal(b, &shadows); st != http.StatusOK || err != nil || len(shadows.Devices) != 1 ||
			shadows.Devices[0].Presence == nil || shadows.Devices[0].Presence.Connected != want {
			t.Fatalf("GET /v1/devices = %d %s, want dev-p with presence connected=%v", st, b, want)
		}
		online := "no"
		if want {
			online = "yes"
		}
		table := adminCLI(t, srv, "device", "list")
		if !strings.Contains(table, "ONLINE") || !strings.Contains(table, "dev-p  "+online) {
			t.Fatalf("device list =\n%s\nwant an ONLINE column with dev-p %s", table, online)
		}
	}

	c := mustMQTT(t, srv.mqttURL(), "dev-p", "dev-p", sec, nil)
	presence(true)
	c.Disconnect(100)
	presence(false)

	// kill -9 of a device process: mosquitto_sub as dev-p.
	host, port := hostPort(t, srv.brk.Addr())
	sub := exec.Command(mosquittoTool(t, "mosquitto_sub"), "-h", host, "-p", port, "-i", "dev-p",
		"-u", "dev-p", "-P", sec, "-t", "state/dev-p/#", "-q", "1")
	var stderr bytes.Buffer
	sub.Stderr = &stderr
	if err := sub.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Process.Kill(); sub.Wait() })
	presence(true)
	if err := sub.Process.Kill(); err != nil { // SIGKILL
		t.Fatal(err)
	}
	sub.Wait()
	presence(false)
	var list wire.IdentityList
	json.Unmarshal([]byte(adminCLI(t, srv, "device", "list", "--json")), &list)
	if r := list.Devices[0].Presence.DisconnectReason; r != "connection_lost" {
		t.Errorf("disconnect reason after kill -9 = %q, want connection_lost (mosquitto_sub stderr %s)", r, stderr.String())
	}
}

// TestSecuritySecretsNotStored: after enrolling devices and creating
// tokens, no secret appears in plain text in any file of the data dir,
// except the operator's own admin.token (mode 0600).
func TestSecuritySecretsNotStored(t *testing.T) {
	srv, admin := startSecureServer(t)
	secrets := []string{
		adminCLI(t, srv, "device", "add", "dev-s"),
		adminCLI(t, srv, "device", "rotate", "dev-s"),
		adminCLI(t, srv, "token", "create", "--role", "operator", "--name", "ops"),
	}
	_, adminSecret := splitToken(admin)
	secrets = append(secrets, adminSecret)
	// Make sure presence and everything else is flushed to the files.
	mustMQTT(t, srv.mqttURL(), "dev-s", "dev-s", secrets[1], nil).Disconnect(0)

	st, err := os.Stat(filepath.Join(srv.dataDir, adminTokenFile))
	if err != nil {
		t.Fatal(err)
	}
	if m := st.Mode().Perm(); m != 0o600 {
		t.Errorf("admin.token mode = %o, want 600", m)
	}
	files := 0
	err = filepath.WalkDir(srv.dataDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		files++
		for i, s := range secrets {
			_, secretOnly := splitToken(s)
			if secretOnly == "" {
				secretOnly = s
			}
			if bytes.Contains(b, []byte(secretOnly)) && !(d.Name() == adminTokenFile && s == adminSecret) {
				t.Errorf("secret %d found in plain text in %s", i, path)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files < 3 {
		t.Errorf("walked %d files in the data dir, want at least identity.db, its key and admin.token", files)
	}
}

// TestSecurityMTLS: `umbra ca init` and `umbra device cert` give a device
// a certificate the mTLS listener accepts; a certificate from another CA
// is refused, and so is an enrolled certificate of a removed device.
func TestSecurityMTLS(t *testing.T) {
	dataDir := t.TempDir()
	if r := runCLI(t.Context(), "", "ca", "init", "--data-dir", dataDir); r.err != nil {
		t.Fatalf("ca init: %v", r.err)
	}
	caDirPath := filepath.Join(dataDir, caDir)
	tlsCfg, err := identity.ServerTLSConfig(filepath.Join(caDirPath, "server.crt"), filepath.Join(caDirPath, "server.key"),
		filepath.Join(caDirPath, identity.CACertFile))
	if err != nil {
		t.Fatal(err)
	}
	srv := startServerConfig(t, func(c *serveConfig) {
		c.DataDir = dataDir
		c.TLSAddr = "127.0.0.1:0"
		c.TLSConfig = tlsCfg
	})
	adminCLI(t, srv, "device", "add", "dev-m")
	certDir := t.TempDir()
	if r := runCLI(t.Context(), "", "device", "cert", "dev-m", "--data-dir", dataDir, "--out", certDir); r.err != nil {
		t.Fatalf("device cert: %v", r.err)
	}
	otherCA := t.TempDir()
	if r := runCLI(t.Context(), "", "ca", "init", "--data-dir", otherCA); r.err != nil {
		t.Fatalf("ca init (other): %v", r.err)
	}
	otherCerts := t.TempDir()
	if r := runCLI(t.Context(), "", "device", "cert", "dev-m", "--data-dir", otherCA, "--out", otherCerts); r.err != nil {
		t.Fatalf("device cert (other CA): %v", r.err)
	}
	url := "ssl://" + srv.brk.TLSAddr().String()
	clientTLS := func(dir string) *tls.Config {
		c, err := identity.ClientTLSConfig(filepath.Join(caDirPath, identity.CACertFile),
			filepath.Join(dir, "dev-m.crt"), filepath.Join(dir, "dev-m.key"))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	if _, err := mqttClient(t, url, "dev-m", "", "", clientTLS(otherCerts), nil); err == nil {
		t.Error("certificate of an untrusted CA: connected, want refused")
	}
	c, err := mqttClient(t, url, "dev-m", "", "", clientTLS(certDir), nil)
	if err != nil {
		t.Fatalf("fleet CA certificate: %v, want connected", err)
	}
	c.Disconnect(0)

	// mosquitto_pub with the files umbra wrote, as the README shows.
	user, pass := splitToken(adminToken(t, dataDir))
	msgs := make(chan paho.Message, 16)
	op := mustMQTT(t, srv.mqttURL(), "op-1", user, pass, msgs)
	subscribe(t, op, "state/dev-m/update/accepted")
	host, port := hostPort(t, srv.brk.TLSAddr())
	out, err := exec.CommandContext(t.Context(), mosquittoTool(t, "mosquitto_pub"), "-h", host, "-p", port,
		"--cafile", filepath.Join(certDir, identity.CACertFile), "--cert", filepath.Join(certDir, "dev-m.crt"),
		"--key", filepath.Join(certDir, "dev-m.key"), "-i", "dev-m", "-q", "1",
		"-t", "state/dev-m/update", "-m", `{"state":{"reported":{"tls":true}}}`).CombinedOutput()
	if err != nil {
		t.Fatalf("mosquitto_pub over mTLS: %v\n%s", err, out)
	}
	if m := waitMsg(t, msgs, "state/dev-m/update/accepted"); !strings.Contains(string(m.Payload()), `"tls":true`) {
		t.Errorf("accepted after mosquitto_pub over mTLS = %s, want reported tls=true", m.Payload())
	}
	adminCLI(t, srv, "device", "remove", "dev-m")
	if _, err := mqttClient(t, url, "dev-m", "", "", clientTLS(certDir), nil); err == nil {
		t.Error("certificate of a removed device: connected, want refused")
	}
}

// TestSecuritySimEnroll: `umbra sim` finds the operator token in the data
// dir, enrolls each simulated device and logs in with its secret; a second
// run re-enrolls (rotates) the same devices.
func TestSecuritySimEnroll(t *testing.T) {
	srv, admin := startSecureServer(t)
	user, pass := splitToken(admin)
	msgs := make(chan paho.Message, 64)
	w := mustMQTT(t, srv.mqttURL(), "watcher", user, pass, msgs)
	if got := subscribe(t, w, "state/+/update/accepted"); got >= 0x80 {
		t.Fatalf("operator SUBSCRIBE = %#x, want granted", got)
	}
	if got := subscribeSettled(t, w, "state/+/presence"); got >= 0x80 {
		t.Fatalf("operator SUBSCRIBE = %#x, want granted", got)
	}
	// await consumes messages until every want[i] (topic suffix) was seen
	// for both simulated devices.
	await := func(run int, want ...string) {
		t.Helper()
		seen := map[string]bool{}
		for deadline := time.After(10 * time.Second); len(seen) < 2*len(want); {
			select {
			case m := <-msgs:
				parts := strings.SplitN(m.Topic(), "/", 3)
				if !strings.HasPrefix(parts[1], "sim-") {
					continue
				}
				kind := parts[2]
				if kind == "presence" {
					var p identity.Presence
					if err := json.Unmarshal(m.Payload(), &p); err != nil {
						t.Fatalf("presence %s: %v", m.Payload(), err)
					}
					kind = fmt.Sprintf("presence=%v", p.Connected)
				}
				if slices.Contains(want, kind) {
					seen[parts[1]+" "+kind] = true
				}
			case <-deadline:
				t.Fatalf("run %d: saw %v, want %v for sim-0001 and sim-0002", run, seen, want)
			}
		}
	}
	for run := range 2 {
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan cliResult, 1)
		go func() {
			done <- runCLI(ctx, "", "sim", "--server", srv.mqttURL(), "--devices", "2", "--connect-rate", "0",
				"--api", srv.apiURL(), "--data-dir", srv.dataDir)
		}()
		await(run, "presence=true", "update/accepted")
		cancel()
		select {
		case r := <-done:
			if r.err != nil {
				t.Fatalf("run %d: umbra sim: %v\n%s", run, r.err, r.stderr)
			}
		case <-time.After(15 * time.Second):
			t.Fatal("umbra sim did not stop within 15s of cancel")
		}
		await(run, "presence=false")
	}
	devs, err := srv.ids.ListDevices(t.Context())
	if err != nil || len(devs) != 2 {
		t.Errorf("enrolled devices = %+v, %v; want sim-0001 and sim-0002", devs, err)
	}
}

// TestSecurityCLIWithoutCredentials: a client command without a token
// against a server with authentication fails with a hint, and with a
// device's or revoked credential it is refused.
func TestSecurityCLIWithoutCredentials(t *testing.T) {
	srv, _ := startSecureServer(t)
	empty := t.TempDir() // a data dir without admin.token
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"shadow", []string{"shadow", "get", "x", "--server", srv.mqttURL(), "--data-dir", empty}, "--token"},
		{"device list", []string{"device", "list", "--api", srv.apiURL(), "--data-dir", empty}, "--token"},
		{"bad token", []string{"token", "list", "--api", srv.apiURL(), "--token", "admin:nope"}, "401"},
		{"malformed token", []string{"device", "list", "--api", srv.apiURL(), "--token", "nocolon"}, "<name>:<secret>"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := runCLI(t.Context(), "", tc.args...)
			if r.err == nil || !strings.Contains(r.err.Error(), tc.want) {
				t.Fatalf("umbra %v = %v, want an error mentioning %q", tc.args, r.err, tc.want)
			}
		})
	}
}
