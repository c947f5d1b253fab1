// Package boltstore keeps an identity.Storage in one bbolt file (the
// identity.db of a data directory) and the server key in a file of its
// own beside it (identity.KeyFileName, mode 0600): the single-node storage
// of umbra serve, and the only code that reads or writes identity.db.
//
// # Layout
//
// The file has the buckets every version of identity.db has had, so
// existing files open unchanged:
//
//	devices   device ID → {"mac","labels","createdAt","rotatedAt","enrolment","secretGen","certSha256"} (JSON)
//	tokens    token name → {"role","mac","createdAt","secretGen"} (JSON)
//	presence  device ID → {"connected","connectedAt","disconnectedAt","disconnectReason","remoteAddr"} (JSON)
//	removed   device ID → when it was last removed (RFC 3339, nanoseconds)
//	certs     certificate SHA-256 (lowercase hex) → the device ID it is bound to
//	meta      "keycheck" → HMAC of a fixed string under the server key
//
// Records of versions before credential generations lack "enrolment" and
// "secretGen"; identity.Open gives them generations (Storage.Replace).
//
// # Atomicity and durability
//
// Every change is one bbolt write transaction, committed with an fsync
// before the method returns: Create stores a whole bulk import or
// nothing, Replace compares the generations and writes in the same
// transaction, RemoveDevice deletes the record, its certificate binding
// and its presence and records the removal time together. Reads are
// read transactions, and records are decoded out of them (nothing refers
// to bbolt's memory after a method returns). A method checks ctx before
// it begins its transaction; a transaction cannot be cancelled once
// begun. Open waits at most Config.Timeout for another process's lock on
// the file and then fails with identity.ErrLocked.
package boltstore
