// Package storetest is the contract of identity.Storage as one table of
// cases that every implementation runs (identity/boltstore now, a
// JetStream one in cluster mode):
//
//	func TestContract(t *testing.T) {
//		storetest.Run(t, func(tb testing.TB, dir string) (identity.Storage, func()) { … })
//	}
//
// Each case makes its calls, checking what each returns, closes the
// storage, opens it again and compares everything stored with the state
// the case expects: what a method acknowledged survives a restart.
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/identity"
)

// Opener opens the storage kept in dir (empty at first) and returns it
// with the function that closes it. Run opens a dir again after closing
// it, to check that what a method acknowledged survives.
type Opener func(tb testing.TB, dir string) (st identity.Storage, close func())

// at is a time with nanoseconds, which must survive storage.
var at = time.Date(2026, 11, 23, 10, 0, 0, 123456789, time.UTC)

// Records of the cases.
var (
	dev1 = identity.Record{Name: "dev-1", Role: identity.RoleDevice, MAC: []byte{1, 2, 3}, CreatedAt: at, SecretGen: "s1",
		Labels: map[string]string{"site": "berlin", "umbra.io/zone": "eu-1"}, Enrolment: "e1"}
	dev2 = identity.Record{Name: "dev-2", Role: identity.RoleDevice, MAC: []byte{4}, CreatedAt: at, SecretGen: "s2",
		RotatedAt: at.Add(time.Hour), Enrolment: "e2", CertSHA256: fpA}
	dev3 = identity.Record{Name: "dev-3", Role: identity.RoleDevice, MAC: []byte{5}, CreatedAt: at, SecretGen: "s3", Enrolment: "e3",
		CertSHA256: fpB}
	ops  = identity.Record{Name: "ops", Role: identity.RoleOperator, MAC: []byte{6}, CreatedAt: at, SecretGen: "t1"}
	dash = identity.Record{Name: "dash", Role: identity.RoleIntegrator, MAC: []byte{7}, CreatedAt: at.Add(time.Minute), SecretGen: "t2"}
	// old is a device stored by a version without generations.
	old = identity.Record{Name: "old", Role: identity.RoleDevice, MAC: []byte{8}, CreatedAt: at}

	fpA = strings.Repeat("a", 64)
	fpB = strings.Repeat("b", 64)

	online  = identity.Presence{Connected: true, ConnectedAt: at, RemoteAddr: "192.0.2.1:1883"}
	offline = identity.Presence{ConnectedAt: at, DisconnectedAt: at.Add(time.Minute), DisconnectReason: "connection_lost", RemoteAddr: "192.0.2.1:1883"}
)

// State is everything a storage holds, as read through the interface.
type State struct {
	Key      []byte
	KeyCheck []byte
	Devices  []identity.Record
	Tokens   []identity.Record
	// Certs maps the fingerprint of every device's certificate, and of
	// the fingerprints a case names, to its owner ("" for none).
	Certs map[string]device.ID
	// Removed maps the IDs a case names to when they were last removed
	// (zero: never).
	Removed  map[device.ID]time.Time
	Presence map[device.ID]identity.Presence
}

// call is one step of a case: it calls st and checks what it returns.
type call func(t *testing.T, ctx context.Context, st identity.Storage)

