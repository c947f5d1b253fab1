// Package natsstore is the cluster-mode broker.Store: retained messages
// and persistent sessions (with their subscriptions and queued messages)
// in one JetStream key-value bucket (default "umbra_broker") that every
// node reads and writes, so they are cluster-wide.
//
// # Bucket layout (schema version 1)
//
//	rt.<topic>             a retained message (JSON of broker.Message)
//	s.<client>             a session (JSON of broker.Session)
//	sub.<client>.<filter>  a subscription, with its client ID (JSON)
//	q.<client>.<seq>       a queued message, with its client ID; seq is
//	                       20 decimal digits
//
// Topics, client IDs and filters are escaped by natskv.HashToken: up to
// 160 escaped bytes they stay readable, longer ones are hashed (SHA-256)
// in the key and kept whole in the value.
//
// # Atomicity
//
// Apply commits its ops in order in atomic batches of at most
// Config.MaxBatch writes (one batch when they fit): a crash or an error
// leaves a prefix of the ops, which broker.Store allows. OpReset commits
// what precedes it, then purges every broker key of the bucket.
//
// # Cluster caveats (for the wiring of cluster mode)
//
// The broker was written for a store that only it uses. On a shared
// bucket:
//   - Load returns every session of the cluster, not only the sessions of
//     the clients connected to this node;
//   - the broker's recovery after a failed Apply (OpReset, then its whole
//     state again) would purge the state other nodes wrote.
//
// Cross-node delivery (issue 15, another branch) must scope both before
// cluster mode uses this store for a running broker; the store itself
// implements the contract as written.
//
// # Durability
//
// Apply returns once JetStream acknowledged every batch: on a quorum of
// the replicas, on disk with sync_interval: always.
package natsstore
