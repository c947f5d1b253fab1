package server_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/internal/brokertest"
	"github.com/umbra-iot/umbra/internal/server"
	"github.com/umbra-iot/umbra/wire"
)

// apiCall sends an HTTP request to r's API with the bearer token tok and
// returns the status and body.
func (r *rig) apiCall(t *testing.T, method, path, tok, body string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, "http://"+r.HTTPAddr().String()+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res.StatusCode, b
}

// mustAPI is apiCall that fails the test unless the status is want, and
// decodes a JSON answer into out (if not nil).
func (r *rig) mustAPI(t *testing.T, method, path, tok, body string, want int, out any) {
	t.Helper()
	st, b := r.apiCall(t, method, path, tok, body)
	if st != want {
		t.Fatalf("%s %s = %d %s, want %d", method, path, st, b, want)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: decode %s: %v", method, path, b, err)
		}
	}
}

// adminToken returns the operator token the server wrote to its data dir.
func (r *rig) adminToken(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(r.DataDir(), server.AdminTokenFile))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// session is a paho connection whose messages and loss are observed.
type session struct {
	c    paho.Client
	msgs <-chan brokertest.Message
	lost chan error
}

// connectSession connects clientID with user and pass; a persistent
// session (clean false) survives disconnects. It returns the session and
// whether the broker had one already (CONNACK session present).
func connectSession(t *testing.T, url, clientID, user, pass string, persistent bool) (*session, bool, error) {
	t.Helper()
	lost := make(chan error, 1)
	o := paho.NewClientOptions().AddBroker(url).SetClientID(clientID).SetUsername(user).SetPassword(pass).
		SetCleanSession(!persistent).SetOrderMatters(false).SetAutoReconnect(false).SetConnectRetry(false).
		SetConnectTimeout(brokertest.Timeout).SetKeepAlive(30 * time.Second).
		SetConnectionLostHandler(func(_ paho.Client, err error) { lost <- err })
	c := paho.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(brokertest.Timeout) {
		t.Fatalf("connect %s: no CONNACK within %v", clientID, brokertest.Timeout)
	}
	if err := tok.Error(); err != nil {
		return nil, false, err
	}
	t.Cleanup(func() { c.Disconnect(0) })
	return &session{c: c, lost: lost}, tok.(*paho.ConnectToken).SessionPresent(), nil
}

// shadowVersion returns id's shadow version and its reported state as JSON.
func (r *rig) shadowVersion(t *testing.T, id device.ID) (int64, string) {
	t.Helper()
	doc, err := r.Engine().Read(t.Context(), id)
	if err != nil {
		t.Fatalf("read shadow %s: %v", id, err)
	}
	b, _ := json.Marshal(doc.State.Reported)
	return int64(doc.Version), string(b)
}

// metricValue returns the value of the series named series (with its
// labels, as exposed) from GET /metrics, or "" when absent.
func (r *rig) metricValue(t *testing.T, series string) string {
	t.Helper()
	_, b := r.apiCall(t, "GET", "/metrics", "", "")
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			return v
		}
	}
	return ""
}

