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
// # Topic policy
//
// Config.ACLFile is loaded before anything is opened, so a bad file fails
// Open with every bad line as "<file>:<line>: <what is wrong>". The
// compiled policy goes to the identity store, whose Allow the broker asks
// for every publish, subscription and delivery. ReloadACL (umbra serve
// runs it on SIGHUP) swaps in the file's new content if it is valid and
// keeps the old policy otherwise; connections stay up, and the next check
// of every session uses the policy in force. Reloads are logged and
// counted in umbra_acl_reloads_total{result}.
//
// # HTTPS
//
// Config.HTTPTLSConfig makes the HTTP listener HTTPS; firmware download
// URLs then start with https://<bound address> unless Config.PublicURL
// says otherwise, and the "umbra serving" log line says http_scheme=https.
// Reloading certificates is the caller's: umbra serve hands the listeners a
// GetCertificate of an identity.KeyPair and reloads it on SIGHUP.
//
// `umbra serve` is flag parsing over this package; tests and benchmarks
// use it to run the same wiring in-process.
package server
