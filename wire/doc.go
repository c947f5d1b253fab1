// Package wire holds the request and response bodies of Umbra's HTTP API
// (the /v1 routes) and of the rollout progress topics on MQTT
// (rollouts/<id>/status and rollouts/<id>/events). Both sides import it: the
// server (internal/httpapi, internal/rolloutfeed) encodes these types, and
// the Go client (package client) decodes them. It belongs to neither side,
// and it imports only the standard library and the device leaf, so a program
// that speaks to Umbra does not link the server.
//
// # The types are the API
//
// Every field's JSON name is part of the API and stays as it is; new fields
// may be added. Names are snake_case, except in the shadow documents
// (Shadow, ShadowUpdate, clientToken), which keep AWS IoT's names. Fields
// renamed to snake_case in release 0.2 (presence, created_at, rotated_at,
// cert_sha256, dry_run) are still accepted under their old camelCase names
// in request bodies (EnrollRequest, ImportRequest). Batches are numbered
// from 1 (BatchStatus.Index, RolloutDevice.Batch, RolloutEvent.Batch), as
// people count them. Marshal encodes as the server does: no HTML escaping. The domain packages (shadow, firmware, rollout, identity)
// keep their own types, which may carry storage bookkeeping: the server
// converts them to these at its edge, and never writes a storage struct on
// the wire. A rollout's planner bookkeeping (which versions its devices ran
// before, the override and failure base of the last resume, the approval
// step counters, whether a finished rollout has settled) is therefore not in
// Rollout.
//
// Durations in a rollout Policy are Go duration strings ("30m", "1h30m0s"):
// see Duration. Times are RFC 3339. Device IDs are device.ID; firmware
// versions and rollout IDs are plain strings, and ParseRolloutID is the one
// rule a rollout ID follows, used by the server, the client, the CLI and
// the AWS IoT Jobs service (a job ID is a rollout ID).
//
// # Errors
//
// Every error answer of the API is a JSON ErrorBody with the HTTP status as
// its code; some carry more (the rollout holding a device, the incompatible
// targets of a rollout, the bad devices of an import, a shadow request's
// clientToken). The client turns an ErrorBody into its own error type.
package wire