// TestHardening02RevocationEvictsSessions (issue 10, case 2): rotating a
// device's secret, removing the device or revoking a token disconnects
// every session of that identity at once and drops its persistent
// session. The old session can do nothing afterwards: its connection is
// closed before the answer to the HTTP request, nothing more is delivered
// to it, a reconnect with the old secret is refused, nothing it sends is
// stored, and a new connection with the same client ID finds no session.
func TestHardening02RevocationEvictsSessions(t *testing.T) {
	tests := []struct {
		name     string
		clientID string // the old session's client ID
		target   device.ID
		// create makes the credential and returns the MQTT user name and
		// secret.
		create func(t *testing.T, r *rig, admin string) (user, secret string)
		// end ends it over HTTP and returns the credential (user, secret)
		// that logs in afterwards, if any.
		end    func(t *testing.T, r *rig, admin string) (user, secret string)
		reason string // the eviction metric's reason label
	}{
		{
			name: "device rotate", clientID: "devX", target: "devX",
			create: enrolDevice("devX"),
			end: func(t *testing.T, r *rig, admin string) (string, string) {
				var sec wire.SecretResponse
				r.mustAPI(t, "POST", "/v1/devices/devX/rotate", admin, "", http.StatusOK, &sec)
				return "devX", sec.Secret
			},
			reason: "rotated",
		},
		{
			name: "device remove", clientID: "devX", target: "devX",
			create: enrolDevice("devX"),
			end: func(t *testing.T, r *rig, admin string) (string, string) {
				r.mustAPI(t, "DELETE", "/v1/devices/devX", admin, "", http.StatusNoContent, nil)
				var sec wire.SecretResponse
				r.mustAPI(t, "POST", "/v1/devices", admin, `{"id":"devX"}`, http.StatusCreated, &sec)
				return "devX", sec.Secret
			},
			reason: "removed",
		},
		{
			name: "token revoke", clientID: "ops2-c", target: "devA",
			create: func(t *testing.T, r *rig, admin string) (string, string) {
				enrolDevice("devA")(t, r, admin)
				var tok wire.TokenResponse
				r.mustAPI(t, "POST", "/v1/tokens", admin, `{"name":"ops2","role":"operator"}`, http.StatusCreated, &tok)
				return "ops2", strings.TrimPrefix(tok.Token, "ops2:")
			},
			end: func(t *testing.T, r *rig, admin string) (string, string) {
				r.mustAPI(t, "DELETE", "/v1/tokens/ops2", admin, "", http.StatusNoContent, nil)
				var tok wire.TokenResponse
				r.mustAPI(t, "POST", "/v1/tokens", admin, `{"name":"ops2","role":"operator"}`, http.StatusCreated, &tok)
				return "ops2", strings.TrimPrefix(tok.Token, "ops2:")
			},
			reason: "revoked",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := mustOpenRig(t, true)
			admin := r.adminToken(t)
			url := r.mqttURL()
			user, secret := tc.create(t, r, admin)
			sessionsBefore := r.Broker().Stats().Sessions

			old, _, err := connectSession(t, url, tc.clientID, user, secret, true)
			if err != nil {
				t.Fatalf("connect the old session: %v", err)
			}
			update := "state/" + string(tc.target) + "/update"
			old.msgs = brokertest.Subscribe(t, old.c, update+"/accepted", 1)
			brokertest.Publish(t, old.c, update, 1, []byte(`{"state":{"reported":{"by":"old session"}}}`))
			if m := brokertest.Next(t, old.msgs, waitTimeout); !strings.Contains(string(m.Payload), "old session") {
				t.Fatalf("old session's first update: accepted %s", m.Payload)
			}

			newUser, newSecret := tc.end(t, r, admin)

			// The connection was closed before the HTTP answer.
			select {
			case err := <-old.lost:
				t.Logf("old session lost: %v", err)
			case <-time.After(waitTimeout):
				t.Fatal("old session still connected after the credential ended")
			}
			if got := r.Broker().Stats().Sessions; got != sessionsBefore {
				t.Errorf("broker sessions = %d, want %d: the old persistent session was kept", got, sessionsBefore)
			}
			version, _ := r.shadowVersion(t, tc.target)

			// Nothing reaches the old client; a reconnect with the old
			// secret is refused and so its write is not stored.
			r.mustAPI(t, "POST", "/v1/devices/"+string(tc.target)+"/shadow", admin,
				`{"state":{"desired":{"after":true}}}`, http.StatusOK, nil)
			version++
			if _, _, err := connectSession(t, url, tc.clientID, user, secret, false); err == nil {
				t.Error("reconnect with the old secret: connected, want refused")
			}
			if tc.reason == "rotated" {
				if p, _ := r.Identity().Presence(tc.target); p.Connected || p.DisconnectReason != "not_authorized" {
					t.Errorf("presence after eviction = %+v, want disconnected, reason not_authorized", p)
				}
			}
			for len(old.msgs) > 0 {
				if m := <-old.msgs; strings.Contains(string(m.Payload), "after") {
					t.Errorf("old session received %v after its credential ended", m)
				}
			}

			// A new connection with the same client ID and the current
			// credential starts without the old session.
			fresh, present, err := connectSession(t, url, tc.clientID, newUser, newSecret, true)
			if err != nil {
				t.Fatalf("connect with the new credential: %v", err)
			}
			if present {
				t.Error("new connection found the old session (CONNACK session present)")
			}
			fresh.msgs = brokertest.Subscribe(t, fresh.c, update+"/accepted", 1)
			brokertest.Publish(t, fresh.c, update, 1, []byte(`{"state":{"reported":{"by":"new session"}}}`))
			version++
			m := brokertest.Next(t, fresh.msgs, waitTimeout)
			if !strings.Contains(string(m.Payload), "new session") {
				t.Fatalf("new session's update: accepted %s", m.Payload)
			}
			if got, rep := r.shadowVersion(t, tc.target); got != version {
				t.Errorf("shadow %s version %d (reported %s), want %d: only the operator's and the new session's writes", tc.target, got, rep, version)
			}
			if got := r.metricValue(t, `umbra_identity_sessions_evicted_total{reason="`+tc.reason+`"}`); got != "1" {
				t.Errorf("umbra_identity_sessions_evicted_total{reason=%q} = %q, want 1", tc.reason, got)
			}
		})
	}
}

