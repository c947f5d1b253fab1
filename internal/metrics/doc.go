// Package metrics exposes Umbra's Prometheus metrics on /metrics.
//
// # Model
//
// A Metrics owns its own prometheus.Registry (never the global default
// registry, so tests and several servers in one process do not collide).
// Event-driven figures are pushed by the components through plain methods
// with no Prometheus types in their signatures, so the shadow engine and
// rollout never import client_golang:
//
//   - ObserveShadow(op, code, d): one shadow request and its latency (the
//     shape of shadow.Config.Observe);
//   - ObserveCommit(d, n): one bbolt commit of n documents (the shape of
//     shadow/boltstore.Config.CommitObserved);
//   - SetRolloutDevices(rollout, state, n): devices of a rollout per state;
//   - AddEvictions(reason, n): MQTT sessions evicted because their
//     credential ended;
//   - AddACLReloads(result, n): reloads of the topic policy file;
//   - ObserveJobs(op, result): one AWS IoT Jobs request (the shape of
//     jobs.Config.Observe once op is a string).
//
// Counters that components already keep are read at scrape time through
// small interfaces declared here: RegisterBroker takes a func returning
// BrokerStats, RegisterRetryCache one returning RetryCacheStats,
// RegisterJobs one returning JobsStats, RegisterFirmware anything with
// BytesServed() int64.
//
// # Exposed series
//
//	umbra_devices_connected                     gauge   MQTT clients connected now
//	umbra_broker_messages_received_total        counter PUBLISHes received
//	umbra_broker_messages_sent_total            counter PUBLISHes written to clients
//	umbra_broker_messages_dropped_total{reason} counter queue_full, inflight_full, queue_bytes, denied, rate_limited
//	umbra_broker_denied_total{op}               counter publishes and subscribe filters refused by authorisation: publish, subscribe
//	umbra_broker_connects_rejected_total        counter CONNECTs refused (credentials, will topic, client ID, per-identity cap)
//	umbra_broker_identity_connections_refused_total counter CONNECTs refused for the connections-per-identity cap
//	umbra_broker_tls_handshakes_failed_total    counter TLS handshakes that failed or timed out
//	umbra_broker_packets_too_large_total        counter clients disconnected for a packet over the size limit
//	umbra_broker_slow_consumers_total           counter clients disconnected as slow consumers
//	umbra_broker_pending_bytes                  gauge   bytes written to clients, not yet taken by their sockets
//	umbra_broker_subscriptions                  gauge   client subscriptions, offline sessions included
//	umbra_broker_subscriptions_refused_total    counter filters refused for a session's subscription cap
//	umbra_broker_client_ids_refused_total       counter CONNECTs refused for an over-long or reserved client ID
//	umbra_broker_retained_messages              gauge   retained messages now
//	umbra_broker_retained_bytes                 gauge   payload bytes of clients' retained messages
//	umbra_broker_persistent_sessions            gauge   persistent sessions, connected or not
//	umbra_broker_queued_bytes                   gauge   payload bytes held for persistent sessions
//	umbra_broker_limit_refusals_total{limit}    counter retained, sessions_per_identity
//	umbra_broker_store_commits_total            counter commits of broker.db (one fsync each)
//	umbra_broker_store_errors_total             counter failed commits of broker.db
//	umbra_broker_store_commit_seconds_total     counter time spent committing broker.db
//	umbra_shadow_requests_total{op,code}        counter shadow requests by outcome (200 = accepted; op "unknown" for unserved $aws operations)
//	umbra_shadow_request_duration_seconds{op}   histogram request latency
//	umbra_shadow_commit_duration_seconds        histogram bbolt commit (fsync) latency
//	umbra_shadow_commit_batch_documents         histogram documents per commit
//	umbra_shadow_retry_cache_entries            gauge   retry cache entries (one per shadow at most)
//	umbra_shadow_retry_cache_bytes              gauge   retry cache's estimated heap bytes
//	umbra_shadow_retry_cache_evictions_total    counter entries evicted because the cache was full
//	umbra_shadow_retry_cache_hits_total         counter updates answered from the retry cache
//	umbra_shadow_named_shadows                  gauge   named shadows that exist now
//	umbra_shadow_named_limit_rejections_total   counter updates refused at a device's named-shadow limit
//	umbra_firmware_bytes_served_total           counter image bytes written to downloaders
//	umbra_rollout_devices{rollout,state}        gauge   devices per rollout state
//	umbra_identity_sessions_evicted_total{reason} counter sessions evicted: removed, rotated, revoked, replaced, stale
//	umbra_http_requests_total{route,code}       counter HTTP answers by route pattern and status (refusals included)
//	umbra_http_request_duration_seconds{route}  histogram HTTP request latency
//	umbra_acl_reloads_total{result}             counter policy file reloads: ok, error
//	umbra_jobs_requests_total{op,result}        counter AWS IoT Jobs requests: accepted or the error code (RequestThrottled: over --jobs-rate)
//	umbra_jobs_notifications_total              counter notify and notify-next messages published
//	umbra_jobs_notifications_dropped_total      counter changes not notified (too many things waiting for one)
//
// plus the standard go_* and process_* collectors.
//
// # Concurrency
//
// Every method is safe for concurrent use. Observe methods are cheap (a
// few atomic operations) and may be called on hot paths. Register methods
// panic if called twice for the same source, like prometheus.MustRegister:
// wiring mistakes surface at start-up.
package metrics
