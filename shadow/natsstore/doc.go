// Package natsstore is the cluster-mode shadow.Store: every shadow in one
// JetStream key-value bucket (default "umbra_shadow"), shared by every
// node, opened by Open and handed to shadow.Open.
//
// # Bucket layout (schema version 1)
//
// A classic shadow is the key "c.<id>", a named one "n.<id>.<name>", the
// ID and the name escaped by natskv.Token (":" and "." become "=3A" and
// "=2E"). Each value is the JSON form of a shadow.Document exactly as the
// engine encoded it, as in shadow/boltstore. The meta key "_umbra.schema"
// holds {"kind":"shadow","schema":1}; Open refuses a bucket with another
// (natskv.ErrSchemaMismatch). The bucket keeps one revision per key.
//
// # Revisions and compare-and-set
//
// A record's revision is its key's JetStream revision (the stream sequence
// of its last write), unique in the bucket and never 0. A Write with Rev r
// is published with "expected last subject sequence r" (a create expects
// no live record), so the server refuses it if any node wrote the key
// since it was read: concurrent writers on different nodes never lose an
// update; the engine reads again and retries.
//
// # Durability
//
// Commit returns once JetStream has acknowledged every write: the write is
// stored on a quorum of the bucket's replicas (2 of 3 in an R3 bucket), and
// on their disks when the servers run with sync_interval: always (the
// harness's setting and the one docs/cluster.md asks for).
//
// # What is not as in boltstore
//
//   - No transaction across keys: a Commit's writes are applied in order and
//     the first that fails stops the rest, leaving the prefix before it
//     (shadow.Store allows this; the engine orders its writes so every
//     prefix is valid).
//   - No group commit: each write is one JetStream request.
//   - Scan and ScanNamed list the matching keys first (sorted here, since
//     the escaping does not keep byte order), then read each record: a page
//     of a listing costs one key listing of the bucket.
package natsstore
