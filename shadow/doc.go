// Package shadow is Umbra's device shadow engine: for every device a classic
// shadow and up to Config.MaxNamedShadows named ones, each a JSON document
// with a desired and a reported section, versioned and persisted in a Store
// (shadow/boltstore: one bbolt file), driven over MQTT topics compatible
// with AWS IoT Device Shadow.
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
// bbolt file, classic shadows keep their bucket (keyed by device ID) and
// named ones have their own (keyed "<id>/<name>"), so files written before
// named shadows existed open unchanged. In short:
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
// An update is durable in the Store (with shadow/boltstore: committed to
// bbolt and fsynced) before any of its messages is published. Requests
// for one device (to any of its shadows, on either tree) are serialised and
// applied in arrival order; different devices proceed in parallel. Over
// MQTT, arrival order per device is the order the broker reads them from
// the device's connection.
//
// Deleting a shadow keeps a tombstone with its version: a re-created shadow
// continues the numbering, so a stale optimistic lock never succeeds.
//
// # Storage
//
// The engine reaches its documents only through Store (store.go): records
// keyed by device and shadow name, each with a revision; Commit, which is
// durable when it returns and compare-and-sets every record on the
// revision the engine read; a scan of the classic shadows in ID order from
// a cursor (List, GET /v1/devices); and a scan of one device's named
// shadows (Shadows, the named-shadow cap, catch-up deltas). The engine
// encodes the documents; the Store keeps bytes. storetest.Contract is the
// contract as one suite that every adapter runs.
//
// Where the group commit lives: in the adapter, not in the engine.
// Grouping many updates into one transaction is what makes one fsync
// serve many devices, so shadow/boltstore keeps its committer goroutine
// (one transaction per batch, filled while the previous one syncs, without
// an artificial delay) and Commit simply blocks until its batch is on disk.
// The alternative, a batching goroutine in the engine over a
// Commit(batch) method, would force bbolt's shape on every store. A
// JetStream KV store, where each key is compare-and-set on its own
// revision, has no transaction across keys to fill: grouping happens in
// its client's pipelined publishes and in the stream's replication, each
// caller's Commit is one conditional put per key that it can send at once,
// and a batch boundary would only add a round trip of latency and make one
// slow acknowledgement hold up unrelated devices. With the committer in
// the adapter, each adapter batches the way its medium wants, the engine
// stays the same, and a revision conflict fails only the request it
// belongs to: the engine reads again and retries (at most three times,
// then 409), which never happens with one engine per store. The
// committer's counters reach Stats through the optional CommitStats
// method.
//
// # Contexts
//
// The in-process API (Update, Get, Delete, the Named forms, Shadows, Read,
// List) honours its ctx while it waits for the device's earlier requests
// and for the Store: when ctx ends first it returns a *RequestError
// wrapping ctx's error (code 503) and writes nothing, unless its commit was
// already handed to the Store, which then finishes it (an outcome is never
// left unknown). MQTT requests and subscriptions bring no context: they
// use the engine's, which Close cancels when its own ctx ends first. Close
// is bounded by its ctx as documented on Close.
//
// # Errors
//
// Engine methods return *RequestError, which wraps one of ErrInvalid,
// ErrShadowLimit, ErrNotFound, ErrVersionConflict, ErrTooLarge,
// ErrRateLimited, ErrClosed, ErrUnavailable (503: a cluster store lost its
// servers; it recovers by itself) or ErrInternal; match with errors.Is and
// read Code and Message with errors.As.
package shadow
