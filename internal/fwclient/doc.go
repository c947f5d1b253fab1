// Package fwclient is the operator's HTTP client for Umbra's firmware API
// (the /v1/firmware routes of internal/httpapi): upload, list, show and
// delete images, fetch the fleet public key, mint a device's download URL
// and assign an image to one device. The CLI (umbra firmware) is a thin
// layer over it.
//
// # Requests
//
// Upload streams its reader as the raw request body with the metadata in
// query parameters (UTF-8 safe), so an image is never held in memory; it is
// bounded only by its context. Every other request is bounded by
// Config.Timeout as well. Config.Token, when set, is sent as a bearer token
// (the server does not check it yet).
//
// # Errors
//
// Arguments are validated before anything is sent; bad ones wrap
// ErrInvalid. An error answer from the server is an *APIError carrying the
// HTTP status, the server's message and, for a version in use, the rollout;
// it matches the firmware sentinel for its status with errors.Is (404
// firmware.ErrNotFound, 409 firmware.ErrExists or firmware.ErrInUse, 413
// firmware.ErrTooLarge, 422 firmware.ErrChecksumMismatch, 400
// firmware.ErrInvalid). Transport failures are returned wrapped with the
// operation ("fwclient: list: …").
//
// A Client is safe for concurrent use and holds no resources of its own
// beyond its http.Client's idle connections.
package fwclient
