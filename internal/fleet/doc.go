// Package fleet keeps an in-memory index of the fleet for the web console
// and GET /v1/devices: for every device that is enrolled or has a classic
// shadow, its labels and enrolment time, its presence, its reported
// firmware (reported.firmware: version, state, error), its classic
// shadow's version and update time, and when it last reported.
//
// # Model
//
// The Index is fed by the same events the CLI's `umbra watch` and the
// live views see, never by reading shadows per request: internal/server
// passes it the identity store's enrolments and removals, and every
// message the server publishes on the feed topics, just before the broker
// delivers it (it taps its publishers), so that a client that received one
// finds GET /v1/devices up to date: the presence messages (state/<id>/presence)
// and the shadow engine's accepted and delete messages
// (state/<id>/update/accepted, state/<id>/delete/accepted); the Hub gets
// those, the deltas and the rollout feed's rollouts/<id>/events and
// rollouts/<id>/status. Tapping rather than subscribing in process keeps
// the broker's HasSubscribers meaning that a client listens. At start it
// is loaded once from
// the identity store and the shadows (Load); events that arrive during the
// load win over it (a shadow is applied only at a version not older than
// the one held).
//
// An accepted message carries only the update's state, so a partial
// reported.firmware (say {"state":"installing"}) is merged into what the
// index holds, as the engine merges it into the document; a null removes
// the key, a null reported.firmware or reported removes the firmware. An
// accepted message too large to carry its state ("stateOmitted") makes the
// index call its Reader for the document's reported.firmware.
//
// # Queries
//
// Query returns a page of devices in ID order after a cursor (the last ID
// of the previous page), filtered by a label selector (every pair must
// match, the rollout selector's rule), online state, firmware version,
// firmware state ("updating" stands for every in-progress state, "failed")
// and an ID substring; with the page come the count of devices that match
// and the fleet's totals (devices, online, offline, failing, updating,
// devices per firmware version). A query is one pass over a slice sorted by
// ID (kept sorted lazily: enrolments append and mark it unsorted), so its
// cost is linear in the fleet and independent of the shadows' size:
// BenchmarkQuery measures it at 100,000 devices.
//
// # Concurrency
//
// Every method is safe for concurrent use. Updates take a short lock; a
// query holds a read lock for its pass.
package fleet
