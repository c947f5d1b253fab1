package shadow_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/internal/goldentest"
	"github.com/umbra-iot/umbra/shadow"
	"github.com/umbra-iot/umbra/shadow/boltstore"
	"github.com/umbra-iot/umbra/shadow/storetest"
)

// recorder is a shadow.Publisher that records every message in order.
// Unless subs decides, every state/ topic has subscribers and a $aws/ topic
// has them only if it matches one of the listen filters (the transcripts'
// "listen" command): so transcripts that never listen on $aws show what a
// fleet that never subscribes there gets.
type recorder struct {
	mu     sync.Mutex // guards msgs and listen
	msgs   []message
	listen []string
	subs   func(topic string) bool
}

type message struct{ Topic, Payload string }

func (r *recorder) Publish(topic string, payload []byte, retain bool, qos byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.msgs = append(r.msgs, message{topic, string(payload)})
	return nil
}

// PublishTo records a message for one client; the transcripts show it
// with the client's ID.
func (r *recorder) PublishTo(clientID, topic string, payload []byte, qos byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.msgs = append(r.msgs, message{"(to " + clientID + ") " + topic, string(payload)})
	return nil
}

func (r *recorder) HasSubscribers(topic string) bool {
	if r.subs != nil {
		return r.subs(topic)
	}
	if !strings.HasPrefix(topic, "$aws/") {
		return true
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, f := range r.listen {
		if shadow.MatchFilter(f, topic) {
			return true
		}
	}
	return false
}

// listenOn makes $aws topics matching filters have subscribers.
func (r *recorder) listenOn(filters ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.listen = append(r.listen, filters...)
}

func (r *recorder) take() []message {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := r.msgs
	r.msgs = nil
	return m
}

// clock is a manual clock for tests.
type clock struct {
	mu  sync.Mutex // guards now
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

type harness struct {
	eng   *shadow.Engine
	pub   *recorder
	clk   *clock
	path  string
	store storetest.Store // closed after eng in Cleanup
}

// storeAt opens the bbolt store at path and closes it in tb.Cleanup,
// after the engine given it (its Cleanup is registered later, so it runs
// first). A test that opens path again closes the store first itself
// (Close is idempotent).
func storeAt(tb testing.TB, path string) storetest.Store {
	tb.Helper()
	st, err := boltstore.Open(context.Background(), boltstore.Config{Path: path})
	if err != nil {
		tb.Fatalf("open %s: %v", path, err)
	}
	tb.Cleanup(func() {
		if err := st.Close(context.Background()); err != nil {
			tb.Errorf("close %s: %v", path, err)
		}
	})
	return st
}

func mustOpen(t *testing.T, mod func(*shadow.Config)) *harness {
	t.Helper()
	h := &harness{pub: &recorder{}, clk: &clock{now: time.Unix(1700000000, 0)}, path: filepath.Join(t.TempDir(), "shadow.db")}
	h.store = storeAt(t, h.path)
	cfg := shadow.Config{Store: h.store, Publisher: h.pub, Now: h.clk.Now, Logger: slog.New(slog.NewTextHandler(t.Output(), nil))}
	if mod != nil {
		mod(&cfg)
	}
	eng, err := shadow.Open(t.Context(), cfg)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	h.eng = eng
	t.Cleanup(func() {
		if err := eng.Close(context.Background()); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return h
}

// TestTranscripts replays testdata/transcripts/*.txt through the MQTT entry
// point and compares every published message with the .golden file.
// Regenerate with: go test ./shadow -run TestTranscripts -update
func TestTranscripts(t *testing.T) {
	files, _ := filepath.Glob("testdata/transcripts/*.txt")
	if len(files) == 0 {
		t.Fatal("no transcripts found")
	}
	for _, file := range files {
		name := strings.TrimSuffix(filepath.Base(file), ".txt")
		t.Run(name, func(t *testing.T) {
			h := mustOpen(t, nil)
			in, err := os.Open(file)
			if err != nil {
				t.Fatal(err)
			}
			defer in.Close()
			var out strings.Builder
			sc := bufio.NewScanner(in)
			for sc.Scan() {
				line := sc.Text()
				if line == "" || strings.HasPrefix(line, "#") {
					out.WriteString(line + "\n")
					continue
				}
				h.clk.Add(time.Second)
				out.WriteString(line + "\n")
				cmd, arg, _ := strings.Cut(line, " ")
				switch cmd {
				case "pub": // pub <topic> <payload>
					topic, payload, _ := strings.Cut(arg, " ")
					h.eng.HandleRequest("client", topic, []byte(payload))
				case "sub": // sub <filter>… (one SUBSCRIBE packet)
					h.eng.HandleSubscribe("client", strings.Fields(arg))
				case "listen": // listen <filter>…: $aws topics they match have subscribers from now on
					h.pub.listenOn(strings.Fields(arg)...)
					continue // nothing is published
				default:
					t.Fatalf("unknown transcript command %q", cmd)
				}
				for _, m := range h.pub.take() {
					fmt.Fprintf(&out, "  %s %s\n", m.Topic, m.Payload)
				}
			}
			goldentest.Check(t, strings.TrimSuffix(file, ".txt")+".golden", []byte(out.String()))
		})
	}
}

func TestAPIErrorCodes(t *testing.T) {
	id := device.MustParseID("dev-1")
	tests := []struct {
		name string
		mod  func(*shadow.Config)
		prep []string // updates applied first
		op   shadow.Op
		body string
		want error
		code int
	}{
		{"bad json", nil, nil, shadow.OpUpdate, `{`, shadow.ErrInvalid, 400},
		{"missing state", nil, nil, shadow.OpUpdate, `{}`, shadow.ErrInvalid, 400},
		{"get missing", nil, nil, shadow.OpGet, ``, shadow.ErrNotFound, 404},
		{"delete missing", nil, nil, shadow.OpDelete, ``, shadow.ErrNotFound, 404},
		{"version conflict", nil, []string{`{"state":{"reported":{"a":1}}}`}, shadow.OpUpdate, `{"state":{"reported":{"a":2}},"version":5}`, shadow.ErrVersionConflict, 409},
		{"merged too large", func(c *shadow.Config) { c.MaxDocumentSize = 64 }, []string{`{"state":{"reported":{"a":"` + strings.Repeat("x", 40) + `"}}}`}, shadow.OpUpdate, `{"state":{"desired":{"b":"` + strings.Repeat("y", 20) + `"}}}`, shadow.ErrTooLarge, 413},
		{"payload too large", func(c *shadow.Config) { c.MaxPayload = 32 }, nil, shadow.OpUpdate, `{"state":{"reported":{"a":"` + strings.Repeat("x", 40) + `"}}}`, shadow.ErrTooLarge, 413},
		{"rate limited", func(c *shadow.Config) { c.DeviceRate, c.DeviceBurst = 0.001, 2 }, []string{`{"state":{"reported":{"a":1}}}`}, shadow.OpUpdate, `{"state":{"reported":{"a":2}}}`, shadow.ErrRateLimited, 429},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := mustOpen(t, tc.mod)
			for _, p := range tc.prep {
				if _, err := h.eng.Update(t.Context(), id, []byte(p)); err != nil {
					t.Fatalf("prep update: %v", err)
				}
			}
			before, _ := h.eng.Get(t.Context(), id, nil)
			var err error
			switch tc.op {
			case shadow.OpUpdate:
				_, err = h.eng.Update(t.Context(), id, []byte(tc.body))
			case shadow.OpGet:
				_, err = h.eng.Get(t.Context(), id, []byte(tc.body))
			case shadow.OpDelete:
				_, err = h.eng.Delete(t.Context(), id, []byte(tc.body))
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("error = %v, want %v", err, tc.want)
			}
			var re *shadow.RequestError
			if !errors.As(err, &re) || re.Code != tc.code {
				t.Fatalf("error = %#v, want RequestError code %d", err, tc.code)
			}
			h.clk.Add(time.Hour) // refill any rate limit for the check below
			after, _ := h.eng.Get(t.Context(), id, nil)
			if string(stripTimestamp(t, before)) != string(stripTimestamp(t, after)) {
				t.Errorf("stored document changed by a rejected request:\nbefore %s\nafter  %s", before, after)
			}
		})
	}
}

// stripTimestamp removes the per-message timestamp so two reads compare.
func stripTimestamp(t *testing.T, b []byte) []byte {
	t.Helper()
	if b == nil {
		return nil
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	delete(m, "timestamp")
	out, _ := json.Marshal(m)
	return out
}

func TestClosedEngineRejects(t *testing.T) {
	h := mustOpen(t, nil)
	if err := h.eng.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	_, err := h.eng.Update(t.Context(), "dev-1", []byte(`{"state":{}}`))
	if !errors.Is(err, shadow.ErrClosed) || shadow.CodeOf(err) != 503 {
		t.Fatalf("update after close = %v (code %d), want ErrClosed 503", err, shadow.CodeOf(err))
	}
}

func version(t *testing.T, b []byte) shadow.Version {
	t.Helper()
	var m struct{ Version shadow.Version }
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
	return m.Version
}

// TestConcurrentUpdates checks per-device serialisation: concurrent writers
// to one device lose nothing and versions are dense; other devices proceed in
// parallel.
func TestConcurrentUpdates(t *testing.T) {
	h := mustOpen(t, func(c *shadow.Config) { c.DeviceRate, c.MaxInFlight = -1, -1 })
	const writers, each, devices = 8, 25, 4
	var wg sync.WaitGroup
	for d := range devices {
		id := device.ID(fmt.Sprintf("dev-%d", d))
		for w := range writers {
			wg.Go(func() {
				for i := range each {
					body := fmt.Sprintf(`{"state":{"reported":{"w%d_%d":%d}}}`, w, i, i)
					if _, err := h.eng.Update(t.Context(), id, []byte(body)); err != nil {
						t.Errorf("update: %v", err)
						return
					}
				}
			})
		}
	}
	wg.Wait()
	for d := range devices {
		id := device.ID(fmt.Sprintf("dev-%d", d))
		b, err := h.eng.Get(t.Context(), id, nil)
		if err != nil {
			t.Fatal(err)
		}
		if v := version(t, b); v != writers*each {
			t.Errorf("%s version = %d, want %d", id, v, writers*each)
		}
		var doc struct {
			State struct{ Reported map[string]any }
		}
		json.Unmarshal(b, &doc)
		if len(doc.State.Reported) != writers*each {
			t.Errorf("%s has %d reported keys, want %d", id, len(doc.State.Reported), writers*each)
		}
	}
	st := h.eng.Stats()
	if st.Commits >= st.DocumentsWritten {
		t.Logf("commits %d for %d documents (no grouping observed on this run)", st.Commits, st.DocumentsWritten)
	}
}

func TestDurableAcrossReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "shadow.db")
	var st storetest.Store
	open := func() *shadow.Engine {
		st = storeAt(t, path)
		e, err := shadow.Open(t.Context(), shadow.Config{Store: st})
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	e := open()
	acc, err := e.Update(t.Context(), "dev-1", []byte(`{"state":{"desired":{"fw":"2"},"reported":{"fw":"1"}}}`))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Delete(t.Context(), "dev-2", nil); !errors.Is(err, shadow.ErrNotFound) {
		t.Fatalf("delete missing = %v", err)
	}
	e.Close(t.Context())
	st.Close(t.Context())
	e = open()
	defer e.Close(t.Context())
	got, err := e.Get(t.Context(), "dev-1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if version(t, got) != version(t, acc) || !strings.Contains(string(got), `"delta":{"fw":"2"}`) {
		t.Errorf("after reopen got %s, want version %d with delta fw=2", got, version(t, acc))
	}
}

func TestDedupe(t *testing.T) {
	h := mustOpen(t, nil)
	body := []byte(`{"state":{"reported":{"n":1}},"clientToken":"retry-me"}`)
	a1, err := h.eng.Update(t.Context(), "dev-1", body)
	if err != nil {
		t.Fatal(err)
	}
	a2, err := h.eng.Update(t.Context(), "dev-1", body)
	if err != nil {
		t.Fatal(err)
	}
	if string(a1) != string(a2) || version(t, a2) != 1 {
		t.Errorf("retry answered %s, want the original %s", a2, a1)
	}
	other, _ := h.eng.Update(t.Context(), "dev-1", []byte(`{"state":{"reported":{"n":2}},"clientToken":"retry-me"}`))
	if version(t, other) != 2 {
		t.Errorf("same token, different body got version %d, want 2 (applied)", version(t, other))
	}
	h.clk.Add(shadow.DefaultDedupeWindow + time.Second)
	a3, _ := h.eng.Update(t.Context(), "dev-1", body)
	if version(t, a3) != 3 {
		t.Errorf("retry after the window got version %d, want 3 (applied)", version(t, a3))
	}
	// Within the window, but the shadow has moved on since: a new request
	// (issue 12), applied.
	h.eng.Update(t.Context(), "dev-1", []byte(`{"state":{"reported":{"n":4}}}`))
	a5, _ := h.eng.Update(t.Context(), "dev-1", body)
	if version(t, a5) != 5 {
		t.Errorf("same token and body after a later update got version %d, want 5 (applied)", version(t, a5))
	}
}

func TestList(t *testing.T) {
	h := mustOpen(t, nil)
	for i := range 5 {
		if _, err := h.eng.Update(t.Context(), device.ID(fmt.Sprintf("d%d", i)), []byte(`{"state":{"reported":{"a":1}}}`)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := h.eng.Delete(t.Context(), "d2", nil); err != nil {
		t.Fatal(err)
	}
	var ids []string
	cursor := ""
	for {
		page, next, err := h.eng.List(t.Context(), cursor, 2)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range page {
			ids = append(ids, s.ID.String())
		}
		if next == "" {
			break
		}
		cursor = next
	}
	if got := strings.Join(ids, ","); got != "d0,d1,d3,d4" {
		t.Errorf("listed %s, want d0,d1,d3,d4", got)
	}
	if _, _, err := h.eng.List(t.Context(), "bad/cursor", 2); !errors.Is(err, shadow.ErrInvalid) {
		t.Errorf("bad cursor = %v, want ErrInvalid", err)
	}
}

func TestOnChange(t *testing.T) {
	type change struct {
		id device.ID
		v  shadow.Version
	}
	ch := make(chan change, 8)
	h := mustOpen(t, func(c *shadow.Config) {
		c.OnChange = func(id device.ID, v shadow.Version) { ch <- change{id, v} }
	})
	h.eng.Update(t.Context(), "d1", []byte(`{"state":{"reported":{"a":1}}}`))
	h.eng.Update(t.Context(), "d1", []byte(`{"state":{"reported":{"a":[1,null]}}}`)) // rejected: no change
	h.eng.Delete(t.Context(), "d1", nil)
	for _, want := range []change{{"d1", 1}, {"d1", 1}} {
		select {
		case got := <-ch:
			if got != want {
				t.Errorf("OnChange(%v), want %v", got, want)
			}
		default:
			t.Fatalf("OnChange not called, want %v", want)
		}
	}
	if len(ch) != 0 {
		t.Errorf("%d extra OnChange calls", len(ch))
	}
}
