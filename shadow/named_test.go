package shadow_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/shadow"
	"github.com/umbra-iot/umbra/shadow/storetest"
)

// shadowNames lists id's shadows as "name@version" ("" for the classic one).
func shadowNames(t *testing.T, e *shadow.Engine, id device.ID) []string {
	t.Helper()
	list, err := e.Shadows(t.Context(), id)
	if err != nil {
		t.Fatalf("Shadows(%s): %v", id, err)
	}
	out := make([]string, len(list))
	for i, s := range list {
		out[i] = fmt.Sprintf("%s@%d", s.Name, s.Version)
	}
	return out
}

func mustUpdateNamed(t *testing.T, e *shadow.Engine, id device.ID, name shadow.Name, body string) []byte {
	t.Helper()
	b, err := e.UpdateNamed(t.Context(), id, name, []byte(body))
	if err != nil {
		t.Fatalf("UpdateNamed(%s, %q): %v", id, name, err)
	}
	return b
}

// TestNamedShadowLimit checks the cap on named shadows per device: the
// classic shadow does not count, a deleted one frees its place, an update
// that would exceed the cap is a 400 that stores nothing, and a device
// never stores more than the cap (tombstones of other names make room,
// oldest first).
func TestNamedShadowLimit(t *testing.T) {
	h := mustOpen(t, func(c *shadow.Config) { c.MaxNamedShadows = 3 })
	e, id := h.eng, device.ID("dev-1")
	mustUpdateNamed(t, e, id, "", `{"state":{"reported":{"classic":true}}}`)
	for _, n := range []shadow.Name{"a", "b", "c"} {
		mustUpdateNamed(t, e, id, n, `{"state":{"reported":{"x":1}}}`)
		h.clk.Add(time.Second)
	}
	mustUpdateNamed(t, e, id, "a", `{"state":{"reported":{"x":2}}}`) // an existing one may still change
	_, err := e.UpdateNamed(t.Context(), id, "d", []byte(`{"state":{"reported":{"x":1}},"clientToken":"over"}`))
	var re *shadow.RequestError
	if !errors.Is(err, shadow.ErrShadowLimit) || !errors.As(err, &re) || re.Code != 400 || re.ClientToken != "over" ||
		!strings.Contains(re.Message, "limit is 3") {
		t.Fatalf("4th named shadow: %v, want a 400 ErrShadowLimit naming the limit and echoing the token", err)
	}
	if got, want := shadowNames(t, e, id), []string{"@1", "a@2", "b@1", "c@1"}; !slices.Equal(got, want) {
		t.Fatalf("after the refused update: shadows %v, want %v", got, want)
	}
	if _, err := e.GetNamed(t.Context(), id, "d", nil); !errors.Is(err, shadow.ErrNotFound) {
		t.Errorf("get of the refused shadow = %v, want ErrNotFound", err)
	}
	// Another device has its own allowance.
	mustUpdateNamed(t, e, "dev-2", "d", `{"state":{}}`)

	// Deleting b frees a place; d takes it, and b's tombstone goes (the
	// device would otherwise store a, c, d and b's tombstone: 4 > 3).
	if _, err := e.DeleteNamed(t.Context(), id, "b", nil); err != nil {
		t.Fatal(err)
	}
	h.clk.Add(time.Second)
	if _, err := e.DeleteNamed(t.Context(), id, "c", nil); err != nil {
		t.Fatal(err)
	}
	h.clk.Add(time.Second)
	mustUpdateNamed(t, e, id, "d", `{"state":{}}`)
	// c's tombstone was kept (a, d and c's tombstone: 3): re-created, it
	// continues its version; b's was displaced, so b starts again at 1.
	if v := version(t, mustUpdateNamed(t, e, id, "c", `{"state":{}}`)); v != 2 {
		t.Errorf("re-created c: version %d, want 2 (continues after its tombstone)", v)
	}
	if _, err := e.UpdateNamed(t.Context(), id, "b", []byte(`{"state":{}}`)); !errors.Is(err, shadow.ErrShadowLimit) {
		t.Fatalf("b while a, c, d exist: %v, want ErrShadowLimit", err)
	}
	if _, err := e.DeleteNamed(t.Context(), id, "a", nil); err != nil {
		t.Fatal(err)
	}
	if v := version(t, mustUpdateNamed(t, e, id, "b", `{"state":{}}`)); v != 1 {
		t.Errorf("re-created b after its tombstone was displaced: version %d, want 1", v)
	}
	if got, want := shadowNames(t, e, id), []string{"@1", "b@1", "c@2", "d@1"}; !slices.Equal(got, want) {
		t.Errorf("shadows %v, want %v", got, want)
	}
	st := e.Stats()
	if st.NamedShadows != 4 || st.NamedLimitRejected != 2 { // b, c, d of dev-1 and d of dev-2
		t.Errorf("stats: %d named shadows, %d refused; want 4 and 2", st.NamedShadows, st.NamedLimitRejected)
	}

	// The gauge survives a restart: it is counted from the file.
	if err := e.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := h.store.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	e2, err := shadow.Open(t.Context(), shadow.Config{Store: storeAt(t, h.path)})
	if err != nil {
		t.Fatal(err)
	}
	defer e2.Close(t.Context())
	if n := e2.Stats().NamedShadows; n != 4 {
		t.Errorf("after reopen: %d named shadows, want 4", n)
	}
}