// Run runs the contract of identity.Storage against the storages open
// makes.
func Run(t *testing.T, open Opener) {
	t.Helper()
	tests := []struct {
		name  string
		calls []call
		// probe names the IDs and fingerprints whose removal time and
		// binding State records besides those of the stored devices.
		probe []string
		want  State
	}{
		{name: "empty", probe: []string{"dev-1", fpA}, want: State{}},
		{
			name: "server key: created once, never replaced",
			calls: []call{
				func(t *testing.T, ctx context.Context, st identity.Storage) {
					if _, err := st.ServerKey(ctx); !errors.Is(err, identity.ErrNotFound) {
						t.Errorf("ServerKey before CreateServerKey: got %v, want ErrNotFound", err)
					}
					wantErr(t, "CreateServerKey", st.CreateServerKey(ctx, key(1)), nil)
					wantErr(t, "CreateServerKey again", st.CreateServerKey(ctx, key(2)), identity.ErrExists)
				},
			},
			want: State{Key: key(1)},
		},
		{
			name: "key check: set once, never replaced",
			calls: []call{
				func(t *testing.T, ctx context.Context, st identity.Storage) {
					wantErr(t, "SetKeyCheck", st.SetKeyCheck(ctx, []byte("check-1")), nil)
					wantErr(t, "SetKeyCheck again", st.SetKeyCheck(ctx, []byte("check-2")), identity.ErrExists)
				},
			},
			want: State{KeyCheck: []byte("check-1")},
		},
		{
			name: "create devices and tokens in one call; read them back",
			calls: []call{
				create(nil, dev2, ops, dev1, dash),
				func(t *testing.T, ctx context.Context, st identity.Storage) {
					for _, want := range []identity.Record{dev1, dev2, ops, dash} {
						got, err := st.Get(ctx, want.Name)
						if err != nil || !equal(got, want) {
							t.Errorf("Get(%s) = %s, %v; want %s", want.Name, show(got), err, show(want))
						}
					}
					for _, name := range []string{"dev-9", "", "a/b", "dev-1/x", "*", strings.Repeat("x", 2000), "DEV-1"} {
						if got, err := st.Get(ctx, name); !errors.Is(err, identity.ErrNotFound) {
							t.Errorf("Get(%.20q) = %s, %v; want ErrNotFound", name, show(got), err)
						}
					}
					if _, err := st.CertOwner(ctx, fpB); !errors.Is(err, identity.ErrNotFound) {
						t.Errorf("CertOwner(unbound) = %v, want ErrNotFound", err)
					}
				},
			},
			probe: []string{fpB},
			want:  State{Devices: []identity.Record{dev1, dev2}, Tokens: []identity.Record{dash, ops}, Certs: map[string]device.ID{fpA: "dev-2", fpB: ""}},
		},
		{
			name: "a name taken or a certificate bound stores nothing of the call",
			calls: []call{
				create(nil, dev1, ops, dev2),
				create([]identity.Conflict{
					{Index: 1, Taken: identity.RoleDevice},
					{Index: 2, Taken: identity.RoleOperator},
					{Index: 3, BoundTo: "dev-2"},
				}, dash, // free
					identity.Record{Name: "dev-1", Role: identity.RoleOperator, MAC: []byte{9}, SecretGen: "x"},                 // a device's name, as a token
					identity.Record{Name: "ops", Role: identity.RoleDevice, MAC: []byte{9}, SecretGen: "x", Enrolment: "x"},     // a token's name, as a device
					identity.Record{Name: "dev-4", Role: identity.RoleDevice, MAC: []byte{9}, SecretGen: "x", CertSHA256: fpA}), // a bound certificate
			},
			want: State{Devices: []identity.Record{dev1, dev2}, Tokens: []identity.Record{ops}, Certs: map[string]device.ID{fpA: "dev-2"}},
		},
		{
			name: "one record with its name taken and its certificate bound: one conflict",
			calls: []call{
				create(nil, dev2),
				create([]identity.Conflict{{Index: 0, Taken: identity.RoleDevice, BoundTo: "dev-2"}},
					identity.Record{Name: "dev-2", Role: identity.RoleDevice, CertSHA256: fpA}),
			},
			want: State{Devices: []identity.Record{dev2}, Certs: map[string]device.ID{fpA: "dev-2"}},
		},
		{
			name: "a dry run reports conflicts and stores nothing",
			calls: []call{
				create(nil, dev1),
				dryRun([]identity.Conflict{{Index: 1, Taken: identity.RoleDevice}}, dev2, dev1),
				dryRun(nil, dev3, ops),
				// Names that are no device ID are checked, not refused.
				dryRun(nil, identity.Record{Name: "a/b", Role: identity.RoleDevice}, identity.Record{Name: "", Role: identity.RoleDevice},
					identity.Record{Name: strings.Repeat("x", 2000), Role: identity.RoleDevice}),
			},
			probe: []string{fpA, fpB},
			want:  State{Devices: []identity.Record{dev1}, Certs: map[string]device.ID{fpA: "", fpB: ""}},
		},
		{
			name: "a name or certificate twice in one call is refused",
			calls: []call{
				func(t *testing.T, ctx context.Context, st identity.Storage) {
					twice := dev3
					twice.Name = "dev-4"
					for _, recs := range [][]identity.Record{{dev1, dev1}, {dev1, {Name: "dev-1", Role: identity.RoleOperator}}, {dev3, twice}} {
						for _, dry := range []bool{false, true} {
							if _, err := st.Create(ctx, recs, dry); err == nil {
								t.Errorf("Create(%s, dry run %t): got nil error", names(recs), dry)
							}
						}
					}
				},
			},
			probe: []string{fpB},
			want:  State{Certs: map[string]device.ID{fpB: ""}},
		},
		{
			name: "replace compares the generations and sets",
			calls: []call{
				create(nil, dev1, ops, dev2),
				func(t *testing.T, ctx context.Context, st identity.Storage) {
					rotated := dev1
					rotated.MAC, rotated.SecretGen, rotated.RotatedAt = []byte{10}, "s1b", at.Add(2*time.Hour)
					wantErr(t, "Replace", st.Replace(ctx, dev1, rotated), nil)
					stale := dev1
					stale.MAC, stale.SecretGen = []byte{11}, "s1c"
					wantErr(t, "Replace of a stale record", st.Replace(ctx, dev1, stale), identity.ErrConflict)
					reenrolled := rotated
					reenrolled.Enrolment = "other"
					wantErr(t, "Replace with another enrolment", st.Replace(ctx, reenrolled, stale), identity.ErrConflict)

					op2 := ops
					op2.Role, op2.MAC, op2.SecretGen = identity.RoleIntegrator, []byte{12}, "t1b"
					wantErr(t, "Replace of a token, with another role", st.Replace(ctx, ops, op2), nil)

					missing := dev3
					wantErr(t, "Replace of a missing device", st.Replace(ctx, missing, missing), identity.ErrNotFound)
					asToken := ops
					asToken.Name = "dev-2"
					asToken.SecretGen = dev2.SecretGen
					wantErr(t, "Replace of a device as a token", st.Replace(ctx, asToken, asToken), identity.ErrNotFound)
					rebound := dev2
					rebound.CertSHA256 = fpB
					if err := st.Replace(ctx, dev2, rebound); err == nil {
						t.Error("Replace changing the certificate binding: got nil error")
					}
				},
			},
			probe: []string{fpB},
			want: State{
				Devices: []identity.Record{
					func() identity.Record {
						r := dev1
						r.MAC, r.SecretGen, r.RotatedAt = []byte{10}, "s1b", at.Add(2*time.Hour)
						return r
					}(), dev2},
				Tokens: []identity.Record{{Name: "ops", Role: identity.RoleIntegrator, MAC: []byte{12}, CreatedAt: at, SecretGen: "t1b"}},
				Certs:  map[string]device.ID{fpA: "dev-2", fpB: ""},
			},
		},
		{
			name: "replace gives a record of an earlier version its generations",
			calls: []call{
				create(nil, old),
				func(t *testing.T, ctx context.Context, st identity.Storage) {
					got, err := st.Get(ctx, "old")
					if err != nil || got.SecretGen != "" || got.Enrolment != "" {
						t.Fatalf("Get(old) = %s, %v; want no generations", show(got), err)
					}
					next := got
					next.SecretGen, next.Enrolment = "g1", "g2"
					wantErr(t, "Replace", st.Replace(ctx, got, next), nil)
				},
			},
			want: State{Devices: []identity.Record{func() identity.Record { r := old; r.SecretGen, r.Enrolment = "g1", "g2"; return r }()}},
		},
		{
			name: "remove a device: record, binding and presence go, the time stays",
			calls: []call{
				create(nil, dev1, dev2, ops),
				savePresence(map[device.ID]identity.Presence{"dev-1": online, "dev-2": offline}, true),
				func(t *testing.T, ctx context.Context, st identity.Storage) {
					got, err := st.RemoveDevice(ctx, "dev-2", at.Add(3*time.Hour))
					if err != nil || !equal(got, dev2) {
						t.Errorf("RemoveDevice(dev-2) = %s, %v; want %s", show(got), err, show(dev2))
					}
					if _, err := st.RemoveDevice(ctx, "dev-2", at); !errors.Is(err, identity.ErrNotFound) {
						t.Errorf("RemoveDevice(dev-2) again: got %v, want ErrNotFound", err)
					}
					if _, err := st.RemoveDevice(ctx, "ops", at); !errors.Is(err, identity.ErrNotFound) {
						t.Errorf("RemoveDevice(token): got %v, want ErrNotFound", err)
					}
				},
				// The freed certificate may be bound again.
				create(nil, identity.Record{Name: "dev-5", Role: identity.RoleDevice, MAC: []byte{1}, CreatedAt: at, SecretGen: "x", Enrolment: "y", CertSHA256: fpA}),
			},
			probe: []string{"dev-1", "dev-2", "ops"},
			want: State{
				Devices:  []identity.Record{dev1, {Name: "dev-5", Role: identity.RoleDevice, MAC: []byte{1}, CreatedAt: at, SecretGen: "x", Enrolment: "y", CertSHA256: fpA}},
				Tokens:   []identity.Record{ops},
				Certs:    map[string]device.ID{fpA: "dev-5"},
				Removed:  map[device.ID]time.Time{"dev-2": at.Add(3 * time.Hour)},
				Presence: map[device.ID]identity.Presence{"dev-1": online},
			},
		},
		{
			name: "delete a token",
			calls: []call{
				create(nil, dev1, ops, dash),
				func(t *testing.T, ctx context.Context, st identity.Storage) {
					got, err := st.DeleteToken(ctx, "ops")
					if err != nil || !equal(got, ops) {
						t.Errorf("DeleteToken(ops) = %s, %v; want %s", show(got), err, show(ops))
					}
					if _, err := st.DeleteToken(ctx, "ops"); !errors.Is(err, identity.ErrNotFound) {
						t.Errorf("DeleteToken(ops) again: got %v, want ErrNotFound", err)
					}
					if _, err := st.DeleteToken(ctx, "dev-1"); !errors.Is(err, identity.ErrNotFound) {
						t.Errorf("DeleteToken(device): got %v, want ErrNotFound", err)
					}
				},
			},
			want: State{Devices: []identity.Record{dev1}, Tokens: []identity.Record{dash}},
		},
		{
			name: "scans are ordered and resume after a cursor",
			calls: []call{
				create(nil, named(dev1, "b"), named(dev1, "a"), named(dev1, "a-1"), named(dev1, "B"), named(dev1, "c"),
					named(ops, "t2"), named(ops, "t1"), named(ops, "t3")),
				func(t *testing.T, ctx context.Context, st identity.Storage) {
					scans := []struct {
						devices bool
						after   string
						limit   int
						want    string
					}{
						{true, "", 2, "B,a"},
						{true, "a", 2, "a-1,b"},
						{true, "a-0", 10, "a-1,b,c"}, // after a name that is not stored
						{true, "b", 1, "c"},
						{true, "c", 5, ""},
						{true, "zzz", 5, ""},
						{false, "", 2, "t1,t2"},
						{false, "t2", 2, "t3"},
						{false, "t3", 2, ""},
					}
					for _, sc := range scans {
						var page []identity.Record
						var err error
						if sc.devices {
							page, err = st.Devices(ctx, device.ID(sc.after), sc.limit)
						} else {
							page, err = st.Tokens(ctx, sc.after, sc.limit)
						}
						if got := names(page); err != nil || got != sc.want {
							t.Errorf("scan (devices %t) after %q, limit %d: got %q, %v; want %q", sc.devices, sc.after, sc.limit, got, err, sc.want)
						}
					}
				},
			},
			want: State{
				Devices: []identity.Record{named(dev1, "B"), named(dev1, "a"), named(dev1, "a-1"), named(dev1, "b"), named(dev1, "c")},
				Tokens:  []identity.Record{named(ops, "t1"), named(ops, "t2"), named(ops, "t3")},
			},
		},
		{
			name: "presence: saved in batches, enrolled devices only when asked",
			calls: []call{
				create(nil, dev1, dev2),
				savePresence(map[device.ID]identity.Presence{"dev-1": online, "ghost": online}, true),
				savePresence(map[device.ID]identity.Presence{"dev-1": offline, "dev-2": online}, true),
				savePresence(map[device.ID]identity.Presence{"anon-1": online}, false),
				savePresence(nil, true),
			},
			want: State{
				Devices:  []identity.Record{dev1, dev2},
				Certs:    map[string]device.ID{fpA: "dev-2"},
				Presence: map[device.ID]identity.Presence{"dev-1": offline, "dev-2": online, "anon-1": online},
			},
		},
		{
			name: "records returned share no memory with the storage",
			calls: []call{
				create(nil, clone(dev1)),
				func(t *testing.T, ctx context.Context, st identity.Storage) {
					got, err := st.Get(ctx, "dev-1")
					if err != nil {
						t.Fatal(err)
					}
					got.MAC[0]++
					got.Labels["site"] = "changed"
					page, err := st.Devices(ctx, "", 10)
					if err != nil || len(page) != 1 {
						t.Fatalf("Devices = %s, %v", names(page), err)
					}
					page[0].MAC[0]++
					page[0].Labels["new"] = "x"
				},
			},
			want: State{Devices: []identity.Record{dev1}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			st, closeStorage := open(t, dir)
			for _, c := range tc.calls {
				c(t, t.Context(), st)
			}
			closeStorage()
			st, closeStorage = open(t, dir)
			defer closeStorage()
			got := load(t, st, tc.probe)
			want := tc.want
			fill(&want, tc.probe)
			if g, w := describe(got), describe(want); g != w {
				t.Errorf("after reopening:\ngot  %s\nwant %s", g, w)
			}
		})
	}

	t.Run("concurrent replaces of one record: one wins", func(t *testing.T) {
		st, closeStorage := open(t, t.TempDir())
		defer closeStorage()
		create(nil, dev1)(t, t.Context(), st)
		const n = 8
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				next := dev1
				next.SecretGen = fmt.Sprintf("s1-%d", i)
				errs[i] = st.Replace(t.Context(), dev1, next)
			})
		}
		wg.Wait()
		var won int
		for i, err := range errs {
			switch {
			case err == nil:
				won++
			case !errors.Is(err, identity.ErrConflict):
				t.Errorf("Replace #%d: got %v, want nil or ErrConflict", i, err)
			}
		}
		if won != 1 {
			t.Errorf("%d of %d concurrent Replaces of one record succeeded, want 1", won, n)
		}
	})

	t.Run("canceled context: nothing starts", func(t *testing.T) {
		dir := t.TempDir()
		st, closeStorage := open(t, dir)
		create(nil, dev1, ops)(t, t.Context(), st)
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		calls := map[string]func() error{
			"ServerKey":       func() error { _, err := st.ServerKey(ctx); return err },
			"CreateServerKey": func() error { return st.CreateServerKey(ctx, key(1)) },
			"KeyCheck":        func() error { _, err := st.KeyCheck(ctx); return err },
			"SetKeyCheck":     func() error { return st.SetKeyCheck(ctx, []byte("c")) },
			"Get":             func() error { _, err := st.Get(ctx, "dev-1"); return err },
			"Devices":         func() error { _, err := st.Devices(ctx, "", 10); return err },
			"Tokens":          func() error { _, err := st.Tokens(ctx, "", 10); return err },
			"CertOwner":       func() error { _, err := st.CertOwner(ctx, fpA); return err },
			"RemovedAt":       func() error { _, err := st.RemovedAt(ctx, "dev-1"); return err },
			"Create":          func() error { _, err := st.Create(ctx, []identity.Record{dev2}, false); return err },
			"Replace":         func() error { n := dev1; n.SecretGen = "z"; return st.Replace(ctx, dev1, n) },
			"RemoveDevice":    func() error { _, err := st.RemoveDevice(ctx, "dev-1", at); return err },
			"DeleteToken":     func() error { _, err := st.DeleteToken(ctx, "ops"); return err },
			"Presence":        func() error { _, err := st.Presence(ctx); return err },
			"SavePresence": func() error {
				return st.SavePresence(ctx, map[device.ID]identity.Presence{"dev-1": online}, true)
			},
		}
		for _, name := range slices.Sorted(maps.Keys(calls)) {
			if err := calls[name](); !errors.Is(err, context.Canceled) {
				t.Errorf("%s with a canceled context: got %v, want context.Canceled", name, err)
			}
		}
		closeStorage()
		st, closeStorage = open(t, dir)
		defer closeStorage()
		want := State{Devices: []identity.Record{dev1}, Tokens: []identity.Record{ops}}
		fill(&want, []string{"dev-1"})
		if g, w := describe(load(t, st, []string{"dev-1"})), describe(want); g != w {
			t.Errorf("after canceled calls:\ngot  %s\nwant %s", g, w)
		}
	})

	t.Run("closed", func(t *testing.T) {
		st, closeStorage := open(t, t.TempDir())
		closeStorage()
		ctx := t.Context()
		if _, err := st.Get(ctx, "dev-1"); !errors.Is(err, identity.ErrClosed) {
			t.Errorf("Get after close: got %v, want ErrClosed", err)
		}
		if _, err := st.Create(ctx, []identity.Record{dev1}, false); !errors.Is(err, identity.ErrClosed) {
			t.Errorf("Create after close: got %v, want ErrClosed", err)
		}
		if err := st.SavePresence(ctx, map[device.ID]identity.Presence{"dev-1": online}, false); !errors.Is(err, identity.ErrClosed) {
			t.Errorf("SavePresence after close: got %v, want ErrClosed", err)
		}
	})
}

