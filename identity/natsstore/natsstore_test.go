package natsstore_test

import (
	"context"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/identity"
	"github.com/umbra-iot/umbra/identity/natsstore"
	"github.com/umbra-iot/umbra/identity/storetest"
	"github.com/umbra-iot/umbra/internal/natstest"
)

// opener returns a storetest.Opener on target: each test directory is one
// pair of buckets, so reopening a directory reopens them.
func opener(t *testing.T, target natstest.Target) storetest.Opener {
	js := natstest.JetStream(t, target.URLs())
	bucket, keyBucket := natstest.BucketNames("identity"), natstest.BucketNames("identity_key")
	return func(tb testing.TB, dir string) (identity.Storage, func()) {
		tb.Helper()
		st, err := natsstore.Open(context.Background(), natsstore.Config{JetStream: js, Replicas: target.Replicas(),
			Bucket: bucket(dir), KeyBucket: keyBucket(dir)})
		if err != nil {
			tb.Fatalf("open: %v", err)
		}
		return st, func() { st.Close(context.Background()) }
	}
}

func TestContract(t *testing.T) { storetest.Run(t, opener(t, natstest.Start(t))) }

func TestContractR3(t *testing.T) { storetest.Run(t, opener(t, natstest.StartCluster(t))) }

// TestCredentialChangesReachEveryNode: two identity stores (two nodes) on
// one set of buckets. A device enrolled on node A can log in on node B
// and its session is valid there; when A rotates its secret, and when A
// removes it, node B's sessions of it become invalid and B's OnRevoke is
// told, as if the change had been made on B.
func TestCredentialChangesReachEveryNode(t *testing.T) {
	srv := natstest.Start(t)
	revokes := make(chan identity.Revocation, 8)
	open := func(onRevoke func(context.Context, identity.Revocation)) *identity.Store {
		st, err := natsstore.Open(t.Context(), natsstore.Config{JetStream: natstest.JetStream(t, srv.URLs())})
		if err != nil {
			t.Fatal(err)
		}
		s, err := identity.Open(t.Context(), identity.Config{Storage: st, OnRevoke: onRevoke})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close(context.Background()) })
		return s
	}
	a := open(nil)
	b := open(func(_ context.Context, r identity.Revocation) { revokes <- r })
	ctx := t.Context()

	secret, err := a.EnrollDevice(ctx, identity.Enrollment{ID: "dev-1"})
	if err != nil {
		t.Fatal(err)
	}
	login := func(secret string) identity.Session {
		t.Helper()
		sess, err := b.Authenticate(ctx, identity.Credentials{ClientID: "dev-1", Password: []byte(secret)})
		if err != nil {
			t.Fatalf("log in on node B: %v", err)
		}
		return sess
	}
	sess := login(secret)
	waitValid(t, b, sess, true, "node B does not accept the session of a device node A enrolled")

	next, err := a.RotateDevice(ctx, "dev-1")
	if err != nil {
		t.Fatal(err)
	}
	wantRevoke(t, revokes, identity.RevokeRotated)
	if b.Valid(sess) {
		t.Error("node B still accepts the session of the secret node A rotated")
	}
	fresh := login(next)
	waitValid(t, b, fresh, true, "node B refuses the rotated secret")

	if err := a.RemoveDevice(ctx, "dev-1"); err != nil {
		t.Fatal(err)
	}
	wantRevoke(t, revokes, identity.RevokeRemoved)
	if b.Valid(fresh) {
		t.Error("node B still accepts a session of the device node A removed")
	}
}

func waitValid(t *testing.T, s *identity.Store, sess identity.Session, want bool, msg string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for s.Valid(sess) != want {
		if time.Now().After(deadline) {
			t.Fatal(msg)
		}
		time.Sleep(10 * time.Millisecond) // the change feed is asynchronous: poll Valid
	}
}

func wantRevoke(t *testing.T, ch <-chan identity.Revocation, reason string) {
	t.Helper()
	select {
	case r := <-ch:
		if r.Reason != reason || r.Principal.Name != "dev-1" {
			t.Fatalf("OnRevoke on node B = %s %s, want %s dev-1", r.Reason, r.Principal.Name, reason)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("OnRevoke not called on node B within 10 s (want %s)", reason)
	}
}
