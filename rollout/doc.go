// Package rollout is Umbra's firmware rollout planner: it writes a firmware
// command into the desired state of one batch of devices at a time, watches
// what the devices report, advances when a batch has succeeded, halts by
// itself when failures pass a threshold, times out silent devices, retries
// transient failures, and survives restarts and crashes.
//
// # Model
//
// A Rollout installs one firmware version on a frozen, ordered list of
// targets (Spec.Devices, de-duplicated; the order is recorded and is the
// notification order). The targets are split into Batches when the rollout
// is created (planBatches): an optional canary (FirstBatch), then batches of
// BatchSize or BatchPercent of the targets, growing by Ramp after each
// batch up to MaxBatchSize (at most MaxBatches batches). MaxInFlight caps
// the devices notified and not finished at once. A Dynamic rollout takes
// more targets while active (AddDevices), appended as further batches.
//
// A rollout moves created → running ⇄ paused → succeeded | failed | aborted.
// Every transition is idempotent and appended to the rollout's event log
// with its time and reason (Events). The next batch starts when the
// current one reaches SuccessThreshold percent of succeeded devices (≥,
// leaving out already-installed and canceled ones; default 100); the next
// batch may start while stragglers of the current one still run. When the
// failed and timed-out devices exceed FailurePercent of the finished ones
// (>), or reach FailureCount, and at least MinSample devices finished, the
// rollout applies OnFailure: pause (default), abort, or abort with rollback.
// When every device of a started batch is terminal, the batch is recorded
// done (Batch.Done) with a batch_finished event summing it up ("48/50
// succeeded, 2 failed"), exactly once: the flag is committed with the event.
// A batch that finished below the success threshold does the same (the last
// batch makes the rollout failed). Resume overrides both once. Pause stops
// new notifications only: notified devices continue and still time out.
//
// Each target moves pending → notified → downloading → installing →
// succeeded | failed | timed_out | canceled | already-installed (and
// rolled_back after a rollback), driven by its reported firmware
// (firmware.Report). Succeeded means the device reports state updated with
// the target version running — not merely downloaded or installed. A device
// is notified with job "<rollout>/<attempt>" (Job) and reports of another
// job are ignored. A device silent for DeviceTimeout (default 30m; every
// progress report restarts it) times out. Failed (retryable) and timed-out
// devices are notified again up to Retries times after RetryBackoff
// (doubling per attempt); a failure reported with retryable false is final.
// A device already reporting the target version when its turn comes is
// already-installed and skipped. Abort cancels pending devices and clears
// the desired firmware of in-flight ones; a rollback writes each moved
// device's previous version (recorded when it was notified) back as
// desired. Retry starts a new rollout over the failed and timed-out
// devices of a finished one. A device is in at most one active rollout:
// Create refuses a conflict with a *ConflictError naming the other rollout.
//
// # Targets
//
// The rules of which devices a rollout takes live here (targets.go), so
// that they hold whoever asks. The targets are an explicit list
// (Spec.Devices), or the enrolled devices whose labels carry every pair of
// Spec.Selector, or (Spec.All) every enrolled device and every device that
// has a shadow: Create resolves a selector or all from Config.Inventory,
// sorted by ID. An image built for one hardware model (firmware.Image.HW)
// is refused for targets enrolled with another HardwareLabel
// (*IncompatibleError), or with Spec.SkipIncompatible goes to the others
// (Rollout.Excluded counts the rest); unlabelled devices are taken. A
// device enrolled later joins every active dynamic rollout whose selector
// matches its labels or that takes all, oldest first and at most one, not
// one of another hardware model: DevicesEnrolled, which umbra serve wires
// to identity.Config.OnEnrolled, so that every enrolment path (a device
// added, a bulk import, a certificate binding) applies it. The devices of
// one enrolment call join as one group, in batches of the rollout's size.
//
// # Jobs devices
//
// A device that uses the AWS IoT Jobs API (package rollout/jobs serves it)
// is a Jobs device from its first Jobs subscription or request on
// (MarkJobs; the mark is kept in rollout.db). Its attempts are executions
// (Execution: job ID = rollout ID, execution number = attempt, status
// QUEUED, IN_PROGRESS, SUCCEEDED, FAILED, REJECTED, TIMED_OUT, CANCELED).
// When its turn comes the planner records a QUEUED execution with the
// device record, in the same transaction, and writes nothing into its
// shadow; the job document (the firmware command plus
// "operation":"firmware-update") is minted by the Jobs service each time
// it is delivered, so its URL is fresh. The device moves the execution
// with its own requests (UpdateExecution, StartNextExecution), each
// committed before it is answered and decided by the pure
// ObserveExecution: IN_PROGRESS is progress and restarts the timeout,
// SUCCEEDED counts as updated (the shadow is not consulted), FAILED is a
// retryable failure, REJECTED a final one. Timeouts and aborts end the
// execution TIMED_OUT and CANCELED; a retry is a new execution. The
// planner never reads a Jobs device's reported.firmware (an app that
// echoes deltas into reported cannot fool it), so it neither skips it as
// already-installed nor knows its previous version (a rollback passes it
// by). A device notified through its shadow before its first Jobs request
// is converted then: that attempt becomes its execution. One rollout may
// hold Jobs and shadow devices. Config.OnExecution reports every
// execution added or ended, after its commit (the feed for the Jobs
// notifications).
//
// # Decisions
//
// The decisions are pure functions of the rollout, its device records and
// the time: Observe applies one report to one device record, Step returns
// the rollout's next Actions and Apply does their bookkeeping. They are
// tested with tables and an injected clock.
//
// # Runner and persistence
//
// Open starts one goroutine that runs a pass every Config.Tick and sooner
// when Notify reports a changed shadow (wire shadow.Config.OnChange to it);
// with Config.Start, the first pass waits until Start is closed (the
// wiring closes it when every component the passes call is open).
// There is no goroutine or timer per device: Notify adds the ID to a
// bounded set (overflow triggers a rescan of every in-flight device) and
// the pass re-reads only in-flight devices (all of them every
// Config.Rescan, so a lost hint costs latency, not correctness). A pass
// has three steps around a plan value (pass.go): decide (read the changed
// reports, then, without I/O, Observe, Step and Apply every rollout, and
// commit every record change in one atomic Store.Commit), persist
// (prepare the notifications decided, at most Config.NotifyPerPass, and
// commit their records and intents in one Store.Commit), and deliver
// (only then write the shadows, Config.WriteConcurrency at once so that
// the shadow engine groups their commits, and commit what was
// delivered). Config.OnEvent receives every committed event (the seam
// for MQTT progress topics).
//
// In JSON a Policy's durations are Go duration strings ("30m0s"); integer
// nanoseconds, the form of older records, are accepted when decoding. The
// JSON of Rollout, Policy and Event is their storage form; the HTTP API and
// the MQTT feed send their wire form instead (package wire, converted by
// internal/rolloutwire), which leaves out the bookkeeping of Rollout
// (Versions, Forced, FailBase, Settled, Approval, Approved).
//
// State lives in a Store (Config.Store), declared here with exactly the
// atomicity the planner needs: rollout IDs and event sequence numbers from
// sequences that only grow, a group of writes committed atomically and
// durably, and ordered scans from a position (a page of targets, the
// events after a sequence number). It holds rollout metadata, the target
// list, one record per device that left pending, the event log, the
// errors of failed devices, intents, the Jobs devices and their
// executions. rollout/boltstore keeps it in a bbolt file, rollout.db;
// rollout/storetest is the contract every store passes. The caller opens
// the store and closes it after the planner.
//
// Crash safety: the intent "notify device X, attempt k, with this exact
// command (job J)" is committed before the shadow is written and removed
// after; on Open undelivered intents are
// re-issued with the same command and token, so a crash at any point
// neither skips nor repeats an attempt, and the attempt number of a
// command written only moves forward (a command taken back unwritten when
// its rollout was paused or aborted is as if never decided: see
// Concurrency). A Jobs device's execution is committed with its record before
// anything is published about it, so after a crash it is the same
// execution (number and version). In memory the planner keeps, per target
// of an unsettled rollout, its ID and a 16-byte record, plus a map entry
// per Jobs device.
//
// # Concurrency and errors
//
// A Planner is safe for concurrent use. Decision: its lock guards the
// rollouts in memory and orders every Store.Create and Store.Commit (each
// built from memory as it is then, so records and events are stored in
// the order they happened); a pass holds it only for its in-memory steps
// and its commits, and releases it around every shadow read and write,
// firmware read and Jobs-mark read, working on values copied under the
// lock and re-validating them when it takes the lock again. So an API
// call never waits for shadow I/O: at most for one in-memory step of a
// pass (Step over the started batches of the active rollouts) or one
// Store.Commit. The reads (Get, List, Devices, DevicesPage, Events,
// InUse) copy what they need from memory under the lock and read the
// store (error texts, event logs, finished rollouts) without it. Serving
// reads from a published snapshot was rejected: a copy of a
// million-device rollout per step costs more than the lock does, and
// control actions would still wait for the pass.
//
// A control action takes effect between the devices of a batch being
// started. "Promptly" means: Pause, Abort or Rollback waits for at most
// one locked step of the pass in progress (an in-memory step or one
// commit), never for its shadow I/O, and once it returned no shadow
// write of a new notification of that rollout starts: the writes already
// in progress (at most Config.WriteConcurrency) finish and their devices
// stay recorded notified; the devices whose command was recorded and not
// yet written go back to their record before the pass (pending, the same
// attempt number), in the pass's last commit, as if never decided. No
// command was written for them, so none is repeated or skipped; after a
// crash before that commit they are re-issued as recorded, like every
// intent (the store says notified). A notification still being prepared
// (its shadow read) is dropped when its rollout is no longer running or
// its device moved. A device marked as a Jobs device while the pass read
// its shadow is notified through an execution all the same.
//
// Close cancels the pass's ctx: the pass starts no shadow read or write
// after that, commits what it decided, and leaves what it did not deliver
// recorded for the next Open; Close waits for it only until its own ctx
// is done. Errors wrap ErrInvalid, ErrNotFound,
// ErrConflict (*ConflictError), ErrIncompatible (*IncompatibleError),
// ErrState and ErrClosed; the execution methods also
// return an *ExecutionError wrapping ErrTerminal or ErrVersionMismatch.
package rollout