func TestNamedShadowsDisabled(t *testing.T) {
	h := mustOpen(t, func(c *shadow.Config) { c.MaxNamedShadows = -1 })
	if _, err := h.eng.UpdateNamed(t.Context(), "dev-1", "cfg", []byte(`{"state":{}}`)); !errors.Is(err, shadow.ErrShadowLimit) {
		t.Fatalf("named update with MaxNamedShadows < 0: %v, want ErrShadowLimit", err)
	}
	mustUpdateNamed(t, h.eng, "dev-1", "", `{"state":{}}`)
}

// TestNamedShadowsShareDeviceLimits: every shadow of a device draws on one
// request budget (a device cannot multiply its rate by using more shadows),
// while size limits apply to each shadow.
func TestNamedShadowsShareDeviceLimits(t *testing.T) {
	h := mustOpen(t, func(c *shadow.Config) {
		c.DeviceRate, c.DeviceBurst = 0.001, 3
		c.MaxDocumentSize = 64
	})
	e, id := h.eng, device.ID("dev-1")
	big := `{"state":{"reported":{"k":"` + strings.Repeat("x", 40) + `"}}}` // 48 bytes: one fits, two do not
	for _, n := range []shadow.Name{"", "a", "b"} {
		mustUpdateNamed(t, e, id, n, big)
	}
	_, err := e.UpdateNamed(t.Context(), id, "c", []byte(`{"state":{}}`))
	if !errors.Is(err, shadow.ErrRateLimited) {
		t.Fatalf("4th request of the device over three shadows: %v, want ErrRateLimited", err)
	}
	if _, err := e.GetNamed(t.Context(), id, "a", nil); !errors.Is(err, shadow.ErrRateLimited) {
		t.Errorf("get after the budget is spent: %v, want ErrRateLimited", err)
	}
	mustUpdateNamed(t, e, "dev-2", "a", big) // another device is not affected
	h.clk.Add(time.Hour)
	if _, err := e.UpdateNamed(t.Context(), id, "a", []byte(`{"state":{"desired":{"k":"`+strings.Repeat("y", 20)+`"}}}`)); !errors.Is(err, shadow.ErrTooLarge) {
		t.Errorf("named shadow over the size limit: %v, want ErrTooLarge", err)
	}
}

