// Package shadow is Umbra's device shadow engine: for every device a classic
// shadow and up to Config.MaxNamedShadows named ones, each a JSON document
// with a desired and a reported section, versioned and persisted in bbolt,
// driven over MQTT topics compatible with AWS IoT Device Shadow.
//
// # Protocol
//
// Devices and operators publish requests on state/<id>/update, state/<id>/get
// and state/<id>/delete. The engine answers on …/accepted or …/rejected and,
// after an update, publishes state/<id>/update/delta (desired minus reported)
// and state/<id>/update/documents (previous and current document). The wire
// format is documented in docs/protocol.md and docs/aws.md.
//
// The same engine serves AWS IoT's topic tree (see Tree):
// $aws/things/<id>/shadow/update|get|delete, with the same rules, limits
// and ordering. Every message about a shadow (accepted, rejected, delta,
// documents, whichever tree or API the request came from) is published on
// both trees: on state/ always, on $aws/ only when a client subscribed to
// that topic, so a fleet that never subscribes on $aws pays one
// subscription lookup per message. A request the engine cannot address (an
// invalid device ID or shadow name, an operation other than update, get and
// delete under $aws/things/<id>/shadow/) is answered on the request topic's
// own /rejected (400 or 404), never dropped.
//
// Named shadows live at state/<id>/shadow/<name>/<op> and
// $aws/things/<id>/shadow/name/<name>/<op> (names [a-zA-Z0-9:_-]{1,64}), and
// through the *Named methods. Each has its own document and version and
// the same size and depth limits as the classic shadow; a device's rate and
// in-flight limits cover all its shadows together, and requests to any of
// a device's shadows are serialised. Only the classic shadow feeds
// OnChange (the rollout planner's firmware command lives there). In the
// file, classic shadows keep their bucket (keyed by device ID) and named
// ones have their own (keyed "<id>/<name>"), so files written before named
// shadows existed open unchanged. In short:
//
//   - an update merges key by key (objects merge, arrays and scalars replace,
//     null deletes a key, "desired": null removes the section, "state": null
//     clears both);
//   - every accepted update increments the version by exactly one, and every
//     message of that update carries that version and the request's
//     clientToken;
//   - an optional "version" in the request is an optimistic lock (409);
//   - rejections carry {"code","message","clientToken","timestamp"} with
//     HTTP-style codes: 400, 404, 409, 413, 429, 500, 503;
//   - every request gets exactly one reply: an accepted message larger
//     than Config.MaxReply (the broker's packet limit) is replaced by a
//     short form {"version","timestamp","clientToken","stateOmitted":true},
//     and a get over MQTT whose document is larger is rejected with 413;
//   - accepted echoes the request's state; its metadata covers the values
//     written, not keys deleted with null, so it stays about the size of the
//     request.
//
// Beyond AWS: a device that subscribes to its delta topic is sent its current
// delta at once (HandleSubscribe), so deltas are never lost while offline —
// to the subscribing client only (through a ClientPublisher), on the tree
// it subscribed on, and once per shadow and tree per SUBSCRIBE packet, so
// no subscriber causes messages to others; a
// retried update with the same clientToken and body within DedupeWindow is
// answered with the original result instead of being applied twice, as long
// as the shadow is still at the version that update produced (otherwise it
// is a new request that reuses a token, and it is applied). The retry
// cache keeps one small entry per shadow (token, request hash, version,
// timestamp; the reply is rebuilt from the retried bytes), bounded by
// DedupeMaxEntries and DedupeMaxBytes and reported by Stats; and a
// desired-side change that withdraws keys from a pending delta publishes the
// new (possibly empty) delta, so devices learn of cancelled commands.
//
// # Durability and concurrency
//
// An update is committed to bbolt (fsync) before any of its messages is
// published. Commits from concurrent requests are grouped into one
// transaction by a single committer goroutine, so throughput scales with the
// number of devices instead of collapsing to one fsync per update. Requests
// for one device (to any of its shadows, on either tree) are serialised and
// applied in arrival order; different devices proceed in parallel. Over MQTT, arrival order per device is the
// order the broker reads them from the device's connection.
//
// Deleting a shadow keeps a tombstone with its version: a re-created shadow
// continues the numbering, so a stale optimistic lock never succeeds.
//
// # Errors
//
// Engine methods return *RequestError, which wraps one of ErrInvalid,
// ErrShadowLimit, ErrNotFound, ErrVersionConflict, ErrTooLarge,
// ErrRateLimited, ErrClosed or ErrInternal; match with errors.Is and read Code and Message with errors.As.
package shadow
