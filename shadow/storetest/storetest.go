// Package storetest is the contract of shadow.Store as one test suite, run
// by every adapter's tests (shadow/boltstore now, a JetStream KV store in
// cluster mode): the same table of cases for each.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/shadow"
)

// Opener opens the shadow.Store kept in dir (empty at first). Contract
// closes every store it opens, and opens a dir again after closing it, to
// check that what Commit acknowledged survives.
type Opener func(tb testing.TB, dir string) Store

// Store is a shadow.Store with the Close its opener calls (the engine
// never closes its store): Close drains or refuses the pending writes and
// releases the Store, bounded by ctx, and is idempotent; Commit fails with
// ErrClosed after it.
type Store interface {
	shadow.Store
	Close(ctx context.Context) error
}

// revOf says which revision a write of a case expects.
type revOf int

const (
	current  revOf = iota // the key's revision, read just before the Commit
	none                  // 0: the key must have no record
	previous              // the revision the key had before its last change: stale
)

// wr is one write of a case; an empty value deletes.
type wr struct {
	key   shadow.Key
	value string
	rev   revOf
}

// call is one Commit of a case and the error it must wrap (nil: success).
type call struct {
	writes []wr
	err    error
}

func classic(id device.ID) shadow.Key { return shadow.Key{Device: id} }

func named(id device.ID, n shadow.Name) shadow.Key { return shadow.Key{Device: id, Name: n} }

func put(k shadow.Key, v string) wr { return wr{key: k, value: v} }