// TestNamedShadowsAreDistinct: the classic shadow and each named one have
// their own documents, versions, retry-cache entries and deltas; the
// OnChange feed (the rollout planner's) sees only the classic one.
func TestNamedShadowsAreDistinct(t *testing.T) {
	var changes []string
	h := mustOpen(t, func(c *shadow.Config) {
		c.OnChange = func(id device.ID, v shadow.Version) { changes = append(changes, fmt.Sprintf("%s@%d", id, v)) }
	})
	e, id := h.eng, device.ID("dev-1")
	body := `{"state":{"desired":{"fw":"2"}},"clientToken":"dev-1-0"}`
	mustUpdateNamed(t, e, id, "", body)
	// The same token and bytes on a named shadow are not a retry of the
	// classic shadow's update: applied, version 1 of that shadow.
	if b := mustUpdateNamed(t, e, id, "cfg", body); version(t, b) != 1 {
		t.Fatalf("named update: %s", b)
	}
	// A retry on the named shadow is answered from the cache.
	if b := mustUpdateNamed(t, e, id, "cfg", body); version(t, b) != 1 || e.Stats().RetryCache.Hits != 1 {
		t.Errorf("retry on the named shadow: %s, hits %d; want version 1 from the cache", b, e.Stats().RetryCache.Hits)
	}
	mustUpdateNamed(t, e, id, "cfg", `{"state":{"reported":{"fw":"2"}}}`)
	classic, _ := e.Get(t.Context(), id, nil)
	named, _ := e.GetNamed(t.Context(), id, "cfg", nil)
	if !strings.Contains(string(classic), `"delta":{"fw":"2"}`) || version(t, classic) != 1 {
		t.Errorf("classic shadow %s, want version 1 with the delta", classic)
	}
	if strings.Contains(string(named), `"delta"`) || version(t, named) != 2 {
		t.Errorf("named shadow %s, want version 2 without a delta", named)
	}
	if _, err := e.DeleteNamed(t.Context(), id, "cfg", nil); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(changes, " "); got != "dev-1@1" {
		t.Errorf("OnChange saw %q, want only the classic shadow's change dev-1@1", got)
	}
	if _, err := e.Get(t.Context(), id, nil); err != nil {
		t.Errorf("classic shadow after deleting the named one: %v", err)
	}
}

func TestShadowsListing(t *testing.T) {
	h := mustOpen(t, nil)
	e := h.eng
	mustUpdateNamed(t, e, "d1", "zeta", `{"state":{}}`)
	mustUpdateNamed(t, e, "d1", "alpha", `{"state":{}}`)
	mustUpdateNamed(t, e, "d1", "gone", `{"state":{}}`)
	mustUpdateNamed(t, e, "d1", "", `{"state":{}}`)
	mustUpdateNamed(t, e, "d1", "", `{"state":{}}`)
	mustUpdateNamed(t, e, "d1-x", "other", `{"state":{}}`) // a device whose ID extends d1's
	mustUpdateNamed(t, e, "d1.x", "other", `{"state":{}}`)
	if _, err := e.DeleteNamed(t.Context(), "d1", "gone", nil); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		id   device.ID
		want []string
	}{
		{"d1", []string{"@2", "alpha@1", "zeta@1"}},
		{"d1-x", []string{"other@1"}},
		{"nobody", []string{}},
	}
	for _, tc := range tests {
		if got := shadowNames(t, e, tc.id); !slices.Equal(got, tc.want) {
			t.Errorf("Shadows(%s) = %v, want %v", tc.id, got, tc.want)
		}
	}
	if _, err := e.Shadows(t.Context(), "bad/id"); !errors.Is(err, shadow.ErrInvalid) {
		t.Errorf("Shadows(bad/id) = %v, want ErrInvalid", err)
	}
	// The device listing (GET /v1/devices) stays about classic shadows.
	page, _, err := e.List(t.Context(), "", 10)
	if err != nil || len(page) != 1 || page[0].ID != "d1" {
		t.Errorf("List = %v, %v; want only d1", page, err)
	}
}

