package policy_test

import (
	"testing"

	"github.com/umbra-iot/umbra/policy"
)

// BenchmarkAllow measures the checks the broker makes most often, with the
// built-in default policy and with the roles fixture extending it: a
// device's shadow request and telemetry (publishes, including the reserved
// topics check), and an integrator's delivery of that telemetry.
func BenchmarkAllow(b *testing.B) {
	roles, err := policy.Load(fixture("roles.acl"))
	if err != nil {
		b.Fatal(err)
	}
	dev := policy.Subject{Role: policy.RoleDevice, User: "dev-1", ClientID: "dev-1"}
	integ := policy.Subject{Role: policy.RoleIntegrator, User: "dash", ClientID: "dash-1"}
	cases := []struct {
		name  string
		s     policy.Subject
		topic string
		a     policy.Access
	}{
		{"shadow-update", dev, "state/dev-1/update", policy.Write},
		{"telemetry", dev, "devices/dev-1/telemetry", policy.Write},
		{"delivery", integ, "devices/dev-1/telemetry", policy.Read},
		{"subscribe", dev, "state/dev-1/update/+", policy.Read},
	}
	for _, p := range []struct {
		name string
		p    *policy.Policy
	}{{"default", policy.Default()}, {"roles-file", roles}} {
		for _, c := range cases {
			b.Run(p.name+"/"+c.name, func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					if !p.p.Allow(c.s, c.topic, c.a) {
						b.Fatal("denied")
					}
				}
			})
		}
	}
}
