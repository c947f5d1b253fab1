// Package bench holds Umbra's end-to-end benchmarks (issue 6): real MQTT
// over loopback TCP, a real bbolt file, the closed-loop generator of
// internal/loadgen, and baselines measured in the same run. It has no
// library code; everything is in its _test.go files:
//
//   - BenchmarkShadowUpdate: K devices publish reported updates at QoS 1 and
//     wait for accepted, against broker + shadow engine (durable: every
//     accepted update is fsynced), then the same clients against the bare
//     broker with an in-process echo responder. Reports updates/s,
//     latency percentiles, the umbra/echo ratio, commits/s, documents per
//     commit and bytes on disk per shadow.
//   - BenchmarkAWSTreeGate: what the $aws topic tree costs a fleet that
//     never subscribes there (two subscription lookups per update).
//   - BenchmarkShadowUpdateDurable: the same loop with devices that keep
//     persistent sessions, against Umbra with and without the broker's
//     Store (broker.db), then with an operator's persistent monitor on
//     every update (the worst case: each update on disk before its
//     PUBACK); reports store/memory and updates per CPU-second.
//   - BenchmarkDeltaFanout: N devices subscribed to their delta; an
//     operator sets desired on all N in-process; time until every device
//     has its delta.
//   - BenchmarkMosquittoReference: the same round trip through Debian's
//     mosquitto (started as a subprocess on 127.0.0.1) and, for a
//     like-for-like broker comparison, through Umbra's broker, both
//     answered by an external echo client.
//   - BenchmarkRollout: a rollout of N simulated devices (instant installs,
//     batches of 10%) against the whole in-process server, next to the
//     same commands written directly into the shadows by 1 and by 64
//     writers; BenchmarkRolloutSeed: the seed scenario (1,000 devices,
//     install time T) with the projection for T = 30 s. The simulated fleet
//     runs in a child process (the test binary re-executed with
//     UMBRA_BENCH_FLEET_PROCESS=1): one process cannot hold both ends of
//     10,000 connections under the open-file limit. Sizes:
//     UMBRA_BENCH_ROLLOUT_DEVICES, UMBRA_BENCH_SEED_DEVICES,
//     UMBRA_BENCH_SEED_INSTALL.
//
// Sizes come from the environment: UMBRA_BENCH_CLIENTS (default 1000, 50
// with -short) and UMBRA_BENCH_DURATION (measurement window, default 5s,
// 300ms with -short). Every run is bounded in time and count and uses
// loopback addresses only. Results and commands are in docs/benchmarks.md.
package bench
