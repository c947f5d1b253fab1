package server_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/identity"
	"github.com/umbra-iot/umbra/internal/brokertest"
	"github.com/umbra-iot/umbra/internal/server"
	"github.com/umbra-iot/umbra/rollout"
	"github.com/umbra-iot/umbra/shadow"
)

// awsRig is a whole Umbra with authentication on, for the AWS IoT
// compatibility tests (issue 12): devices log in with their secrets, an
// operator and an integrator with tokens.
type awsRig struct {
	*server.Server
	t        *testing.T
	url, api string
	secrets  map[device.ID]string
	opToken  string // "name:secret"
	intToken string
}

func mustOpenAWSRig(t *testing.T, edit func(*server.Config)) *awsRig {
	t.Helper()
	cfg := server.Config{
		DataDir:     t.TempDir(),
		MQTTAddr:    "127.0.0.1:0",
		HTTPAddr:    "127.0.0.1:0",
		RolloutTick: 50 * time.Millisecond,
		Logger:      testLogger(t),
	}
	if edit != nil {
		edit(&cfg)
	}
	s := mustOpenServer(t, cfg)
	r := &awsRig{Server: s, t: t, url: "tcp://" + s.Broker().Addr().String(), api: "http://" + s.HTTPAddr().String(), secrets: map[device.ID]string{}}
	op, err := s.Identity().CreateToken(t.Context(), identity.RoleOperator, "ops")
	if err != nil {
		t.Fatal(err)
	}
	integ, err := s.Identity().CreateToken(t.Context(), identity.RoleIntegrator, "dash")
	if err != nil {
		t.Fatal(err)
	}
	r.opToken, r.intToken = "ops:"+op, "dash:"+integ
	return r
}

// lostChan reports a client's lost connection.
type lostChan chan error

// device enrolls id (once) and connects it as an AWS SDK would (MQTT
// 3.1.1, client ID = thing name); lost receives the connection's end.
func (r *awsRig) device(t *testing.T, id device.ID) (paho.Client, lostChan) {
	t.Helper()
	if _, ok := r.secrets[id]; !ok {
		secret, err := r.Identity().AddDevice(t.Context(), id, nil)
		if err != nil {
			t.Fatal(err)
		}
		r.secrets[id] = secret
	}
	return r.connect(t, string(id), string(id), r.secrets[id])
}

// operator and integrator connect with their tokens.
func (r *awsRig) operator(t *testing.T, clientID string) paho.Client {
	t.Helper()
	name, secret, _ := strings.Cut(r.opToken, ":")
	c, _ := r.connect(t, clientID, name, secret)
	return c
}

func (r *awsRig) integrator(t *testing.T, clientID string) paho.Client {
	t.Helper()
	name, secret, _ := strings.Cut(r.intToken, ":")
	c, _ := r.connect(t, clientID, name, secret)
	return c
}

func (r *awsRig) connect(t *testing.T, clientID, user, pass string) (paho.Client, lostChan) {
	t.Helper()
	lost := make(lostChan, 1)
	c := brokertest.Connect(t, r.url, clientID, func(o *paho.ClientOptions) {
		o.SetUsername(user).SetPassword(pass).SetProtocolVersion(4)
		o.SetConnectionLostHandler(func(_ paho.Client, err error) {
			select {
			case lost <- err:
			default:
			}
		})
	})
	return c, lost
}

// stillConnected fails if c's connection ended.
func stillConnected(t *testing.T, who string, c paho.Client, lost lostChan) {
	t.Helper()
	select {
	case err := <-lost:
		t.Fatalf("%s was disconnected: %v", who, err)
	default:
	}
	if !c.IsConnectionOpen() {
		t.Fatalf("%s is not connected", who)
	}
}

// httpDo sends an API request with token and returns the status and body.
func (r *awsRig) httpDo(t *testing.T, token, method, path, body string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, r.api+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	t.Cleanup(http.DefaultClient.CloseIdleConnections)
	return res.StatusCode, b
}

// awaitToken reads ch until a message carries clientToken tok (others are
// older replies of the same topic) and returns its decoded payload.
func awaitToken(t *testing.T, ch <-chan brokertest.Message, tok string) map[string]any {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		m := brokertest.Next(t, ch, time.Until(deadline))
		var p map[string]any
		if err := json.Unmarshal(m.Payload, &p); err != nil {
			t.Fatalf("%s: payload %q is not JSON: %v", m.Topic, m.Payload, err)
		}
		if p["clientToken"] == tok {
			return p
		}
	}
}

