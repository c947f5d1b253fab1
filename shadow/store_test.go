package shadow_test

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/shadow"
	"github.com/umbra-iot/umbra/shadow/storetest"
)

// wrappedStore is a real bbolt store whose first Commit can be held, and
// whose Commits can be preceded by another writer's, and whose Close is
// counted.
type wrappedStore struct {
	storetest.Store
	// holdFirst holds the first Commit: entered is closed when it is
	// held, and closing release lets it go on.
	holdFirst        bool
	entered, release chan struct{}
	commits          atomic.Int32
	before           func(ctx context.Context, inner shadow.Store, ws []shadow.Write)
	closes           atomic.Int32
}

func holding() *wrappedStore {
	return &wrappedStore{holdFirst: true, entered: make(chan struct{}), release: make(chan struct{})}
}

func (w *wrappedStore) Commit(ctx context.Context, ws ...shadow.Write) error {
	if w.commits.Add(1) == 1 && w.holdFirst {
		close(w.entered)
		<-w.release
	}
	if w.before != nil {
		w.before(ctx, w.Store, ws)
	}
	return w.Store.Commit(ctx, ws...)
}

func (w *wrappedStore) Close(ctx context.Context) error {
	w.closes.Add(1)
	return w.Store.Close(ctx)
}

func openWrapped(t *testing.T, w *wrappedStore, mod func(*shadow.Config)) *shadow.Engine {
	t.Helper()
	w.Store = storeAt(t, filepath.Join(t.TempDir(), "shadow.db"))
	cfg := shadow.Config{Store: w, DeviceRate: -1, MaxInFlight: -1}
	if mod != nil {
		mod(&cfg)
	}
	eng, err := shadow.Open(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return eng
}

// within fails the test if fn does not return within d.
func within(t *testing.T, d time.Duration, what string, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); fn() }()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("%s did not return within %v", what, d)
	}
}

// TestCancelledContextReturnsPromptly: an API call waiting for its
// device (whose previous request is stuck in a commit) returns with its
// context's error, 503, as soon as the context ends, and writes nothing;
// so does a call whose context is already done.
func TestCancelledContextReturnsPromptly(t *testing.T) {
	w := holding()
	eng := openWrapped(t, w, nil)
	first := make(chan error, 1)
	go func() {
		_, err := eng.Update(context.Background(), "dev-1", []byte(`{"state":{"reported":{"a":1}}}`))
		first <- err
	}()
	<-w.entered // the first update holds dev-1's lock, stuck in Commit

	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	var err error
	within(t, 5*time.Second, "Update with an expiring context", func() {
		_, err = eng.Update(ctx, "dev-1", []byte(`{"state":{"reported":{"b":2}}}`))
	})
	if !errors.Is(err, context.DeadlineExceeded) || shadow.CodeOf(err) != 503 {
		t.Errorf("Update = %v (code %d), want context.DeadlineExceeded, 503", err, shadow.CodeOf(err))
	}
	done, cancelDone := context.WithCancel(t.Context())
	cancelDone()
	for name, call := range map[string]func() error{
		"Update": func() error { _, err := eng.Update(done, "dev-2", []byte(`{"state":{}}`)); return err },
		"Get":    func() error { _, err := eng.Get(done, "dev-2", nil); return err },
		"List":   func() error { _, _, err := eng.List(done, "", 10); return err },
		"Shadows": func() error {
			_, err := eng.Shadows(done, "dev-2")
			return err
		},
		"Read": func() error { _, err := eng.Read(done, "dev-2"); return err },
	} {
		within(t, 5*time.Second, name, func() { err = call() })
		if !errors.Is(err, context.Canceled) || shadow.CodeOf(err) != 503 {
			t.Errorf("%s with a done context = %v (code %d), want context.Canceled, 503", name, err, shadow.CodeOf(err))
		}
	}

	close(w.release)
	if err := <-first; err != nil {
		t.Fatalf("first update: %v", err)
	}
	b, err := eng.Get(t.Context(), "dev-1", nil)
	if err != nil || version(t, b) != 1 {
		t.Errorf("dev-1 after the cancelled update: %s, %v; want version 1 (only the first update)", b, err)
	}
	if _, err := eng.Get(t.Context(), "dev-2", nil); !errors.Is(err, shadow.ErrNotFound) {
		t.Errorf("dev-2: %v, want ErrNotFound (the cancelled update wrote nothing)", err)
	}
	if err := eng.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
}

