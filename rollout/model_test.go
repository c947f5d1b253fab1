package rollout_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/rollout"
)

func TestPolicyJSON(t *testing.T) {
	p := rollout.Policy{BatchSize: 50, DeviceTimeout: 30 * time.Minute, RetryBackoff: 90 * time.Second, Retries: 2, Dynamic: true}
	raw, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"batch_size":50,"retries":2,"dynamic":true,"device_timeout":"30m0s","retry_backoff":"1m30s"}`
	if string(raw) != want {
		t.Errorf("Marshal = %s, want %s", raw, want)
	}
	var back rollout.Policy
	if err := json.Unmarshal(raw, &back); err != nil || back != p {
		t.Errorf("round trip = %+v, %v; want %+v", back, err, p)
	}

	tests := []struct {
		name    string
		in      string
		want    rollout.Policy
		wantErr bool
	}{
		{"strings", `{"device_timeout":"90s","retry_backoff":"30m","url_ttl":"1h"}`,
			rollout.Policy{DeviceTimeout: 90 * time.Second, RetryBackoff: 30 * time.Minute, URLTTL: time.Hour}, false},
		{"integer nanoseconds of old records", `{"device_timeout":1800000000000,"url_ttl":3600000000000}`,
			rollout.Policy{DeviceTimeout: 30 * time.Minute, URLTTL: time.Hour}, false},
		{"null and empty are zero", `{"device_timeout":null,"retry_backoff":""}`, rollout.Policy{}, false},
		{"other fields keep their names", `{"success_threshold":95,"on_failure":"abort","max_in_flight":3}`,
			rollout.Policy{SuccessThreshold: 95, OnFailure: rollout.OnFailureAbort, MaxInFlight: 3}, false},
		{"unknown fields are ignored here", `{"color":"red"}`, rollout.Policy{}, false},
		{"bad duration string", `{"device_timeout":"soon"}`, rollout.Policy{}, true},
		{"fractional number", `{"device_timeout":1.5}`, rollout.Policy{}, true},
		{"boolean", `{"url_ttl":true}`, rollout.Policy{}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got rollout.Policy
			err := json.Unmarshal([]byte(tc.in), &got)
			if tc.wantErr {
				if !errors.Is(err, rollout.ErrInvalid) {
					t.Errorf("Unmarshal(%s) error = %v, want ErrInvalid", tc.in, err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("Unmarshal(%s) = %+v, %v; want %+v", tc.in, got, err, tc.want)
			}
		})
	}
}

func TestSpecValidateSelector(t *testing.T) {
	base := rollout.Spec{Firmware: "1.0.0", Devices: []device.ID{"a"}}
	long := strings.Repeat("x", rollout.MaxSelectorText+1)
	tests := []struct {
		name string
		mod  func(*rollout.Spec)
		ok   bool
	}{
		{"selector", func(s *rollout.Spec) { s.Selector = map[string]string{"hw": "m2"} }, true},
		{"all", func(s *rollout.Spec) { s.All = true }, true},
		{"both", func(s *rollout.Spec) { s.All, s.Selector = true, map[string]string{"hw": "m2"} }, false},
		{"empty key", func(s *rollout.Spec) { s.Selector = map[string]string{"": "m2"} }, false},
		{"long value", func(s *rollout.Spec) { s.Selector = map[string]string{"hw": long} }, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := base
			tc.mod(&s)
			err := s.Validate()
			if tc.ok && err != nil || !tc.ok && !errors.Is(err, rollout.ErrInvalid) {
				t.Errorf("Validate = %v, want ok=%t", err, tc.ok)
			}
		})
	}
}

func TestPolicyValidateSchedule(t *testing.T) {
	tests := []struct {
		window, tz string
		ok         bool
	}{
		{"02:00-05:00", "", true},
		{"22:00-04:00", "UTC", true},
		{"22:30-24:00", "Europe/Berlin", true},
		{"", "Europe/Berlin", false}, // a zone without a window
		{"2:00-05:00", "", false},
		{"02:00-05:00x", "", false},
		{"25:00-05:00", "", false},
		{"02:60-05:00", "", false},
		{"-1:00-05:00", "", false},
		{"+1:00-05:00", "", false},
		{" 1:00-05:00", "", false},
		{"02:00-05:00", "Local", false}, // the host's zone: not portable
		{"03:00-03:00", "", false},      // empty
		{"00:00-24:00", "", false},      // the whole day: no window needed
		{"02:00-05:00", "Mars/Olympus", false},
	}
	for _, tc := range tests {
		t.Run(tc.window+" "+tc.tz, func(t *testing.T) {
			p := rollout.Policy{Window: tc.window, WindowTZ: tc.tz, SuccessThreshold: 100, OnFailure: rollout.OnFailurePause,
				DeviceTimeout: time.Minute, URLTTL: time.Hour}
			err := p.Validate()
			if tc.ok && err != nil || !tc.ok && !errors.Is(err, rollout.ErrInvalid) {
				t.Errorf("Validate = %v, want ok=%t", err, tc.ok)
			}
		})
	}
}
