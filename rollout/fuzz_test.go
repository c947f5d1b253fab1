package rollout_test

import (
	"encoding/json"
	"reflect"
	"testing"

	"github.com/umbra-iot/umbra/internal/rolloutwire"
	"github.com/umbra-iot/umbra/rollout"
	"github.com/umbra-iot/umbra/wire"
)

// FuzzSpec decodes a rollout request as the HTTP edge does (a
// wire.CreateRollout, turned into a Spec by rolloutwire.Spec) and checks
// that validation never panics and that every valid spec's batches cover
// the targets exactly once.
func FuzzSpec(f *testing.F) {
	for _, seed := range []string{
		`{"firmware":"1.2.0","devices":["a","b","c"],"batch_size":2}`,
		`{"firmware":"1.2.0","devices":["a"],"batch_percent":10,"first_batch":1,"ramp":2,"max_batch_size":3}`,
		`{"firmware":"v1.2.0","devices":["a","a"],"success_threshold":95,"failure_percent":10,"min_sample":5}`,
		`{"firmware":"1.2","devices":[]}`,
		`{"firmware":"1.2.0","devices":["x/y"],"retries":11,"on_failure":"explode"}`,
		`{"firmware":"1.2.0","devices":["a"],"device_timeout":"90s","retry_backoff":30000000000,"select":{"hw":"m2"}}`,
		`{"firmware":"1.2.0","devices":["a"],"device_timeout":"90s","retry_backoff":"30s","select":{"hw":"m2"}}`,
		`{"firmware":"1.2.0","devices":["a"],"all":true,"url_ttl":"-1h","device_timeout":null}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var req wire.CreateRollout
		if json.Unmarshal(data, &req) != nil {
			return
		}
		s := rolloutwire.Spec(req)
		if s.Validate() != nil {
			return
		}
		n := len(s.Devices)
		next := 0
		for _, b := range rollout.PlanBatches(n, s.Policy) {
			if b.Start != next || b.Size <= 0 {
				t.Fatalf("batch %+v after %d targets", b, next)
			}
			next += b.Size
		}
		if next != n {
			t.Fatalf("batches cover %d targets, want %d", next, n)
		}
		// A valid request survives a JSON round trip and gives the same
		// spec again.
		raw, err := json.Marshal(req)
		if err != nil {
			t.Fatalf("Marshal(%+v): %v", req, err)
		}
		var back wire.CreateRollout
		if err := json.Unmarshal(raw, &back); err != nil {
			t.Fatalf("Unmarshal(%s): %v", raw, err)
		}
		if again := rolloutwire.Spec(back); !reflect.DeepEqual(again, s) {
			t.Fatalf("round trip %s gives spec %+v, want %+v", raw, again, s)
		}
	})
}