// checkAWSError checks the AWS IoT shadow error shape: a number code, a
// message, a timestamp in seconds and the clientToken (left out when the
// request had none), nothing else.
func checkAWSError(t *testing.T, what string, p map[string]any, code int, tok string) {
	t.Helper()
	ts, _ := p["timestamp"].(float64)
	msg, _ := p["message"].(string)
	keys := 4
	if tok == "" {
		keys = 3
	}
	if got, _ := p["clientToken"].(string); p["code"] != float64(code) || msg == "" || ts < 1e9 || ts > 1e10 || got != tok || len(p) != keys {
		t.Errorf("%s: %v, want {code:%d, message, timestamp (s), clientToken:%s} only", what, p, code, tok)
	}
}

// subscribeGranted subscribes c to filter and reports whether the SUBACK
// granted it.
func subscribeGranted(t *testing.T, c paho.Client, filter string) bool {
	t.Helper()
	tok := c.Subscribe(filter, 1, func(paho.Client, paho.Message) {})
	if !tok.WaitTimeout(brokertest.Timeout) {
		t.Fatalf("subscribe %s: no SUBACK", filter)
	}
	return tok.(*paho.SubscribeToken).Result()[filter] < 0x80
}

func publishJSON(t *testing.T, c paho.Client, topic string, body any) {
	t.Helper()
	b, err := json.Marshal(body)
	if err != nil {
		t.Fatal(err)
	}
	brokertest.Publish(t, c, topic, 1, b)
}

// TestAWSShadowTrees runs the shadow operations as a device on each tree
// and for the classic and a named shadow, with real MQTT clients over TCP:
// update, documents, the delta of an operator's (HTTP) write, get, delete,
// get after delete. Replies arrive on the tree and shadow the request
// named, with the AWS payload shapes.
func TestAWSShadowTrees(t *testing.T) {
	r := mustOpenAWSRig(t, nil)
	cases := []struct {
		name string
		tree shadow.Tree
		sh   shadow.Name
	}{
		{"aws classic", shadow.TreeAWS, ""},
		{"aws named", shadow.TreeAWS, "cfg"},
		{"state classic", shadow.TreeState, ""},
		{"state named", shadow.TreeState, "cfg"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			id := device.ID(fmt.Sprintf("thing-%d", i))
			dev, lost := r.device(t, id)
			topic := func(suffix string) string { return tc.tree.Topic(id, tc.sh, suffix) }
			sub := map[string]<-chan brokertest.Message{}
			for _, s := range []string{"update/accepted", "update/rejected", "update/delta", "update/documents",
				"get/accepted", "get/rejected", "delete/accepted", "delete/rejected"} {
				sub[s] = brokertest.Subscribe(t, dev, topic(s), 1)
			}
			tok := func(n int) string { return fmt.Sprintf("%s-%d", id, n) }

			// The device reports (AWS v2 SDKs put thingName in the body).
			publishJSON(t, dev, topic("update"), map[string]any{"state": map[string]any{"reported": map[string]any{"led": "off"}}, "clientToken": tok(0), "thingName": id})
			acc := awaitToken(t, sub["update/accepted"], tok(0))
			if acc["version"] != 1.0 || acc["timestamp"] == nil || acc["metadata"] == nil || acc["state"] == nil {
				t.Errorf("update/accepted %v: want state, metadata, version 1, timestamp", acc)
			}
			docs := awaitToken(t, sub["update/documents"], tok(0))
			if docs["previous"] != nil || docs["current"] == nil {
				t.Errorf("update/documents %v: want previous null and current", docs)
			}

			// An operator's write over HTTP reaches the device as a delta on
			// the device's tree.
			path := "/v1/devices/" + string(id) + "/shadow?clientToken=op-1"
			if tc.sh != "" {
				path += "&name=" + string(tc.sh)
			}
			if st, b := r.httpDo(t, r.opToken, "POST", path, `{"state":{"desired":{"led":"on"}}}`); st != 200 {
				t.Fatalf("operator POST: %d %s", st, b)
			}
			delta := awaitToken(t, sub["update/delta"], "op-1")
			if st, _ := json.Marshal(delta["state"]); string(st) != `{"led":"on"}` || delta["version"] != 2.0 {
				t.Errorf("update/delta %v: want state {led:on} at version 2", delta)
			}

			// get (the v1 SDK sends the version on get, which is ignored).
			publishJSON(t, dev, topic("get"), map[string]any{"clientToken": tok(1), "version": 2})
			got := awaitToken(t, sub["get/accepted"], tok(1))
			if st, _ := json.Marshal(got["state"]); string(st) != `{"delta":{"led":"on"},"desired":{"led":"on"},"reported":{"led":"off"}}` || got["version"] != 2.0 {
				t.Errorf("get/accepted %v: want desired, reported and delta at version 2", got)
			}
			// A stale lock is a 409 in the AWS error shape.
			publishJSON(t, dev, topic("update"), map[string]any{"state": map[string]any{"reported": map[string]any{"led": "on"}}, "version": 1, "clientToken": tok(2)})
			checkAWSError(t, "stale update", awaitToken(t, sub["update/rejected"], tok(2)), 409, tok(2))

			publishJSON(t, dev, topic("delete"), map[string]any{"clientToken": tok(3), "version": 2})
			if del := awaitToken(t, sub["delete/accepted"], tok(3)); del["version"] != 2.0 || len(del) != 3 {
				t.Errorf("delete/accepted %v: want version 2, timestamp and clientToken", del)
			}
			publishJSON(t, dev, topic("get"), map[string]any{"clientToken": tok(4)})
			checkAWSError(t, "get after delete", awaitToken(t, sub["get/rejected"], tok(4)), 404, tok(4))
			stillConnected(t, string(id), dev, lost)
		})
	}
}

