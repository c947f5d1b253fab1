package cluster_test

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/umbra-iot/umbra/internal/cluster"
	"github.com/umbra-iot/umbra/internal/natstest"
)

// testTTL is the lease TTL of the tests: short, so takeovers are quick.
const testTTL = 2 * time.Second

// candidate is one node campaigning for the lease on its own connection.
type candidate struct {
	name  string
	nc    *nats.Conn
	lease *cluster.Lease
}

func newCandidate(t *testing.T, c *natstest.Cluster, i int) *candidate {
	t.Helper()
	// Each candidate talks to another server first, as nodes would.
	urls := append([]string{c.Servers[i%len(c.Servers)].URL()}, c.URLs()...)
	nc := natstest.Connect(t, urls)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	name := fmt.Sprintf("node-%d", i)
	l, err := cluster.OpenLease(t.Context(), cluster.LeaseConfig{JetStream: js, Name: "planner", Holder: name, TTL: testTTL, Replicas: 3,
		Logger: slog.New(slog.NewTextHandler(t.Output(), nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close(context.Background()) })
	return &candidate{name: name, nc: nc, lease: l}
}

// watchHolders samples Held on every candidate until stop is closed and
// fails the test if two ever hold the lease at once. It returns a
// function that reports the holder seen last ("" if none).
func watchHolders(t *testing.T, cands []*candidate, stop <-chan struct{}) (holder func() string, done <-chan struct{}) {
	var mu sync.Mutex
	last := ""
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			var holders []string
			for _, c := range cands {
				if c.lease.Held() {
					holders = append(holders, c.name)
				}
			}
			if len(holders) > 1 {
				t.Errorf("two holders at once: %v", holders)
				return
			}
			mu.Lock()
			if len(holders) == 1 {
				last = holders[0]
			} else {
				last = ""
			}
			mu.Unlock()
		}
	}()
	return func() string { mu.Lock(); defer mu.Unlock(); return last }, finished
}

// waitHolder waits until some candidate other than not holds the lease,
// and returns it.
func waitHolder(t *testing.T, cands []*candidate, not *candidate, within time.Duration) *candidate {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		for _, c := range cands {
			if c != not && c.lease.Held() {
				return c
			}
		}
		time.Sleep(5 * time.Millisecond) // no event spans candidates: poll Held
	}
	t.Fatalf("no candidate (other than %v) holds the lease within %v", not, within)
	return nil
}

func TestLeaseOneHolderAndTakeover(t *testing.T) {
	c := natstest.StartCluster(t)
	var cands []*candidate
	for i := range 3 {
		cands = append(cands, newCandidate(t, c, i))
	}
	stop := make(chan struct{})
	_, done := watchHolders(t, cands, stop)
	defer func() { close(stop); <-done }()

	first := waitHolder(t, cands, nil, cluster.TakeoverBound(testTTL))
	info, ok, err := first.lease.Info(t.Context())
	if err != nil || !ok || info.Holder != first.name {
		t.Fatalf("Info = %+v, %t, %v; want holder %s", info, ok, err, first.name)
	}

	// The holder's process dies (its connection drops, nothing released):
	// another takes over within TakeoverBound, never while the first still
	// believes it holds the lease (watchHolders checks).
	killed := time.Now()
	first.nc.Close()
	second := waitHolder(t, cands, first, cluster.TakeoverBound(testTTL)+time.Second)
	t.Logf("takeover after the holder died: %v (bound %v)", time.Since(killed).Round(time.Millisecond), cluster.TakeoverBound(testTTL))
	if first.lease.Held() {
		t.Errorf("%s still believes it holds the lease after %s took over", first.name, second.name)
	}

	// A clean Close releases at once: the third takes over without waiting
	// for the TTL.
	released := time.Now()
	if err := second.lease.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	third := waitHolder(t, cands, second, testTTL)
	if third == first {
		t.Fatalf("the dead %s took the lease back", first.name)
	}
	t.Logf("handover after a clean Close: %v", time.Since(released).Round(time.Millisecond))
}

// TestLeaseSurvivesNATSServerKill: kill -9 of one NATS server of three does
// not make the holder lose the lease for good, and never yields two
// holders.
func TestLeaseSurvivesNATSServerKill(t *testing.T) {
	c := natstest.StartCluster(t)
	var cands []*candidate
	for i := range 2 {
		cands = append(cands, newCandidate(t, c, i))
	}
	stop := make(chan struct{})
	_, done := watchHolders(t, cands, stop)
	defer func() { close(stop); <-done }()
	waitHolder(t, cands, nil, cluster.TakeoverBound(testTTL))
	c.Servers[2].Kill()
	// Some candidate holds the lease again within the bound (the holder
	// may keep it throughout; a leader election may cost one renewal).
	waitHolder(t, cands, nil, cluster.TakeoverBound(testTTL)+time.Second)
}

func TestLeaseTTLMismatchRefused(t *testing.T) {
	s := natstest.Start(t)
	js := natstest.JetStream(t, s.URLs())
	l, err := cluster.OpenLease(t.Context(), cluster.LeaseConfig{JetStream: js, Name: "planner", Holder: "a", TTL: testTTL})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close(context.Background())
	_, err = cluster.OpenLease(t.Context(), cluster.LeaseConfig{JetStream: js, Name: "planner", Holder: "b", TTL: 3 * time.Second})
	if err == nil {
		t.Fatal("OpenLease with another TTL than the bucket's succeeded")
	}
	t.Log(err)
}

// TestLeaseReleaseHandsOver: a holder that releases the lease hands it to
// the other candidate at once (well within the TTL: a real delete of the
// key, not an expiry), stays out of the campaign for its stay-out period
// (never two holders meanwhile) and campaigns again after it.
func TestLeaseReleaseHandsOver(t *testing.T) {
	c := natstest.StartCluster(t)
	cands := []*candidate{newCandidate(t, c, 0)}
	first := waitHolder(t, cands, nil, cluster.TakeoverBound(testTTL))
	cands = append(cands, newCandidate(t, c, 1))
	stop := make(chan struct{})
	_, done := watchHolders(t, cands, stop)
	defer func() { close(stop); <-done }()

	const stayOut = 3 * testTTL
	released := time.Now()
	if held, err := first.lease.Release(t.Context(), stayOut); err != nil || !held {
		t.Fatalf("Release = %t, %v; want true, nil", held, err)
	}
	if first.lease.Held() {
		t.Error("Held is true after Release")
	}
	second := waitHolder(t, cands, first, testTTL/2) // an expiry would take the TTL
	t.Logf("handover after Release: %v", time.Since(released).Round(time.Millisecond))

	// Released again while not held: nothing to delete, the stay-out
	// period restarts.
	again := time.Now()
	if held, err := first.lease.Release(t.Context(), stayOut); err != nil || held {
		t.Fatalf("Release while not held = %t, %v; want false, nil", held, err)
	}
	// The second closes (releasing at once): the first stays out until its
	// period ends, then takes the lease.
	if err := second.lease.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	got := waitHolder(t, cands, second, stayOut+cluster.TakeoverBound(testTTL))
	if out := time.Since(again); out < stayOut {
		t.Errorf("%s holds the lease %v after its Release, within its stay-out period %v", got.name, out, stayOut)
	}
	t.Logf("%s campaigned again %v after its Release (stay-out %v)", got.name, time.Since(again).Round(time.Millisecond), stayOut)
}
