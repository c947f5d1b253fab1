// Package httpapi serves Umbra's HTTP/JSON API over the device shadow engine.
//
// # Routes
//
//	GET    /v1/devices/{id}/shadow   the shadow (the MQTT get/accepted JSON; wire.Shadow)
//	POST   /v1/devices/{id}/shadow   update: the body is exactly the MQTT update request
//	DELETE /v1/devices/{id}/shadow   delete (the MQTT delete/accepted JSON)
//	       …/shadow?name=<name>      the same for the device's named shadow <name>
//	GET    /v1/devices/{id}/shadows  wire.ShadowList {"device","shadows":[{"name","version","updated"}]}:
//	                                 the classic shadow (name "") and the named ones
//	GET    /v1/devices?limit=&cursor= wire.DeviceList {"devices":[{"id","version","updated"}],"next":"…"}
//	GET    /v1/devices/{id}          wire.Device: enrolment (Config.Enrolled), presence, classic
//	                                 shadow and firmware versions (devices.go)
//	GET    /healthz                  wire.Health {"status":"ok"}
//	GET    /v1/openapi.json          the OpenAPI 3 document (openapi.go), public
//	GET    /v1                       an index of links, public
//
// The OpenAPI document is built from one table, apiRoutes, one entry per
// route of umbra serve (Config.Mounts included); Server.Routes returns
// what the mux registered, and a test in cmd/umbra fails when the two
// disagree.
//
// With Config.Fleet (umbra serve), GET /v1/devices answers from the
// in-memory fleet index (package internal/fleet) instead: a wire.FleetList
// (a superset of wire.DeviceList) of the enrolled devices and those with a
// shadow, with labels, reported firmware and last report, filtered by
// ?selector=k=v,… (the rollout selector), online=true|false, firmware=,
// state=failed|updating|updated|idle, q= (an ID substring) or id= (one
// device), the count of matches and the fleet's totals (fleet.go). With
// Config.Live, GET /v1/events streams the live feed as Server-Sent Events
// (events.go): the shadow accepted, delta and delete messages, presence and
// rollout events and statuses, the topics `umbra watch` and MQTT
// subscribers read, filtered by ?kinds=, devices= and rollout=. It takes
// the bearer token in the Authorization header like every route (the
// console reads it with fetch, not EventSource, so no credential is ever in
// a URL); its streams are capped per token and in all (429 beyond), and a
// stream that falls behind its buffer is ended with a "dropped" event.
//
// Every request and answer body is a type of package wire, which the Go
// client (package client) shares; the domain types (shadow, firmware,
// identity, rollout) are converted to it here (wire.go) and, for rollouts,
// by internal/rolloutwire, so no storage struct reaches the wire. A
// rollout's answer leaves out the planner's bookkeeping
// (rolloutwire.Dropped).
//
// The rollout routes (see rollout.go) call Config.Rollouts, a
// *rollout.Planner (in cluster mode the internal/plannerrpc.Client that
// forwards to the planner lease's holder); without one they answer 503:
//
//	POST /v1/rollouts                     wire.CreateRollout → 201 wire.Rollout
//	POST /v1/rollouts?dry_run=true        → 200 the wire.Rollout it would create (no ID), nothing stored
//	GET  /v1/rollouts                     wire.RolloutList, newest first
//	GET  /v1/rollouts/{id}                wire.RolloutStatus
//	GET  /v1/rollouts/{id}/devices?state=failed,timed_out&limit=&cursor=
//	                                      wire.RolloutDevices, a page in rollout order
//	GET  /v1/rollouts/{id}/events?after=  wire.RolloutEvents
//	POST /v1/rollouts/{id}/pause|resume|abort|rollback   → wire.Rollout
//	POST /v1/rollouts/{id}/retry          → 201 the new wire.Rollout
//
// {id} must pass wire.ParseRolloutID (else 400). A wire.CreateRollout with
// an unknown field, or a duration that is not a string such as "30m", is a
// 400 naming the field. It takes exactly one of devices, select (labels) and
// all, and a body naming no device is a 400; the route checks only that
// shape and calls rollout.Planner.Create, which applies the rules (it
// resolves select and all, checks hardware models, validates the policy).
// abort takes ?rollback=true or {"rollback":true}. rollback is refused
// with 409 when it cannot apply: a finished rollout none of whose devices
// moved from a known earlier version (rollback.go). DELETE
// /v1/firmware/{version} is refused with 409 (desired_by, devices) while
// devices have the version as their desired firmware, unless ?force=true
// (firmware_delete.go). Planner errors map to
// statuses in the same table: rollout.ErrInvalid 400, ErrNotFound 404,
// ErrConflict (with "rollout" naming the rollout that holds the device),
// ErrIncompatible (with "incompatible" listing up to
// MaxIncompatibleListed devices) and ErrState 409, ErrClosed 503, and
// ErrUnavailable 503 with Retry-After: RetryAfterPlanner (cluster mode: no
// node runs the planner during a failover). Devices
// enrolled later join dynamic rollouts through the identity store's
// enrolment callback, whatever the path (see rollout.Planner.DevicesEnrolled);
// this package takes no part in it.
//
// The shadow routes have the same semantics and error codes as the MQTT
// protocol (docs/protocol.md): the HTTP status is the code, and the body is
// the same JSON the engine publishes on the accepted or rejected topic. A
// clientToken may be given as a query parameter or in the JSON body; it is
// echoed on the response. An update made over HTTP is also published over
// MQTT (accepted, delta, documents) by the engine.
//
// # Errors
//
// Every error response is JSON, {"code":N,"message":"…"} (rejections from the
// engine also carry clientToken and timestamp), with the HTTP status equal to
// code. The message is in the client's terms: the internal packages and
// steps an error went through are left out (internal/errtext), and a 404
// names the missing thing (messages.go). JSON is written without HTML
// escaping (wire.Marshal); field names are snake_case. Errors are translated to statuses in one table at this edge: an
// invalid device ID or query parameter is 400, a body over
// Config.MaxBodyBytes is 413, an unknown path 404, a wrong method 405, and any
// error the table does not know is a 500 with a generic message, its detail
// logged once.
//
// Errors this package does not write are made JSON too (jsonerror.go): an
// error a mount writes as text (http.Error, http.ServeContent's bare 412)
// becomes {"code","message"} with its text as the message; and on Open's
// listener, the answers net/http writes itself to requests it cannot parse,
// before any handler runs (a NUL, CR or other control byte in a header,
// which net/textproto refuses; a missing Host; two Content-Lengths; an
// oversized header block, 431; an unknown version, 505, or transfer coding,
// 501; an unknown Expect, 417), are rewritten on the connection into the
// same JSON, a 400 with "WWW-Authenticate: Bearer realm="umbra",
// error="invalid_request"" since the bad header may be the credentials. Only
// writes made while no handler answer is in progress on the connection are
// candidates, so a handler's answer is never touched.
//
// # Browsers and request bodies
//
// Every route refuses, with 403, a state-changing request (POST, PUT,
// PATCH, DELETE) that a browser sent from a page of another origin: its
// Sec-Fetch-Site is not same-origin or none, or, without that header, its
// Origin does not match Host (http.CrossOriginProtection; origins in
// Config.TrustedOrigins pass). Requests without either header, from curl,
// the CLI or devices, are not browsers' and pass. Every JSON body must be
// declared "Content-Type: application/json" (charset, if given, utf-8), and
// a raw firmware image application/octet-stream; another type or none is a
// 415. Together they hold with authentication on and off (anonymous mode is
// where a developer's browser is an operator on loopback).
//
// # HTTPS
//
// With Config.TLSConfig, Open serves HTTPS (TLS 1.2 or later, HTTP/1.1) on
// the same listener: every route, /healthz and the mounts alike. The JSON
// rewriting above wraps the TLS connection, so it works unchanged; since
// net/http then sees no *tls.Conn, the handler hook fills in Request.TLS,
// and a client that speaks plain HTTP to the port gets a plain-text 400
// with a JSON body telling it to use https:// (net/http's own answer to
// that is plain text). The certificate comes from the configuration, so
// GetCertificate may swap it while serving (identity.KeyPair).
//
// # Lifecycle and concurrency
//
// Open binds the listener synchronously (so Addr reports the real port) and
// serves in one goroutine owned by the Server; Close shuts down gracefully,
// waits for that goroutine and is idempotent. NewHandler returns the same
// routes as a plain http.Handler for use with httptest. Handlers are safe for
// concurrent use; the engine serialises requests per device.
//
// # Authentication
//
// Authenticate is the Config.Middleware that checks "Authorization: Bearer
// <name>:<secret>" against the identity store and applies the role rules: a
// device may use only its own /v1/devices/{id}/shadow and …/shadows, an integrator may only
// read (GET), an operator may do everything. A missing or invalid token is
// 401 with "WWW-Authenticate: Bearer", a valid token without the right 403.
// IdentityRoutes adds device enrollment (POST /v1/devices, with an
// optional certificate to bind; DELETE /v1/devices/{id}, POST
// /v1/devices/{id}/rotate, GET /v1/identities/devices with presence, and
// POST /v1/identities/devices, a bulk import of all devices or none, with
// every bad one listed in the 400's "problems") and token routes
// (/v1/tokens), to be passed as
// Config.Mounts behind the same middleware. /healthz and mounts such as the
// URL-signed firmware downloads need no token.
package httpapi
