package wire

import "time"

// ClusterStatus is the body of GET /v1/cluster (issue 15,
// docs/cluster.md): the live nodes, the holder of the planner lease and the
// replication state of every store bucket. A single-node server answers
// Mode "single-node" with itself as the one node and no buckets.
type ClusterStatus struct {
	// Mode is "cluster" (umbra serve --nats) or "single-node".
	Mode string `json:"mode"`
	// Node is the ID of the node that answered ("" in single-node mode).
	Node  string        `json:"node"`
	Nodes []ClusterNode `json:"nodes"`
	// Planners says where rollouts are planned: "lease" (one planner in
	// the cluster, on the node holding the planner lease), "single-node",
	// or "per-node" (each node planned the rollouts created on it: cluster
	// nodes of releases before the planner lease).
	Planners string `json:"planners"`
	// Planner is the node ID that holds the planner lease; "" while no
	// node holds it (a takeover is under way) or when Planners is not
	// "lease".
	Planner string `json:"planner"`
	// Healthy is true when every bucket has a leader and a quorum of
	// current replicas and, when Planners is "lease", a node holds the
	// planner lease.
	Healthy bool            `json:"healthy"`
	Buckets []ClusterBucket `json:"buckets"`
	// Warnings are conditions an operator should know of that do not
	// make the cluster unhealthy, e.g. nodes of different Umbra releases
	// (normal during a rolling upgrade, a mistake otherwise). Omitted
	// when there are none.
	Warnings []string `json:"warnings,omitempty"`
}

// ClusterNode is one live node of a ClusterStatus.
type ClusterNode struct {
	ID          string    `json:"id"`
	Addr        string    `json:"addr"`
	Version     string    `json:"version"`
	Connections int       `json:"connections"`
	Started     time.Time `json:"started"`
	Heartbeat   time.Time `json:"heartbeat"`
}

// ClusterBucket is the replication state of one store bucket: its
// JetStream stream, replica count, leading server, how many replicas are
// current, which are offline or lagging, and its size.
type ClusterBucket struct {
	Stream   string   `json:"stream"`
	Replicas int      `json:"replicas"`
	Leader   string   `json:"leader"`
	Current  int      `json:"current"`
	Offline  []string `json:"offline,omitempty"`
	Lagging  []string `json:"lagging,omitempty"`
	Keys     uint64   `json:"keys"`
	Bytes    uint64   `json:"bytes"`
	Healthy  bool     `json:"healthy"`
}
