// Package rolloutfeed publishes rollout progress over MQTT for integrators
// and keeps the rollout gauges of internal/metrics up to date.
//
// # Model
//
// A Feed receives every committed rollout.Event through OnEvent (wire
// rollout.Config.OnEvent to it) and, from one goroutine of its own:
//
//   - publishes each event on rollouts/<id>/events (QoS 1, not retained) as
//     a wire.RolloutEventMessage: the event as GET /v1/rollouts/{id}/events
//     lists it (wire.RolloutEvent) plus "rollout", the rollout's ID, in the
//     order the planner emitted them;
//   - keeps the retained rollouts/<id>/status (QoS 1) current: a
//     wire.RolloutSummary built from Config.Status, called outside the
//     planner's lock. Both payloads are package wire's types, converted by
//     internal/rolloutwire, like the HTTP API's; a rollout ID is checked
//     with wire.ParseRolloutID before it becomes a topic level. Events
//     are coalesced: a rollout's status is fetched at most once per
//     Config.StatusInterval while its events keep coming (the last event of
//     a burst is always followed by a fetch), and at once after a created
//     or state event;
//   - after each fetch sets Config.Metrics' SetRolloutDevices for every
//     device state (zeros included, so a state that empties drops to 0).
//
// Metrics of finished rollouts: when a rollout ends (succeeded, failed,
// aborted) its gauges keep their final values, so a scrape after the end
// still sees the outcome. Only the Config.KeepFinished most recently
// finished rollouts keep series; older ones are deleted with
// DeleteRollout, which bounds the series cardinality of a long-running
// server. A rollout that Status reports as not found (rollout.ErrNotFound)
// loses its gauges and its retained status (an empty retained message
// clears it).
//
// Sync fetches and publishes the status of the given rollouts at once and
// waits for it: call it at start with every rollout's ID so the retained
// status topics are right after a restart.
//
// # Concurrency and back-pressure
//
// OnEvent never blocks and never calls back into the planner, so it may
// run under the planner's lock: it puts the event on a bounded queue
// (Config.QueueSize). When the queue is full the event is dropped and
// counted (Dropped; the first drop is logged), and the rollout is still
// marked for a status refresh, so the retained status catches up even
// when events were lost. A slow or closed broker therefore slows or
// silences the feed, never the planner. Publish errors are logged once per
// run of failures.
//
// All methods are safe for concurrent use. Close stops the goroutine and
// waits for it: it first publishes the events still queued and the pending
// status refreshes, bounded by its context (when the context ends first,
// the rest is dropped and Close returns the context's error). After Close,
// OnEvent does nothing and Sync returns ErrClosed.
//
// # Errors
//
// Open and Sync return errors wrapping ErrInvalid for a bad Config or
// rollout ID; Sync returns ErrClosed after Close and the joined errors of
// the Status calls and status publishes it made (rollout.ErrNotFound for a
// rollout that does not exist, the Publisher's error, e.g. broker.ErrClosed).
package rolloutfeed
