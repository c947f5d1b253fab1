package plannerrpc_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/internal/plannerrpc"
	"github.com/umbra-iot/umbra/rollout"
	"github.com/umbra-iot/umbra/wire"
)

// longIDs returns n device IDs of 36 bytes each.
func longIDs(n int) []device.ID {
	out := make([]device.ID, n)
	for i := range out {
		out[i] = device.ID(fmt.Sprintf("sensor-%029d", i))
	}
	return out
}

// waitStaged waits until the holder holds no staged device IDs.
func waitStaged(t *testing.T, p pair) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for p.stats.Stats().Staged != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the holder still holds %d staged device IDs", p.stats.Stats().Staged)
		}
		time.Sleep(10 * time.Millisecond) // the stage's timer: no event to wait on
	}
}

// TestLargeCreateSentInParts: a create (and a preview) whose 60,000
// explicit device IDs are larger than MaxBody is forwarded in parts, each
// within MaxBody, and the rollout has every device.
func TestLargeCreateSentInParts(t *testing.T) {
	p := mustPair(t, plannerrpc.Config{})
	devs := longIDs(60_000)
	parts := 0
	plannerrpc.OnPartSent(p.client, func(int) { parts++ })
	spec := rollout.Spec{Firmware: "2.0.0", Devices: devs, Policy: rollout.Policy{BatchSize: 1000}}

	pre, err := p.client.Preview(t.Context(), spec)
	if err != nil || pre.Targets != len(devs) {
		t.Fatalf("Preview = %d targets, %v; want %d", pre.Targets, err, len(devs))
	}
	if rs, _ := p.planner.List(t.Context()); len(rs) != 0 {
		t.Fatalf("the preview created %d rollouts", len(rs))
	}
	r, err := p.client.Create(t.Context(), spec)
	if err != nil || r.Targets != len(devs) {
		t.Fatalf("Create = %d targets, %v; want %d", r.Targets, err, len(devs))
	}
	t.Logf("%d IDs: %d staged parts per call", len(devs), parts/2)
	if parts < 4 { // two calls, at least two staged parts each (2.3 MB in 1 MB messages)
		t.Errorf("%d parts staged for two calls, want at least 4", parts)
	}
	seen := map[device.ID]bool{}
	for start := 0; start >= 0; {
		page, next, err := p.planner.DevicesPage(t.Context(), r.ID, nil, start, wire.MaxListLimit)
		if err != nil {
			t.Fatalf("DevicesPage from %d: %v", start, err)
		}
		for _, d := range page {
			seen[d.Device] = true
		}
		start = next
	}
	if len(seen) != len(devs) {
		t.Errorf("the rollout lists %d devices, want %d", len(seen), len(devs))
	}
	for _, id := range devs {
		if !seen[id] {
			t.Fatalf("device %s is not in the rollout (%d of %d are)", id, len(seen), len(devs))
		}
	}
	if st := p.stats.Stats(); st.Staged != 0 || st.TooLarge != 0 {
		t.Errorf("server stats %+v, want nothing staged and nothing too large", st)
	}
}

// TestLargeCreateInterrupted: the forwarding node's context is cancelled
// after the first part: no rollout exists, the staged part is dropped at
// the caller's deadline, and the same create succeeds afterwards.
func TestLargeCreateInterrupted(t *testing.T) {
	p := mustPair(t, plannerrpc.Config{MaxBody: 4096})
	devs := longIDs(400) // about 16 KB: 4 or more parts
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	plannerrpc.OnPartSent(p.client, func(part int) {
		if part == 0 {
			cancel()
		}
	})
	spec := rollout.Spec{Firmware: "2.0.0", Devices: devs}
	if _, err := p.client.Create(ctx, spec); !errors.Is(err, rollout.ErrUnavailable) {
		t.Fatalf("interrupted Create = %v, want ErrUnavailable", err)
	}
	if rs, err := p.planner.List(t.Context()); err != nil || len(rs) != 0 {
		t.Fatalf("the interrupted create left %d rollouts (%v), want none", len(rs), err)
	}
	waitStaged(t, p)

	plannerrpc.OnPartSent(p.client, nil)
	r, err := p.client.Create(t.Context(), spec)
	if err != nil || r.Targets != len(devs) {
		t.Fatalf("Create after the interrupted one = %d targets, %v; want %d", r.Targets, err, len(devs))
	}
}