// key returns a server key of 32 bytes b.
func key(b byte) []byte { return bytes.Repeat([]byte{b}, identity.KeySize) }

func named(r identity.Record, name string) identity.Record {
	r.Name = name
	return r
}

func clone(r identity.Record) identity.Record {
	r.MAC = bytes.Clone(r.MAC)
	r.Labels = maps.Clone(r.Labels)
	return r
}

// create calls Create with recs and checks it returns want.
func create(want []identity.Conflict, recs ...identity.Record) call {
	return createCall(want, false, recs)
}

// dryRun calls Create with recs in a dry run and checks it returns want.
func dryRun(want []identity.Conflict, recs ...identity.Record) call {
	return createCall(want, true, recs)
}

func createCall(want []identity.Conflict, dry bool, recs []identity.Record) call {
	return func(t *testing.T, ctx context.Context, st identity.Storage) {
		t.Helper()
		got, err := st.Create(ctx, recs, dry)
		slices.SortFunc(got, func(a, b identity.Conflict) int { return a.Index - b.Index })
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("Create(%s, dry run %t) = %+v, %v; want %+v", names(recs), dry, got, err, want)
		}
	}
}

func savePresence(batch map[device.ID]identity.Presence, enrolledOnly bool) call {
	return func(t *testing.T, ctx context.Context, st identity.Storage) {
		t.Helper()
		if err := st.SavePresence(ctx, batch, enrolledOnly); err != nil {
			t.Errorf("SavePresence: %v", err)
		}
	}
}