// TestNamedAPIValidation: in-process callers get the same name rules as
// topics, and a bad name stores nothing.
func TestNamedAPIValidation(t *testing.T) {
	h := mustOpen(t, nil)
	for _, name := range []shadow.Name{"a/b", "$package", "a.b", "a b", "é", shadow.Name(strings.Repeat("n", shadow.MaxNameLen+1)), "+", "#"} {
		for op, call := range map[string]func() error{
			"update": func() error {
				_, err := h.eng.UpdateNamed(t.Context(), "dev-1", name, []byte(`{"state":{}}`))
				return err
			},
			"get":    func() error { _, err := h.eng.GetNamed(t.Context(), "dev-1", name, nil); return err },
			"delete": func() error { _, err := h.eng.DeleteNamed(t.Context(), "dev-1", name, nil); return err },
		} {
			if err := call(); !errors.Is(err, shadow.ErrInvalid) || shadow.CodeOf(err) != 400 {
				t.Errorf("%s %q: %v, want a 400 ErrInvalid", op, name, err)
			}
		}
	}
	if got := shadowNames(t, h.eng, "dev-1"); len(got) != 0 {
		t.Errorf("shadows after invalid names: %v, want none", got)
	}
	if n, err := shadow.ParseName(strings.Repeat("n", shadow.MaxNameLen)); err != nil || len(n) != shadow.MaxNameLen {
		t.Errorf("ParseName of %d bytes: %q, %v", shadow.MaxNameLen, n, err)
	}
}

