// Package loadgen is a closed-loop MQTT load generator for request/response
// protocols such as Umbra's shadow updates, used by `make bench`.
//
// # Model
//
// Open-loop stress tools publish at a fixed rate, lose QoS 1 messages
// against default broker limits and report per-client rates. loadgen
// instead runs K paho clients that each keep Window requests in flight: a
// client publishes a request (QoS 0 or 1) carrying a unique "clientToken",
// waits for the response carrying the same token on one of its response
// topics, and only then sends the next. Throughput is therefore what the
// system under test sustains, and every request is accounted for: answered
// (Requests), rejected (Rejected, by "code"), or failed (Errors: a publish
// error or no response within Timeout).
//
// A run connects all clients (ConnectRate per second, at most 32 at a
// time) and subscribes them, warms up for Warmup, measures for Duration or
// until MaxRequests responses (or until every client has lost its
// connection), then drains the requests in flight. Only
// responses completed inside the measurement window count. Latency
// percentiles come from a reservoir sample of at most Samples values, so
// memory is bounded however long the run.
//
// The defaults speak Umbra's shadow protocol: requests on state/<id>/update
// ({"state":{"reported":{"seq":N,"temp":T}},"clientToken":"…"}), responses
// on state/<id>/update/accepted and …/rejected.
//
// # Baselines
//
// Echo is an in-process responder with the signature of
// broker.HandlerFunc, so the same closed loop can run against the bare
// embedded broker (request → Echo → response, no persistence): the Umbra /
// echo ratio is the headline benchmark figure. EchoClient does the same
// through the broker with an ordinary subscriber client, for external
// brokers such as mosquitto.
//
// # Errors
//
// Run and OpenEcho return errors wrapping ErrInvalidConfig for a bad
// Config, and connection errors naming the client. Cancelling ctx ends a
// run early; Run then returns what was measured so far.
package loadgen
