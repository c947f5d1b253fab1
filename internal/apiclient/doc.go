// Package apiclient is the HTTP plumbing shared by the operator clients of
// Umbra's API (internal/fwclient, internal/rolloutclient): base URL and
// bearer token handling, bounded JSON calls, and error answers decoded into
// an *Error.
//
// # Errors
//
// New describes a bad Config in an error that the calling client wraps with
// its own sentinel. Do and Call return an *Error for an answer with an
// unexpected status (its JSON message, or the first line of a non-JSON
// body), and transport and decoding failures as they are. Each client turns
// *Error into its own APIError type, whose Is maps statuses to its domain's
// sentinels.
//
// A Client is safe for concurrent use and holds no resources of its own
// beyond its http.Client's idle connections.
package apiclient
