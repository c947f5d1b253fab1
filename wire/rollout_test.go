package wire_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/wire"
)

func TestParseRolloutID(t *testing.T) {
	for _, tc := range []struct {
		id string
		ok bool
	}{
		{"r1", true},
		{"r12345", true},
		{"A-b_9", true},
		{strings.Repeat("r", wire.MaxRolloutIDLen), true},
		{"", false},
		{strings.Repeat("r", wire.MaxRolloutIDLen+1), false},
		{"r 3", false},
		{"../r3", false},
		{"r1/../x", false},
		{"r#1", false},
		{"r+", false},
		{"r.1", false},
		{"r:1", false},
		{"r%2F", false},
		{"r\x00", false},
		{"rö", false},
	} {
		got, err := wire.ParseRolloutID(tc.id)
		switch {
		case tc.ok && (err != nil || got != tc.id):
			t.Errorf("ParseRolloutID(%q) = %q, %v; want it back", tc.id, got, err)
		case !tc.ok && !errors.Is(err, wire.ErrInvalidRolloutID):
			t.Errorf("ParseRolloutID(%q) = %q, %v; want ErrInvalidRolloutID", tc.id, got, err)
		case !tc.ok && !strings.Contains(err.Error(), fmt.Sprintf("rollout ID %q", tc.id)) && len(tc.id) < 70:
			t.Errorf("ParseRolloutID(%q) error %q does not quote the ID", tc.id, err)
		}
	}
}

// FuzzParseRolloutID: an accepted ID is a single path segment and topic
// level that needs no escaping.
func FuzzParseRolloutID(f *testing.F) {
	for _, s := range []string{"r1", "", "a/b", "r#", "r+", "..", strings.Repeat("x", 65)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := wire.ParseRolloutID(s)
		if err != nil {
			return
		}
		if id != s || id == "" || len(id) > wire.MaxRolloutIDLen || strings.ContainsAny(id, "/#+%?. \x00") {
			t.Fatalf("ParseRolloutID(%q) accepted %q", s, id)
		}
	})
}

func TestDurationJSON(t *testing.T) {
	type holder struct {
		D wire.Duration `json:"d,omitempty"`
	}
	for _, tc := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{`{"d":"30m"}`, 30 * time.Minute, true},
		{`{"d":"1h30m0s"}`, 90 * time.Minute, true},
		{`{"d":""}`, 0, true},
		{`{}`, 0, true},
		{`{"d":30}`, 0, false},
		{`{"d":null}`, 0, false},
		{`{"d":"soon"}`, 0, false},
		{`{"d":true}`, 0, false},
	} {
		var h holder
		err := json.Unmarshal([]byte(tc.in), &h)
		if tc.ok != (err == nil) || tc.ok && time.Duration(h.D) != tc.want {
			t.Errorf("Unmarshal(%s) = %v, %v; want %v (ok %v)", tc.in, time.Duration(h.D), err, tc.want, tc.ok)
		}
		if ute, isType := errors.AsType[*json.UnmarshalTypeError](err); !tc.ok && (!isType || ute.Field != "d") {
			t.Errorf("Unmarshal(%s) error %v, want a *json.UnmarshalTypeError naming field d", tc.in, err)
		}
	}
	b, _ := json.Marshal(holder{D: wire.Duration(90 * time.Second)})
	if string(b) != `{"d":"1m30s"}` {
		t.Errorf("Marshal = %s, want {\"d\":\"1m30s\"}", b)
	}
	if b, _ := json.Marshal(holder{}); string(b) != `{}` {
		t.Errorf("Marshal(zero) = %s, want {}", b)
	}
}

func TestCreateRolloutJSON(t *testing.T) {
	req := wire.CreateRollout{Firmware: "2.0.0", Select: map[string]string{"hw": "m2"},
		Policy: wire.Policy{BatchSize: 5, DeviceTimeout: wire.Duration(time.Minute), Dynamic: true}}
	raw, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"firmware":"2.0.0","select":{"hw":"m2"},"batch_size":5,"dynamic":true,"device_timeout":"1m0s"}`
	if string(raw) != want {
		t.Errorf("Marshal = %s, want %s", raw, want)
	}
	var back wire.CreateRollout
	if err := json.Unmarshal(raw, &back); err != nil || !bytes.Equal(mustMarshal(t, back), raw) {
		t.Errorf("round trip = %+v, %v; want %s", back, err, raw)
	}
	for _, tc := range []struct {
		req  wire.CreateRollout
		want int
	}{
		{wire.CreateRollout{}, 0},
		{wire.CreateRollout{Devices: nil, Select: map[string]string{}}, 1},
		{wire.CreateRollout{All: true}, 1},
		{wire.CreateRollout{Devices: []device.ID{}, All: true}, 2},
	} {
		if got := tc.req.TargetKinds(); got != tc.want {
			t.Errorf("TargetKinds(%+v) = %d, want %d", tc.req, got, tc.want)
		}
	}
}

func mustMarshal(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// FuzzCreateRollout decodes arbitrary bodies of POST /v1/rollouts: no
// panic, and an accepted body survives a JSON round trip.
func FuzzCreateRollout(f *testing.F) {
	for _, seed := range []string{
		`{"firmware":"2.0.0","devices":["d1","d2"],"batch_size":1,"device_timeout":"10m"}`,
		`{"firmware":"2.0.0","select":{"hw":"m2"},"dynamic":true,"retry_backoff":"30s","url_ttl":"1h"}`,
		`{"firmware":"2.0.0","all":true,"on_failure":"rollback","failure_percent":5.5}`,
		`{"firmware":"2.0.0","devices":["d1"],"retries":"two"}`,
		`{"firmware":"2.0.0","devices":["d1"],"device_timeout":30}`,
		`{"nope":1}`, `[]`, `null`, `{"firmware":`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var req wire.CreateRollout
		if json.Unmarshal(data, &req) != nil {
			return
		}
		raw, err := json.Marshal(req)
		if err != nil {
			t.Fatalf("Marshal(%+v): %v", req, err)
		}
		var back wire.CreateRollout
		if err := json.Unmarshal(raw, &back); err != nil {
			t.Fatalf("Unmarshal(%s): %v", raw, err)
		}
		if again := mustMarshal(t, back); string(again) != string(raw) {
			t.Fatalf("round trip %s, want %s", again, raw)
		}
	})
}
