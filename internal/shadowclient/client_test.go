package shadowclient_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/internal/shadowclient"
	"github.com/umbra-iot/umbra/shadow"
)

// fields decodes a JSON object.
func fields(t *testing.T, b []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
	return m
}

func TestRequests(t *testing.T) {
	srv := startServer(t, true)
	for _, server := range []struct{ name, url string }{{"tcp", srv.url}, {"websocket", srv.wsURL}} {
		t.Run(server.name, func(t *testing.T) {
			c := srv.dial(t, shadowclient.Config{Server: server.url})
			id := device.ID("lamp-" + server.name)
			ctx := t.Context()
			// Steps run in order on one shadow.
			steps := []struct {
				name    string
				do      func() ([]byte, error)
				wantErr error // a shadow sentinel, or nil for accepted
				code    int
				want    map[string]any // fields of the accepted payload
			}{
				{"get missing", func() ([]byte, error) { return c.Get(ctx, id) }, shadow.ErrNotFound, 404, nil},
				{"delete missing", func() ([]byte, error) { return c.Delete(ctx, id) }, shadow.ErrNotFound, 404, nil},
				{"set desired", func() ([]byte, error) {
					return c.Update(ctx, id, []byte(`{"state":{"desired":{"color":"red"}}}`))
				}, nil, 0, map[string]any{"version": 1.0}},
				{"report with own token", func() ([]byte, error) {
					return c.Update(ctx, id, []byte(`{"state":{"reported":{"color":"blue"}},"clientToken":"mine"}`))
				}, nil, 0, map[string]any{"version": 2.0, "clientToken": "mine"}},
				{"stale version", func() ([]byte, error) {
					return c.Update(ctx, id, []byte(`{"state":{"desired":{"color":"green"}},"version":1}`))
				}, shadow.ErrVersionConflict, 409, nil},
				{"invalid state", func() ([]byte, error) {
					return c.Update(ctx, id, []byte(`{"state":{"bogus":{}}}`))
				}, shadow.ErrInvalid, 400, nil},
				{"matching version", func() ([]byte, error) {
					return c.Update(ctx, id, []byte(`{"state":{"desired":{"color":"blue"}},"version":2}`))
				}, nil, 0, map[string]any{"version": 3.0}},
				{"get", func() ([]byte, error) { return c.Get(ctx, id) }, nil, 0, map[string]any{"version": 3.0}},
				{"delete", func() ([]byte, error) { return c.Delete(ctx, id) }, nil, 0, map[string]any{"version": 3.0}},
				{"get deleted", func() ([]byte, error) { return c.Get(ctx, id) }, shadow.ErrNotFound, 404, nil},
			}
			for _, s := range steps {
				b, err := s.do()
				if s.wantErr != nil {
					if !errors.Is(err, s.wantErr) {
						t.Errorf("%s: error %v, want %v", s.name, err, s.wantErr)
						continue
					}
					re, ok := errors.AsType[*shadow.RequestError](err)
					if !ok || re.Code != s.code || re.Message == "" {
						t.Errorf("%s: error %#v, want a *shadow.RequestError with code %d and a message", s.name, err, s.code)
					}
					if !strings.Contains(err.Error(), string(id)) {
						t.Errorf("%s: error %q does not name the device", s.name, err)
					}
					continue
				}
				if err != nil {
					t.Errorf("%s: %v", s.name, err)
					continue
				}
				got := fields(t, b)
				for k, v := range s.want {
					if got[k] != v {
						t.Errorf("%s: %s = %v, want %v (in %s)", s.name, k, got[k], v, b)
					}
				}
				if tok, _ := got["clientToken"].(string); tok == "" {
					t.Errorf("%s: accepted message has no clientToken: %s", s.name, b)
				}
			}
		})
	}
}

func TestRejectedEchoesToken(t *testing.T) {
	srv := startServer(t, true)
	c := srv.dial(t, shadowclient.Config{})
	_, err := c.Update(t.Context(), "d", []byte(`{"state":{"desired":{"a":1}},"version":9,"clientToken":"t-9"}`))
	re, ok := errors.AsType[*shadow.RequestError](err)
	if !ok {
		t.Fatalf("error %v, want a *shadow.RequestError", err)
	}
	if re.ClientToken != "t-9" || re.Code != 409 {
		t.Errorf("rejection = %+v, want code 409 and clientToken t-9", re)
	}
}