// TestAWSRepliesReachBothTrees: every accepted, delta and documents message
// reaches subscribers of both trees, whoever wrote: a device on the other
// tree, an operator over MQTT, the HTTP API, the rollout planner's writer.
func TestAWSRepliesReachBothTrees(t *testing.T) {
	r := mustOpenAWSRig(t, nil)
	const id = device.ID("lamp1")
	dev, lost := r.device(t, id)
	op := r.operator(t, "ops-cli")
	integ := r.integrator(t, "dash-1")
	listeners := map[string]<-chan brokertest.Message{}
	for _, tr := range []shadow.Tree{shadow.TreeState, shadow.TreeAWS} {
		for _, kind := range []string{"accepted", "delta", "documents"} {
			listeners[tr.String()+" "+kind] = brokertest.Subscribe(t, integ, tr.Topic(id, "", "update/"+kind), 1)
		}
	}
	awsAccepted := brokertest.Subscribe(t, dev, "$aws/things/lamp1/shadow/update/accepted", 1)
	writes := []struct {
		name  string
		write func(tok string)
	}{
		{"device on state/", func(tok string) {
			publishJSON(t, dev, "state/lamp1/update", map[string]any{"state": map[string]any{"desired": map[string]any{"n": tok}}, "clientToken": tok})
		}},
		{"operator on $aws", func(tok string) {
			publishJSON(t, op, "$aws/things/lamp1/shadow/update", map[string]any{"state": map[string]any{"desired": map[string]any{"n": tok}}, "clientToken": tok})
		}},
		{"HTTP API", func(tok string) {
			if st, b := r.httpDo(t, r.opToken, "POST", "/v1/devices/lamp1/shadow?clientToken="+tok, `{"state":{"desired":{"n":"`+tok+`"}}}`); st != 200 {
				t.Fatalf("POST: %d %s", st, b)
			}
		}},
		{"rollout writer", func(tok string) {
			if err := rollout.EngineShadows(r.Engine()).SetDesiredFirmware(t.Context(), id, map[string]any{"version": tok}, tok); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for i, w := range writes {
		tok := fmt.Sprintf("w%d", i)
		w.write(tok)
		for name, ch := range listeners {
			p := awaitToken(t, ch, tok)
			if v, _ := p["version"].(float64); name != "state documents" && name != "aws documents" && v != float64(i+1) {
				t.Errorf("%s: %s has version %v, want %d", w.name, name, p["version"], i+1)
			}
		}
		awaitToken(t, awsAccepted, tok) // the device itself, on its AWS tree
	}
	stillConnected(t, "lamp1", dev, lost)
}

// TestAWSCatchUpDelta: a device that subscribes to its delta topic on
// either tree, or to a named shadow's, gets the pending delta at once;
// another subscriber of the same topic does not.
func TestAWSCatchUpDelta(t *testing.T) {
	r := mustOpenAWSRig(t, nil)
	const id = device.ID("sleepy")
	if _, err := r.Engine().Update(t.Context(), id, []byte(`{"state":{"desired":{"fw":"2"},"reported":{"fw":"1"}}}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Engine().UpdateNamed(t.Context(), id, "cfg", []byte(`{"state":{"desired":{"rate":5}}}`)); err != nil {
		t.Fatal(err)
	}
	integ := r.integrator(t, "watcher")
	other := brokertest.Subscribe(t, integ, "$aws/things/sleepy/shadow/update/delta", 1)
	if m := brokertest.Next(t, other, waitTimeout); bytes.Contains(m.Payload, []byte("clientToken")) {
		t.Fatalf("the integrator's own catch-up delta: got %s", m)
	}
	dev, lost := r.device(t, id)
	for _, tc := range []struct{ filter, topic, state string }{
		{"$aws/things/sleepy/shadow/update/delta", "$aws/things/sleepy/shadow/update/delta", `{"fw":"2"}`},
		{"state/sleepy/update/delta", "state/sleepy/update/delta", `{"fw":"2"}`},
		{"$aws/things/sleepy/shadow/name/cfg/update/+", "$aws/things/sleepy/shadow/name/cfg/update/delta", `{"rate":5}`},
		{"state/sleepy/shadow/+/update/delta", "state/sleepy/shadow/cfg/update/delta", `{"rate":5}`},
	} {
		m := brokertest.Next(t, brokertest.Subscribe(t, dev, tc.filter, 1), waitTimeout)
		var p struct {
			State   json.RawMessage
			Version int
		}
		if err := json.Unmarshal(m.Payload, &p); err != nil || m.Topic != tc.topic || string(p.State) != tc.state || p.Version != 1 {
			t.Errorf("subscribe %s: got %s, want the delta %s on %s", tc.filter, m, tc.state, tc.topic)
		}
	}
	// A barrier: an update's delta reaches the other subscriber after any
	// catch-up would have.
	if _, err := r.Engine().Update(t.Context(), id, []byte(`{"state":{"desired":{"fw":"3"}},"clientToken":"barrier"}`)); err != nil {
		t.Fatal(err)
	}
	if m := brokertest.Next(t, other, waitTimeout); !bytes.Contains(m.Payload, []byte(`"clientToken":"barrier"`)) {
		t.Errorf("the other subscriber got %s before the barrier, want no catch-up delta", m)
	}
	stillConnected(t, "sleepy", dev, lost)
}

// TestAWSUnservedOperationIsAnswered (issue 12 item 5): a device's QoS 1
// publish of an operation Umbra does not serve under its own
// $aws/things/<id>/shadow/ is answered 404 on the matching /rejected, a bad
// shadow name 400, and the MQTT 3.1.1 connection stays up. On main the ACL
// refused such publishes and the broker disconnected the device.
func TestAWSUnservedOperationIsAnswered(t *testing.T) {
	r := mustOpenAWSRig(t, nil)
	dev, lost := r.device(t, "thing-1")
	rejected := brokertest.Subscribe(t, dev, "$aws/things/thing-1/shadow/#", 1)
	for i, tc := range []struct {
		topic string
		code  int
	}{
		{"$aws/things/thing-1/shadow/list", 404},
		{"$aws/things/thing-1/shadow/name", 404},
		{"$aws/things/thing-1/shadow/name/cfg/subscribe", 404},
		{"$aws/things/thing-1/shadow/name/bad.name/get", 400},
		{"$aws/things/thing-1/shadow/name/$package/update", 400},
	} {
		tok := fmt.Sprintf("u%d", i)
		publishJSON(t, dev, tc.topic, map[string]any{"clientToken": tok})
		for {
			m := brokertest.Next(t, rejected, waitTimeout)
			if m.Topic != tc.topic+"/rejected" {
				continue
			}
			var p map[string]any
			if err := json.Unmarshal(m.Payload, &p); err != nil {
				t.Fatal(err)
			}
			checkAWSError(t, tc.topic, p, tc.code, tok)
			break
		}
	}
	// Still connected, and still served.
	get := brokertest.Subscribe(t, dev, "$aws/things/thing-1/shadow/get/+", 1)
	publishJSON(t, dev, "$aws/things/thing-1/shadow/get", map[string]any{"clientToken": "after"})
	checkAWSError(t, "get", awaitToken(t, get, "after"), 404, "after")
	stillConnected(t, "thing-1", dev, lost)
}

// TestAWSThingRules: one thing can neither read nor write another's $aws
// shadows, nor publish replies; integrators read, operators write.
func TestAWSThingRules(t *testing.T) {
	r := mustOpenAWSRig(t, nil)
	a, aLost := r.device(t, "thing-a")
	b, _ := r.device(t, "thing-b")
	bAccepted := brokertest.Subscribe(t, b, "$aws/things/thing-b/shadow/update/accepted", 1)
	bDelta := brokertest.Subscribe(t, b, "$aws/things/thing-b/shadow/update/delta", 1)

	// Subscriptions of thing-a: its own tree with wildcards, nothing else.
	for _, tc := range []struct {
		filter string
		ok     bool
	}{
		{"$aws/things/thing-a/shadow/get/+", true},
		{"$aws/things/thing-a/shadow/name/+/update/delta", true},
		{"$aws/things/thing-a/shadow/#", true},
		{"$aws/things/thing-b/shadow/update/accepted", false},
		{"$aws/things/thing-b/shadow/#", false},
		{"$aws/things/+/shadow/update/delta", false},
		{"$aws/things/thing-a/#", false},
		{"$aws/#", false},
	} {
		if granted := subscribeGranted(t, a, tc.filter); granted != tc.ok {
			t.Errorf("thing-a subscribe %s: granted %t, want %t", tc.filter, granted, tc.ok)
		}
	}
	// QoS 0 publishes on thing-b's tree and on its own reply topics are
	// dropped: thing-b's shadow is untouched, nobody sees a forged reply.
	brokertest.Publish(t, a, "$aws/things/thing-b/shadow/update", 0, []byte(`{"state":{"desired":{"evil":1}},"clientToken":"forged"}`))
	brokertest.Publish(t, a, "$aws/things/thing-b/shadow/name/cfg/update", 0, []byte(`{"state":{"desired":{"evil":1}},"clientToken":"forged"}`))
	brokertest.Publish(t, a, "$aws/things/thing-a/shadow/update/accepted", 0, []byte(`{"clientToken":"forged"}`))
	// The operator writes thing-b over $aws; that is the first message thing-b sees.
	op := r.operator(t, "ops-cli")
	publishJSON(t, op, "$aws/things/thing-b/shadow/update", map[string]any{"state": map[string]any{"desired": map[string]any{"led": "on"}}, "clientToken": "op"})
	if p := awaitToken(t, bAccepted, "op"); p["version"] != 1.0 {
		t.Errorf("operator's update of thing-b: %v, want version 1 (nothing applied before)", p)
	}
	if p := awaitToken(t, bDelta, "op"); p["version"] != 1.0 {
		t.Errorf("thing-b's delta %v, want version 1", p)
	}
	if got, err := r.Engine().Shadows(t.Context(), "thing-b"); err != nil || len(got) != 1 || got[0].Name != "" {
		t.Errorf("thing-b's shadows: %+v, %v; want only the classic one", got, err)
	}
	stillConnected(t, "thing-a", a, aLost)
	// A QoS 1 publish on another thing's tree is refused: MQTT 3.1.1
	// cannot say so, so it is acknowledged and dropped, and thing-a stays
	// connected (a disconnect would make its SDK resend it forever).
	brokertest.Publish(t, a, "$aws/things/thing-b/shadow/update", 1, []byte(`{"state":{"desired":{"evil":2}},"clientToken":"forged-qos1"}`))
	stillConnected(t, "thing-a", a, aLost)
	if got, err := r.Engine().Shadows(t.Context(), "thing-b"); err != nil || len(got) != 1 || got[0].Version != 1 {
		t.Errorf("thing-b's shadows after thing-a's QoS 1 forgery: %+v, %v; want the classic one at version 1", got, err)
	}

	// Integrators read every topic of both trees (issue 11's default
	// policy), but not the broker's statistics, and publish nothing.
	integ := r.integrator(t, "dash-1")
	for _, tc := range []struct {
		filter string
		ok     bool
	}{
		{"$aws/things/+/shadow/update/accepted", true},
		{"$aws/things/+/shadow/name/+/update/documents", true},
		{"$aws/things/+/shadow/update/rejected", true},
		{"$aws/things/+/shadow/get/accepted", true},
		{"$SYS/#", false},
	} {
		if granted := subscribeGranted(t, integ, tc.filter); granted != tc.ok {
			t.Errorf("integrator subscribe %s: granted %t, want %t", tc.filter, granted, tc.ok)
		}
	}
}

// TestAWSNamedShadowLimits: named shadows over MQTT have the classic
// shadow's size limit, a per-device cap, name validation, and are listed
// over HTTP; every refusal is an AWS error that stores nothing.
func TestAWSNamedShadowLimits(t *testing.T) {
	r := mustOpenAWSRig(t, func(c *server.Config) { c.MaxNamedShadows, c.MaxDocumentSize = 2, 256 })
	dev, lost := r.device(t, "thing-1")
	rejected := brokertest.Subscribe(t, dev, "$aws/things/thing-1/shadow/name/+/update/rejected", 1)
	accepted := brokertest.Subscribe(t, dev, "$aws/things/thing-1/shadow/name/+/update/accepted", 1)
	for i, n := range []string{"a", "b"} {
		tok := fmt.Sprintf("ok-%d", i)
		publishJSON(t, dev, "$aws/things/thing-1/shadow/name/"+n+"/update", map[string]any{"state": map[string]any{"reported": map[string]any{"x": 1}}, "clientToken": tok})
		awaitToken(t, accepted, tok)
	}
	for _, tc := range []struct {
		name, topic, body string
		code              int
	}{
		{"over the cap", "$aws/things/thing-1/shadow/name/c/update", `{"state":{"reported":{"x":1}},"clientToken":"cap"}`, 400},
		{"over the size", "$aws/things/thing-1/shadow/name/a/update", `{"state":{"reported":{"blob":"` + strings.Repeat("x", 300) + `"}},"clientToken":"size"}`, 413},
		{"malformed JSON", "$aws/things/thing-1/shadow/name/a/update", `{"state":{"reported":`, 400},
		{"desired an array", "$aws/things/thing-1/shadow/name/a/update", `{"state":{"desired":[1]},"clientToken":"arr"}`, 400},
		{"version a string", "$aws/things/thing-1/shadow/name/a/update", `{"state":{},"version":"1","clientToken":"ver"}`, 400},
		{"bad name", "$aws/things/thing-1/shadow/name/a:b.c/update", `{"state":{},"clientToken":"name"}`, 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			brokertest.Publish(t, dev, tc.topic, 1, []byte(tc.body))
			var tok string
			var p map[string]any
			json.Unmarshal([]byte(tc.body), &p)
			tok, _ = p["clientToken"].(string)
			for {
				m := brokertest.Next(t, rejected, waitTimeout)
				var got map[string]any
				if err := json.Unmarshal(m.Payload, &got); err != nil {
					t.Fatal(err)
				}
				if m.Topic == tc.topic+"/rejected" && got["clientToken"] == p["clientToken"] {
					checkAWSError(t, tc.name, got, tc.code, tok)
					return
				}
			}
		})
	}
	st, body := r.httpDo(t, r.opToken, "GET", "/v1/devices/thing-1/shadows", "")
	var list struct {
		Shadows []shadow.ShadowInfo
	}
	if err := json.Unmarshal(body, &list); st != 200 || err != nil || len(list.Shadows) != 2 ||
		list.Shadows[0].Name != "a" || list.Shadows[0].Version != 1 || list.Shadows[1].Name != "b" {
		t.Errorf("GET shadows: %d %s; want a and b at version 1 (nothing stored by the refusals)", st, body)
	}
	metrics := scrapeMetrics(t, r.api+"/metrics")
	if metrics["umbra_shadow_named_shadows"] != 2 || metrics["umbra_shadow_named_limit_rejections_total"] != 1 {
		t.Errorf("metrics: named %g, refused %g; want 2 and 1", metrics["umbra_shadow_named_shadows"], metrics["umbra_shadow_named_limit_rejections_total"])
	}
	stillConnected(t, "thing-1", dev, lost)
}
