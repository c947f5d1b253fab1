// Package client is the Go client of Umbra's HTTP API: every /v1 route, for
// programs that administer devices and shadows, upload firmware and run
// rollouts against a running server (umbra serve). The umbra CLI is built on
// it. Request and response bodies are the types of package wire; device IDs
// are device.ID.
//
//	c, err := client.New(client.Config{URL: "http://127.0.0.1:8080", Token: os.Getenv("UMBRA_TOKEN")})
//	…
//	page, err := c.ListDevices(ctx, "", 100)
//	doc, err := c.UpdateShadow(ctx, "lamp-1", "", wire.ShadowUpdate{State: wire.ShadowState{Desired: json.RawMessage(`{"color":"red"}`)}})
//	r, err := c.CreateRollout(ctx, wire.CreateRollout{Firmware: "1.2.0", Select: map[string]string{"hw": "m2"}, Policy: wire.Policy{BatchPercent: 10}})
//	st, err := c.GetRollout(ctx, r.ID) // poll until !st.State.Active()
//
// The package imports only the standard library, package wire and the
// device leaf (a test checks it): it links neither the server nor its
// storage nor an MQTT library. Shadows over MQTT, as devices see them, are
// another protocol; use an MQTT client for those.
//
// # Authentication
//
// Config.Token is sent on every request as "Authorization: Bearer
// <token>". A token is "<name>:<secret>": an operator's or an integrator's
// from umbra token create, the server's own operator token in
// <data-dir>/admin.token, or a device's "<id>:<secret>". An operator may do
// everything, an integrator only read (GET), and a device only use its own
// shadows. A server run with --insecure-anonymous needs no token. A missing,
// invalid or revoked token is an *Error matching ErrUnauthorized; a valid
// token without the right one matching ErrForbidden.
//
// # Errors
//
// Every error answer of the server is returned as an *Error, wrapped with
// the operation ("client: pause r3: 409 Conflict: …"): its HTTP Status, the
// server's Code and Message, and the fields some answers carry (Rollout,
// Incompatible, Problems, ClientToken). It matches, with errors.Is, the
// sentinel of its status:
//
//	400 ErrInvalid           a malformed request or document, a bad version, ID or policy
//	401 ErrUnauthorized      no token, or an invalid or revoked one
//	403 ErrForbidden         the token's role may not do this
//	404 ErrNotFound          no such shadow, device, token, image or rollout
//	409 ErrConflict          a shadow version conflict; a device, token or image that exists;
//	                         an image in use (Rollout); a device in another active rollout
//	                         (Rollout); a rollout in the wrong state; targets of another
//	                         hardware model (Incompatible)
//	413 ErrTooLarge          a body or image over the server's limit
//	422 ErrChecksumMismatch  an uploaded image that does not hash to the SHA-256 given
//	429 ErrRateLimited       too many shadow requests for one device
//	503 ErrUnavailable       the server is shutting down, or has no firmware store or planner
//
// Other statuses (405, 415, 500) match no sentinel. The client checks only
// what it needs to build a request: device IDs (device.ParseID), rollout IDs
// (wire.ParseRolloutID), that a path segment is not empty, "." or "..", that
// a rollout request names exactly one kind of target. Such a refusal wraps
// ErrInvalid and is not an *Error: nothing was sent. Everything else (a
// firmware version, a policy, a label) the server checks, and its 400 says
// what is wrong. Transport failures and context errors are returned wrapped
// as they are; New wraps ErrInvalidConfig.
//
// # Timeouts and retries
//
// Config.Timeout (default 30s) bounds every call but UploadFirmware, which
// only its context bounds; a call also ends with its context. The client
// never retries on its own, since not every request may be repeated. These
// may: every GET (GetDevice included); DeleteShadow, RemoveDevice,
// RevokeToken, DeleteFirmware and DeleteFirmwareForce (a repeat answers
// 404, ErrNotFound, once the first went through); PauseRollout, ResumeRollout, AbortRollout and
// RollbackRollout, which do nothing when already done (a RollbackRollout
// with nothing to roll back is an ErrConflict every time); UpdateShadow with the same ClientToken and
// body, which the server answers with the first accepted document rather
// than applying twice (within 60 s, while nothing else changed the shadow;
// docs/protocol.md). These may not, blindly: CreateRollout and
// RetryRollout (each success creates a rollout; list the rollouts to see
// whether the first went through), EnrollDevice, ImportDevices, CreateToken
// and UploadFirmware (a repeat is an ErrConflict if the first went
// through), RotateDevice (a repeat issues another secret). Retry after a
// transport error, ErrRateLimited or ErrUnavailable (a server restarting),
// with a backoff; the other errors will not go away by themselves.
//
// A Client is safe for concurrent use and holds no resources of its own
// beyond its http.Client's idle connections.
package client
