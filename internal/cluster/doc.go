// Package cluster holds what Umbra's nodes coordinate through NATS
// JetStream in cluster mode (issue 15): the planner lease (Lease: exactly
// one node runs the rollout planner at a time) and the node registry
// (Registry: who is up, where, with how many connections).
//
// Both live in key-value buckets whose keys expire: a lease or a
// registration that is not renewed disappears after its TTL, and the
// server writes a delete marker that watchers see (nats-server 2.11's
// limit markers). docs/cluster.md states the bounds.
package cluster
