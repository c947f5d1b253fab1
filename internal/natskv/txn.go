package natskv

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"
)

// Txn stages the writes of one atomic change: reads go through it (and
// see its staged writes), and Commit applies every staged write in one
// Bucket.Apply, each write to a key the Txn read checked against the
// revision it read (optimistic concurrency: ErrConflict if another writer
// changed it). A Txn is used by one goroutine.
type Txn struct {
	b      *Bucket
	keys   map[string]*txnKey
	writes []string // keys written, in first-write order
}

type txnKey struct {
	read    bool   // read from the bucket: last and had are known
	had     bool   // the key had a value when read
	last    uint64 // the key's last message when read
	value   []byte // current value (staged or read); nil: none
	written bool
}

// Txn starts a change on b.
func (b *Bucket) Txn() *Txn { return &Txn{b: b, keys: map[string]*txnKey{}} }

// Get returns key's value as of this Txn: its staged write, or the bucket's
// value (read once).
func (t *Txn) Get(ctx context.Context, key string) ([]byte, bool, error) {
	k, ok := t.keys[key]
	if !ok {
		e, err := t.b.Read(ctx, key)
		if err != nil {
			return nil, false, err
		}
		k = &txnKey{read: true, had: e.Rev != 0, last: e.Last, value: e.Value}
		if e.Rev == 0 {
			k.value = nil
		}
		t.keys[key] = k
	}
	return k.value, k.value != nil, nil
}

// Put stages value as key's value.
func (t *Txn) Put(key string, value []byte) {
	if value == nil {
		value = []byte{}
	}
	t.stage(key, value)
}

// Delete stages the deletion of key.
func (t *Txn) Delete(key string) { t.stage(key, nil) }

func (t *Txn) stage(key string, value []byte) {
	k, ok := t.keys[key]
	if !ok {
		k = &txnKey{}
		t.keys[key] = k
	}
	if !k.written {
		k.written = true
		t.writes = append(t.writes, key)
	}
	k.value = value
}

// Len returns the number of keys written.
func (t *Txn) Len() int { return len(t.writes) }

// Commit applies the staged writes atomically. A deletion of a key that
// was read and had no value is left out.
func (t *Txn) Commit(ctx context.Context) error {
	ops := make([]Op, 0, len(t.writes))
	for _, key := range t.writes {
		k := t.keys[key]
		if k.value == nil && k.read && !k.had {
			continue
		}
		op := Op{Key: key, Value: k.value, Delete: k.value == nil}
		if k.read {
			op.Check, op.Expect = true, k.last
		}
		ops = append(ops, op)
	}
	if _, err := t.b.Apply(ctx, ops...); err != nil {
		return fmt.Errorf("commit %d writes: %w", len(ops), err)
	}
	return nil
}

// Staged returns the keys with prefix that this Txn has written, with
// their staged values (nil: deleted).
func (t *Txn) Staged(prefix string) map[string][]byte {
	out := map[string][]byte{}
	for _, key := range t.writes {
		if strings.HasPrefix(key, prefix) {
			out[key] = t.keys[key].value
		}
	}
	return out
}

// Backoff waits before try number attempt (0 for the first, which does not
// wait) of a change refused by a concurrent writer: a random 0 to
// 10·attempt ms, at most 100 ms, so racing writers spread out while the
// winner's write is applied. It returns ctx's error if ctx ends first.
func Backoff(ctx context.Context, attempt int) error {
	if attempt == 0 {
		return nil
	}
	d := time.Duration(rand.Int64N(int64(min(attempt, 10)) * int64(10*time.Millisecond)))
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}
