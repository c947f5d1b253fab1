// Package cluster holds what Umbra's nodes coordinate through NATS
// JetStream in cluster mode (issue 15): the planner lease (Lease: exactly
// one node runs the rollout planner at a time; its holder may Release it
// and stay out of the campaign for a while) and the node registry
// (Registry: who is up, where, with how many connections), and device
// presence (Presence: one record per device that the node holding its
// connection writes with a compare-and-set and every node watches; the
// records of a node that left the registry are marked "node_lost").
//
// The lease and the registry live in key-value buckets whose keys expire: a lease or a
// registration that is not renewed disappears after its TTL, and the
// server writes a delete marker that watchers see (nats-server 2.11's
// limit markers). docs/cluster.md states the bounds.
package cluster
