// Package natsstore is the cluster-mode identity.Storage: devices, tokens,
// certificate bindings, removal times and presence in one JetStream
// key-value bucket (default "umbra_identity"), and the server key alone in
// a second bucket (default "umbra_identity_key"), so that a copy of the
// records reveals nothing usable, as the key file does in single-node
// mode. Every node shares them.
//
// # Bucket layout (schema version 1)
//
//	n.<name>   a device's or token's record (JSON with its role): devices and
//	           tokens share this one namespace, so a name is taken once
//	d.<id>     an empty index entry per device, t.<name> per token: the
//	           listings (Devices, Tokens) list these keys
//	c.<fp>     a bound certificate's SHA-256 fingerprint → the device ID
//	r.<id>     when a removed device was last removed (RFC 3339, ns)
//	p.<id>     a device's presence (JSON)
//	m.keycheck the key check
//
// Names, IDs and fingerprints are escaped by natskv.Token. The schema
// record _umbra.schema of each bucket is checked by Open.
//
// # Atomicity
//
// Every change of several keys is one JetStream atomic batch in which each
// key that must be unchanged since it was read carries its expected
// revision: Create (records, index entries and bindings of every record,
// all or nothing), RemoveDevice (record, index, binding, presence and
// removal time), DeleteToken. With enrolledOnly, SavePresence conditions
// each presence on its device's record (the batch's check on another key),
// so a presence never comes back for a device removed meanwhile. A batch
// refused because another node changed a key is read and tried again (at
// most ten times, after a short random backoff, then identity.ErrConflict).
//
// Limits of the mapping:
//   - One atomic batch carries at most Config.MaxBatch writes (default
//     1000, nats-server's default max_batch_size). A Create needing more (a
//     bulk import of more than 333 devices with certificates, 500 without)
//     is written in several atomic batches of whole records, in order; if
//     one fails (a conflict with another node, NATS lost, a refused write),
//     the batches written before it are deleted again, each key only if it
//     still holds the revision this Create wrote, so the Create stores
//     nothing, as identity.Storage promises. Where the promise is weaker
//     than one batch: while such a Create runs, other readers (and the
//     other nodes' change feeds) may see its first records, and a node
//     that dies between two batches, or loses NATS before its undo
//     finished, leaves the records written so far (their secrets were
//     never returned: password logins fail until a rotation; certificate
//     bindings work). The error then says so; remove those devices, or
//     import the rest.
//   - SavePresence of more than MaxBatch presences is stored in several
//     batches, each atomic (a crash between them keeps the older presence
//     of the rest; the broker writes presence again on the next change).
//   - The listings list the index keys and read each record: a page costs
//     one key listing of the index.
//
// # Durability
//
// A change returns once JetStream acknowledged it: on a quorum of the
// replicas, on disk with sync_interval: always.
package natsstore