// TestBadInputOnNewTopics publishes bad requests on every new topic shape
// ($aws classic, $aws named, state named) through the MQTT entry point:
// each gets the AWS error shape on the topic's /rejected, and nothing
// stored changes.
func TestBadInputOnNewTopics(t *testing.T) {
	h := mustOpen(t, nil)
	h.pub.listenOn("$aws/#")
	id := device.ID("dev-1")
	mustUpdateNamed(t, h.eng, id, "", `{"state":{"desired":{"a":1}}}`)
	mustUpdateNamed(t, h.eng, id, "cfg", `{"state":{"desired":{"a":1}}}`)
	before := func() map[shadow.Name]string {
		out := map[shadow.Name]string{}
		for _, n := range []shadow.Name{"", "cfg"} {
			b, err := h.eng.GetNamed(t.Context(), id, n, nil)
			if err != nil {
				t.Fatal(err)
			}
			out[n] = string(stripTimestamp(t, b))
		}
		return out
	}
	stored := before()
	bodies := []struct {
		name, body string
		code       int
		token      string
	}{
		{"malformed JSON", `{"state":`, 400, ""},
		{"not an object", `[{"state":{}}]`, 400, ""},
		{"state not an object", `{"state":"on","clientToken":"t1"}`, 400, "t1"},
		{"desired an array", `{"state":{"desired":[1]},"clientToken":"t2"}`, 400, "t2"},
		{"version a string", `{"state":{"desired":{"a":2}},"version":"1","clientToken":"t3"}`, 400, "t3"},
		{"version negative", `{"state":{"desired":{"a":2}},"version":-1,"clientToken":"t4"}`, 400, "t4"},
		{"token a number", `{"state":{"desired":{"a":2}},"clientToken":5}`, 400, ""},
		{"unknown node", `{"state":{"delta":{"a":2}},"clientToken":"t5"}`, 400, "t5"},
		{"not UTF-8", "{\"state\":{\"desired\":{\"a\":\"\xff\"}}}", 400, ""},
		{"stale version", `{"state":{"desired":{"a":2}},"version":9,"clientToken":"t6"}`, 409, "t6"},
	}
	topics := []struct {
		name, topic string
	}{
		{"aws classic", "$aws/things/dev-1/shadow/update"},
		{"aws named", "$aws/things/dev-1/shadow/name/cfg/update"},
		{"state named", "state/dev-1/shadow/cfg/update"},
	}
	for _, tp := range topics {
		for _, b := range bodies {
			t.Run(tp.name+"/"+b.name, func(t *testing.T) {
				h.eng.HandleRequest("dev-1", tp.topic, []byte(b.body))
				checkRejected(t, h.pub.take(), tp.topic+"/rejected", b.code, b.token)
			})
		}
	}
	// get and delete take an empty body or {"clientToken"}: anything else
	// is a 400.
	for _, topic := range []string{"$aws/things/dev-1/shadow/get", "$aws/things/dev-1/shadow/delete",
		"$aws/things/dev-1/shadow/name/cfg/get", "$aws/things/dev-1/shadow/name/cfg/delete",
		"state/dev-1/shadow/cfg/get", "state/dev-1/shadow/cfg/delete"} {
		for _, body := range []string{`{`, `[1]`, `"x"`, `{"clientToken":5}`, `{"clientToken":"` + strings.Repeat("t", 65) + `"}`} {
			t.Run(topic+"/"+body[:min(len(body), 12)], func(t *testing.T) {
				h.eng.HandleRequest("dev-1", topic, []byte(body))
				checkRejected(t, h.pub.take(), topic+"/rejected", 400, "")
			})
		}
	}
	// Topic-level errors: answered on the topic's own /rejected only.
	for _, tc := range []struct {
		topic, body string
		code        int
	}{
		{"$aws/things/dev-1/shadow/name/bad.name/update", `{"state":{},"clientToken":"t7"}`, 400},
		{"$aws/things/dev-1/shadow/name/$package/get", `{"clientToken":"t7"}`, 400},
		{"state/dev-1/shadow/bad.name/delete", `{"clientToken":"t7"}`, 400},
		{"$aws/things/dev 1/shadow/update", `{"state":{},"clientToken":"t7"}`, 400},
		{"$aws/things/dev-1/shadow/destroy", `{"clientToken":"t7"}`, 404},
		{"$aws/things/dev-1/shadow/name/cfg/destroy", `{"clientToken":"t7"}`, 404},
		{"$aws/things/dev-1/shadow/name/cfg/updates", `{"state":{},"clientToken":"t7"}`, 404},
	} {
		t.Run(tc.topic, func(t *testing.T) {
			h.eng.HandleRequest("dev-1", tc.topic, []byte(tc.body))
			msgs := h.pub.take()
			if len(msgs) != 1 {
				t.Fatalf("got %d messages %v, want one", len(msgs), msgs)
			}
			checkRejected(t, msgs, tc.topic+"/rejected", tc.code, "t7")
		})
	}
	h.clk.Add(time.Hour)
	if after := before(); !maps2Equal(stored, after) {
		t.Errorf("stored shadows changed by rejected requests:\nbefore %v\nafter  %v", stored, after)
	}
	if got, want := shadowNames(t, h.eng, id), []string{"@1", "cfg@1"}; !slices.Equal(got, want) {
		t.Errorf("shadows %v, want %v", got, want)
	}
}

