// Package pahostore provides a message store for paho MQTT clients that
// hands out copies of its packets.
//
// paho (github.com/eclipse/paho.mqtt.golang v1.5.1) keeps every outgoing
// QoS 1 and 2 PUBLISH in its store and, when it reconnects, resends what
// the store holds, setting each packet's DUP flag first (client.resume).
// paho's MemoryStore returns the very packet it was given, so resume sets
// DUP on a packet the new connection's writer may be encoding at that
// moment (it was still queued from before the reconnect): a data race that
// `go test -race` reports (the simulator's reboot tests, cmd/umbra's
// TestJobsCrashResume). Store keeps packets encoded and decodes a new one
// for every Get, so resume marks its own copy. Every paho client Umbra
// makes that reconnects (the simulator, shadowclient, loadgen, the crash
// and durability tests' devices) uses it; docs/upstream.md lists the
// workaround (paho issue #703).
package pahostore
