// Package plannerrpc forwards rollout planner calls between the nodes of
// a cluster (docs/cluster.md, "The planner under the lease"): exactly one
// node, the holder of the planner lease, runs the rollout planner; every
// other node serves the rollout API, the AWS IoT Jobs API of its devices
// and firmware's "version in use" check by forwarding the planner calls to
// it over NATS request/reply.
//
// # Model
//
// Planner is every planner call a node makes; *rollout.Planner satisfies
// it, and so does *Client, the forwarding implementation. The leader runs a
// Server: it subscribes to the RPC subject (DefaultSubject) while it holds
// the lease and answers each request from its local planner. A Client with
// a Local planner (the node is the leader) calls it directly; otherwise it
// sends a request on the subject and waits for the reply within the
// caller's deadline (Config.Timeout when the caller's context has none).
//
// # Wire format
//
// One JSON object per request and per reply, each carrying the protocol
// version "v" (Version). The payloads are the rollout package's own JSON
// forms (rollout.Rollout, rollout.Status, rollout.Event, … : the records
// rollout/natsstore stores), so that a forwarded call returns what the
// local call returns. An error travels as its message and the names of the
// sentinels it wraps (rollout.ErrNotFound → "not_found", …), plus the data
// of a *rollout.ConflictError, *rollout.IncompatibleError or
// *rollout.ExecutionError, and is rebuilt by the client so that errors.Is
// and errors.As answer as for the local error.
//
// Every request is validated on the receiving side before the planner sees
// it (a node may run another Umbra release): a body over MaxBody, bytes
// that are not one JSON object of known fields, another protocol version,
// an unknown operation or a malformed ID gets an error reply wrapping
// rollout.ErrInvalid (ErrUnavailable for a version mismatch) that says
// what was wrong, and nothing reaches the planner.
//
// # Creates in parts
//
// A create (or preview) whose explicit device list makes the request
// larger than MaxBody is sent in parts, each within MaxBody: every part
// but the last is a "stage_devices" request naming a random stage token
// and its index, which the Server keeps in memory (scoped by the sending
// node); the create naming the stage and the number of parts staged
// carries the last part, and the Server runs the planner's Create once
// with every device, in order. Nothing is stored before that create, so
// a sequence that stops half way (the caller's context ended, the lease
// moved, a part refused) creates no rollout: a part out of order or
// refused drops its stage, and a stage not completed by the caller's
// deadline is dropped then. A stage lives on one holder: if the lease
// moves mid-sequence the create fails with rollout.ErrUnavailable (retry).
// MaxStaged bounds the device IDs staged at once (beyond, a part fails
// with rollout.ErrUnavailable). Other requests (AddDevices, a large
// selector) are not split.
//
// # Errors
//
// A call that finds no lease holder (NATS answers "no responders"), whose
// reply does not come in time, or that the leader refuses because its
// MaxInflight calls are running, returns an error wrapping
// rollout.ErrUnavailable: the HTTP API answers 503 with Retry-After, the
// Jobs API an InternalError rejection that says to retry. A request over
// the client's MaxBody is refused before it is sent (rollout.ErrInvalid,
// naming the limit). When the leader's planner closes mid-call (the lease
// moved), the call fails with rollout.ErrUnavailable too.
//
// # Limits
//
// MaxBody bounds a request and a reply (default DefaultMaxBody, below
// nats-server's default max_payload of 1 MB); MaxInflight bounds the
// forwarded calls a Client has outstanding and the requests a Server runs
// at once (default DefaultMaxInflight); MaxStaged bounds a Server's staged
// device IDs (default DefaultMaxStaged). Stats counts both sides for
// /metrics.
//
// # Concurrency
//
// Client and Server are safe for concurrent use. A Server runs each
// request on a goroutine of its own, at most MaxInflight at once; Close
// unsubscribes and waits for them (bounded by its context, after which
// their contexts are cancelled).
package plannerrpc
