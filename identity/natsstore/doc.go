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
//     1000, nats-server's default max_batch_size): a Create needing more (a
//     bulk import of more than about 330 to 500 devices) fails and stores
//     nothing; split the import or raise both limits.
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
