package awssdktest_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/identity"
	"github.com/umbra-iot/umbra/internal/awssdktest"
	"github.com/umbra-iot/umbra/internal/brokertest"
	"github.com/umbra-iot/umbra/shadow"
)

// TestMain fails the package if a server goroutine outlives the tests.
func TestMain(m *testing.M) { brokertest.Main(m) }

// doc is a shadow document or a reply as the tests read it.
type doc struct {
	State struct {
		Desired  map[string]any `json:"desired"`
		Reported map[string]any `json:"reported"`
		Delta    map[string]any `json:"delta"`
	} `json:"state"`
	Version     int    `json:"version"`
	ClientToken string `json:"clientToken"`
	Code        int    `json:"code"`
	Message     string `json:"message"`
}

// stored reads device id's shadow (name "" for the classic one) from the
// engine, as an operator would; ok is false if there is none.
func stored(t *testing.T, srv *awssdktest.Server, id device.ID, name shadow.Name) (d doc, ok bool) {
	t.Helper()
	b, err := srv.Engine().GetNamed(t.Context(), id, name, nil)
	if re, isRe := errors.AsType[*shadow.RequestError](err); isRe && re.Code == 404 {
		return doc{}, false
	}
	if err != nil {
		t.Fatalf("get shadow %s/%s: %v", id, name, err)
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	return d, true
}

// operatorUpdate writes payload to id's classic shadow as an operator.
func operatorUpdate(t *testing.T, srv *awssdktest.Server, id device.ID, payload string) doc {
	t.Helper()
	b, err := srv.Engine().Update(t.Context(), id, []byte(payload))
	if err != nil {
		t.Fatalf("operator update %s: %v", payload, err)
	}
	var d doc
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	return d
}

// lineDoc decodes the document a v1 status or delta line carries.
func lineDoc(t *testing.T, l awssdktest.Line) doc {
	t.Helper()
	var d doc
	l.Decode(t, "doc", &d)
	return d
}

// v1Status awaits the v1 SDK's status event for token.
func v1Status(t *testing.T, s *awssdktest.Script, token string) (stat string, d doc) {
	t.Helper()
	l := s.Await("status of "+token, func(l awssdktest.Line) bool {
		return l.Event() == "status" && l.Str("token") == token || l.Event() == "timeout"
	})
	if l.Event() == "timeout" {
		t.Fatalf("v1 SDK timed out waiting for the reply to %s", l.Str("token"))
	}
	return l.Str("stat"), lineDoc(t, l)
}

// v1Send sends a v1 command and returns the clientToken the SDK used.
func v1Send(t *testing.T, s *awssdktest.Script, op string, thing device.ID, state string) string {
	t.Helper()
	cmd := map[string]any{"op": op, "thing": thing}
	if state != "" {
		cmd["state"] = json.RawMessage(state)
	}
	s.Send(cmd)
	l := s.AwaitEvent("sent")
	tok := l.Str("token")
	if tok == "" {
		t.Fatalf("v1 SDK refused %s (another operation pending?): %v", op, l)
	}
	return tok
}

// v1Register connects (awaiting the connect event) and registers thing.
func v1Register(t *testing.T, s *awssdktest.Script, thing device.ID) {
	t.Helper()
	s.AwaitEvent("connect")
	s.Send(map[string]any{"op": "register", "thing": thing})
	if l := s.AwaitEvent("registered"); l["err"] != nil || l["failed"] != nil {
		t.Fatalf("register %s: %v", thing, l)
	}
}

// TestSDKv1Shadow drives the v1 SDK's thingShadow with its default options
// (QoS 0, persistent subscriptions, versioning, discardStale): register,
// update, the delta of an operator's desired state, get, recovering from
// a 409 after a missed delta by a get, and delete. The SDK reaches the
// server through a Proxy, which takes it offline to make it miss the
// delta.
func TestSDKv1Shadow(t *testing.T) {
	t.Parallel()
	srv := awssdktest.NewServer(t, awssdktest.Options{})
	d := srv.Device(t, "thing-1")
	proxy := awssdktest.NewProxy(t, srv.Broker().TLSAddr().String())
	d.Port = proxy.Port()
	v1 := awssdktest.Start(t, "v1-shadow.js", d.Env())
	v1Register(t, v1, d.ID)

	tok := v1Send(t, v1, "update", d.ID, `{"reported":{"led":"off"}}`)
	if stat, got := v1Status(t, v1, tok); stat != "accepted" || got.Version != 1 || got.State.Reported["led"] != "off" || tok != "thing-1-0" {
		t.Fatalf("update %s: %s %+v; want accepted version 1 with token thing-1-0", tok, stat, got)
	}

	// The operator asks for the LED on: the SDK gets the delta.
	operatorUpdate(t, srv, d.ID, `{"state":{"desired":{"led":"on"}}}`)
	var delta struct {
		State   map[string]any
		Version int
	}
	v1.AwaitEvent("delta").Decode(t, "doc", &delta)
	if delta.Version != 2 || fmt.Sprint(delta.State) != "map[led:on]" {
		t.Fatalf("delta: %+v; want version 2 with state led on", delta)
	}
	tok = v1Send(t, v1, "update", d.ID, `{"reported":{"led":"on"}}`)
	if stat, got := v1Status(t, v1, tok); stat != "accepted" || got.Version != 3 {
		t.Fatalf("report after delta: %s %+v; want accepted version 3 (the SDK sent version 2)", stat, got)
	}
	tok = v1Send(t, v1, "get", d.ID, "")
	if stat, got := v1Status(t, v1, tok); stat != "accepted" || got.Version != 3 || got.State.Reported["led"] != "on" || got.State.Delta != nil {
		t.Fatalf("get: %s %+v; want version 3, reported led on, no delta", stat, got)
	}

	// Offline, the device misses another client's report (no delta, so
	// no catch-up delta on resubscribe either); its next update carries a
	// stale version and gets a 409.
	proxy.Cut()
	v1.AwaitEvent("offline")
	operatorUpdate(t, srv, d.ID, `{"state":{"reported":{"fw":"1.0.0"}}}`)
	proxy.Restore()
	v1.AwaitEvent("connect")
	tok = v1Send(t, v1, "update", d.ID, `{"reported":{"temp":21}}`)
	if stat, got := v1Status(t, v1, tok); stat != "rejected" || got.Code != 409 {
		t.Fatalf("update with a stale version: %s %+v; want rejected 409", stat, got)
	}
	if s, _ := stored(t, srv, d.ID, ""); s.Version != 4 || s.State.Reported["temp"] != nil {
		t.Fatalf("stored after the 409: %+v; want version 4 without temp", s)
	}
	// The application recovers: get, then the same update again.
	tok = v1Send(t, v1, "get", d.ID, "")
	if stat, got := v1Status(t, v1, tok); stat != "accepted" || got.Version != 4 || got.State.Reported["fw"] != "1.0.0" {
		t.Fatalf("get after 409: %s %+v; want version 4 with reported fw 1.0.0", stat, got)
	}
	tok = v1Send(t, v1, "update", d.ID, `{"reported":{"temp":21}}`)
	if stat, got := v1Status(t, v1, tok); stat != "accepted" || got.Version != 5 {
		t.Fatalf("retried update: %s %+v; want accepted version 5", stat, got)
	}

	tok = v1Send(t, v1, "delete", d.ID, "")
	if stat, got := v1Status(t, v1, tok); stat != "accepted" || got.Version != 5 {
		t.Fatalf("delete: %s %+v; want accepted with the deleted version 5", stat, got)
	}
	tok = v1Send(t, v1, "get", d.ID, "")
	if stat, got := v1Status(t, v1, tok); stat != "rejected" || got.Code != 404 {
		t.Fatalf("get after delete: %s %+v; want rejected 404", stat, got)
	}
	if _, ok := stored(t, srv, d.ID, ""); ok {
		t.Fatal("shadow still stored after delete")
	}
	tok = v1Send(t, v1, "update", d.ID, `{"reported":{"led":"off"}}`)
	if stat, got := v1Status(t, v1, tok); stat != "accepted" || got.Version != 6 {
		t.Fatalf("update after delete: %s %+v; want accepted version 6 (versions continue)", stat, got)
	}
	if err := v1.Wait(); err != nil {
		t.Errorf("v1 script: %v", err)
	}
}

// TestSDKv1TokensAfterRestart: the v1 SDK numbers its clientTokens
// <clientId>-0, -1, … from 0 in every process. A device that restarts
// and reports its boot state again with token thing-1-0, within the
// retry cache's 60 s, gets a new accepted and the report is stored (the
// retry cache answers only a retry of the last applied request).
func TestSDKv1TokensAfterRestart(t *testing.T) {
	t.Parallel()
	srv := awssdktest.NewServer(t, awssdktest.Options{})
	d := srv.Device(t, "thing-1")
	first := awssdktest.Start(t, "v1-shadow.js", d.Env())
	v1Register(t, first, d.ID)
	for i, state := range []string{`{"reported":{"led":"off"}}`, `{"reported":{"led":"on"}}`} {
		tok := v1Send(t, first, "update", d.ID, state)
		if stat, got := v1Status(t, first, tok); stat != "accepted" || got.Version != i+1 || tok != fmt.Sprintf("thing-1-%d", i) {
			t.Fatalf("first process, update %d (%s): %s %+v", i, tok, stat, got)
		}
	}
	if err := first.Wait(); err != nil {
		t.Fatalf("first process: %v", err)
	}

	second := awssdktest.Start(t, "v1-shadow.js", d.Env())
	v1Register(t, second, d.ID)
	tok := v1Send(t, second, "update", d.ID, `{"reported":{"led":"off"}}`)
	stat, got := v1Status(t, second, tok)
	if tok != "thing-1-0" || stat != "accepted" || got.Version != 3 {
		t.Fatalf("second process, boot report (%s): %s %+v; want accepted version 3", tok, stat, got)
	}
	if s, _ := stored(t, srv, d.ID, ""); s.Version != 3 || s.State.Reported["led"] != "off" {
		t.Fatalf("stored: %+v; want version 3 with led off", s)
	}
	// The SDK took version 3 as its lock: the next update is accepted.
	tok = v1Send(t, second, "update", d.ID, `{"reported":{"led":"on"}}`)
	if stat, got := v1Status(t, second, tok); stat != "accepted" || got.Version != 4 {
		t.Fatalf("second process, next update: %s %+v; want accepted version 4", stat, got)
	}
	if err := second.Wait(); err != nil {
		t.Errorf("second process: %v", err)
	}
}

// v2Do sends a v2 command and returns its response line.
func v2Do(t *testing.T, s *awssdktest.Script, cmd map[string]any) awssdktest.Line {
	t.Helper()
	s.Send(cmd)
	return s.Await(fmt.Sprintf("response to %v", cmd), func(l awssdktest.Line) bool {
		return l.Event() == "response" || l.Event() == "exception"
	})
}

// v2Resp decodes a successful v2 response, failing on a rejection.
func v2Resp(t *testing.T, l awssdktest.Line) doc {
	t.Helper()
	if l["ok"] != true {
		t.Fatalf("v2 %s: %v; want success", l.Str("op"), l)
	}
	var d doc
	l.Decode(t, "resp", &d)
	return d
}

// v2Rejected decodes the modeled error of a rejected v2 request.
func v2Rejected(t *testing.T, l awssdktest.Line) doc {
	t.Helper()
	var e struct {
		Modeled *doc `json:"modeled"`
	}
	l.Decode(t, "error", &e)
	if l["ok"] != false || e.Modeled == nil {
		t.Fatalf("v2 %s: %v; want a modeled rejection", l.Str("op"), l)
	}
	return *e.Modeled
}

// TestSDKv2Shadow drives the v2 SDK's iotshadow request-response client
// (IotShadowClientv2) over MQTT 3.1.1 and MQTT 5 with the SDK's default
// connection options (persistent session, keepalive 1200 s, metrics in
// the user name): the classic shadow's update, get, delta stream, a 409
// and delete, and named shadows.
func TestSDKv2Shadow(t *testing.T) {
	t.Parallel()
	srv := awssdktest.NewServer(t, awssdktest.Options{})
	for _, protocol := range []string{"mqtt311", "mqtt5"} {
		t.Run(protocol, func(t *testing.T) {
			d := srv.Device(t, device.ID("thing-"+protocol))
			v2 := awssdktest.Start(t, "v2-shadow.js", append(d.Env(), "UMBRA_PROTOCOL="+protocol))
			c := v2.AwaitEvent("connect")
			if protocol == "mqtt5" && (c["keepAlive"] != float64(1200) || c["serverKeepAlive"] != nil) {
				t.Errorf("MQTT 5 connect %v: want keepalive 1200 kept by the server", c)
			}
			if protocol == "mqtt311" && (c["cleanSession"] != false || c["keepAlive"] != "default") {
				t.Errorf("MQTT 3.1.1 connect %v: want the builder's defaults (persistent session, keepalive 1200)", c)
			}

			if got := v2Rejected(t, v2Do(t, v2, map[string]any{"op": "get"})); got.Code != 404 {
				t.Fatalf("get before any update: %+v; want 404", got)
			}
			v2.Send(map[string]any{"op": "deltas"})
			v2.Await("delta subscription", func(l awssdktest.Line) bool {
				return l.Event() == "subscription" && l["name"] == nil && l.Str("type") == "SubscriptionEstablished"
			})
			got := v2Resp(t, v2Do(t, v2, map[string]any{"op": "update", "state": map[string]any{"reported": map[string]any{"led": "off"}}}))
			if got.Version != 1 || got.ClientToken == "" {
				t.Fatalf("update: %+v; want version 1 with the SDK's clientToken", got)
			}
			operatorUpdate(t, srv, d.ID, `{"state":{"desired":{"led":"on"}}}`)
			var delta struct {
				State   map[string]any `json:"state"`
				Version int            `json:"version"`
			}
			v2.Await("delta led on", func(l awssdktest.Line) bool {
				if l.Event() != "delta" {
					return false
				}
				l.Decode(t, "delta", &delta)
				return delta.State["led"] == "on"
			})
			if delta.Version != 2 {
				t.Errorf("delta: %+v; want version 2", delta)
			}
			got = v2Resp(t, v2Do(t, v2, map[string]any{"op": "update", "version": 2, "state": map[string]any{"reported": map[string]any{"led": "on"}}}))
			if got.Version != 3 {
				t.Fatalf("update with version 2: %+v; want version 3", got)
			}
			if rej := v2Rejected(t, v2Do(t, v2, map[string]any{"op": "update", "version": 2, "state": map[string]any{"reported": map[string]any{"led": "x"}}})); rej.Code != 409 {
				t.Fatalf("update with stale version 2: %+v; want 409", rej)
			}
			if got = v2Resp(t, v2Do(t, v2, map[string]any{"op": "get"})); got.Version != 3 || got.State.Reported["led"] != "on" {
				t.Fatalf("get: %+v; want version 3 with led on", got)
			}

			// Named shadows: each its own document and versions.
			for _, name := range []string{"cfg", "net:wifi_1"} {
				if rej := v2Rejected(t, v2Do(t, v2, map[string]any{"op": "get", "name": name})); rej.Code != 404 {
					t.Fatalf("get named %s before update: %+v; want 404", name, rej)
				}
				got = v2Resp(t, v2Do(t, v2, map[string]any{"op": "update", "name": name, "state": map[string]any{"reported": map[string]any{"n": name}}}))
				if got.Version != 1 {
					t.Fatalf("update named %s: %+v; want version 1", name, got)
				}
				if s, ok := stored(t, srv, d.ID, shadow.Name(name)); !ok || s.State.Reported["n"] != name {
					t.Fatalf("stored named %s: %+v", name, s)
				}
			}
			v2.Send(map[string]any{"op": "deltas", "name": "cfg"})
			v2.Await("named delta subscription", func(l awssdktest.Line) bool {
				return l.Event() == "subscription" && l["name"] == "cfg" && l.Str("type") == "SubscriptionEstablished"
			})
			if _, err := srv.Engine().UpdateNamed(t.Context(), d.ID, "cfg", []byte(`{"state":{"desired":{"rate":5}}}`)); err != nil {
				t.Fatal(err)
			}
			v2.Await("named delta", func(l awssdktest.Line) bool {
				if l.Event() != "delta" || l["name"] != "cfg" {
					return false
				}
				l.Decode(t, "delta", &delta)
				return delta.State["rate"] == float64(5)
			})
			if got = v2Resp(t, v2Do(t, v2, map[string]any{"op": "delete", "name": "cfg"})); got.Version != 2 {
				t.Fatalf("delete named cfg: %+v; want the deleted version 2", got)
			}
			if _, ok := stored(t, srv, d.ID, "cfg"); ok {
				t.Fatal("named shadow cfg still stored after delete")
			}
			if s, ok := stored(t, srv, d.ID, "net:wifi_1"); !ok || s.Version != 1 {
				t.Fatalf("named shadow net:wifi_1 after deleting cfg: %+v, %t", s, ok)
			}
			if got = v2Resp(t, v2Do(t, v2, map[string]any{"op": "delete"})); got.Version != 3 {
				t.Fatalf("delete classic: %+v; want version 3", got)
			}
			if err := v2.Wait(); err != nil {
				t.Errorf("v2 script: %v", err)
			}
		})
	}
}

// TestSDKThingIsolation: a device with its own certificate can neither
// read nor write another thing's shadow through either SDK, is not
// disconnected for trying (the SDK would reconnect in a loop), and its
// own shadow keeps working on the same connection.
func TestSDKThingIsolation(t *testing.T) {
	t.Parallel()
	srv := awssdktest.NewServer(t, awssdktest.Options{})
	a := srv.Device(t, "thing-a")
	srv.Device(t, "thing-b")
	operatorUpdate(t, srv, "thing-b", `{"state":{"reported":{"secret":"b"}}}`)
	before, _ := stored(t, srv, "thing-b", "")

	v1 := awssdktest.Start(t, "v1-shadow.js", a.Env())
	v1.AwaitEvent("connect")
	v1.Send(map[string]any{"op": "register", "thing": "thing-b"})
	if l := v1.AwaitEvent("registered"); l["err"] == nil {
		t.Fatalf("v1 register of another thing: %v; want its subscriptions refused", l)
	} else if failed, _ := l["failed"].([]any); len(failed) != 7 {
		t.Errorf("v1 register of another thing: %d refused subscriptions, want all 7: %v", len(failed), l)
	}
	for _, op := range []string{"update", "get", "delete"} {
		v1.Send(map[string]any{"op": "publish", "topic": "$aws/things/thing-b/shadow/" + op,
			"payload": `{"state":{"reported":{"secret":"a"}},"clientToken":"x"}`})
		if l := v1.AwaitEvent("published"); l["err"] != nil {
			t.Fatalf("v1 publish: %v", l)
		}
	}
	// Same connection, own thing: works, and orders after the refused
	// publishes.
	v1.Send(map[string]any{"op": "register", "thing": "thing-a"})
	if l := v1.AwaitEvent("registered"); l["err"] != nil {
		t.Fatalf("v1 register own thing: %v", l)
	}
	tok := v1Send(t, v1, "update", "thing-a", `{"reported":{"ok":true}}`)
	if stat, got := v1Status(t, v1, tok); stat != "accepted" {
		t.Fatalf("own update after the refused ones: %s %+v", stat, got)
	}
	operatorUpdate(t, srv, "thing-b", `{"state":{"desired":{"secret":"c"}}}`)

	// v2 with thing-a's certificate and client ID, asking for thing-b.
	env := append(a.Env(), "UMBRA_THING=thing-b")
	v2 := awssdktest.Start(t, "v2-shadow.js", env)
	v2.AwaitEvent("connect")
	for _, cmd := range []map[string]any{
		{"op": "get"},
		{"op": "update", "state": map[string]any{"reported": map[string]any{"secret": "a"}}},
		{"op": "delete"},
		{"op": "update", "name": "cfg", "state": map[string]any{"reported": map[string]any{"secret": "a"}}},
	} {
		if l := v2Do(t, v2, cmd); l["ok"] != false || l["resp"] != nil {
			t.Errorf("v2 %v on another thing: %v; want it to fail", cmd, l)
		}
	}
	if err := v2.Wait(); err != nil {
		t.Errorf("v2 script: %v", err)
	}
	if err := v1.Wait(); err != nil {
		t.Errorf("v1 script: %v", err)
	}
	for line := range strings.SplitSeq(v1.Output(), "\n") {
		var l awssdktest.Line
		if err := json.Unmarshal([]byte(line), &l); err != nil {
			t.Fatal(err)
		}
		if e := l.Event(); (e == "status" || e == "delta" || e == "foreign") && l.Str("thing") != "thing-a" || strings.Contains(line, `"secret"`) && e != "published" {
			t.Errorf("v1 client of thing-a saw thing-b's shadow: %s", line)
		}
	}
	after, _ := stored(t, srv, "thing-b", "")
	if after.Version != before.Version+1 || after.State.Reported["secret"] != "b" {
		t.Errorf("thing-b's shadow: %+v, want only the operator's change after %+v", after, before)
	}
	if _, ok := stored(t, srv, "thing-b", "cfg"); ok {
		t.Error("thing-a created a named shadow of thing-b")
	}
}

// TestSDKBoundAWSCertificate: a device migrated from AWS IoT keeps its
// certificate (RSA 2048, common name "AWS IoT Certificate", issued by
// AWS's CA) and only changes its endpoint and CA bundle: bound with
// EnrollDevice (umbra device add --cert), it connects with both SDKs'
// default options on a listener that requires client certificates, as
// AWS's port 8883 does. The same CA's certificate that is not bound is
// refused.
func TestSDKBoundAWSCertificate(t *testing.T) {
	t.Parallel()
	aws := awssdktest.NewAWSCA(t)
	srv := awssdktest.NewServer(t, awssdktest.Options{BoundClientCAFiles: []string{aws.CertFile}, RequireClientCert: true})
	cert := aws.Issue(t, awssdktest.AWSCommonName)
	if _, err := srv.Identity().EnrollDevice(t.Context(), identity.Enrollment{ID: "aws-thing", CertSHA256: identity.CertFingerprint(cert.Cert)}); err != nil {
		t.Fatal(err)
	}
	d := srv.DeviceWith("aws-thing", cert.CertFile, cert.KeyFile)

	v1 := awssdktest.Start(t, "v1-shadow.js", d.Env())
	v1Register(t, v1, d.ID)
	tok := v1Send(t, v1, "update", d.ID, `{"reported":{"migrated":true}}`)
	if stat, got := v1Status(t, v1, tok); stat != "accepted" || got.Version != 1 {
		t.Fatalf("v1 update: %s %+v", stat, got)
	}
	if err := v1.Wait(); err != nil {
		t.Fatal(err)
	}
	v2 := awssdktest.Start(t, "v2-shadow.js", append(d.Env(), "UMBRA_PROTOCOL=mqtt5"))
	v2.AwaitEvent("connect")
	if got := v2Resp(t, v2Do(t, v2, map[string]any{"op": "get"})); got.State.Reported["migrated"] != true {
		t.Fatalf("v2 get: %+v", got)
	}
	if err := v2.Wait(); err != nil {
		t.Fatal(err)
	}

	stranger := aws.Issue(t, awssdktest.AWSCommonName)
	s := awssdktest.Start(t, "v2-shadow.js", append(srv.DeviceWith("aws-thing", stranger.CertFile, stranger.KeyFile).Env(), "UMBRA_PROTOCOL=mqtt5"))
	if l := s.Next(); l.Event() != "connect-failed" {
		t.Fatalf("unbound certificate of the AWS CA: %v; want connect-failed", l)
	}
}
