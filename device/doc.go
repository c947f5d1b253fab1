// Package device holds the vocabulary every Umbra package shares: the device
// identifier and its validation. It imports only the standard library so that
// broker, shadow, firmware, rollout and the HTTP API can all depend on it
// without cycles.
//
// An ID is validated once, at the edge where it enters the system, with
// ParseID; everything downstream takes an ID and never a raw string.
package device
