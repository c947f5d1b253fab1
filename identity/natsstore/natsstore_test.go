package natsstore_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/device"

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

// TestCreateInChunksIsAllOrNothing creates 30 device records (each with a
// certificate: three writes) on a Storage whose atomic batches hold at
// most 10 writes, so the Create is ten batches of three records. One
// record is too large for NATS (its label exceeds max_payload), so the
// batch that holds it fails: the batches written before it are deleted
// again, and no record, index entry or certificate binding of the Create
// remains. Without a bad record the same Create stores all 30.
func TestCreateInChunksIsAllOrNothing(t *testing.T) {
	srv := natstest.Start(t)
	js := natstest.JetStream(t, srv.URLs())
	bucket := natstest.BucketNames("identity")
	keyBucket := natstest.BucketNames("identity_key")
	tests := []struct {
		name string
		bad  int // index of the oversized record; -1 for none
	}{
		{"first batch fails", 0},
		{"a middle batch fails", 13},
		{"last batch fails", 29},
		{"no batch fails", -1},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := fmt.Sprint(i)
			st, err := natsstore.Open(t.Context(), natsstore.Config{JetStream: js, Bucket: bucket(dir), KeyBucket: keyBucket(dir), MaxBatch: 10})
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close(context.Background())
			recs := make([]identity.Record, 30)
			for j := range recs {
				recs[j] = identity.Record{Name: fmt.Sprintf("chunk-%02d", j), Role: identity.RoleDevice,
					MAC: []byte("mac"), CertSHA256: fmt.Sprintf("%064x", j+1), CreatedAt: time.Now()}
			}
			if tt.bad >= 0 {
				recs[tt.bad].Labels = map[string]string{"big": strings.Repeat("x", 2<<20)}
			}
			conflicts, err := st.Create(t.Context(), recs, false)
			if len(conflicts) != 0 {
				t.Fatalf("conflicts %+v", conflicts)
			}
			if tt.bad < 0 {
				if err != nil {
					t.Fatalf("Create: %v", err)
				}
				if got := devices(t, st); len(got) != 30 {
					t.Fatalf("stored %d devices, want 30", len(got))
				}
				return
			}
			if err == nil {
				t.Fatal("Create with an oversized record succeeded")
			}
			if got := devices(t, st); len(got) != 0 {
				t.Errorf("after the failed Create the index lists %d devices: %v", len(got), got)
			}
			for _, r := range recs {
				if _, err := st.Get(t.Context(), r.Name); !errors.Is(err, identity.ErrNotFound) {
					t.Errorf("Get %s after the failed Create: %v, want ErrNotFound", r.Name, err)
				}
				if owner, err := st.CertOwner(t.Context(), r.CertSHA256); !errors.Is(err, identity.ErrNotFound) {
					t.Errorf("certificate of %s still bound to %q (%v)", r.Name, owner, err)
				}
			}
			// The names are free again: the same Create without the bad
			// label stores every record.
			recs[tt.bad].Labels = nil
			if _, err := st.Create(t.Context(), recs, false); err != nil {
				t.Fatalf("Create again: %v", err)
			}
			if got := devices(t, st); len(got) != 30 {
				t.Fatalf("stored %d devices on the second Create, want 30", len(got))
			}
		})
	}
}

func devices(t *testing.T, st identity.Storage) []string {
	t.Helper()
	recs, err := st.Devices(t.Context(), "", 1000)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, r := range recs {
		names = append(names, r.Name)
	}
	return names
}

// heldFeed is a Storage whose change feed (NameWatcher) delivers nothing
// until release is closed: a node whose feed lags.
type heldFeed struct {
	*natsstore.Storage
	release chan struct{}
}

