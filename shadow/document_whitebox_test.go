package shadow

import (
	"encoding/json"
	"testing"
)

func mustObj(t testing.TB, s string) map[string]any {
	t.Helper()
	if s == "" {
		return nil
	}
	var m map[string]any
	if err := decodeJSON([]byte(s), &m); err != nil {
		t.Fatalf("bad test JSON %s: %v", s, err)
	}
	return m
}

func js(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func TestDelta(t *testing.T) {
	tests := []struct {
		name, desired, reported, want string
	}{
		{"no desired", "", `{"a":1}`, "null"},
		{"no reported", `{"a":1}`, "", `{"a":1}`},
		{"equal", `{"a":1,"b":"x"}`, `{"a":1,"b":"x"}`, "null"},
		{"numbers by value", `{"a":1}`, `{"a":1.0}`, "null"},
		{"exponent", `{"a":100}`, `{"a":1e2}`, "null"},
		{"differ", `{"a":1}`, `{"a":2}`, `{"a":1}`},
		{"missing key", `{"a":1,"b":2}`, `{"a":1}`, `{"b":2}`},
		{"reported only keys ignored", `{"a":1}`, `{"a":1,"z":9}`, "null"},
		{"nested path preserved", `{"l":{"c":{"r":1,"g":2,"b":3}}}`, `{"l":{"c":{"r":1,"g":0,"b":3}}}`, `{"l":{"c":{"g":2}}}`},
		{"array whole", `{"a":[1,2,3]}`, `{"a":[1,2]}`, `{"a":[1,2,3]}`},
		{"array equal", `{"a":[1,{"x":2}]}`, `{"a":[1,{"x":2}]}`, "null"},
		{"type change", `{"a":{"x":1}}`, `{"a":5}`, `{"a":{"x":1}}`},
		{"object vs missing", `{"a":{"x":1}}`, `{}`, `{"a":{"x":1}}`},
		{"bool vs string", `{"a":true}`, `{"a":"true"}`, `{"a":true}`},
		{"big ints exact", `{"a":9007199254740993}`, `{"a":9007199254740992}`, `{"a":9007199254740993}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := js(delta(mustObj(t, tc.desired), mustObj(t, tc.reported)))
			if got != tc.want {
				t.Errorf("delta(%s, %s) = %s, want %s", tc.desired, tc.reported, got, tc.want)
			}
		})
	}
}

func TestMerge(t *testing.T) {
	tests := []struct {
		name, base, patch, want, wantMeta string
	}{
		{"add", `{"a":1}`, `{"b":2}`, `{"a":1,"b":2}`, `{"a":{"timestamp":1},"b":{"timestamp":7}}`},
		{"replace scalar", `{"a":1}`, `{"a":"x"}`, `{"a":"x"}`, `{"a":{"timestamp":7}}`},
		{"null deletes", `{"a":1,"b":2}`, `{"a":null}`, `{"b":2}`, `{"b":{"timestamp":1}}`},
		{"null missing is noop", `{"a":1}`, `{"z":null}`, `{"a":1}`, `{"a":{"timestamp":1}}`},
		{"nested merge", `{"o":{"x":1,"y":2}}`, `{"o":{"y":3}}`, `{"o":{"x":1,"y":3}}`, `{"o":{"x":{"timestamp":1},"y":{"timestamp":7}}}`},
		{"array replaces", `{"a":[1,2,3]}`, `{"a":[4]}`, `{"a":[4]}`, `{"a":{"timestamp":7}}`},
		{"object over scalar", `{"a":1}`, `{"a":{"b":{"c":1}}}`, `{"a":{"b":{"c":1}}}`, `{"a":{"b":{"c":{"timestamp":7}}}}`},
		{"scalar over object", `{"a":{"b":1}}`, `{"a":2}`, `{"a":2}`, `{"a":{"timestamp":7}}`},
		{"nulls stripped in new object", `{}`, `{"a":{"b":null,"c":1}}`, `{"a":{"c":1}}`, `{"a":{"c":{"timestamp":7}}}`},
		{"nested delete keeps empty object", `{"o":{"x":1}}`, `{"o":{"x":null}}`, `{"o":{}}`, `{"o":{}}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			base := mustObj(t, tc.base)
			meta := map[string]any{}
			merge(map[string]any{}, meta, base, 1) // build base metadata at ts=1
			merge(base, meta, mustObj(t, tc.patch), 7)
			if got := js(base); got != tc.want {
				t.Errorf("merge state = %s, want %s", got, tc.want)
			}
			if got := js(meta); got != tc.wantMeta {
				t.Errorf("merge metadata = %s, want %s", got, tc.wantMeta)
			}
		})
	}
}

func TestApplySection(t *testing.T) {
	sec, meta := applySection(mustObj(t, `{"a":1}`), map[string]any{"a": leafMeta(1)}, nil, true, 2)
	if sec != nil || meta != nil {
		t.Errorf("null section = %s %s, want removed", js(sec), js(meta))
	}
	sec, _ = applySection(mustObj(t, `{"a":1}`), map[string]any{"a": leafMeta(1)}, mustObj(t, `{"a":null}`), true, 2)
	if sec != nil {
		t.Errorf("emptied section = %s, want absent", js(sec))
	}
	sec, _ = applySection(mustObj(t, `{"a":1}`), nil, nil, false, 2)
	if js(sec) != `{"a":1}` {
		t.Errorf("untouched section = %s, want {\"a\":1}", js(sec))
	}
}

