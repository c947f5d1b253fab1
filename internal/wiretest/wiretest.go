package wiretest

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
	"time"
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
