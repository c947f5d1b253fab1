package natskv_test

import (
	"errors"
	"testing"

	"github.com/umbra-iot/umbra/internal/natskv"
	"github.com/umbra-iot/umbra/internal/natstest"
)

func TestApplyIsAllOrNothing(t *testing.T) {
	for _, tc := range []struct {
		name   string
		target func(t *testing.T) natstest.Target
	}{
		{"one server", func(t *testing.T) natstest.Target { return natstest.Start(t) }},
		{"R3", func(t *testing.T) natstest.Target { return natstest.StartCluster(t) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			target := tc.target(t)
			ctx := t.Context()
			b, err := natskv.Open(ctx, natstest.JetStream(t, target.URLs()), natskv.BucketConfig{
				Name: "b", Replicas: target.Replicas(), Schema: natskv.Schema{Kind: "test", Version: 1}, MaxBatch: 4,
			})
			if err != nil {
				t.Fatal(err)
			}
			read := func(k string) natskv.Entry {
				t.Helper()
				e, err := b.Read(ctx, k)
				if err != nil {
					t.Fatal(err)
				}
				return e
			}
			// Create a and b together, both required absent.
			if _, err := b.Apply(ctx, natskv.Op{Key: "a", Value: []byte("1"), Check: true}, natskv.Op{Key: "b", Value: []byte("2"), Check: true}); err != nil {
				t.Fatal(err)
			}
			a := read("a")
			if string(a.Value) != "1" || a.Rev == 0 || a.Last != a.Rev {
				t.Fatalf("Read(a) = %+v", a)
			}
			// A batch whose last op's check fails writes nothing.
			_, err = b.Apply(ctx,
				natskv.Op{Key: "c", Value: []byte("3"), Check: true},
				natskv.Op{Key: "a", Delete: true, Check: true, Expect: a.Rev},
				natskv.Op{Key: "b", Value: []byte("x"), Check: true, Expect: a.Rev + 100})
			if !errors.Is(err, natskv.ErrConflict) {
				t.Fatalf("Apply with a stale check = %v, want ErrConflict", err)
			}
			if e := read("c"); e.Rev != 0 || e.Last != 0 {
				t.Errorf("c after the refused batch = %+v, want never written", e)
			}
			if e := read("a"); string(e.Value) != "1" {
				t.Errorf("a after the refused batch = %+v, want 1", e)
			}
			// Delete in a batch; the deleted key reads as no value with its marker's sequence.
			if _, err := b.Apply(ctx, natskv.Op{Key: "a", Delete: true, Check: true, Expect: a.Rev}, natskv.Op{Key: "c", Value: []byte("3")}); err != nil {
				t.Fatal(err)
			}
			del := read("a")
			if del.Rev != 0 || del.Value != nil || del.Last <= a.Rev {
				t.Errorf("a after delete = %+v, want no value and a later marker", del)
			}
			// Re-create over the marker: Expect is the marker's sequence, not 0.
			if _, err := b.Apply(ctx, natskv.Op{Key: "a", Value: []byte("new"), Check: true}); !errors.Is(err, natskv.ErrConflict) {
				t.Errorf("create over a marker expecting 0 = %v, want ErrConflict", err)
			}
			if _, err := b.Apply(ctx, natskv.Op{Key: "a", Value: []byte("new"), Check: true, Expect: del.Last}); err != nil {
				t.Errorf("create over a marker expecting its sequence = %v", err)
			}
			// Over MaxBatch: refused, nothing written.
			ops := make([]natskv.Op, 5)
			for i := range ops {
				ops[i] = natskv.Op{Key: "big" + string(rune('0'+i)), Value: []byte("v")}
			}
			if _, err := b.Apply(ctx, ops...); !errors.Is(err, natskv.ErrBatchTooLarge) {
				t.Errorf("Apply of 5 with MaxBatch 4 = %v, want ErrBatchTooLarge", err)
			}
			keys, err := b.Keys(ctx, ">")
			if err != nil {
				t.Fatal(err)
			}
			if len(keys) != 4 { // a, b, c and the schema record
				t.Errorf("Keys = %v, want a, b, c and %s", keys, natskv.MetaKey)
			}
		})
	}
}