func TestLocalValidation(t *testing.T) {
	srv := startServer(t, true)
	requests := recordRequests(t, srv.brk)
	c := srv.dial(t, shadowclient.Config{})
	tests := []struct {
		name string
		id   device.ID
		body string
	}{
		{"not JSON", "d", `{"state":`},
		{"array", "d", `[1]`},
		{"null", "d", `null`},
		{"number token", "d", `{"state":{},"clientToken":5}`},
		{"empty token", "d", `{"state":{},"clientToken":""}`},
		{"long token", "d", `{"state":{},"clientToken":"` + strings.Repeat("x", 65) + `"}`},
		{"invalid id", "a/b", `{"state":{}}`},
		{"empty id", "", `{"state":{}}`},
	}
	for _, tc := range tests {
		if _, err := c.Update(t.Context(), tc.id, []byte(tc.body)); !errors.Is(err, shadowclient.ErrInvalidRequest) {
			t.Errorf("%s: Update error %v, want ErrInvalidRequest", tc.name, err)
		}
	}
	if _, err := c.Get(t.Context(), "+"); !errors.Is(err, shadowclient.ErrInvalidRequest) {
		t.Errorf("Get(+): error %v, want ErrInvalidRequest", err)
	}
	// A marker request: the broker handles one client's publishes in order,
	// so any request the invalid calls had sent would be recorded first.
	if _, err := c.Update(t.Context(), "marker", []byte(`{"state":{"reported":{"x":1}}}`)); err != nil {
		t.Fatal(err)
	}
	if got := firstRequest(t, requests); got != "state/marker/update" {
		t.Errorf("first request sent: %s, want state/marker/update", got)
	}
}

func TestConcurrentRequests(t *testing.T) {
	srv := startServer(t, true)
	c := srv.dial(t, shadowclient.Config{})
	const devices, perDevice = 20, 3
	type result struct {
		id      device.ID
		token   string
		payload []byte
		err     error
	}
	results := make(chan result, devices*perDevice)
	var wg sync.WaitGroup
	for d := range devices {
		for n := range perDevice {
			wg.Go(func() {
				id := device.ID(fmt.Sprintf("dev-%02d", d))
				tok := fmt.Sprintf("tok-%d-%d", d, n)
				body := fmt.Sprintf(`{"state":{"reported":{"n%d":%d}},"clientToken":%q}`, n, n, tok)
				b, err := c.Update(t.Context(), id, []byte(body))
				results <- result{id, tok, b, err}
			})
		}
	}
	wg.Wait()
	close(results)
	for r := range results {
		if r.err != nil {
			t.Errorf("%s %s: %v", r.id, r.token, r.err)
			continue
		}
		if got := fields(t, r.payload)["clientToken"]; got != r.token {
			t.Errorf("%s: answer has clientToken %v, want %s", r.id, got, r.token)
		}
	}
	for d := range devices {
		id := device.ID(fmt.Sprintf("dev-%02d", d))
		b, err := c.Get(t.Context(), id)
		if err != nil {
			t.Fatal(err)
		}
		if v := fields(t, b)["version"]; v != float64(perDevice) {
			t.Errorf("%s: version %v, want %d", id, v, perDevice)
		}
	}
}

// collect runs Watch in a goroutine and returns its events and its result.
func collect(t *testing.T, c *shadowclient.Client, ids []device.ID, kinds []string) (context.CancelFunc, <-chan shadowclient.Event, <-chan error) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	events := make(chan shadowclient.Event, 100)
	done := make(chan error, 1)
	go func() {
		done <- c.Watch(ctx, ids, kinds, func(e shadowclient.Event) {
			select {
			case events <- e:
			case <-ctx.Done():
			}
		})
		close(done) // the cleanup's receive returns even if the test took the result
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("Watch did not return within 10s of cancel")
		}
	})
	return cancel, events, done
}

func next(t *testing.T, events <-chan shadowclient.Event) shadowclient.Event {
	t.Helper()
	select {
	case e := <-events:
		return e
	case <-time.After(5 * time.Second):
		t.Fatal("no watch event within 5s")
		return shadowclient.Event{}
	}
}

