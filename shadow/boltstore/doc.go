// Package boltstore is the single-node shadow.Store: every shadow in one
// bbolt file (shadow.db), opened by Open and handed to shadow.Open, which
// owns it from then on.
//
// # File layout
//
// Two buckets, unchanged since the first Umbra release that wrote them:
// "shadows" holds the classic shadows keyed by device ID, and "named"
// holds the named shadows keyed "<device ID>/<name>". Each value is the
// JSON form of a shadow.Document exactly as the engine encoded it (a
// tombstone is a Document with "deleted":true). Files written before
// named shadows existed have no "named" bucket; Open creates it and
// changes nothing else.
//
// # Group commit and durability
//
// Commit returns once its writes are in a committed, fsynced bbolt
// transaction. One committer goroutine groups every Commit queued while
// the previous transaction was syncing into the next transaction (up to
// 2048 calls, without waiting for more), so many devices' updates share
// one fsync. Each call's compare-and-set (shadow.Write.Rev) is checked
// inside the transaction: a call that fails it gets
// shadow.ErrRevisionMismatch and is left out, and the others commit.
// Revisions are a 64-bit hash of a record's bytes under a seed chosen by
// Open, so they need no room in the file; they are valid for the Store
// that gave them (the engine reads and writes within one request), not
// across a reopen.
//
// # Close
//
// Close stops taking writes, commits those already queued while its ctx
// lasts and refuses the rest (shadow.ErrClosed) once it ends, waits for
// the transaction in flight and closes the file. A second process that
// opens the file while it is held fails after Config.Timeout with an
// error wrapping ErrLocked.
package boltstore
