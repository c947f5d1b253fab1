package shadow

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/big"
	"strconv"
	"time"
)

// Version is a shadow document's version: it starts at 1 when the document is
// created and increases by exactly one with every accepted update. It is a
// distinct type from a firmware version so the two cannot be confused.
type Version uint64

// State is the desired and reported sections of a document. A nil map means
// the section is absent. Values are what encoding/json produces with
// UseNumber: map[string]any, []any, string, json.Number, bool.
type State struct {
	Desired  map[string]any `json:"desired,omitempty"`
	Reported map[string]any `json:"reported,omitempty"`
}

// Document is one device's shadow as stored.
type Document struct {
	State    State   `json:"state"`
	Metadata State   `json:"metadata"` // mirrors State; every leaf is {"timestamp": <unix s>}
	Version  Version `json:"version"`
	// Updated is when the last accepted change was applied, in Unix
	// milliseconds.
	Updated int64 `json:"updated"`
	// Deleted marks a tombstone: the shadow was deleted, but its version is
	// kept so that a re-created shadow continues the numbering and a stale
	// optimistic lock cannot succeed.
	Deleted bool `json:"deleted,omitempty"`
}

// UpdatedTime returns Updated as a time.Time.
func (d *Document) UpdatedTime() time.Time { return time.UnixMilli(d.Updated) }

// Delta returns the desired keys that are missing from, or differ from, the
// reported state: path-preserving, arrays compared as whole values, numbers
// compared by value. It returns nil when desired and reported agree.
func (d *Document) Delta() map[string]any {
	return delta(d.State.Desired, d.State.Reported)
}

func delta(desired, reported map[string]any) map[string]any {
	var out map[string]any
	for k, dv := range desired {
		rv, present := reported[k]
		var diff any
		switch {
		case !present:
			diff = dv
		default:
			do, dok := dv.(map[string]any)
			ro, rok := rv.(map[string]any)
			if dok && rok {
				if sub := delta(do, ro); sub != nil {
					diff = sub
				}
			} else if !equal(dv, rv) {
				diff = dv
			}
		}
		if diff != nil {
			if out == nil {
				out = make(map[string]any)
			}
			out[k] = diff
		}
	}
	return out
}

// project returns the part of the metadata tree meta that has the shape of
// tree: used to give a delta the desired-side metadata of its fields.
func project(tree, meta map[string]any) map[string]any {
	if tree == nil {
		return nil
	}
	out := make(map[string]any, len(tree))
	for k, v := range tree {
		m := meta[k]
		if sub, ok := v.(map[string]any); ok {
			mo, _ := m.(map[string]any)
			out[k] = project(sub, mo)
			continue
		}
		out[k] = m
	}
	return out
}

// leafMeta is the metadata of one leaf value.
func leafMeta(ts int64) map[string]any {
	return map[string]any{"timestamp": json.Number(strconv.FormatInt(ts, 10))}
}

// metaFor builds the metadata tree of a request's value v, all leaves
// stamped ts. Nulls (deletions) have no metadata, as deleted keys have none
// in the document: the accepted message of a request that deletes many keys
// stays about the size of the request.
func metaFor(v any, ts int64) any {
	if o, ok := v.(map[string]any); ok {
		m := make(map[string]any, len(o))
		for k, c := range o {
			if c != nil {
				m[k] = metaFor(c, ts)
			}
		}
		return m
	}
	return leafMeta(ts)
}

// merge applies patch to dst in place (JSON merge-patch semantics: objects
// merge key by key, arrays and scalars replace, null deletes) and keeps the
// metadata tree meta in step, stamping every written leaf with ts. Both dst
// and meta must be non-nil.
func merge(dst, meta, patch map[string]any, ts int64) {
	for k, pv := range patch {
		if pv == nil {
			delete(dst, k)
			delete(meta, k)
			continue
		}
		po, pIsObj := pv.(map[string]any)
		if pIsObj {
			if do, ok := dst[k].(map[string]any); ok {
				mo, ok := meta[k].(map[string]any)
				if !ok {
					mo = make(map[string]any)
					meta[k] = mo
				}
				merge(do, mo, po, ts)
				continue
			}
			o, m := make(map[string]any, len(po)), make(map[string]any, len(po))
			merge(o, m, po, ts)
			dst[k], meta[k] = o, m
			continue
		}
		dst[k] = pv
		meta[k] = leafMeta(ts)
	}
}

// applySection merges a request section into a document section. present
// false means the request did not mention the section; a present nil patch
// removes the section. Empty sections are stored as absent.
func applySection(sec, meta map[string]any, patch map[string]any, present bool, ts int64) (map[string]any, map[string]any) {
	if !present {
		return sec, meta
	}
	if patch == nil {
		return nil, nil
	}
	if sec == nil {
		sec = make(map[string]any)
	}
	if meta == nil {
		meta = make(map[string]any)
	}
	merge(sec, meta, patch, ts)
	if len(sec) == 0 {
		return nil, nil
	}
	return sec, meta
}

// equal compares two JSON values; numbers compare by value (1 == 1.0).
func equal(a, b any) bool {
	switch av := a.(type) {
	case nil:
		return b == nil
	case bool:
		bv, ok := b.(bool)
		return ok && av == bv
	case string:
		bv, ok := b.(string)
		return ok && av == bv
	case json.Number:
		bv, ok := b.(json.Number)
		return ok && numberEqual(av, bv)
	case []any:
		bv, ok := b.([]any)
		if !ok || len(av) != len(bv) {
			return false
		}
		for i := range av {
			if !equal(av[i], bv[i]) {
				return false
			}
		}
		return true
	case map[string]any:
		bv, ok := b.(map[string]any)
		if !ok || len(av) != len(bv) {
			return false
		}
		for k, x := range av {
			y, ok := bv[k]
			if !ok || !equal(x, y) {
				return false
			}
		}
		return true
	}
	return false
}

func numberEqual(a, b json.Number) bool {
	if a == b {
		return true
	}
	if ai, err := strconv.ParseInt(string(a), 10, 64); err == nil {
		if bi, err := strconv.ParseInt(string(b), 10, 64); err == nil {
			return ai == bi
		}
	}
	af, _, aerr := big.ParseFloat(string(a), 10, 256, big.ToNearestEven)
	bf, _, berr := big.ParseFloat(string(b), 10, 256, big.ToNearestEven)
	if aerr != nil || berr != nil {
		return false
	}
	return af.Cmp(bf) == 0
}

// decodeJSON decodes b into v with numbers kept as json.Number and rejects
// trailing data.
func decodeJSON(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("trailing data after JSON value")
	}
	return nil
}

// sectionSize is the size the limit counts: compact JSON of desired plus
// reported (metadata excluded, as in AWS IoT).
func sectionSize(s State) (int, error) {
	n := 0
	for _, sec := range []map[string]any{s.Desired, s.Reported} {
		if sec == nil {
			continue
		}
		b, err := json.Marshal(sec)
		if err != nil {
			return 0, err
		}
		n += len(b)
	}
	return n, nil
}

func cloneState(s State) State {
	return State{Desired: cloneMap(s.Desired), Reported: cloneMap(s.Reported)}
}

func cloneMap(m map[string]any) map[string]any {
	if m == nil {
		return nil
	}
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = cloneValue(v)
	}
	return out
}

func cloneValue(v any) any {
	switch x := v.(type) {
	case map[string]any:
		return cloneMap(x)
	case []any:
		out := make([]any, len(x))
		for i, c := range x {
			out[i] = cloneValue(c)
		}
		return out
	}
	return v
}
