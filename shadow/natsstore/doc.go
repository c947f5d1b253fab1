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
// the key's last message: none, or its delete marker), so the server
// refuses it if any node wrote the key since it was read: concurrent
// writers on different nodes never lose an update; the engine reads again
// and retries.
//
// # Atomic commits
//
// A Commit of several writes is one JetStream atomic batch (nats-server
// 2.12 and later; the bucket's stream allows atomic publish): all of its
// writes are stored, or, when one compare-and-set fails, none. Reads go
// through the stream's leader (direct reads from replicas are off), so a
// read after an acknowledged write sees it.
//
// # Durability
//
// Commit returns once JetStream has acknowledged the batch: it is stored
// on a quorum of the bucket's replicas (2 of 3 in an R3 bucket), and on
// their disks when the servers run with sync_interval: always (the
// harness's setting and the one docs/cluster.md asks for).
//
// # What is not as in boltstore
//
//   - No group commit: each Commit is one JetStream request (its servers
//     group their own disk writes).
//   - Scan and ScanNamed list the matching keys first (sorted here, since
//     the escaping does not keep byte order), then read each record: every
//     page of a listing costs one key listing of the bucket.
package natsstore