// TestCloseBoundedByContext: Close returns when its context ends even
// though a request is stuck in a commit; an MQTT request waiting behind
// it gives up with 503. The engine does not close the store; its owner's
// Close with the done context then refuses the stuck commit.
func TestCloseBoundedByContext(t *testing.T) {
	pub := &recorder{}
	w := holding()
	eng := openWrapped(t, w, func(c *shadow.Config) { c.Publisher = pub })
	stuck := make(chan error, 1)
	go func() {
		_, err := eng.Update(context.Background(), "dev-1", []byte(`{"state":{"reported":{"a":1}}}`))
		stuck <- err
	}()
	<-w.entered
	waiting := make(chan struct{})
	go func() {
		defer close(waiting)
		eng.HandleRequest("dev-1", "state/dev-1/update", []byte(`{"state":{"reported":{"b":2}},"clientToken":"t2"}`))
	}()

	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	var err error
	within(t, 5*time.Second, "Close", func() { err = eng.Close(ctx) })
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Close = %v, want context.DeadlineExceeded", err)
	}
	select {
	case <-waiting:
	case <-time.After(5 * time.Second):
		t.Fatal("the MQTT request waiting for its device did not give up after Close")
	}
	var rej []message
	for _, m := range pub.take() {
		if m.Topic == "state/dev-1/update/rejected" {
			rej = append(rej, m)
		}
	}
	if len(rej) != 1 || codeIn(t, []byte(rej[0].Payload)) != 503 {
		t.Errorf("rejections = %v, want one 503", rej)
	}
	if n := w.closes.Load(); n != 0 {
		t.Errorf("the engine closed its store %d times, want 0 (its opener closes it)", n)
	}
	if err := w.Close(ctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("store Close = %v", err)
	}
	close(w.release)
	if err := <-stuck; !errors.Is(err, shadow.ErrClosed) {
		t.Errorf("the stuck update = %v, want ErrClosed (its store was closed)", err)
	}
	if err2 := eng.Close(t.Context()); err2 == nil || err2.Error() != err.Error() {
		t.Errorf("second Close = %v, want the first's %v", err2, err)
	}
}

func codeIn(t *testing.T, b []byte) int {
	t.Helper()
	var m struct{ Code int }
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m.Code
}

// TestRevisionMismatchRetried: when another writer (another engine on the
// same store, in cluster mode) changes a shadow between the engine's read
// and its commit, the engine reads again and applies the request on top:
// nothing is lost. If the shadow keeps changing, the request is refused
// with 409 and writes nothing.
func TestRevisionMismatchRetried(t *testing.T) {
	for _, tc := range []struct {
		name        string
		interfere   int32 // how many commits another writer precedes
		wantErr     error
		wantVersion shadow.Version
	}{
		{"once", 1, nil, 3},
		{"twice", 2, nil, 4},
		{"at every attempt", 3, shadow.ErrVersionConflict, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			left := tc.interfere
			w := &wrappedStore{}
			w.before = func(ctx context.Context, inner shadow.Store, ws []shadow.Write) {
				if left == 0 {
					return
				}
				left--
				k := ws[len(ws)-1].Key
				rec, err := inner.Get(ctx, k)
				if err != nil {
					t.Error(err)
					return
				}
				var doc shadow.Document
				if err := json.Unmarshal(rec.Value, &doc); err != nil {
					t.Error(err)
					return
				}
				doc.Version++
				doc.State.Reported["other"] = true
				raw, _ := json.Marshal(doc)
				if err := inner.Commit(ctx, shadow.Write{Key: k, Value: raw, Rev: rec.Rev}); err != nil {
					t.Error(err)
				}
			}
			eng := openWrapped(t, w, nil)
			defer eng.Close(t.Context())
			saved := w.before
			w.before = nil
			if _, err := eng.Update(t.Context(), "dev-1", []byte(`{"state":{"reported":{"a":1}}}`)); err != nil {
				t.Fatal(err)
			}
			w.before = saved
			_, err := eng.Update(t.Context(), "dev-1", []byte(`{"state":{"reported":{"b":2}}}`))
			if tc.wantErr == nil && err != nil || tc.wantErr != nil && (!errors.Is(err, tc.wantErr) || shadow.CodeOf(err) != 409) {
				t.Fatalf("Update = %v, want %v", err, tc.wantErr)
			}
			doc, err := eng.Read(t.Context(), "dev-1")
			if err != nil {
				t.Fatal(err)
			}
			_, hasB := doc.State.Reported["b"]
			if doc.Version != tc.wantVersion || doc.State.Reported["other"] == nil || hasB != (tc.wantErr == nil) {
				t.Errorf("document = version %d, reported %v; want version %d with the other writer's change, b applied %v",
					doc.Version, doc.State.Reported, tc.wantVersion, tc.wantErr == nil)
			}
		})
	}
}

// TestOpenNeverClosesStore: a failed Open leaves the Store to the caller,
// open and usable.
func TestOpenNeverClosesStore(t *testing.T) {
	done, cancel := context.WithCancel(t.Context())
	cancel()
	for _, tc := range []struct {
		name string
		ctx  context.Context
		cfg  shadow.Config
	}{
		{"done context", done, shadow.Config{}},
		{"invalid config", t.Context(), shadow.Config{MaxReply: 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := &wrappedStore{Store: storeAt(t, filepath.Join(t.TempDir(), "shadow.db"))}
			tc.cfg.Store = w
			if eng, err := shadow.Open(tc.ctx, tc.cfg); err == nil {
				eng.Close(t.Context())
				t.Fatal("Open succeeded")
			}
			if n := w.closes.Load(); n != 0 {
				t.Errorf("store closed %d times, want 0", n)
			}
			if _, err := w.Get(t.Context(), shadow.Key{Device: "dev-1"}); err != nil && !errors.Is(err, shadow.ErrNotFound) {
				t.Errorf("store after the failed Open: Get = %v, want it open", err)
			}
		})
	}
}