func TestParseUpdateErrors(t *testing.T) {
	tests := []struct{ name, body, msg string }{
		{"not json", `{`, "Invalid JSON"},
		{"not object", `[1]`, "Invalid JSON"},
		{"trailing", `{"state":{}} x`, "Invalid JSON"},
		{"bad utf8", "{\"state\":{\"reported\":{\"a\":\"\xff\"}}}", "Invalid JSON: payload is not UTF-8"},
		{"missing state", `{"clientToken":"x"}`, "Missing required node: state"},
		{"state scalar", `{"state":1}`, "State node must be an object"},
		{"delta node", `{"state":{"delta":{}}}`, "State contains an invalid node: 'delta'"},
		{"unknown node", `{"state":{"foo":{}}}`, "State contains an invalid node: 'foo'"},
		{"desired scalar", `{"state":{"desired":1}}`, "Desired node must be an object"},
		{"reported array", `{"state":{"reported":[]}}`, "Reported node must be an object"},
		{"version string", `{"state":{},"version":"1"}`, "Invalid version: must be a non-negative integer"},
		{"version negative", `{"state":{},"version":-1}`, "Invalid version: must be a non-negative integer"},
		{"version fraction", `{"state":{},"version":1.5}`, "Invalid version: must be a non-negative integer"},
		{"token type", `{"state":{},"clientToken":5}`, "Invalid clientToken"},
		{"token long", `{"state":{},"clientToken":"` + string(make([]byte, 0)) + `12345678901234567890123456789012345678901234567890123456789012345"}`, "Invalid clientToken: longer than 64 bytes"},
		{"null in array", `{"state":{"reported":{"a":[1,null]}}}`, "Invalid JSON: arrays may not contain null elements"},
		{"empty key", `{"state":{"reported":{"":1}}}`, "Invalid key: keys must be 1 to 128 bytes"},
		{"too deep", `{"state":{"reported":{"a":{"b":{"c":{"d":{"e":{"f":{"g":{"h":{"i":1}}}}}}}}}}}`, "JSON contains too many levels of nesting; maximum is 8"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, rerr := parseUpdate([]byte(tc.body), DefaultMaxDepth)
			if rerr == nil {
				t.Fatalf("parseUpdate(%s) accepted, want 400 %q", tc.body, tc.msg)
			}
			if rerr.Code != 400 || rerr.Message != tc.msg {
				t.Errorf("parseUpdate(%s) = %d %q, want 400 %q", tc.body, rerr.Code, rerr.Message, tc.msg)
			}
		})
	}
}

// FuzzUpdate drives parsing, merging and delta computation with arbitrary
// bodies: it must never panic, and a delta never holds a key whose desired
// value equals the reported one.
func FuzzUpdate(f *testing.F) {
	for _, s := range []string{
		`{"state":{"desired":{"a":1,"o":{"x":[1,2]}},"reported":{"a":1.0}}}`,
		`{"state":{"desired":{"a":null}},"version":3,"clientToken":"t"}`,
		`{"state":null}`, `{"state":{"reported":{"o":{"x":{"y":1}}}}}`, `{`, `[]`, `{"state":{"delta":1}}`,
	} {
		f.Add([]byte(`{"state":{"desired":{"a":2,"o":{"x":[1,2],"y":true}},"reported":{"o":{"y":false}}}}`), []byte(s))
	}
	f.Fuzz(func(t *testing.T, first, second []byte) {
		var doc Document
		for _, body := range [][]byte{first, second} {
			req, rerr := parseUpdate(body, DefaultMaxDepth)
			if rerr != nil {
				if rerr.Code != 400 {
					t.Fatalf("parse error code %d, want 400", rerr.Code)
				}
				continue
			}
			if req.clearState {
				doc.State, doc.Metadata = State{}, State{}
				continue
			}
			doc.State.Desired, doc.Metadata.Desired = applySection(doc.State.Desired, doc.Metadata.Desired, req.desired, req.hasDesired, 1)
			doc.State.Reported, doc.Metadata.Reported = applySection(doc.State.Reported, doc.Metadata.Reported, req.reported, req.hasReported, 1)
		}
		checkDelta(t, doc.Delta(), doc.State.Desired, doc.State.Reported)
		if _, err := json.Marshal(&doc); err != nil {
			t.Fatalf("document does not encode: %v", err)
		}
	})
}

func checkDelta(t *testing.T, d, desired, reported map[string]any) {
	t.Helper()
	for k, dv := range d {
		want, ok := desired[k]
		if !ok {
			t.Fatalf("delta key %q not in desired", k)
		}
		rv, inReported := reported[k]
		if sub, isObj := dv.(map[string]any); isObj {
			wo, wok := want.(map[string]any)
			ro, rok := rv.(map[string]any)
			if wok && rok {
				checkDelta(t, sub, wo, ro)
				continue
			}
		}
		if inReported && equal(want, rv) {
			t.Fatalf("delta key %q: desired %s equals reported %s", k, js(want), js(rv))
		}
	}
}