// TestStagedPartsRefused: a part with a bad payload, parts out of order
// and a completing create that does not match its stage are refused with
// a clear error, drop the stage, and store nothing.
func TestStagedPartsRefused(t *testing.T) {
	p := mustPair(t, plannerrpc.Config{MaxBody: 4096})
	const spec = `"spec":{"firmware":"2.0.0","devices":["c"],"policy":{}}`
	for _, tc := range []struct {
		name string
		body []string // sent in order; the last one's error is checked
		kind string
		want string
	}{
		{"bad device", []string{`{"v":1,"op":"stage_devices","stage":"s1","devices":["ok","+"]}`}, "invalid", "device"},
		{"bad device in a later part", []string{
			`{"v":1,"op":"stage_devices","stage":"s7","part":0,"devices":["a"]}`,
			`{"v":1,"op":"stage_devices","stage":"s7","part":1,"devices":["b","a/b"]}`,
		}, "invalid", "device"},
		{"no devices", []string{`{"v":1,"op":"stage_devices","stage":"s1"}`}, "invalid", "devices are required"},
		{"no stage", []string{`{"v":1,"op":"stage_devices","devices":["a"]}`}, "invalid", "a stage of 1 to 64 bytes"},
		{"long stage", []string{`{"v":1,"op":"stage_devices","stage":"` + strings.Repeat("s", 65) + `","devices":["a"]}`}, "invalid", "a stage of 1 to 64 bytes"},
		{"negative part", []string{`{"v":1,"op":"stage_devices","stage":"s1","part":-1,"devices":["a"]}`}, "invalid", "negative"},
		{"stage on another op", []string{`{"v":1,"op":"pause","id":"r1","stage":"s1"}`}, "invalid", "stage is only for"},
		{"part out of order", []string{
			`{"v":1,"op":"stage_devices","stage":"s2","part":0,"devices":["a"]}`,
			`{"v":1,"op":"stage_devices","stage":"s2","part":2,"devices":["b"]}`,
		}, "invalid", "expected part 1"},
		{"stage opened twice", []string{
			`{"v":1,"op":"stage_devices","stage":"s3","part":0,"devices":["a"]}`,
			`{"v":1,"op":"stage_devices","stage":"s3","part":0,"devices":["b"]}`,
		}, "invalid", "already open"},
		{"create counts other parts", []string{
			`{"v":1,"op":"stage_devices","stage":"s4","part":0,"devices":["a"]}`,
			`{"v":1,"op":"create","stage":"s4","part":2,` + spec + `}`,
		}, "invalid", "has 1 parts"},
		{"create of an unknown stage", []string{`{"v":1,"op":"create","stage":"s5","part":1,` + spec + `}`}, "unavailable", "not on this node"},
		{"part of an unknown stage", []string{`{"v":1,"op":"stage_devices","stage":"s6","part":1,"devices":["a"]}`}, "unavailable", "not on this node"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var data []byte
			for _, b := range tc.body {
				msg, err := p.nc.RequestWithContext(t.Context(), plannerrpc.DefaultSubject, []byte(b))
				if err != nil {
					t.Fatal(err)
				}
				data = msg.Data
			}
			var rep struct {
				Err *struct {
					Msg   string   `json:"msg"`
					Kinds []string `json:"kinds"`
				} `json:"err"`
			}
			if err := json.Unmarshal(data, &rep); err != nil || rep.Err == nil {
				t.Fatalf("reply %s (%v), want an error", data, err)
			}
			if !strings.Contains(rep.Err.Msg, tc.want) || len(rep.Err.Kinds) == 0 || rep.Err.Kinds[0] != tc.kind {
				t.Errorf("reply error %q %v, want %q naming %s", rep.Err.Msg, rep.Err.Kinds, tc.want, tc.kind)
			}
			if st := p.stats.Stats(); st.Staged != 0 {
				t.Errorf("%d device IDs still staged after the refusal, want 0", st.Staged)
			}
		})
	}
	if rs, err := p.planner.List(t.Context()); err != nil || len(rs) != 0 {
		t.Errorf("the planner holds %d rollouts after the bad parts (%v), want none", len(rs), err)
	}
}