func (h *heldFeed) WatchNames(ctx context.Context) (<-chan string, error) {
	names, err := h.Storage.WatchNames(ctx)
	if err != nil {
		return nil, err
	}
	out := make(chan string)
	go func() {
		defer close(out)
		select {
		case <-h.release:
		case <-ctx.Done():
			return
		}
		for name := range names {
			select {
			case out <- name:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out, nil
}

// TestDeviceEnrolledElsewhereIsValidAtOnce: a device enrolled on node A
// logs in on node B before B's change feed told it of the device. Its
// session must be valid at once (Authenticate read the record from the
// storage): before, B's Allow refused it and the server evicted it as
// "stale", so a device connecting right after its enrolment on another
// node (umbra sim --api on one node, --mqtt on others) was disconnected.
// What B learns that way must not hide a later change: a rotation on A
// still ends B's session once the feed delivers it.
func TestDeviceEnrolledElsewhereIsValidAtOnce(t *testing.T) {
	srv := natstest.Start(t)
	open := func(st identity.Storage, onRevoke func(context.Context, identity.Revocation)) *identity.Store {
		s, err := identity.Open(t.Context(), identity.Config{Storage: st, OnRevoke: onRevoke})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close(context.Background()) })
		return s
	}
	storage := func() *natsstore.Storage {
		st, err := natsstore.Open(t.Context(), natsstore.Config{JetStream: natstest.JetStream(t, srv.URLs())})
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	a := open(storage(), nil)
	held := &heldFeed{Storage: storage(), release: make(chan struct{})}
	revokes := make(chan identity.Revocation, 8)
	b := open(held, func(_ context.Context, r identity.Revocation) { revokes <- r })
	ctx := t.Context()

	secret, err := a.EnrollDevice(ctx, identity.Enrollment{ID: "dev-1"})
	if err != nil {
		t.Fatal(err)
	}
	sess, err := b.Authenticate(ctx, identity.Credentials{ClientID: "dev-1", Password: []byte(secret)})
	if err != nil {
		t.Fatalf("log in on node B: %v", err)
	}
	if !b.Valid(sess) {
		t.Fatal("node B refuses the session of a device node A enrolled, until its change feed catches up")
	}

	if _, err := a.RotateDevice(ctx, "dev-1"); err != nil {
		t.Fatal(err)
	}
	close(held.release)
	wantRevoke(t, revokes, identity.RevokeRotated)
	if b.Valid(sess) {
		t.Error("node B still accepts the session of the secret node A rotated")
	}
}

// slowProxy forwards TCP connections to target, holding every chunk of
// bytes for delay in each direction: a NATS link with a round trip of at
// least 2×delay. It stops at cleanup.
func slowProxy(t *testing.T, target string, delay time.Duration) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	pipe := func(dst, src net.Conn) {
		defer dst.Close()
		defer src.Close()
		buf := make([]byte, 64<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				time.Sleep(delay) // the link's latency: there is nothing to wait for
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			t.Cleanup(func() { c.Close(); s.Close() })
			wg.Go(func() { pipe(s, c) })
			wg.Go(func() { pipe(c, s) })
		}
	})
	return "nats://" + ln.Addr().String()
}

// TestSavePresenceTimeoutIsPerRequest saves the presence of 600
// enrolled devices (one atomic batch, each presence conditioned on its
// device's record, which is read first) over a NATS link with a round
// trip of at least 4 ms, with Config.Timeout 1 s. Timeout bounds each
// JetStream request, as Config documents: the 600 reads take 2.4 s or
// more in all, each well within the bound. Before, one timeout covered
// every read and the write of a batch, so the save failed with "context
// deadline exceeded" (seen as "flush presence" errors of three cluster
// nodes holding 10,000 devices in BenchmarkClusterRollout).
func TestSavePresenceTimeoutIsPerRequest(t *testing.T) {
	srv := natstest.Start(t)
	direct, err := natsstore.Open(t.Context(), natsstore.Config{JetStream: natstest.JetStream(t, srv.URLs())})
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close(context.Background())
	const n = 600
	recs := make([]identity.Record, n)
	batch := make(map[device.ID]identity.Presence, n)
	now := time.Now().UTC()
	for i := range recs {
		recs[i] = identity.Record{Name: fmt.Sprintf("pres-%04d", i), Role: identity.RoleDevice, MAC: []byte("mac"), CreatedAt: now}
		batch[device.ID(recs[i].Name)] = identity.Presence{Connected: true, ConnectedAt: now}
	}
	if _, err := direct.Create(t.Context(), recs, false); err != nil {
		t.Fatal(err)
	}
	slow, err := natsstore.Open(t.Context(), natsstore.Config{Timeout: time.Second,
		JetStream: natstest.JetStream(t, []string{slowProxy(t, strings.TrimPrefix(srv.URL(), "nats://"), 2*time.Millisecond)})})
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close(context.Background())
	start := time.Now()
	if err := slow.SavePresence(t.Context(), batch, true); err != nil {
		t.Fatalf("SavePresence of %d devices over a slow link (%v): %v", n, time.Since(start).Round(time.Millisecond), err)
	}
	got, err := direct.Presence(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != n {
		t.Fatalf("%d presences stored, want %d", len(got), n)
	}
	t.Logf("saved %d presences over the slow link in %v", n, time.Since(start).Round(time.Millisecond))
}