func TestWatch(t *testing.T) {
	srv := startServer(t, true)
	op := srv.dial(t, shadowclient.Config{})

	t.Run("all devices, all kinds", func(t *testing.T) {
		w := srv.dial(t, shadowclient.Config{})
		cancel, events, done := collect(t, w, nil, nil)
		srv.waitSubscribed(t, "state/any/update/documents")
		if _, err := op.Update(t.Context(), "w1", []byte(`{"state":{"desired":{"on":true}},"clientToken":"wt"}`)); err != nil {
			t.Fatal(err)
		}
		got := map[string]shadowclient.Event{}
		for range 3 {
			e := next(t, events)
			got[e.Kind] = e
		}
		for _, kind := range shadowclient.Kinds {
			e, ok := got[kind]
			if !ok {
				t.Errorf("no %s event; got %v", kind, got)
				continue
			}
			if e.Device != "w1" || e.Topic != "state/w1/update/"+kind {
				t.Errorf("%s event: device %s topic %s, want w1 state/w1/update/%s", kind, e.Device, e.Topic, kind)
			}
			if tok := fields(t, e.Payload)["clientToken"]; tok != "wt" {
				t.Errorf("%s event: clientToken %v, want wt", kind, tok)
			}
		}
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Watch after cancel: %v, want nil", err)
		}
	})

	t.Run("one device, deltas only", func(t *testing.T) {
		w := srv.dial(t, shadowclient.Config{})
		_, events, _ := collect(t, w, []device.ID{"wanted", "wanted"}, []string{shadowclient.KindDelta})
		srv.waitSubscribed(t, "state/wanted/update/delta")
		for _, id := range []device.ID{"other", "wanted"} {
			if _, err := op.Update(t.Context(), id, []byte(`{"state":{"reported":{"x":0}}}`)); err != nil {
				t.Fatal(err)
			}
			if _, err := op.Update(t.Context(), id, []byte(`{"state":{"desired":{"x":1}}}`)); err != nil {
				t.Fatal(err)
			}
		}
		// The broker delivers to one client in order: other's delta, had it
		// been sent, would come first.
		e := next(t, events)
		if e.Device != "wanted" || e.Kind != shadowclient.KindDelta {
			t.Errorf("first event: %s %s, want wanted delta", e.Device, e.Kind)
		}
		if v := fields(t, e.Payload)["version"]; v != 2.0 {
			t.Errorf("delta version %v, want 2", v)
		}
	})

	t.Run("invalid arguments", func(t *testing.T) {
		for _, tc := range []struct {
			name  string
			ids   []device.ID
			kinds []string
		}{
			{"unknown kind", nil, []string{"rejected"}},
			{"invalid id", []device.ID{"a+b"}, nil},
		} {
			if err := op.Watch(t.Context(), tc.ids, tc.kinds, func(shadowclient.Event) {}); !errors.Is(err, shadowclient.ErrInvalidRequest) {
				t.Errorf("%s: Watch error %v, want ErrInvalidRequest", tc.name, err)
			}
		}
	})

	t.Run("client closed", func(t *testing.T) {
		w := srv.dial(t, shadowclient.Config{})
		_, _, done := collect(t, w, []device.ID{"closing"}, nil)
		srv.waitSubscribed(t, "state/closing/update/delta")
		w.Close()
		select {
		case err := <-done:
			if !errors.Is(err, shadowclient.ErrClosed) {
				t.Errorf("Watch after Close: %v, want ErrClosed", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Watch did not return after Close")
		}
	})
}

func TestConnectionLost(t *testing.T) {
	srv := startServer(t, true)
	w := srv.dial(t, shadowclient.Config{})
	_, _, done := collect(t, w, nil, nil)
	srv.waitSubscribed(t, "state/x/update/delta")
	if err := srv.brk.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, shadowclient.ErrConnectionLost) {
			t.Errorf("Watch after the server closed: %v, want ErrConnectionLost", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Watch did not return after the server closed")
	}
	if _, err := w.Get(t.Context(), "x"); !errors.Is(err, shadowclient.ErrConnectionLost) {
		t.Errorf("Get after the connection dropped: %v, want ErrConnectionLost", err)
	}
}

func TestDialErrors(t *testing.T) {
	closed := closedPort(t)
	tests := []struct {
		name     string
		cfg      shadowclient.Config
		is       error
		contains []string
	}{
		{"refused", shadowclient.Config{Server: "tcp://" + closed}, syscall.ECONNREFUSED,
			[]string{"connect to tcp://" + closed, "connection refused"}},
		{"refused over websocket", shadowclient.Config{Server: "ws://" + closed + "/mqtt"}, nil,
			[]string{"connect to ws://" + closed + "/mqtt", "connection refused"}},
		{"http scheme", shadowclient.Config{Server: "http://127.0.0.1:1"}, shadowclient.ErrInvalidConfig, []string{"scheme"}},
		{"no host", shadowclient.Config{Server: "tcp://:1883"}, shadowclient.ErrInvalidConfig, []string{"no host"}},
		{"unparsable", shadowclient.Config{Server: "tcp://[::1"}, shadowclient.ErrInvalidConfig, nil},
		{"client id", shadowclient.Config{Server: "tcp://" + closed, ClientID: "op erator"}, shadowclient.ErrInvalidConfig, []string{"client ID"}},
		{"negative timeout", shadowclient.Config{Server: "tcp://" + closed, Timeout: -time.Second}, shadowclient.ErrInvalidConfig, nil},
	}
	for _, tc := range tests {
		c, err := shadowclient.Dial(t.Context(), tc.cfg)
		if err == nil {
			c.Close()
			t.Errorf("%s: Dial succeeded, want an error", tc.name)
			continue
		}
		if tc.is != nil && !errors.Is(err, tc.is) {
			t.Errorf("%s: error %v, want one matching %v", tc.name, err, tc.is)
		}
		for _, s := range tc.contains {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("%s: error %q does not contain %q", tc.name, err, s)
			}
		}
	}
}

func TestDialCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	srv := startServer(t, false)
	if c, err := shadowclient.Dial(ctx, shadowclient.Config{Server: srv.url}); !errors.Is(err, context.Canceled) {
		if c != nil {
			c.Close()
		}
		t.Errorf("Dial with a cancelled context: %v, want context.Canceled", err)
	}
}

func TestTimeouts(t *testing.T) {
	// A broker without the engine: requests are never answered.
	srv := startServer(t, false)
	c := srv.dial(t, shadowclient.Config{Timeout: 200 * time.Millisecond})
	start := time.Now()
	_, err := c.Get(t.Context(), "silent")
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "no answer within 200ms") {
		t.Errorf("Get with no engine: %v, want a deadline error naming the timeout", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Get took %s, want about the 200ms timeout", d)
	}

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := c.Update(ctx, "silent", []byte(`{"state":{}}`)); !errors.Is(err, context.Canceled) {
		t.Errorf("Update with a cancelled context: %v, want context.Canceled", err)
	}
}

func TestClose(t *testing.T) {
	srv := startServer(t, true)
	c := srv.dial(t, shadowclient.Config{})
	c.Close()
	c.Close()
	if _, err := c.Get(t.Context(), "d"); !errors.Is(err, shadowclient.ErrClosed) {
		t.Errorf("Get after Close: %v, want ErrClosed", err)
	}
}

// refuseAll is a broker.Authenticator that lets nobody in.
type refuseAll struct{}

func (refuseAll) Authenticate(context.Context, broker.Credentials) (broker.Identity, error) {
	return broker.Identity{}, errors.New("nobody may connect")
}

func (refuseAll) Allow(broker.Identity, string, bool) bool { return false }

// TestDialCredentialsRefused: a broker refusing the credentials is
// ErrRefused, which callers tell apart without importing paho.
func TestDialCredentialsRefused(t *testing.T) {
	brk, err := broker.Open(t.Context(), broker.Config{TCPAddr: "127.0.0.1:0", Logger: testLogger(t), Auth: refuseAll{}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { brk.Close(context.Background()) })
	c, err := shadowclient.Dial(t.Context(), shadowclient.Config{Server: "tcp://" + brk.Addr().String(), Username: "ops", Password: "wrong"})
	if err == nil {
		c.Close()
		t.Fatal("Dial succeeded, want the credentials refused")
	}
	if !errors.Is(err, shadowclient.ErrRefused) || !strings.Contains(err.Error(), "connect to tcp://") {
		t.Errorf("Dial = %v, want ErrRefused naming the server", err)
	}
}
