// Package conformance is Umbra's MQTT 3.1.1 interoperability suite: the
// eleven behaviours the Eclipse Paho interoperability tests check (basic
// publish and subscribe at QoS 0, 1 and 2, retained messages, a
// zero-length client ID, the will message, offline message queueing,
// overlapping subscriptions, keepalive with a will, redelivery on
// reconnect, "$" topics, unsubscribe and a refused subscription), written
// from the behaviours in Python with Debian's python3-paho-mqtt: a widely
// used client library that neither Umbra nor mosquitto ships (suite.py,
// embedded).
//
// Run starts the suite against one broker and returns a Result per test;
// Table renders several brokers' results side by side; Missing lists the
// tests one broker passes and another fails. The suite needs a broker that
// refuses subscriptions to "test/nosubscribe" (configure its ACL); it
// uses the client IDs "myclientid", "myclientid2" and "clean-up" and the
// topics TopicA, TopicA/B, Topic/C, TopicA/C and /TopicA, whose retained
// messages and sessions it clears before each test. A test that waits for
// nothing to arrive publishes a marker after what it checks and waits for
// the marker, so no test sleeps; the keepalive test takes about 3 s by
// design (a 2 s keepalive, and the broker acts within 1.5 times that).
//
// cmd/umbra's TestConformance runs it against mosquitto and Umbra and is
// where the results in docs/conformance.md come from. A Python without
// paho-mqtt fails with an error naming the Debian package (make deps).
package conformance
