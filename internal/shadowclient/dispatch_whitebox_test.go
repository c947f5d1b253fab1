package shadowclient

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/shadow"
)

// FuzzDispatch feeds arbitrary messages to the router. Invariants: it never
// panics, answers only the request whose device, operation and clientToken
// the message names, and hands a watcher only the kinds and devices it
// asked for.
func FuzzDispatch(f *testing.F) {
	for _, s := range []struct{ topic, payload string }{
		{"state/d/get/accepted", `{"clientToken":"t"}`},
		{"state/d/get/rejected", `{"code":404,"message":"m","clientToken":"t"}`},
		{"state/d/update/delta", `{"state":{"a":1},"version":2}`},
		{"state/e/update/accepted", `{"clientToken":"t"}`},
		{"state/d/get/accepted/extra", `{}`},
		{"state//get/accepted", `{"clientToken":"t"}`},
		{"other/d/get/accepted", `{"clientToken":"t"}`},
		{"state/d/get/accepted", `not json`},
		{"state/d/shadow/n/get/accepted", `{"clientToken":"t"}`},
		{"state/d/shadow/n/update/delta", `{"state":{"a":1},"version":2}`},
		{"state/d/shadow//update/delta", `{}`},
	} {
		f.Add(s.topic, s.payload)
	}
	f.Fuzz(func(t *testing.T, topic, payload string) {
		c := &Client{pending: map[pendingKey]chan response{}, watchers: map[*watcher]struct{}{}}
		key := pendingKey{id: "d", op: shadow.OpGet, token: "t"}
		answer := make(chan response, 1)
		c.pending[key] = answer
		w := &watcher{ids: map[device.ID]bool{"d": true}, kinds: map[string]bool{KindDelta: true}, signal: make(chan struct{}, 1)}
		c.watchers[w] = struct{}{}

		c.dispatch(topic, []byte(payload))

		var tok struct {
			ClientToken string `json:"clientToken"`
		}
		forKey := (topic == "state/d/get/accepted" || topic == "state/d/get/rejected") &&
			json.Unmarshal([]byte(payload), &tok) == nil && tok.ClientToken == "t"
		if got := len(answer) == 1; got != forKey {
			t.Errorf("dispatch(%q, %q) answered the request: %v, want %v", topic, payload, got, forKey)
		}
		events, _ := w.take()
		wantEvent := topic == "state/d/update/delta"
		if (len(events) == 1) != wantEvent || len(events) > 1 {
			t.Errorf("dispatch(%q) gave the watcher %d events, want %v", topic, len(events), wantEvent)
		}
		for _, e := range events {
			if e.Topic != topic || !strings.HasSuffix(topic, "/"+e.Kind) || e.Device != "d" {
				t.Errorf("event %+v does not match topic %q", e, topic)
			}
		}
	})
}

func TestResponseResult(t *testing.T) {
	tests := []struct {
		name     string
		r        response
		wantCode int // 0: accepted
		wantErr  error
	}{
		{"accepted", response{payload: []byte(`{"version":3}`)}, 0, nil},
		{"accepted with a code field", response{payload: []byte(`{"code":7}`)}, 0, nil},
		{"conflict", response{rejected: true, payload: []byte(`{"code":409,"message":"m","clientToken":"t"}`)}, 409, shadow.ErrVersionConflict},
		{"rate limited", response{rejected: true, payload: []byte(`{"code":429,"message":"m"}`)}, 429, shadow.ErrRateLimited},
		{"unknown code", response{rejected: true, payload: []byte(`{"code":418,"message":"m"}`)}, 418, shadow.ErrInternal},
		{"malformed", response{rejected: true, payload: []byte(`{"code":"409"}`)}, 500, shadow.ErrInternal},
		{"no code", response{rejected: true, payload: []byte(`{}`)}, 500, shadow.ErrInternal},
	}
	for _, tc := range tests {
		b, err := tc.r.result(shadow.OpUpdate, "d")
		if tc.wantCode == 0 {
			if err != nil || string(b) != string(tc.r.payload) {
				t.Errorf("%s: result = %s, %v; want the payload", tc.name, b, err)
			}
			continue
		}
		re, ok := errors.AsType[*shadow.RequestError](err)
		if !ok || re.Code != tc.wantCode || !errors.Is(err, tc.wantErr) {
			t.Errorf("%s: error %v, want code %d wrapping %v", tc.name, err, tc.wantCode, tc.wantErr)
		}
	}
}
