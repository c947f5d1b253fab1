package identity_test

import (
	"strings"
	"testing"

	"github.com/umbra-iot/umbra/internal/device"
	"github.com/umbra-iot/umbra/internal/identity"
)

func TestAllow(t *testing.T) {
	devA := identity.Principal{Role: identity.RoleDevice, Name: "A", Device: "A"}
	op := identity.Principal{Role: identity.RoleOperator, Name: "admin"}
	integ := identity.Principal{Role: identity.RoleIntegrator, Name: "dash"}
	const pub, sub = true, false
	tests := []struct {
		name  string
		p     identity.Principal
		topic string
		write bool
		want  bool
	}{
		// Device: publish only its own requests.
		{"device publishes own update", devA, "state/A/update", pub, true},
		{"device publishes own get", devA, "state/A/get", pub, true},
		{"device publishes own delete", devA, "state/A/delete", pub, true},
		{"device publishes B's update", devA, "state/B/update", pub, false},
		{"device publishes own accepted", devA, "state/A/update/accepted", pub, false},
		{"device publishes own rejected", devA, "state/A/update/rejected", pub, false},
		{"device publishes own delta", devA, "state/A/update/delta", pub, false},
		{"device publishes own documents", devA, "state/A/update/documents", pub, false},
		{"device publishes own presence", devA, "state/A/presence", pub, false},
		{"device publishes rollouts", devA, "rollouts/r1", pub, false},
		{"device publishes firmware", devA, "firmware/A/x", pub, false},
		{"device publishes other topic", devA, "telemetry/A", pub, false},
		{"device publishes wildcard", devA, "state/A/+", pub, false},
		{"device publishes with prefix ID", devA, "state/AB/update", pub, false},
		// Device: subscribe only under its own subtrees.
		{"device subscribes own subtree", devA, "state/A/#", sub, true},
		{"device subscribes own delta", devA, "state/A/update/delta", sub, true},
		{"device subscribes own +", devA, "state/A/update/+", sub, true},
		{"device subscribes own get responses", devA, "state/A/get/+", sub, true},
		{"device subscribes own firmware", devA, "firmware/A/#", sub, true},
		{"device subscribes B's subtree", devA, "state/B/#", sub, false},
		{"device subscribes B's delta", devA, "state/B/update/delta", sub, false},
		{"device subscribes all devices", devA, "state/+/update/delta", sub, false},
		{"device subscribes state/#", devA, "state/#", sub, false},
		{"device subscribes #", devA, "#", sub, false},
		{"device subscribes own parent", devA, "state/A", sub, false},
		{"device subscribes B's firmware", devA, "firmware/B/#", sub, false},
		{"device subscribes rollouts", devA, "rollouts/#", sub, false},
		{"device subscribes one rollout's status", devA, "rollouts/r1/status", sub, false},
		{"device subscribes all rollout events", devA, "rollouts/+/events", sub, false},
		{"device subscribes rollouts root", devA, "rollouts", sub, false},
		{"device publishes rollout status", devA, "rollouts/r1/status", pub, false},
		{"device publishes rollout events", devA, "rollouts/r1/events", pub, false},
		{"device subscribes $SYS", devA, "$SYS/#", sub, false},
		{"device shared subscription", devA, "$share/g/state/A/#", sub, false},
		{"device malformed wildcard", devA, "state/A/upd#", sub, false},
		{"device # not last", devA, "state/A/#/x", sub, false},
		{"device without ID", identity.Principal{Role: identity.RoleDevice, Name: "A"}, "state/A/update", pub, false},
		{"device without ID, empty level", identity.Principal{Role: identity.RoleDevice, Name: "A"}, "state//update", pub, false},
		{"device without ID, empty level aws", identity.Principal{Role: identity.RoleDevice, Name: "A"}, "$aws/things//shadow/get", pub, false},
		// Device: named shadows on the state tree.
		{"device publishes own named update", devA, "state/A/shadow/cfg/update", pub, true},
		{"device publishes own named get", devA, "state/A/shadow/cfg/get", pub, true},
		{"device publishes own named delete", devA, "state/A/shadow/cfg/delete", pub, true},
		{"device publishes own named, bad name (engine answers 400)", devA, "state/A/shadow/c.f/update", pub, true},
		{"device publishes own named unknown op", devA, "state/A/shadow/cfg/list", pub, false},
		{"device publishes own named accepted", devA, "state/A/shadow/cfg/update/accepted", pub, false},
		{"device publishes own named delta", devA, "state/A/shadow/cfg/update/delta", pub, false},
		{"device publishes B's named update", devA, "state/B/shadow/cfg/update", pub, false},
		{"device subscribes own named replies", devA, "state/A/shadow/cfg/update/+", sub, true},
		{"device subscribes all own named deltas", devA, "state/A/shadow/+/update/delta", sub, true},
		{"device subscribes B's named delta", devA, "state/B/shadow/cfg/update/delta", sub, false},
		// Device: the AWS IoT tree of its own thing only.
		{"device publishes own aws update", devA, "$aws/things/A/shadow/update", pub, true},
		{"device publishes own aws get", devA, "$aws/things/A/shadow/get", pub, true},
		{"device publishes own aws delete", devA, "$aws/things/A/shadow/delete", pub, true},
		{"device publishes own aws unknown op (engine answers 404)", devA, "$aws/things/A/shadow/list", pub, true},
		{"device publishes own aws named update", devA, "$aws/things/A/shadow/name/cfg/update", pub, true},
		{"device publishes own aws named unknown op", devA, "$aws/things/A/shadow/name/cfg/list", pub, true},
		{"device publishes own aws accepted", devA, "$aws/things/A/shadow/update/accepted", pub, false},
		{"device publishes own aws rejected", devA, "$aws/things/A/shadow/update/rejected", pub, false},
		{"device publishes own aws delta", devA, "$aws/things/A/shadow/update/delta", pub, false},
		{"device publishes own aws documents", devA, "$aws/things/A/shadow/update/documents", pub, false},
		{"device publishes own aws get accepted", devA, "$aws/things/A/shadow/get/accepted", pub, false},
		{"device publishes own aws named accepted", devA, "$aws/things/A/shadow/name/cfg/update/accepted", pub, false},
		{"device publishes own aws named delta", devA, "$aws/things/A/shadow/name/cfg/update/delta", pub, false},
		{"device publishes own aws thing root", devA, "$aws/things/A", pub, false},
		{"device publishes own aws shadow root", devA, "$aws/things/A/shadow", pub, false},
		{"device publishes own aws other service", devA, "$aws/things/A/other/get", pub, false},
		{"device publishes B's aws update", devA, "$aws/things/B/shadow/update", pub, false},
		{"device publishes B's aws named update", devA, "$aws/things/B/shadow/name/cfg/update", pub, false},
		{"device publishes aws with prefix ID", devA, "$aws/things/AB/shadow/update", pub, false},
		{"device publishes aws wildcard thing", devA, "$aws/things/+/shadow/update", pub, false},
		{"device subscribes own aws delta", devA, "$aws/things/A/shadow/update/delta", sub, true},
		{"device subscribes own aws get/+ (v2 SDK)", devA, "$aws/things/A/shadow/get/+", sub, true},
		{"device subscribes own aws update/#", devA, "$aws/things/A/shadow/update/#", sub, true},
		{"device subscribes own aws shadow/#", devA, "$aws/things/A/shadow/#", sub, true},
		{"device subscribes own aws named get/+", devA, "$aws/things/A/shadow/name/cfg/get/+", sub, true},
		{"device subscribes own aws all named deltas", devA, "$aws/things/A/shadow/name/+/update/delta", sub, true},
		{"device subscribes own aws shadow root", devA, "$aws/things/A/shadow", sub, false},
		{"device subscribes own aws thing #", devA, "$aws/things/A/#", sub, false},
		{"device subscribes B's aws delta", devA, "$aws/things/B/shadow/update/delta", sub, false},
		{"device subscribes B's aws #", devA, "$aws/things/B/shadow/#", sub, false},
		{"device subscribes all things' aws deltas", devA, "$aws/things/+/shadow/update/delta", sub, false},
		{"device subscribes $aws/#", devA, "$aws/#", sub, false},
		{"device subscribes aws with prefix ID", devA, "$aws/things/AB/shadow/#", sub, false},
		// Operator: requests for any device, read everything.
		{"operator publishes any update", op, "state/B/update", pub, true},
		{"operator publishes any get", op, "state/C/get", pub, true},
		{"operator publishes accepted", op, "state/B/update/accepted", pub, false},
		{"operator publishes delta", op, "state/B/update/delta", pub, false},
		{"operator publishes presence", op, "state/B/presence", pub, false},
		{"operator publishes rollouts", op, "rollouts/r1", pub, false},
		{"operator publishes rollout status", op, "rollouts/r1/status", pub, false},
		{"operator publishes rollout events", op, "rollouts/r1/events", pub, false},
		{"operator subscribes rollouts", op, "rollouts/#", sub, true},
		{"operator subscribes one rollout's events", op, "rollouts/r1/events", sub, true},
		{"operator subscribes all statuses", op, "rollouts/+/status", sub, true},
		{"operator publishes invalid ID", op, "state/a b/update", pub, false},
		{"operator publishes wildcard", op, "state/+/update", pub, false},
		{"operator subscribes #", op, "#", sub, true},
		{"operator publishes named update", op, "state/B/shadow/cfg/update", pub, true},
		{"operator publishes named, bad name (engine answers 400)", op, "state/B/shadow/c.f/get", pub, true},
		{"operator publishes named unknown op", op, "state/B/shadow/cfg/list", pub, false},
		{"operator publishes named accepted", op, "state/B/shadow/cfg/update/accepted", pub, false},
		{"operator publishes aws update", op, "$aws/things/B/shadow/update", pub, true},
		{"operator publishes aws named delete", op, "$aws/things/B/shadow/name/cfg/delete", pub, true},
		{"operator publishes aws unknown op", op, "$aws/things/B/shadow/list", pub, false},
		{"operator publishes aws accepted", op, "$aws/things/B/shadow/update/accepted", pub, false},
		{"operator publishes aws named delta", op, "$aws/things/B/shadow/name/cfg/update/delta", pub, false},
		{"operator publishes aws invalid ID", op, "$aws/things/a b/shadow/update", pub, false},
		{"operator subscribes $aws/#", op, "$aws/#", sub, true},
		{"operator subscribes all aws deltas", op, "$aws/things/+/shadow/update/delta", sub, true},
		{"operator subscribes all deltas", op, "state/+/update/delta", sub, true},
		{"operator subscribes $SYS", op, "$SYS/#", sub, true},
		{"operator malformed filter", op, "state/+x", sub, false},
		// Integrator: read-only, a fixed set of feeds.
		{"integrator subscribes accepted", integ, "state/+/update/accepted", sub, true},
		{"integrator subscribes documents", integ, "state/+/update/documents", sub, true},
		{"integrator subscribes delta", integ, "state/+/update/delta", sub, true},
		{"integrator subscribes presence", integ, "state/+/presence", sub, true},
		{"integrator subscribes rollouts", integ, "rollouts/#", sub, true},
		{"integrator subscribes one rollout", integ, "rollouts/r1/status", sub, true},
		{"integrator subscribes all statuses", integ, "rollouts/+/status", sub, true},
		{"integrator subscribes one rollout's events", integ, "rollouts/r1/events", sub, true},
		{"integrator subscribes below one rollout", integ, "rollouts/r1/#", sub, true},
		{"integrator subscribes rollouts root", integ, "rollouts", sub, true},
		{"integrator receives rollout status", integ, "rollouts/r1/status", sub, true},
		{"integrator subscribes rollouts prefix lookalike", integ, "rolloutsx/#", sub, false},
		{"integrator malformed rollouts filter", integ, "rollouts/r#", sub, false},
		{"integrator receives accepted", integ, "state/dev-1/update/accepted", sub, true},
		{"integrator subscribes rejected", integ, "state/+/update/rejected", sub, false},
		{"integrator subscribes named accepted", integ, "state/+/shadow/+/update/accepted", sub, true},
		{"integrator subscribes one named delta", integ, "state/A/shadow/cfg/update/delta", sub, true},
		{"integrator subscribes named rejected", integ, "state/+/shadow/+/update/rejected", sub, false},
		{"integrator subscribes named get accepted", integ, "state/+/shadow/+/get/accepted", sub, false},
		{"integrator subscribes aws accepted", integ, "$aws/things/+/shadow/update/accepted", sub, true},
		{"integrator subscribes aws documents", integ, "$aws/things/+/shadow/update/documents", sub, true},
		{"integrator subscribes aws delta", integ, "$aws/things/+/shadow/update/delta", sub, true},
		{"integrator subscribes aws named documents", integ, "$aws/things/+/shadow/name/+/update/documents", sub, true},
		{"integrator subscribes aws rejected", integ, "$aws/things/+/shadow/update/rejected", sub, false},
		{"integrator subscribes aws update/#", integ, "$aws/things/+/shadow/update/#", sub, false},
		{"integrator subscribes aws get accepted", integ, "$aws/things/+/shadow/get/accepted", sub, false},
		{"integrator subscribes $aws/#", integ, "$aws/#", sub, false},
		{"integrator publishes aws update", integ, "$aws/things/A/shadow/update", pub, false},
		{"integrator subscribes update/+", integ, "state/+/update/+", sub, false},
		{"integrator subscribes update/#", integ, "state/+/update/#", sub, false},
		{"integrator subscribes #", integ, "#", sub, false},
		{"integrator subscribes requests", integ, "state/+/update", sub, false},
		{"integrator subscribes firmware", integ, "firmware/#", sub, false},
		{"integrator publishes update", integ, "state/A/update", pub, false},
		{"integrator publishes rollouts", integ, "rollouts/r1", pub, false},
		{"integrator publishes rollout status", integ, "rollouts/r1/status", pub, false},
		{"integrator publishes rollout events", integ, "rollouts/r1/events", pub, false},
		// Edge cases.
		{"unknown role", identity.Principal{Role: "root"}, "#", sub, false},
		{"empty topic", op, "", sub, false},
		{"over-long topic", op, "state/" + strings.Repeat("x", 70000), sub, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := identity.Allow(tc.p, tc.topic, tc.write); got != tc.want {
				t.Errorf("Allow(%s %q, %q, write=%t) = %t, want %t", tc.p.Role, tc.p.Name, clipTopic(tc.topic), tc.write, got, tc.want)
			}
		})
	}
}

