// Package server assembles a running Umbra from its components: the shadow
// engine, the identity store, the MQTT broker, the HTTP API, the firmware
// store and the rollout planner, opened in dependency order by Open and
// closed in reverse by Close.
//
// `umbra serve` is flag parsing over this package; tests and benchmarks
// use it to run the same wiring in-process.
package server
