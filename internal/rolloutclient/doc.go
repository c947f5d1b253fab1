// Package rolloutclient is the operator's HTTP client for Umbra's rollout
// API (the /v1/rollouts routes of internal/httpapi): create a rollout from
// explicit devices, a label selector or all devices, list rollouts, read a
// rollout's status, devices and events, and pause, resume, abort, roll back
// or retry it. The CLI (umbra rollout) is a thin layer over it.
//
// # Requests
//
// Every request is bounded by Config.Timeout and its context. Config.Token,
// when set, is sent as a bearer token. Devices follows the server's page
// cursors until the last page, so it returns the whole filtered list.
//
// # Errors
//
// Arguments are validated before anything is sent; bad ones wrap
// ErrInvalid. An error answer from the server is an *APIError carrying the
// HTTP status, the server's message and, for a conflict, the rollout that
// holds the device; it matches the rollout sentinel for its status with
// errors.Is (400 rollout.ErrInvalid, 404 rollout.ErrNotFound, 409
// rollout.ErrConflict when it names a rollout and rollout.ErrState
// otherwise, 503 rollout.ErrClosed). Transport failures are returned
// wrapped with the operation ("rolloutclient: pause r3: …").
//
// A Client is safe for concurrent use and holds no resources of its own
// beyond its http.Client's idle connections.
package rolloutclient
