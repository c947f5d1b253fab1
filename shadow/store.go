package shadow

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/umbra-iot/umbra/device"
)

// Store is where the engine keeps its shadows: one record per shadow (a
// document, or the tombstone of a deleted one), addressed by Key and
// written only through Commit. The engine encodes and decodes the records
// (the JSON form of Document); a Store keeps their bytes unchanged.
// shadow/boltstore is the single-node Store (one bbolt file); a cluster
// store (a JetStream KV bucket) implements the same contract, which
// shadow/storetest checks against every adapter. The engine never closes
// its Store: whoever opened it closes it (the adapter's Close, which
// storetest checks too: it drains or refuses the pending writes, bounded
// by its ctx) after Engine.Close.
//
// Revisions. Every record has a revision (Rev), which changes whenever the
// record does; Rev 0 means "no record". The engine reads a record,
// computes the next one and commits it with the revision it read, and
// the Store refuses the write with ErrRevisionMismatch if the record has
// changed since (compare-and-set, per key). With one engine per Store the
// engine serialises the writes of each device and the check never fails;
// with several engines on one Store (cluster mode) it keeps one update
// from overwriting another it did not see. The engine then reads again
// and retries.
//
// Durability. Commit returns nil only once its writes are durable (on
// disk, or on a quorum), and the engine publishes an update's replies
// only after that. A Store may group concurrent Commits into one
// transaction (shadow/boltstore does: one fsync for many updates); doc.go
// says why the grouping lives in the Store and not in the engine.
//
// Contexts. Every method honours ctx: Get, Scan and ScanNamed return
// ctx's error (wrapped) once it is done, and Commit returns it, having
// written nothing, while its writes wait to be handed over for commit.
// Once they are handed over Commit waits for the outcome, so a cancelled
// caller never leaves an outcome unknown.
//
// Unavailability. A Store whose backing service cannot be reached (a
// cluster store that lost its servers) returns errors wrapping
// ErrUnavailable, and recovers by itself when the service is back; the
// engine refuses the request with 503.
//
// Close stops taking writes (Commit then returns an error wrapping
// ErrClosed), commits the writes handed over before it while ctx lasts,
// refuses those still waiting when ctx ends (their Commit returns an
// error wrapping ErrClosed and nothing of them is written), waits for
// a transaction already in flight, and releases the Store. It returns an
// error wrapping ctx's error if it refused writes, and is idempotent.
// Every method returns an error wrapping ErrClosed after Close.
type Store interface {
	// Get returns the record of shadow k: its bytes and revision, or the
	// zero Record (Rev 0) and no error if k has none. The bytes are the
	// caller's to keep.
	Get(ctx context.Context, k Key) (Record, error)
	// Commit applies writes durably, all or nothing (a Store without
	// transactions across keys applies them in order and stops at the
	// first that fails, so a crash or a conflict leaves a prefix; the
	// engine orders its writes so that every prefix is a valid state). It
	// fails with an error wrapping ErrRevisionMismatch, having written
	// none of them, if a write's Rev is not its key's current revision.
	// A key appears at most once in one call.
	Commit(ctx context.Context, writes ...Write) error
	// Scan calls fn with the classic shadows whose device ID sorts after
	// after ("" for the first), in byte order of the ID, until fn returns
	// false. Named shadows are not visited. rec.Value is valid only until
	// fn returns.
	Scan(ctx context.Context, after device.ID, fn func(id device.ID, rec Record) bool) error
	// ScanNamed calls fn with the named shadows of device id, in byte
	// order of the name, or, when id is "", with every device's named
	// shadows in an order of the Store's choosing (the engine only counts
	// them), until fn returns false. Classic shadows are not visited.
	// rec.Value is valid only until fn returns.
	ScanNamed(ctx context.Context, id device.ID, fn func(k Key, rec Record) bool) error
}

// Rev is a record's revision in a Store: it changes whenever the record
// does, and 0 means there is no record. Only equality is meaningful.
type Rev uint64