func maps2Equal(a, b map[shadow.Name]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// checkRejected finds the rejection on topic among msgs and checks the AWS
// error shape: exactly code, message, timestamp and (if any) clientToken.
func checkRejected(t *testing.T, msgs []message, topic string, code int, token string) {
	t.Helper()
	for _, m := range msgs {
		if m.Topic != topic {
			continue
		}
		var raw map[string]json.RawMessage
		if err := json.Unmarshal([]byte(m.Payload), &raw); err != nil {
			t.Fatalf("rejection %s is not JSON: %v", m.Payload, err)
		}
		var rej struct {
			Code        int
			Message     string
			ClientToken string
			Timestamp   int64
		}
		json.Unmarshal([]byte(m.Payload), &rej)
		wantKeys := 3
		if token != "" {
			wantKeys = 4
		}
		if rej.Code != code || rej.Message == "" || rej.Timestamp == 0 || rej.ClientToken != token || len(raw) != wantKeys {
			t.Errorf("rejection on %s = %s, want code %d, a message, a timestamp and clientToken %q only", topic, m.Payload, code, token)
		}
		return
	}
	t.Errorf("no rejection on %s among %v", topic, msgs)
}

// TestParseRequestTopic covers every request topic shape of both trees.
func TestParseRequestTopic(t *testing.T) {
	tests := []struct {
		topic   string
		ok      bool
		want    shadow.Address
		errCode int // 0: no error
	}{
		{"state/d1/update", true, shadow.Address{Tree: shadow.TreeState, Device: "d1", Op: shadow.OpUpdate}, 0},
		{"state/d1/shadow/cfg/get", true, shadow.Address{Tree: shadow.TreeState, Device: "d1", Name: "cfg", Op: shadow.OpGet}, 0},
		{"state/shadow/shadow/shadow/delete", true, shadow.Address{Tree: shadow.TreeState, Device: "shadow", Name: "shadow", Op: shadow.OpDelete}, 0},
		{"$aws/things/d1/shadow/update", true, shadow.Address{Tree: shadow.TreeAWS, Device: "d1", Op: shadow.OpUpdate}, 0},
		{"$aws/things/d1/shadow/name/cfg/delete", true, shadow.Address{Tree: shadow.TreeAWS, Device: "d1", Name: "cfg", Op: shadow.OpDelete}, 0},
		{"$aws/things/d1/shadow/name/name/get", true, shadow.Address{Tree: shadow.TreeAWS, Device: "d1", Name: "name", Op: shadow.OpGet}, 0},
		{"$aws/things/d1/shadow/list", true, shadow.Address{}, 404},
		{"$aws/things/d1/shadow/name/cfg/list", true, shadow.Address{}, 404},
		{"$aws/things/d 1/shadow/get", true, shadow.Address{}, 400},
		{"$aws/things/d1/shadow/name/c.f/get", true, shadow.Address{}, 400},
		{"state/d 1/get", true, shadow.Address{}, 400},
		{"state/d1/shadow/c.f/get", true, shadow.Address{}, 400},
		{"state/d1/update/accepted", false, shadow.Address{}, 0},
		{"state/d1/list", false, shadow.Address{}, 0},
		{"state/d1/shadow/cfg/list", false, shadow.Address{}, 0},
		{"state/d1/presence", false, shadow.Address{}, 0},
		{"state/d1", false, shadow.Address{}, 0},
		{"state/d1/other/cfg/get", false, shadow.Address{}, 0},
		{"$aws/things/d1/shadow/update/accepted", false, shadow.Address{}, 0},
		{"$aws/things/d1/shadow/name/cfg/update/accepted", false, shadow.Address{}, 0},
		{"$aws/things/d1/jobs/get", false, shadow.Address{}, 0},
		{"$aws/things/d1", false, shadow.Address{}, 0},
		{"rollouts/r1/status", false, shadow.Address{}, 0},
	}
	for _, tc := range tests {
		a, ok, err := shadow.ParseRequestTopic(tc.topic)
		switch {
		case ok != tc.ok:
			t.Errorf("ParseRequestTopic(%q) ok = %t, want %t", tc.topic, ok, tc.ok)
		case tc.errCode != 0 && shadow.CodeOf(err) != tc.errCode:
			t.Errorf("ParseRequestTopic(%q) error %v, want code %d", tc.topic, err, tc.errCode)
		case tc.errCode == 0 && err != nil:
			t.Errorf("ParseRequestTopic(%q) error %v", tc.topic, err)
		case tc.ok && tc.errCode == 0 && a != tc.want:
			t.Errorf("ParseRequestTopic(%q) = %+v, want %+v", tc.topic, a, tc.want)
		}
	}
}

// FuzzParseRequestTopic: any topic either is not a request, or is one with
// a valid device, name and operation that round-trips through Tree.Topic,
// or carries a 400 or 404 rejection.
func FuzzParseRequestTopic(f *testing.F) {
	for _, s := range []string{"state/d1/update", "state/d1/shadow/cfg/get", "$aws/things/d1/shadow/update",
		"$aws/things/d1/shadow/name/cfg/delete", "$aws/things/d1/shadow/list", "$aws/things//shadow/name//x", "state//get"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, topic string) {
		a, ok, err := shadow.ParseRequestTopic(topic)
		switch {
		case !ok:
			return
		case err != nil:
			if c := shadow.CodeOf(err); c != 400 && c != 404 {
				t.Fatalf("%q: error code %d", topic, c)
			}
		default:
			if got := a.Tree.Topic(a.Device, a.Name, string(a.Op)); got != topic {
				t.Fatalf("%q parsed to %+v, which spells %q", topic, a, got)
			}
		}
	})
}

