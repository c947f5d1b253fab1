package wire

import "time"

// ClusterStatus is the body of GET /v1/cluster in cluster mode (issue 15,
// docs/cluster.md): the live nodes, the holder of the planner lease and the
// replication state of every store bucket.
type ClusterStatus struct {
	Nodes []ClusterNode `json:"nodes"`
	// Planner is the node ID that holds the planner lease; "" while no
	// node holds it (a takeover is under way).
	Planner string `json:"planner"`
	// Healthy is true when every bucket has a leader and a quorum of
	// current replicas, and a node holds the planner lease.
	Healthy bool            `json:"healthy"`
	Buckets []ClusterBucket `json:"buckets"`
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
