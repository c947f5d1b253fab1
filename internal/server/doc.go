// Package server assembles a running Umbra from its components: the shadow
// engine, the identity store, the MQTT broker, the HTTP API, the firmware
// store and the rollout planner, opened in dependency order by Open and
// closed in reverse by Close.
//
// # Revocation
//
// The identity store's OnRevoke is wired to broker.Server.Evict: removing
// or rotating a device or revoking a token disconnects the sessions that
// logged in with the ended credential, and drops their persistent
// sessions, before the call returns. A connection that authenticated
// while its credential ended, and so registered after the eviction
// looked, is found stale by OnConnect (identity.Store.Valid) and evicted
// on a goroutine that Close waits for. Evictions are counted in
// umbra_identity_sessions_evicted_total{reason}. Firmware download URLs
// carry the device's enrolment (identity.Store.Enrolment), so removing a
// device also revokes its URLs.
//
// `umbra serve` is flag parsing over this package; tests and benchmarks
// use it to run the same wiring in-process.
package server