// Record is a stored shadow: the JSON form of its Document (a tombstone
// is a Document with Deleted set) and the revision the Store gave it.
type Record struct {
	Value []byte
	Rev   Rev
}

// Write is one change in a Commit: store Value as shadow Key's record,
// or delete the record when Value is nil, provided the record's revision
// is still Rev (0: provided there is no record).
type Write struct {
	Key   Key
	Value []byte
	Rev   Rev
}

// ErrRevisionMismatch is returned (wrapped) by a Store's Commit when a
// write's record changed since it was read. The engine handles it; it
// never reaches a request.
var ErrRevisionMismatch = errors.New("shadow: store revision mismatch")

// CommitStats are a Store's commit counters. Engine.Stats reports them
// when its Store has a method CommitStats() CommitStats, as
// shadow/boltstore's has.
type CommitStats struct {
	// Commits is the number of transactions committed; Writes the number
	// of Commit calls they carried (one per accepted update or delete);
	// Time the total time spent committing, fsync included.
	Commits, Writes uint64
	Time            time.Duration
}

// commitStatter is the optional method behind CommitStats.
type commitStatter interface{ CommitStats() CommitStats }

// header is the part of a stored document a listing needs.
type header struct {
	Version Version `json:"version"`
	Updated int64   `json:"updated"`
	Deleted bool    `json:"deleted"`
}

func decodeHeader(k Key, v []byte) (header, error) {
	var hdr header
	if err := json.Unmarshal(v, &hdr); err != nil {
		return hdr, fmt.Errorf("decode %q: %w", k.String(), err)
	}
	return hdr, nil
}

// Summary is one line of a shadow listing.
type Summary struct {
	ID      device.ID `json:"id"`
	Version Version   `json:"version"`
	Updated time.Time `json:"updated"`
}

// list returns up to limit live classic shadows with IDs greater than
// after, in ID order, and the cursor for the next page ("" at the end).
func (e *Engine) list(ctx context.Context, after device.ID, limit int) ([]Summary, string, error) {
	var out []Summary
	next := ""
	var derr error
	err := e.store.Scan(ctx, after, func(id device.ID, rec Record) bool {
		hdr, err := decodeHeader(Key{Device: id}, rec.Value)
		if err != nil {
			derr = err
			return false
		}
		if hdr.Deleted {
			return true
		}
		if len(out) == limit {
			next = out[len(out)-1].ID.String()
			return false
		}
		out = append(out, Summary{ID: id, Version: hdr.Version, Updated: time.UnixMilli(hdr.Updated).UTC()})
		return true
	})
	if err = errors.Join(err, derr); err != nil {
		return nil, "", err
	}
	return out, next, nil
}

// namedEntry is one stored named shadow of a device: live or a tombstone.
type namedEntry struct {
	name Name
	rev  Rev
	header
}

// named returns every stored named shadow of id, live ones and tombstones,
// in name order.
func (e *Engine) named(ctx context.Context, id device.ID) ([]namedEntry, error) {
	var out []namedEntry
	var derr error
	err := e.store.ScanNamed(ctx, id, func(k Key, rec Record) bool {
		hdr, err := decodeHeader(k, rec.Value)
		if err != nil {
			derr = err
			return false
		}
		out = append(out, namedEntry{name: k.Name, rev: rec.Rev, header: hdr})
		return true
	})
	if err = errors.Join(err, derr); err != nil {
		return nil, err
	}
	return out, nil
}

// countNamed returns how many live named shadows the store holds.
func (e *Engine) countNamed(ctx context.Context) (int64, error) {
	var n int64
	var derr error
	err := e.store.ScanNamed(ctx, "", func(k Key, rec Record) bool {
		hdr, err := decodeHeader(k, rec.Value)
		if err != nil {
			derr = err
			return false
		}
		if !hdr.Deleted {
			n++
		}
		return true
	})
	return n, errors.Join(err, derr)
}
