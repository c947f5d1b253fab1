// Package lbtest is an HTTP load balancer on 127.0.0.1:0 for tests of
// several Umbra nodes: the public URL a cluster's nodes share (umbra serve
// --public-url), so that a firmware download URL minted on one node still
// works when that node is gone, as behind a production load balancer.
//
// Each request goes to the first backend that accepts the connection, in
// the order they were added; a request with a body is sent to the first
// backend only (it cannot be replayed). It is for GET-heavy test traffic
// (firmware downloads), not for load. Hold pauses the response bodies
// after their first chunk, so that a test can kill a backend mid-download; a body cut by its
// backend is cut for the client too (the connection is aborted).
package lbtest
