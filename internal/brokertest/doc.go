// Package brokertest runs a real broker.Server for tests, the way
// net/http/httptest runs an HTTP server, and gives tests paho MQTT clients
// that wait for events with deadlines instead of sleeping.
//
// New starts a broker on 127.0.0.1 with random ports and closes it when the
// test ends; Connect, Subscribe, Next and Publish drive paho clients against
// it and fail the test on timeouts or errors (TryConnect returns the error
// instead). NewCA creates a throwaway certificate authority that issues
// server and client certificates, in memory and as PEM files, for TLS and
// mutual-TLS tests (TLSURL, WithTLS). Main adds a goroutine-leak
// check to a package's TestMain. Use it only from tests.
package brokertest