func clipTopic(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}

func TestPrincipalCan(t *testing.T) {
	devA := identity.Principal{Role: identity.RoleDevice, Name: "A", Device: "A"}
	op := identity.Principal{Role: identity.RoleOperator, Name: "admin"}
	integ := identity.Principal{Role: identity.RoleIntegrator, Name: "dash"}
	tests := []struct {
		p                   identity.Principal
		id                  device.ID
		wantRead, wantWrite bool
	}{
		{devA, "A", true, true},
		{devA, "B", false, false},
		{op, "B", true, true},
		{integ, "B", true, false},
		{identity.Principal{Role: "root"}, "B", false, false},
	}
	for _, tc := range tests {
		if got := tc.p.CanReadDevice(tc.id); got != tc.wantRead {
			t.Errorf("%s.CanReadDevice(%s) = %t, want %t", tc.p.Role, tc.id, got, tc.wantRead)
		}
		if got := tc.p.CanWriteDevice(tc.id); got != tc.wantWrite {
			t.Errorf("%s.CanWriteDevice(%s) = %t, want %t", tc.p.Role, tc.id, got, tc.wantWrite)
		}
	}
}

func TestParseRole(t *testing.T) {
	tests := []struct {
		in      string
		wantErr bool
	}{
		{"operator", false},
		{"integrator", false},
		{"device", true},
		{"", true},
		{"Operator", true},
	}
	for _, tc := range tests {
		r, err := identity.ParseRole(tc.in)
		if (err != nil) != tc.wantErr || err == nil && string(r) != tc.in {
			t.Errorf("ParseRole(%q) = %q, %v; want error %t", tc.in, r, err, tc.wantErr)
		}
	}
}