// enrolDevice returns a create function that enrols id over HTTP.
func enrolDevice(id device.ID) func(t *testing.T, r *rig, admin string) (string, string) {
	return func(t *testing.T, r *rig, admin string) (string, string) {
		var sec wire.SecretResponse
		r.mustAPI(t, "POST", "/v1/devices", admin, `{"id":"`+string(id)+`"}`, http.StatusCreated, &sec)
		return string(id), sec.Secret
	}
}

// TestHardening02StaleLoginIsEvicted (issue 10, case 2): a connection that
// authenticated with a secret just before it was rotated, but registered
// only after the rotation's eviction had looked (here: it waits to take
// over a connection whose handler is busy), is evicted when it registers.
func TestHardening02StaleLoginIsEvicted(t *testing.T) {
	r := mustOpenRig(t, true)
	user, secret := r.credentials(t, "devX")
	entered, release := make(chan struct{}), make(chan struct{})
	if err := r.Broker().Subscribe("state/devX/update", func(_, _ string, payload []byte) {
		if string(payload) == "block" {
			close(entered)
			<-release
		}
	}); err != nil {
		t.Fatal(err)
	}
	released := false
	defer func() {
		if !released {
			close(release)
		}
	}()

	// A's handler blocks, so B's takeover waits for it, authenticated.
	a, _, err := connectSession(t, r.mqttURL(), "devX", user, secret, false)
	if err != nil {
		t.Fatal(err)
	}
	brokertest.Publish(t, a.c, "state/devX/update", 0, []byte("block"))
	<-entered
	type result struct {
		s   *session
		err error
	}
	bDone := make(chan result, 1)
	go func() {
		s, _, err := connectSession(t, r.mqttURL(), "devX", user, secret, false)
		bDone <- result{s, err}
	}()
	select {
	case <-a.lost: // B authenticated and is taking A over
	case <-time.After(waitTimeout):
		t.Fatal("B did not take A over")
	}

	rotated := make(chan error, 1)
	go func() { _, err := r.Identity().RotateDevice(t.Context(), "devX"); rotated <- err }()
	eventually(t, "the rotation to commit", func() string {
		if _, err := r.Identity().Verify(t.Context(), "devX", []byte(secret)); err == nil {
			return "the old secret still verifies"
		}
		return ""
	})
	close(release)
	released = true
	if err := <-rotated; err != nil {
		t.Fatal(err)
	}
	res := <-bDone
	if res.err == nil {
		select {
		case <-res.s.lost:
		case <-time.After(waitTimeout):
			t.Fatal("B, logged in with the rotated secret, is still connected")
		}
	}
	eventually(t, "the stale eviction to be counted", func() string {
		if v := r.metricValue(t, `umbra_identity_sessions_evicted_total{reason="stale"}`); v != "1" {
			return "stale evictions " + v
		}
		return ""
	})
	if st := r.Broker().Stats(); st.Sessions != 0 {
		t.Errorf("broker sessions = %d, want 0", st.Sessions)
	}
}

// download GETs a firmware URL and returns the status, the Content-Type
// and the body.
func download(t *testing.T, url string) (int, string, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), "GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res.StatusCode, res.Header.Get("Content-Type"), b
}

