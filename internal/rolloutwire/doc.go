// Package rolloutwire converts between the rollout planner's types and
// their wire form (package wire), for the edges that publish rollouts: the
// HTTP API (internal/httpapi) and the MQTT progress feed
// (internal/rolloutfeed). It is the one place that knows both shapes.
//
// The planner's Rollout is also its storage record and carries bookkeeping
// that is not part of the API: Versions (the versions its devices ran
// before, which DeviceStatus.From already resolves), Forced and FailBase
// (what the last Resume overrode), Approval and Approved (the approval step
// between batches) and Settled (a finished rollout has no work left).
// Rollout leaves them out; Dropped lists their JSON names, and a test
// fails when the planner's Rollout gains a field that is neither converted
// nor listed there.
//
// Every function is pure and allocates its result afresh: nothing returned
// shares memory with its argument.
package rolloutwire
