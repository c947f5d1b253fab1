// Package sim simulates a fleet of devices that speak Umbra's shadow and
// firmware protocol over MQTT, for `umbra sim`, the demo, end-to-end tests
// and benchmarks.
//
// # Model
//
// Each device is a paho MQTT client whose client ID is its device ID
// ("<prefix><n>", zero-padded). On every connection it subscribes to
// state/<id>/update/delta, …/update/rejected, …/get/accepted and
// …/get/rejected, waits for the SUBACK, reports its running firmware on
// state/<id>/update as {"firmware":{"version":…,"state":"updated",…}} (so
// its shadow exists before any rollout), then publishes state/<id>/get and
// applies the "delta" of the document it gets back, so it catches up even
// without the service's on-subscribe delta; the same document tells it
// whether the shadow holds its report (see below). If that get goes unanswered for
// SyncTimeout (30s) the device reconnects: mochi's session takeover can leave a
// client that reconnects quickly with the same ID unregistered, receiving
// nothing (Stats.Resyncs counts these).
//
// # Several servers and failover
//
// Config.Server may list several broker addresses, comma-separated (the
// nodes of a cluster): device i (0-based) connects to address i mod n
// first. When a connection is lost without the device closing it (the node
// died, or dropped it), the device connects to the next address after
// ReconnectDelay (500ms, ±50% jitter); every failed connect also moves to
// the next address, with a backoff doubling up to MaxReconnectDelay (30s,
// ±50%). A new connection subscribes again and gets the shadow as above,
// so a delta published while the device was away is not missed.
// Stats.Reconnects counts lost connections, Stats.Servers the devices
// connected through each address now and its successful connects since
// Open. The fleet, not paho, reconnects (paho's auto-reconnect is off).
//
// A firmware command arrives as delta.state.firmware. Because deltas carry
// only the desired leaves that differ from reported, a missing "version" or
// "job" means "equal to what I reported". The device then behaves like real
// firmware:
//
//	downloading → verifying → installing → rebooting → (reconnect) → updated
//
// It downloads the image from the signed URL through a bounded worker pool,
// hashing as it reads (the image is never held in memory); checks the size
// and SHA-256 against the command; checks the ed25519 signature over the
// manifest {"version","hw","size","sha256"} with the pinned fleet key
// (without importing Umbra's firmware package); "installs" for InstallTime
// (±20%); asks the shadow (get) whether the command still stands; reports
// rebooting, disconnects for RebootTime, reconnects and reports the new
// version as state "updated" with the command's job echoed. While updating,
// "version" stays the old running version. Every report carries every field
// (version, state, error, retryable, job), and a report identical to the
// previous one is not sent again, so a device never loops on the deltas its
// own reports cause.
//
// Special cases: a command for the running version is answered with
// {"version":v,"state":"updated"}; a repeat of a command in progress or of
// one that already failed is ignored (a retry needs a new job or URL); a
// delta whose "firmware" vanished, or a get showing no firmware command,
// aborts the update and reports the running version; deltas older than the
// last one applied are ignored.
//
// # Failures
//
// A download answered 429, 502, 503 or 504, refused at connect, or cut off
// mid-transfer is tried again up to 3 times, as a device's updater does,
// after the Retry-After the server gave (at most 5 s) or a jittered 250 ms,
// 500 ms, 1 s (Stats.DownloadRetries counts them): a server node that died
// or cannot read its image store for a moment is not a failed update. Then,
// or on any other answer, the device reports the failure.
//
// Reasons reported in "error", with "retryable": url_rejected (HTTP 403,
// retryable), download_failed (retryable), size_mismatch and sha256_mismatch
// (retryable: a corrupted transfer), bad_signature (not retryable), untrusted
// (no key pinned), hw_mismatch and bad_command (not retryable),
// install_failed (retryable). FailRate picks exactly round(FailRate*N)
// devices from Seed that fail every update in FailMode (download, verify,
// install, or silent: never report after receiving a command). OfflineRate
// picks devices that power off now and then and lose any update in progress.
//
// # Reporting until the shadow shows it
//
// Like real firmware, a device keeps reporting its state until its shadow
// shows it. Every answer to a get is also a check: if no report was sent
// since the get and the document's reported.firmware is not the last
// report, the device reports again (Stats.Resent) and checks again (get)
// after an exponential backoff (250ms doubling to 30s, ±50%), until the
// document shows it. Three things start a check besides the connect-time
// get: a rejected report (429, 500 or 503 on …/update/rejected; other codes
// are logged and dropped, since resending cannot help); a get left
// unanswered for SyncTimeout; and a delta that proves the shadow lacks the
// last report. Deltas carry only the desired leaves that differ from
// reported, so a delta whose firmware "version" (or "job") equals the one
// last reported means the shadow holds another. That is how a device
// notices a report overtaken by an older one: the broker acknowledges a
// PUBLISH before the shadow service handles it, so the "rebooting" report
// sent on the connection closed by a reboot can be applied after the
// "updated" report sent on the next connection, leaving the shadow at
// "rebooting" with the old version (and a rollout waiting for the device
// forever) unless the device re-reports.
//
// # Efficiency and concurrency
//
// No goroutine belongs to a device: paho callbacks, time.AfterFunc timers
// and two bounded worker pools (connects/disconnects, rate-limited by
// ConnectRate; downloads, DownloadWorkers) drive a per-device state machine
// under a per-device mutex. paho itself runs a handful of goroutines per
// connected client; that, not the simulator, dominates memory per device.
// Fleet methods are safe for concurrent use; Fleet.Wait blocks until a
// condition on Stats holds, woken by every change.
//
// # Errors
//
// Open and Run return errors wrapping ErrInvalidConfig for a bad Config, and
// an error naming the server when it cannot be reached. Fleet.Wait returns
// ErrClosed once the fleet is closed.
package sim