// Contract runs the contract of shadow.Store (see its documentation)
// against the stores open makes.
func Contract(t *testing.T, open Opener) {
	t.Helper()
	d1, d2, d10 := classic("d1"), classic("d2"), classic("d10")
	cfg, fw := named("d1", "cfg"), named("d1", "fw")
	// A JSON document as the engine writes it, kept byte for byte
	// (numbers as written, key order, no re-encoding).
	doc := `{"state":{"reported":{"n":1e3,"x":2.50}},"metadata":{},"version":7,"updated":1700000000000}`

	tests := []struct {
		name  string
		calls []call
		want  map[shadow.Key]string
		// prefix, when set, is the other state allowed: a store without
		// transactions across keys may leave the prefix of a failed call.
		prefix map[shadow.Key]string
	}{
		{name: "empty"},
		{
			name:  "put and replace, bytes kept as written",
			calls: []call{{writes: []wr{put(d1, "a")}}, {writes: []wr{put(d1, doc)}}},
			want:  map[shadow.Key]string{d1: doc},
		},
		{
			name:  "classic and named shadows are distinct",
			calls: []call{{writes: []wr{put(d1, "classic"), put(cfg, "named")}}, {writes: []wr{put(fw, "fw")}}},
			want:  map[shadow.Key]string{d1: "classic", cfg: "named", fw: "fw"},
		},
		{
			name:  "delete",
			calls: []call{{writes: []wr{put(d1, "a"), put(cfg, "b")}}, {writes: []wr{put(d1, ""), put(cfg, "")}}},
			want:  map[shadow.Key]string{},
		},
		{
			name: "create over an existing record is refused",
			calls: []call{
				{writes: []wr{put(d1, "a")}},
				{writes: []wr{{key: d1, value: "b", rev: none}}, err: shadow.ErrRevisionMismatch},
			},
			want: map[shadow.Key]string{d1: "a"},
		},
		{
			name: "stale revision is refused",
			calls: []call{
				{writes: []wr{put(d1, "a")}},
				{writes: []wr{put(d1, "b")}},
				{writes: []wr{{key: d1, value: "c", rev: previous}}, err: shadow.ErrRevisionMismatch},
			},
			want: map[shadow.Key]string{d1: "b"},
		},
		{
			name: "stale delete is refused",
			calls: []call{
				{writes: []wr{put(cfg, "a")}},
				{writes: []wr{put(cfg, "b")}},
				{writes: []wr{{key: cfg, rev: previous}}, err: shadow.ErrRevisionMismatch},
			},
			want: map[shadow.Key]string{cfg: "b"},
		},
		{
			name: "revision of a deleted record is stale",
			calls: []call{
				{writes: []wr{put(d1, "a")}},
				{writes: []wr{put(d1, "")}},
				{writes: []wr{{key: d1, value: "b", rev: previous}}, err: shadow.ErrRevisionMismatch},
			},
			want: map[shadow.Key]string{},
		},
		{
			name: "rewriting identical bytes keeps working",
			calls: []call{
				{writes: []wr{put(d1, "a")}},
				{writes: []wr{put(d1, "a")}},
				{writes: []wr{put(d1, "b")}},
			},
			want: map[shadow.Key]string{d1: "b"},
		},
		{
			name: "a call is all or nothing",
			calls: []call{
				{writes: []wr{put(d1, "a")}},
				{writes: []wr{put(d1, "b")}},
				{writes: []wr{{key: fw, rev: none, value: "new"}, put(d2, "new"), {key: d1, value: "c", rev: previous}}, err: shadow.ErrRevisionMismatch},
			},
			want:   map[shadow.Key]string{d1: "b"},
			prefix: map[shadow.Key]string{d1: "b", fw: "new", d2: "new"},
		},
		{
			name: "a refused call leaves the next one alone",
			calls: []call{
				{writes: []wr{put(d1, "a")}},
				{writes: []wr{put(d1, "b")}},
				{writes: []wr{{key: d1, value: "x", rev: previous}}, err: shadow.ErrRevisionMismatch},
				{writes: []wr{put(d1, "c"), put(d10, "d")}},
			},
			want: map[shadow.Key]string{d1: "c", d10: "d"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			s := open(t, dir)
			hist := map[shadow.Key]shadow.Rev{} // revision before the last change
			for i, c := range tc.calls {
				ws := make([]shadow.Write, len(c.writes))
				cur := map[shadow.Key]shadow.Rev{}
				for j, w := range c.writes {
					rec := get(t, s, w.key)
					cur[w.key] = rec.Rev
					ws[j] = shadow.Write{Key: w.key, Rev: rec.Rev}
					switch w.rev {
					case none:
						ws[j].Rev = 0
					case previous:
						ws[j].Rev = hist[w.key]
					}
					if w.value != "" {
						ws[j].Value = []byte(w.value)
					}
				}
				err := s.Commit(t.Context(), ws...)
				if c.err == nil && err != nil || c.err != nil && !errors.Is(err, c.err) {
					t.Fatalf("call %d: Commit = %v, want %v", i, err, c.err)
				}
				if err == nil {
					for k, r := range cur {
						hist[k] = r
					}
				}
			}
			state := checkState(t, s, tc.want, tc.prefix)
			mustClose(t, s)
			s = open(t, dir)
			defer mustClose(t, s)
			if got := checkState(t, s, state, nil); !maps.Equal(got, state) {
				t.Errorf("after reopen: %v, want %v", got, state)
			}
		})
	}

	t.Run("scans follow byte order and stop when told", func(t *testing.T) {
		s := open(t, t.TempDir())
		defer mustClose(t, s)
		ids := []device.ID{"d.3", "d-10", "d-2", "d", "d-1x"}
		var ws []shadow.Write
		for _, id := range ids {
			ws = append(ws, shadow.Write{Key: classic(id), Value: []byte("c" + id)})
		}
		for _, k := range []shadow.Key{named("d-2", "z"), named("d-2", "a"), named("d-1x", "m"), named("d", "b"), named("d-1", "q")} {
			ws = append(ws, shadow.Write{Key: k, Value: []byte("n" + k.String())})
		}
		if err := s.Commit(t.Context(), ws...); err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			after device.ID
			stop  int
			want  []device.ID
		}{
			{"", 0, []device.ID{"d", "d-10", "d-1x", "d-2", "d.3"}},
			{"d-10", 0, []device.ID{"d-1x", "d-2", "d.3"}},
			{"d-1", 0, []device.ID{"d-10", "d-1x", "d-2", "d.3"}}, // a cursor need not exist
			{"d.3", 0, nil},
			{"", 2, []device.ID{"d", "d-10"}},
		} {
			var got []device.ID
			err := s.Scan(t.Context(), tc.after, func(id device.ID, rec shadow.Record) bool {
				if string(rec.Value) != "c"+string(id) || rec.Rev == 0 {
					t.Errorf("Scan: %s = %q rev %d", id, rec.Value, rec.Rev)
				}
				got = append(got, id)
				return tc.stop == 0 || len(got) < tc.stop
			})
			if err != nil || !slices.Equal(got, tc.want) {
				t.Errorf("Scan(after %q, stop %d) = %v, %v; want %v", tc.after, tc.stop, got, err, tc.want)
			}
		}
		for _, tc := range []struct {
			id   device.ID
			stop int
			want []string
		}{
			{"", 0, []string{"d-1/q", "d-1x/m", "d-2/a", "d-2/z", "d/b"}}, // any order: compared sorted
			{"d-2", 0, []string{"d-2/a", "d-2/z"}},
			{"d-1", 0, []string{"d-1/q"}}, // not d-1x's
			{"d-10", 0, nil},
			{"d-2", 1, []string{"d-2/a"}},
		} {
			var got []string
			err := s.ScanNamed(t.Context(), tc.id, func(k shadow.Key, rec shadow.Record) bool {
				if string(rec.Value) != "n"+k.String() || rec.Rev == 0 {
					t.Errorf("ScanNamed: %s = %q rev %d", k, rec.Value, rec.Rev)
				}
				got = append(got, k.String())
				return tc.stop == 0 || len(got) < tc.stop
			})
			if tc.id == "" {
				slices.Sort(got)
			}
			if err != nil || !slices.Equal(got, tc.want) {
				t.Errorf("ScanNamed(%q, stop %d) = %v, %v; want %v", tc.id, tc.stop, got, err, tc.want)
			}
		}
	})

	t.Run("revisions", func(t *testing.T) {
		s := open(t, t.TempDir())
		defer mustClose(t, s)
		if rec := get(t, s, d1); rec.Rev != 0 || rec.Value != nil {
			t.Fatalf("Get of a missing record = %+v, want the zero Record", rec)
		}
		seen := map[shadow.Rev]string{}
		for _, v := range []string{"a", "b", "c"} {
			if err := s.Commit(t.Context(), shadow.Write{Key: d1, Value: []byte(v), Rev: get(t, s, d1).Rev}); err != nil {
				t.Fatal(err)
			}
			rec := get(t, s, d1)
			if rec.Rev == 0 || seen[rec.Rev] != "" {
				t.Fatalf("revision %d of %q: zero or also that of %q", rec.Rev, v, seen[rec.Rev])
			}
			seen[rec.Rev] = v
			rec.Value[0] = 'X' // the caller's to keep: the store is unaffected
			if again := get(t, s, d1); string(again.Value) != v || again.Rev != rec.Rev {
				t.Fatalf("Get after changing the returned bytes = %q rev %d, want %q rev %d", again.Value, again.Rev, v, rec.Rev)
			}
		}
	})

	t.Run("concurrent commits are all durable", func(t *testing.T) {
		dir := t.TempDir()
		s := open(t, dir)
		const writers, each = 32, 8
		var wg sync.WaitGroup
		errs := make(chan error, writers*each)
		for g := range writers {
			wg.Go(func() {
				for i := range each {
					k := classic(device.ID(fmt.Sprintf("w%02d-%d", g, i)))
					errs <- s.Commit(t.Context(), shadow.Write{Key: k, Value: []byte(k.String())}, shadow.Write{Key: named(k.Device, "n"), Value: []byte("n")})
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatalf("Commit: %v", err)
			}
		}
		mustClose(t, s)
		s = open(t, dir)
		defer mustClose(t, s)
		n := 0
		if err := s.Scan(t.Context(), "", func(id device.ID, rec shadow.Record) bool { n++; return string(rec.Value) == string(id) }); err != nil || n != writers*each {
			t.Errorf("after reopen: %d of %d records (%v)", n, writers*each, err)
		}
	})

	for _, cancelled := range []bool{false, true} {
		t.Run(fmt.Sprintf("close drains or refuses (ctx cancelled %v)", cancelled), func(t *testing.T) {
			dir := t.TempDir()
			s := open(t, dir)
			const writers = 64
			outcomes := make([]error, writers)
			var started, wg sync.WaitGroup
			started.Add(writers)
			for i := range writers {
				wg.Go(func() {
					started.Done()
					outcomes[i] = s.Commit(context.Background(), shadow.Write{Key: classic(device.ID(fmt.Sprintf("c%02d", i))), Value: []byte("v")})
				})
			}
			started.Wait()
			ctx, cancel := context.WithCancel(t.Context())
			if cancelled {
				cancel()
			}
			start := time.Now()
			err := s.Close(ctx)
			cancel()
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("Close took %v", d)
			}
			wg.Wait()
			if err != nil && !errors.Is(err, context.Canceled) {
				t.Errorf("Close = %v, want nil or context.Canceled", err)
			}
			if !cancelled && err != nil {
				t.Errorf("Close with a live ctx = %v, want nil", err)
			}
			s = open(t, dir)
			defer mustClose(t, s)
			for i, o := range outcomes {
				rec := get(t, s, classic(device.ID(fmt.Sprintf("c%02d", i))))
				switch {
				case o == nil && rec.Rev == 0:
					t.Errorf("writer %d: acknowledged, not on disk", i)
				case o != nil && !errors.Is(o, shadow.ErrClosed):
					t.Errorf("writer %d: Commit = %v, want nil or ErrClosed", i, o)
				case o != nil && rec.Rev != 0:
					t.Errorf("writer %d: refused (%v) but written", i, o)
				}
			}
		})
	}

	for _, tc := range []struct {
		name   string
		closed bool  // the store is closed; otherwise the context is done
		want   error // what every call wraps
	}{
		{"a done context returns at once and writes nothing", false, context.Canceled},
		{"closed", true, shadow.ErrClosed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := open(t, t.TempDir())
			ctx, cancel := context.WithCancel(t.Context())
			if tc.closed {
				mustClose(t, s)
			} else {
				defer mustClose(t, s)
				cancel()
			}
			defer cancel()
			_, getErr := s.Get(ctx, d1)
			for name, err := range map[string]error{
				"Commit":    s.Commit(ctx, shadow.Write{Key: d1, Value: []byte("a")}),
				"Get":       getErr,
				"Scan":      s.Scan(ctx, "", func(device.ID, shadow.Record) bool { return true }),
				"ScanNamed": s.ScanNamed(ctx, "d1", func(shadow.Key, shadow.Record) bool { return true }),
			} {
				if !errors.Is(err, tc.want) {
					t.Errorf("%s = %v, want %v", name, err, tc.want)
				}
			}
			if tc.closed {
				if err := s.Close(ctx); err != nil {
					t.Errorf("second Close = %v, want nil", err)
				}
			} else if rec := get(t, s, d1); rec.Rev != 0 {
				t.Errorf("the cancelled Commit wrote %q", rec.Value)
			}
		})
	}
}

