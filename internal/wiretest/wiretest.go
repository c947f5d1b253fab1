package wiretest

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode"
)

// Filled returns a T whose every exported field, recursively, holds a
// non-zero value: strings, numbers and booleans, one-element slices and
// maps, UTC times, positive durations. Unsigned integers stay below 8 (a
// valid rollout.DeviceState).
func Filled[T any](tb testing.TB) T {
	tb.Helper()
	var v T
	n := 0
	fill(tb, reflect.ValueOf(&v).Elem(), &n)
	return v
}

func fill(tb testing.TB, v reflect.Value, n *int) {
	tb.Helper()
	*n++
	switch v.Kind() {
	case reflect.Struct:
		if v.Type() == reflect.TypeFor[time.Time]() {
			v.Set(reflect.ValueOf(time.Date(2026, 11, 23, 12, 0, *n, 0, time.UTC)))
			return
		}
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				fill(tb, v.Field(i), n)
			}
		}
	case reflect.String:
		v.SetString("s" + string(rune('a'+*n%26)))
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Int, reflect.Int64, reflect.Int32, reflect.Int16, reflect.Int8:
		if v.Type() == reflect.TypeFor[time.Duration]() {
			v.SetInt(int64(*n) * int64(time.Minute))
			return
		}
		v.SetInt(int64(*n))
	case reflect.Uint, reflect.Uint64, reflect.Uint32, reflect.Uint16, reflect.Uint8:
		v.SetUint(uint64(*n % 8))
	case reflect.Float64, reflect.Float32:
		v.SetFloat(float64(*n) + 0.5)
	case reflect.Slice:
		s := reflect.MakeSlice(v.Type(), 1, 1)
		fill(tb, s.Index(0), n)
		v.Set(s)
	case reflect.Map:
		m := reflect.MakeMap(v.Type())
		k, e := reflect.New(v.Type().Key()).Elem(), reflect.New(v.Type().Elem()).Elem()
		fill(tb, k, n)
		fill(tb, e, n)
		m.SetMapIndex(k, e)
		v.Set(m)
	case reflect.Pointer:
		p := reflect.New(v.Type().Elem())
		fill(tb, p.Elem(), n)
		v.Set(p)
	default:
		tb.Fatalf("wiretest: unhandled kind %s of %s", v.Kind(), v.Type())
	}
}

// SameFields checks that wireForm's JSON object has exactly domain's
// fields but those named in dropped, each with the same JSON value, and
// that every name in dropped is one of domain's fields.
func SameFields(tb testing.TB, what string, domain, wireForm any, dropped ...string) {
	tb.Helper()
	d, w := fields(tb, domain), fields(tb, wireForm)
	for _, k := range dropped {
		if _, ok := d[k]; !ok {
			tb.Errorf("%s: dropped field %q is not in the domain's JSON any more", what, k)
		}
		if _, ok := w[k]; ok {
			tb.Errorf("%s: dropped field %q is on the wire", what, k)
		}
		delete(d, k)
	}
	for k, v := range d {
		if got, ok := w[k]; !ok {
			tb.Errorf("%s: field %q (%s) is missing from the wire form: convert it, or drop it on purpose", what, k, v)
		} else if !bytes.Equal(got, v) {
			tb.Errorf("%s: field %q = %s on the wire, want %s", what, k, got, v)
		}
	}
	for k := range w {
		if _, ok := d[k]; !ok {
			tb.Errorf("%s: field %q is on the wire but not in the domain's JSON", what, k)
		}
	}
}

// fields decodes v's JSON object into its raw fields.
func fields(tb testing.TB, v any) map[string]json.RawMessage {
	tb.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		tb.Fatal(err)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		tb.Fatalf("%T is not a JSON object: %s", v, b)
	}
	return m
}

// SameFieldsSnake is SameFields for a wire form whose field names are the
// snake_case of the domain's camelCase ones (connectedAt → connected_at),
// at every depth.
func SameFieldsSnake(tb testing.TB, what string, domain, wireForm any, dropped ...string) {
	tb.Helper()
	b, err := json.Marshal(domain)
	if err != nil {
		tb.Fatal(err)
	}
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		tb.Fatal(err)
	}
	snaked, err := json.Marshal(snakeKeys(v))
	if err != nil {
		tb.Fatal(err)
	}
	// The wire form re-encoded the same way: nested objects compare with
	// their keys in the same (sorted) order.
	wb, err := json.Marshal(wireForm)
	if err != nil {
		tb.Fatal(err)
	}
	var wv any
	if err := json.Unmarshal(wb, &wv); err != nil {
		tb.Fatal(err)
	}
	sorted, err := json.Marshal(wv)
	if err != nil {
		tb.Fatal(err)
	}
	SameFields(tb, what, json.RawMessage(snaked), json.RawMessage(sorted), dropped...)
}

// snakeKeys renames the object keys of a decoded JSON value to snake_case.
func snakeKeys(v any) any {
	switch t := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(t))
		for k, e := range t {
			out[snakeCase(k)] = snakeKeys(e)
		}
		return out
	case []any:
		for i, e := range t {
			t[i] = snakeKeys(e)
		}
	}
	return v
}

// snakeCase is the snake_case of a camelCase name; an upper-case run
// counts as one word (certSha256 → cert_sha256).
func snakeCase(s string) string {
	var b strings.Builder
	for i, r := range s {
		if unicode.IsUpper(r) {
			if i > 0 && !unicode.IsUpper(rune(s[i-1])) {
				b.WriteByte('_')
			}
			r = unicode.ToLower(r)
		}
		b.WriteRune(r)
	}
	return b.String()
}