func wantErr(t *testing.T, what string, err, want error) {
	t.Helper()
	if want == nil && err != nil || want != nil && !errors.Is(err, want) {
		t.Errorf("%s: got %v, want %v", what, err, want)
	}
}

// load reads everything st holds, with the removal times and bindings of
// probe.
func load(t *testing.T, st identity.Storage, probe []string) State {
	t.Helper()
	ctx := t.Context()
	var s State
	var err error
	if s.Key, err = st.ServerKey(ctx); err != nil && !errors.Is(err, identity.ErrNotFound) {
		t.Fatalf("ServerKey: %v", err)
	}
	if s.KeyCheck, err = st.KeyCheck(ctx); err != nil {
		t.Fatalf("KeyCheck: %v", err)
	}
	// Pages of 2 exercise the cursor.
	s.Devices = scanAll(t, "Devices", func(after string) ([]identity.Record, error) {
		return st.Devices(ctx, device.ID(after), 2)
	})
	s.Tokens = scanAll(t, "Tokens", func(after string) ([]identity.Record, error) { return st.Tokens(ctx, after, 2) })
	s.Certs = map[string]device.ID{}
	s.Removed = map[device.ID]time.Time{}
	fps := probe
	for _, d := range s.Devices {
		if d.CertSHA256 != "" {
			fps = append(fps, d.CertSHA256)
		}
	}
	for _, fp := range fps {
		if len(fp) != 64 {
			continue
		}
		id, err := st.CertOwner(ctx, fp)
		if err != nil && !errors.Is(err, identity.ErrNotFound) {
			t.Fatalf("CertOwner(%s): %v", fp, err)
		}
		s.Certs[fp] = id
	}
	for _, id := range probe {
		if len(id) == 64 {
			continue
		}
		if s.Removed[device.ID(id)], err = st.RemovedAt(ctx, device.ID(id)); err != nil {
			t.Fatalf("RemovedAt(%s): %v", id, err)
		}
	}
	if s.Presence, err = st.Presence(ctx); err != nil {
		t.Fatalf("Presence: %v", err)
	}
	return s
}

