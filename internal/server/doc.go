// Package server assembles a running Umbra from its components: the
// identity store, the MQTT broker, the shadow engine, the firmware store,
// the rollout planner (with the Jobs service and the rollout feed) and the
// HTTP API. The data path and the order Open follows are stated in the
// comment above Open (server.go).
//
// # Wiring
//
// Open runs in three steps:
//
//  1. The stores: openStores (stores_nats.go), the one store-choice
//     point, opens one store per persisting component (and names the
//     firmware directory) and returns them in a stores struct, the only
//     thing that differs between store sets: openBoltStores (stores.go),
//     the data dir's bbolt files, or, with Config.NATS (umbra serve
//     --nats), openNATSStores, cluster mode's JetStream buckets for the
//     shadows, identities, firmware and rollouts (docs/cluster.md).
//     The components and the rest of Open do not change, except that in
//     cluster mode the broker is joined to the other nodes' by
//     broker/natsbridge (openBridge, right after the broker; closed just
//     before it; it keeps retained messages in a shared bucket and moves
//     persistent sessions), device presence is the cluster's
//     (openPresence, cluster.go: written to a shared bucket instead of
//     the identity store, and read back from it on every node), and the
//     rollout planner runs on one node at a time (planner.go): the holder
//     of the planner lease opens it from the shared bucket, answers the
//     other nodes' forwarded calls (internal/plannerrpc), feeds its Notify
//     from the shadow bucket's change feed and publishes the rollout feed
//     (a holder whose planner fails to open Config.PlannerOpenRetries
//     times in a row releases the lease and stays out for
//     Config.PlannerStayOut); every node's API, Jobs service and firmware in-use check call a
//     plannerrpc.Client (Server.Rollouts), local on the holder and
//     forwarding elsewhere.
//  2. The listeners (listeners.go): every socket is bound, so the
//     firmware store knows the HTTP address for its download URLs, but
//     accepts nothing yet.
//  3. The components, in data-path order, each opened with what it calls.
//     The few calls against that order (events such as a revocation, a
//     shadow change or a planner commit) reach a component through the
//     Server's field for it: Open sets every field before it lets the
//     listeners accept and the planner run (rollout.Config.Start), so no
//     such call can come early. There are no lazy wrappers and no setters.
//
// Close stops the inputs first (HTTP API, planner, broker), then the
// components, then the stores.
//
// # Store ownership
//
// One rule, for every store and every component: whoever opens a store
// owns it and closes it; a component never closes a store it was given.
// The shadow engine, the firmware store, identity, the planner and the
// broker all take their store in Config and leave it open in Close (and
// when their Open fails); Server.Close closes the stores after every
// component (stores.close, reverse order of opening). A component's
// Close(ctx) that gave up on a done ctx leaves its in-flight store calls
// to the store's own Close, which the owner calls next with the same ctx.
// The store interfaces the components declare therefore have no Close;
// each storetest contract suite adds it for the adapters it checks. Every
// bbolt adapter opens its file through internal/boltstore.Open (mode
// 0600, a 1 s lock timeout, ErrLocked and ErrCorrupt naming the file).
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
// `umbra serve` is flag parsing over this package: each flag that
// configures the server is parsed straight into its Config field (the
// YAML config file's keys and UMBRA_* variables are the same flags); the
// only translations are --max-named-shadows 0 (none: -1 here), the TLS
// files (parsed into TLSConfig, HTTPTLSConfig and BoundOnlyCAs) and a
// trailing "/" of --public-url. Flags of the process (logging,
// --shutdown-grace, --config) are not Config fields. Tests and
// benchmarks use this package to run the same wiring in-process.
package server
