// Package natsstore is the cluster-mode rollout.Store: every rollout in
// one JetStream key-value bucket (default "umbra_rollout"), written by the
// planner of the node that holds the planner lease and read by every node.
//
// # Bucket layout (schema version 1)
//
//	seq               the last rollout number (decimal)
//	r.<id>.meta       the Rollout (JSON)
//	r.<id>.n          the number of targets
//	r.<id>.tg.<c>     targets 4096·c … 4096·c+4095, joined by '\n'
//	r.<id>.dev.<c>    device records of positions 1024·c …, a JSON object
//	                  from the offset in the chunk to the Device's JSON
//	                  (absent: pending)
//	r.<id>.err.<c>    last error texts, chunked likewise
//	r.<id>.in.<c>     undelivered intents, chunked likewise
//	r.<id>.ev.<n>     the events one Commit logged, from Seq n on (JSON)
//	r.<id>.evseq      the last event Seq
//	r.<id>.x.<dev>    a Jobs device's execution record (JSON)
//	j.<dev>           a Jobs device's mark (u64 unix ns, big-endian)
//
// Per-position records are grouped into chunks so that one planner pass,
// which may change thousands of positions, stays one atomic batch of a
// few dozen writes.
//
// # Atomicity and the single writer
//
// Create and Commit are each one JetStream atomic batch (all or nothing,
// event sequence numbers included). Every key a batch changes after
// reading it (a chunk, the sequence, the event counter) is checked
// against the revision it was read at, so a planner that lost its lease
// and writes on concurrently with its successor gets an error and writes
// nothing, instead of overwriting the successor's records.
//
// # Durability
//
// Create and Commit return once JetStream acknowledged the batch: on a
// quorum of the replicas, on disk with sync_interval: always.
package natsstore