// TestOpenFileFromMain opens a shadow.db written by main's engine before
// named shadows existed (testdata/compat/main.db, made by the program in
// its README) and checks that it reads unchanged and takes named shadows.
func TestOpenFileFromMain(t *testing.T) {
	raw, err := os.ReadFile("testdata/compat/main.db")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "shadow.db")
	if err := os.WriteFile(path, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	var st storetest.Store
	open := func() *shadow.Engine {
		st = storeAt(t, path)
		e, err := shadow.Open(t.Context(), shadow.Config{Store: st})
		if err != nil {
			t.Fatalf("open the file from main: %v", err)
		}
		return e
	}
	e := open()
	gets := []struct {
		id   device.ID
		want string // get/accepted without its timestamp
	}{
		{"dev-1", `{"metadata":{"desired":{"color":{"timestamp":1700000002},"fw":{"version":{"timestamp":1700000002}}},"reported":{"color":{"timestamp":1700000004},"fw":{"version":{"timestamp":1700000002}}}},"state":{"delta":{"fw":{"version":"2.0.0"}},"desired":{"color":"red","fw":{"version":"2.0.0"}},"reported":{"color":"red","fw":{"version":"1.0.0"}}},"version":2}`},
		{"dev.3:x", `{"metadata":{"reported":{"list":{"timestamp":1700000010},"n":{"timestamp":1700000010}}},"state":{"reported":{"list":[1,2.5,"x"],"n":1000}},"version":1}`},
	}
	for _, g := range gets {
		b, err := e.Get(t.Context(), g.id, nil)
		if err != nil {
			t.Fatalf("get %s: %v", g.id, err)
		}
		if got := string(stripTimestamp(t, b)); got != g.want {
			t.Errorf("get %s:\n got %s\nwant %s", g.id, got, g.want)
		}
	}
	if b, err := e.Get(t.Context(), "dev.3:x", nil); err != nil || !strings.Contains(string(b), `"list":[1,2.50,"x"],"n":1e3`) {
		t.Errorf("numbers are not kept as written: %s, %v", b, err)
	}
	page, _, err := e.List(t.Context(), "", 10)
	if err != nil || len(page) != 2 || page[0].ID != "dev-1" || page[1].ID != "dev.3:x" {
		t.Errorf("List = %+v, %v; want dev-1 and dev.3:x", page, err)
	}
	if _, err := e.Get(t.Context(), "dev-2", nil); !errors.Is(err, shadow.ErrNotFound) {
		t.Errorf("deleted dev-2: %v, want ErrNotFound", err)
	}
	if got, want := shadowNames(t, e, "dev-1"), []string{"@2"}; !slices.Equal(got, want) {
		t.Errorf("Shadows(dev-1) = %v, want %v", got, want)
	}
	// The old tombstone still keeps dev-2's version; named shadows can be added.
	if b, err := e.Update(t.Context(), "dev-2", []byte(`{"state":{}}`)); err != nil || version(t, b) != 2 {
		t.Errorf("re-created dev-2: %s, %v; want version 2", b, err)
	}
	mustUpdateNamed(t, e, "dev-1", "cfg", `{"state":{"reported":{"a":1}}}`)
	if err := e.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	e = open()
	defer e.Close(t.Context())
	if got, want := shadowNames(t, e, "dev-1"), []string{"@2", "cfg@1"}; !slices.Equal(got, want) {
		t.Errorf("after reopen: Shadows(dev-1) = %v, want %v", got, want)
	}
}
