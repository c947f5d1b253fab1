package natsstore_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/internal/natstest"
	"github.com/umbra-iot/umbra/rollout"
	"github.com/umbra-iot/umbra/rollout/natsstore"
	"github.com/umbra-iot/umbra/rollout/storetest"
)

// opener returns a storetest.Opener on target: each test directory is one
// bucket, so reopening a directory reopens its bucket.
func opener(t *testing.T, target natstest.Target) storetest.Opener {
	js := natstest.JetStream(t, target.URLs())
	bucket := natstest.BucketNames("rollout")
	return func(tb testing.TB, dir string) (rollout.Store, func()) {
		tb.Helper()
		s, err := natsstore.Open(context.Background(), natsstore.Config{JetStream: js, Bucket: bucket(dir), Replicas: target.Replicas()})
		if err != nil {
			tb.Fatalf("open: %v", err)
		}
		return s, func() { s.Close(context.Background()) }
	}
}

func TestContract(t *testing.T) { storetest.Run(t, opener(t, natstest.Start(t))) }

func TestContractR3(t *testing.T) { storetest.Run(t, opener(t, natstest.StartCluster(t))) }

// TestChunkBoundaries: a rollout larger than one chunk of targets (4096)
// and of records (1024) reads back whole, from any position.
func TestChunkBoundaries(t *testing.T) {
	open := opener(t, natstest.Start(t))
	s, closeStore := open(t, t.TempDir())
	defer closeStore()
	ctx := t.Context()
	const n = 5000
	targets := make([]device.ID, n)
	for i := range targets {
		targets[i] = device.ID(fmt.Sprintf("dev-%05d", i))
	}
	r, _, err := s.Create(ctx, rollout.Rollout{Firmware: "2.0.0", Targets: n}, targets, rollout.Event{Kind: rollout.EventCreated})
	if err != nil {
		t.Fatal(err)
	}
	c := &rollout.Changes{}
	written := map[int]rollout.Device{}
	for _, i := range []int{0, 1023, 1024, 4095, 4096, 4999} {
		d := rollout.Device{State: rollout.DeviceNotified, Attempt: 1, At: int64(i)}
		written[i] = d
		c.Devices = append(c.Devices, rollout.DeviceWrite{Position: rollout.Position{Rollout: r.ID, Index: i}, Device: d})
		c.Errors = append(c.Errors, rollout.ErrorWrite{Position: rollout.Position{Rollout: r.ID, Index: i}, Text: fmt.Sprint("e", i)})
	}
	if _, err := s.Commit(ctx, c); err != nil {
		t.Fatal(err)
	}
	st, err := s.Load(ctx, r.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Targets) != n || st.Targets[4096] != "dev-04096" || st.Targets[n-1] != "dev-04999" {
		t.Fatalf("Load: %d targets, [4096]=%s", len(st.Targets), st.Targets[4096])
	}
	for i, d := range st.Devices {
		if d != written[i] {
			t.Fatalf("Load: device %d = %+v, want %+v", i, d, written[i])
		}
	}
	var seen int
	err = s.Targets(ctx, r.ID, 4090, func(i int, id device.ID, d rollout.Device) bool {
		if id != targets[i] || d != written[i] {
			t.Errorf("Targets: %d = %s %+v, want %s %+v", i, id, d, targets[i], written[i])
		}
		seen++
		return true
	})
	if err != nil || seen != n-4090 {
		t.Fatalf("Targets from 4090: %d seen, %v", seen, err)
	}
	errs, err := s.Errors(ctx, r.ID, []int{1023, 1024, 2000, 4999})
	if err != nil || len(errs) != 3 || errs[1024] != "e1024" || errs[4999] != "e4999" {
		t.Fatalf("Errors = %v, %v", errs, err)
	}
	all, err := s.Errors(ctx, r.ID, nil)
	if err != nil || len(all) != len(written) {
		t.Fatalf("Errors(nil) = %v, %v", all, err)
	}
}