func get(t *testing.T, s shadow.Store, k shadow.Key) shadow.Record {
	t.Helper()
	rec, err := s.Get(t.Context(), k)
	if err != nil {
		t.Fatalf("Get %s: %v", k, err)
	}
	return rec
}

func mustClose(t *testing.T, s Store) {
	t.Helper()
	if err := s.Close(context.Background()); err != nil {
		t.Errorf("Close: %v", err)
	}
}

// checkState checks that s holds want (or, if set, alt) and nothing else,
// through Get, Scan and ScanNamed, and returns what it holds.
func checkState(t *testing.T, s shadow.Store, want, alt map[shadow.Key]string) map[shadow.Key]string {
	t.Helper()
	got := map[shadow.Key]string{}
	if err := s.Scan(t.Context(), "", func(id device.ID, rec shadow.Record) bool {
		got[classic(id)] = string(rec.Value)
		return true
	}); err != nil {
		t.Fatalf("Scan: %v", err)
	}
	if err := s.ScanNamed(t.Context(), "", func(k shadow.Key, rec shadow.Record) bool {
		if k.Name == "" {
			t.Errorf("ScanNamed visited classic shadow %s", k.Device)
		}
		got[k] = string(rec.Value)
		return true
	}); err != nil {
		t.Fatalf("ScanNamed: %v", err)
	}
	if want == nil {
		want = map[shadow.Key]string{}
	}
	if !maps.Equal(got, want) && (alt == nil || !maps.Equal(got, alt)) {
		t.Errorf("store holds %v, want %v", got, want)
	}
	for k, v := range got {
		if rec := get(t, s, k); string(rec.Value) != v || rec.Rev == 0 {
			t.Errorf("Get %s = %q rev %d, want %q as scanned", k, rec.Value, rec.Rev, v)
		}
	}
	return got
}
