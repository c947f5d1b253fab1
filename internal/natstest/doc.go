// Package natstest runs real nats-server processes with JetStream for tests
// and benchmarks of Umbra's cluster mode: one server (Start) or a cluster of
// three (StartCluster, for R3 buckets), each a child process on free loopback
// ports (client and cluster routes) with its store in the test's temporary
// directory, stopped at cleanup.
//
// The binary is the pinned nats-server that `make deps` builds into
// .tools/bin (see docs/cluster.md). It is found, in this order, at the path in
// the environment variable UMBRA_NATS_SERVER, in .tools/bin of the module
// root, or on PATH; when it is missing the test fails with
// "nats-server not found: run `make deps`".
//
// Readiness is awaited, never slept for: a server is ready when a client
// connects to it and JetStream answers an account-info request through it; a
// cluster is ready when, in addition, a replicated (R3) probe stream can be
// created, which needs a meta leader and all three peers.
//
// Faults: Server.Kill sends SIGKILL (kill -9) and waits for the process to
// end; Server.Restart starts it again on the same ports and store directory
// and waits until it is ready; Cluster.RestartAll restarts every killed
// member of a cluster (all of them at once, so they can form a quorum).
package natstest