// TestHardening13RemovalRevokesFirmwareURLs (issue 10, case 13): a
// firmware URL minted for a device stops working when the device is
// removed, and stays refused (410, JSON) when the ID is enrolled again; a
// URL minted for the new enrolment works. Rotating the device's secret
// does not revoke its URLs. A refused download serves no byte.
func TestHardening13RemovalRevokesFirmwareURLs(t *testing.T) {
	r := mustOpenRig(t, true)
	admin := r.adminToken(t)
	img := r.mustUpload(t, "1.0.0")
	enrolDevice("devX")(t, r, admin)
	mint := func() string {
		t.Helper()
		var u wire.URLResponse
		r.mustAPI(t, "POST", "/v1/firmware/1.0.0/url", admin, `{"device":"devX"}`, http.StatusOK, &u)
		return u.URL
	}
	ok := func(what, url string) {
		t.Helper()
		served := r.Firmware().BytesServed()
		if st, _, b := download(t, url); st != http.StatusOK || int64(len(b)) != img.Size {
			t.Fatalf("%s: GET = %d with %d bytes, want 200 with the %d-byte image", what, st, len(b), img.Size)
		}
		// The handler counts the bytes after its last write returns, which
		// can be after the client has read them all: await the count, so
		// that the next refused download starts from a settled one.
		eventually(t, what+": the download counted", func() string {
			if got := r.Firmware().BytesServed() - served; got != img.Size {
				return fmt.Sprintf("BytesServed grew by %d, want %d", got, img.Size)
			}
			return ""
		})
	}
	refused := func(what, url string) {
		t.Helper()
		served := r.Firmware().BytesServed()
		st, ct, b := download(t, url)
		var body struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
		}
		if st != http.StatusGone || !strings.HasPrefix(ct, "application/json") || json.Unmarshal(b, &body) != nil ||
			body.Code != http.StatusGone || body.Message == "" {
			t.Errorf("%s: GET = %d %q %.200s, want 410 with a JSON error", what, st, ct, b)
		}
		if got := r.Firmware().BytesServed(); got != served {
			t.Errorf("%s: %d image bytes served, want none", what, got-served)
		}
	}

	old := mint()
	ok("URL of the enrolled device", old)
	r.mustAPI(t, "POST", "/v1/devices/devX/rotate", admin, "", http.StatusOK, nil)
	ok("URL after a rotation", old)

	r.mustAPI(t, "DELETE", "/v1/devices/devX", admin, "", http.StatusNoContent, nil)
	refused("URL of a removed device", old)
	enrolDevice("devX")(t, r, admin)
	refused("URL of an earlier enrolment", old)
	ok("URL of the new enrolment", mint())
}

// TestHardening02AnonymousSessionsStay: with --insecure-anonymous no
// session is bound to a credential, so removing an enrolled ID or
// revoking a token evicts nobody and the anonymous clients keep working.
func TestHardening02AnonymousSessionsStay(t *testing.T) {
	r := mustOpenRig(t, false)
	c, _, err := connectSession(t, r.mqttURL(), "devX", "", "", false)
	if err != nil {
		t.Fatal(err)
	}
	c.msgs = brokertest.Subscribe(t, c.c, "state/devX/update/accepted", 1)
	enrolDevice("devX")(t, r, "")
	r.mustAPI(t, "DELETE", "/v1/devices/devX", "", "", http.StatusNoContent, nil)
	r.mustAPI(t, "POST", "/v1/tokens", "", `{"name":"ops2","role":"operator"}`, http.StatusCreated, nil)
	r.mustAPI(t, "DELETE", "/v1/tokens/ops2", "", "", http.StatusNoContent, nil)

	brokertest.Publish(t, c.c, "state/devX/update", 1, []byte(`{"state":{"reported":{"still":"here"}}}`))
	if m := brokertest.Next(t, c.msgs, waitTimeout); !strings.Contains(string(m.Payload), "here") {
		t.Fatalf("accepted %s, want the anonymous client's update", m.Payload)
	}
	select {
	case err := <-c.lost:
		t.Fatalf("anonymous session lost: %v", err)
	default:
	}
	for _, reason := range []string{"removed", "revoked"} {
		if v := r.metricValue(t, `umbra_identity_sessions_evicted_total{reason="`+reason+`"}`); v != "0" {
			t.Errorf("evictions (%s) = %q, want 0", reason, v)
		}
	}
}