// scanAll reads every record of a scan, page after page.
func scanAll(t *testing.T, what string, page func(after string) ([]identity.Record, error)) []identity.Record {
	t.Helper()
	var all []identity.Record
	for after := ""; ; {
		recs, err := page(after)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if len(recs) == 0 {
			return all
		}
		all = append(all, recs...)
		after = recs[len(recs)-1].Name
	}
}

// fill completes a case's want with what load reports for probe.
func fill(s *State, probe []string) {
	if s.Certs == nil {
		s.Certs = map[string]device.ID{}
	}
	if s.Removed == nil {
		s.Removed = map[device.ID]time.Time{}
	}
	if s.Presence == nil {
		s.Presence = map[device.ID]identity.Presence{}
	}
	for _, p := range probe {
		if len(p) == 64 {
			if _, ok := s.Certs[p]; !ok {
				s.Certs[p] = ""
			}
		} else if _, ok := s.Removed[device.ID(p)]; !ok {
			s.Removed[device.ID(p)] = time.Time{}
		}
	}
}

func describe(s State) string {
	var b strings.Builder
	fmt.Fprintf(&b, "key %x check %q\n", s.Key, s.KeyCheck)
	for _, r := range s.Devices {
		fmt.Fprintf(&b, "device %s\n", show(r))
	}
	for _, r := range s.Tokens {
		fmt.Fprintf(&b, "token %s\n", show(r))
	}
	for _, fp := range slices.Sorted(maps.Keys(s.Certs)) {
		fmt.Fprintf(&b, "cert %.8s… → %q\n", fp, s.Certs[fp])
	}
	for _, id := range slices.Sorted(maps.Keys(s.Removed)) {
		fmt.Fprintf(&b, "removed %s at %s\n", id, s.Removed[id].UTC().Format(time.RFC3339Nano))
	}
	for _, id := range slices.Sorted(maps.Keys(s.Presence)) {
		p := s.Presence[id]
		fmt.Fprintf(&b, "presence %s %t %s %s %q %q\n", id, p.Connected, p.ConnectedAt.UTC().Format(time.RFC3339Nano),
			p.DisconnectedAt.UTC().Format(time.RFC3339Nano), p.DisconnectReason, p.RemoteAddr)
	}
	return b.String()
}

// show formats r with its times in UTC, for comparisons and messages.
func show(r identity.Record) string {
	labels := slices.Sorted(maps.Keys(r.Labels))
	for i, k := range labels {
		labels[i] = k + "=" + r.Labels[k]
	}
	return fmt.Sprintf("{%s %s mac %x created %s secret %q labels [%s] rotated %s enrolment %q cert %.8q}",
		r.Name, r.Role, r.MAC, r.CreatedAt.UTC().Format(time.RFC3339Nano), r.SecretGen, strings.Join(labels, " "),
		r.RotatedAt.UTC().Format(time.RFC3339Nano), r.Enrolment, r.CertSHA256)
}

func equal(a, b identity.Record) bool { return show(a) == show(b) }

func names(recs []identity.Record) string {
	var s []string
	for _, r := range recs {
		s = append(s, r.Name)
	}
	return strings.Join(s, ",")
}
