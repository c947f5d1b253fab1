package rollout

import (
	"fmt"
	"time"

	"github.com/umbra-iot/umbra/firmware"
)

// ActionKind says what an Action asks the runner to do.
type ActionKind uint8

// The action kinds.
const (
	// ActTransition moves the rollout to Action.To with Action.Reason.
	ActTransition ActionKind = iota + 1
	// ActStartBatch starts batch Action.Batch.
	ActStartBatch
	// ActNotify writes the firmware command of attempt Action.Device.Attempt
	// (job Action.Job) into device Action.Index's desired state. The runner
	// records the intent before it writes the shadow.
	ActNotify
	// ActSetDevice only records Action.Device (a timeout, a retry scheduled,
	// a pending device canceled).
	ActSetDevice
	// ActCancel clears the device's desired firmware, then records it
	// canceled.
	ActCancel
	// ActRollback writes the device's previous version back as desired,
	// then records it rolled back.
	ActRollback
	// ActBatchFinished records that every device of started batch
	// Action.Batch is terminal (Batch.Done), with a summary in
	// Action.Reason, e.g. "48/50 succeeded, 2 failed".
	ActBatchFinished
	// ActWaiting records Action.Reason as Rollout.Waiting: why nobody is
	// notified now, or "" when the rollout notifies again.
	ActWaiting
)

var actionNames = map[ActionKind]string{
	ActTransition: "transition", ActStartBatch: "start_batch", ActNotify: "notify",
	ActSetDevice: "set_device", ActCancel: "cancel", ActRollback: "rollback",
	ActBatchFinished: "batch_finished", ActWaiting: "waiting",
}

// String returns the kind's name.
func (k ActionKind) String() string { return actionNames[k] }

// Action is one decision of Step.
type Action struct {
	Kind     ActionKind
	To       State  // ActTransition
	Rollback bool   // ActTransition: also request a rollback
	Approval bool   // ActTransition to paused: waiting for approval of the next batch
	Batch    int    // ActStartBatch
	Index    int    // device actions: index into the targets
	Device   Device // device actions: the record after the action
	Job      string // ActNotify
	Reason   string
}

// String describes a for logs and test failures.
func (a Action) String() string {
	switch a.Kind {
	case ActTransition:
		return fmt.Sprintf("transition(%s, rollback=%t, %q)", a.To, a.Rollback, a.Reason)
	case ActStartBatch:
		return fmt.Sprintf("start_batch(%d)", a.Batch)
	case ActBatchFinished:
		return fmt.Sprintf("batch_finished(%d, %q)", a.Batch, a.Reason)
	case ActWaiting:
		return fmt.Sprintf("waiting(%q)", a.Reason)
	case ActNotify:
		return fmt.Sprintf("notify(%d, %s)", a.Index, a.Job)
	}
	return fmt.Sprintf("%s(%d, %s/%d)", a.Kind, a.Index, a.Device.State, a.Device.Attempt)
}

// counts tallies device states.
type counts [numDeviceStates]int

func (c *counts) inFlight() int {
	return c[DeviceNotified] + c[DeviceDownloading] + c[DeviceInstalling]
}

func (c *counts) failures() int { return c[DeviceFailed] + c[DeviceTimedOut] }

func (c *counts) finished() int { return c[DeviceSucceeded] + c[DeviceRolledBack] + c.failures() }

func (c *counts) succeeded() int { return c[DeviceSucceeded] + c[DeviceRolledBack] }

// total returns the devices counted.
func (c *counts) total() int {
	n := 0
	for _, v := range c {
		n += v
	}
	return n
}

// ratio returns the success percentage over the non-skipped devices (100
// when all were skipped).
func (c *counts) ratio() float64 {
	den := c.total() - c[DeviceAlreadyInstalled] - c[DeviceCanceled]
	if den <= 0 {
		return 100
	}
	return 100 * float64(c.succeeded()) / float64(den)
}

// done reports whether no device is pending or in flight.
func (c *counts) done() bool { return c[DevicePending] == 0 && c.inFlight() == 0 }

// Step decides what rollout r does next at now, given its device records
// (devs[i] belongs to target i; len(devs) == r.Targets). It is a pure
// function: it reads r and devs and returns the actions; Apply performs
// their bookkeeping and the runner their I/O. Step is called again after the
// actions are applied, so it returns no action twice for the same state.
//
// Per call it is O(devices in started batches).
func Step(now time.Time, r *Rollout, devs []Device) []Action {
	acts := step(now, r, devs)
	// A rollout that stays running records why it waits, when that changes
	// (Rollout.Waiting, shown in its status and event log).
	st := r.State
	for _, a := range acts {
		if a.Kind == ActTransition {
			st = a.To
		}
	}
	if st == StateRunning {
		if why := r.Policy.Waiting(now); why != r.Waiting {
			acts = append(acts, Action{Kind: ActWaiting, Reason: why})
		}
	}
	return acts
}

func step(now time.Time, r *Rollout, devs []Device) []Action {
	var acts []Action
	st := r.State
	if st == StateCreated {
		acts = append(acts, Action{Kind: ActTransition, To: StateRunning, Reason: "started"})
		st = StateRunning
	}
	switch st {
	case StateAborted:
		acts = append(acts, converge(r, devs)...)
		for bi := range r.Started {
			var c counts
			b := r.Batches[bi]
			for _, d := range devs[b.Start : b.Start+b.Size] {
				c[d.State]++
			}
			acts = appendFinished(acts, r, bi, &c)
		}
		return acts
	case StateSucceeded, StateFailed:
		if r.Rollback {
			return append(acts, converge(r, devs)...)
		}
		return acts
	}
	nowNS := now.UnixNano()
	end := 0
	if r.Started > 0 {
		b := r.Batches[r.Started-1]
		end = b.Start + b.Size
	}
	var all counts
	cur := counts{} // the last started batch
	curStart := 0
	if r.Started > 0 {
		curStart = r.Batches[r.Started-1].Start
	}
	for bi := range r.Started { // the started batches cover [0, end) in order
		b := r.Batches[bi]
		var bc counts
		for i := b.Start; i < b.Start+b.Size; i++ {
			d := devs[i]
			if d.State.InFlight() && nowNS-d.At >= int64(r.Policy.DeviceTimeout) {
				d = retryOrFinal(r.Policy, d, now, DeviceTimedOut)
				acts = append(acts, Action{Kind: ActSetDevice, Index: i, Device: d,
					Reason: fmt.Sprintf("no progress for %s", r.Policy.DeviceTimeout)})
			}
			all[d.State]++
			bc[d.State]++
			if i >= curStart {
				cur[d.State]++
			}
		}
		acts = appendFinished(acts, r, bi, &bc)
	}
	if st == StatePaused {
		return acts
	}
	if reason, tripped := failureTripped(r, &all); tripped {
		return append(acts, onFailure(r, reason))
	}

	// Outside the start time or maintenance window no device is notified
	// and no batch starts; devices already notified carry on, their
	// timeouts run, and the rollout may still finish.
	waiting := r.Policy.Waiting(now) != ""
	start := func(b int, reason string) []Action {
		if waiting {
			return acts
		}
		return append(acts, Action{Kind: ActStartBatch, Batch: b, Reason: reason})
	}

	// Notify pending devices of started batches, within MaxInFlight.
	budget := end
	if waiting {
		budget = 0
	}
	if r.Policy.MaxInFlight > 0 && !waiting {
		budget = r.Policy.MaxInFlight - all.inFlight()
	}
	for i := 0; i < end && budget > 0; i++ {
		d := devs[i]
		if d.State != DevicePending || (d.Attempt > 0 && d.At > nowNS) {
			continue
		}
		// A device timed out by this call is still in flight in devs, so
		// it is not re-notified before Apply.
		k := int(d.Attempt) + 1
		nd := Device{State: DeviceNotified, Attempt: uint8(k), From: d.From, At: nowNS}
		acts = append(acts, Action{Kind: ActNotify, Index: i, Device: nd, Job: Job(r.ID, k)})
		budget--
	}

	// The gate.
	switch {
	case r.Started == 0:
		return start(0, "first batch")
	case cur.ratio() >= r.Policy.SuccessThreshold && r.Started < len(r.Batches):
		if r.Policy.PauseBetweenBatches && r.Approved != r.Started {
			// Manual approval: wait for the batch to finish, then pause.
			if !cur.done() {
				return acts
			}
			return append(acts, Action{Kind: ActTransition, To: StatePaused, Approval: true,
				Reason: fmt.Sprintf("batch %d finished at %.1f%% success; resume to start batch %d", r.Started, cur.ratio(), r.Started+1)})
		}
		return start(r.Started, fmt.Sprintf("batch %d at %.1f%% success", r.Started, cur.ratio()))
	case !cur.done():
		return acts
	case r.Started < len(r.Batches) && r.Forced == r.Started:
		return start(r.Started, fmt.Sprintf("batch %d at %.1f%% success, resumed by operator", r.Started, cur.ratio()))
	case r.Started < len(r.Batches):
		return append(acts, onFailure(r, fmt.Sprintf("batch %d finished at %.1f%% success, below %.1f%%",
			r.Started, cur.ratio(), r.Policy.SuccessThreshold)))
	case !all.done():
		return acts
	case all.ratio() >= r.Policy.SuccessThreshold:
		return append(acts, Action{Kind: ActTransition, To: StateSucceeded,
			Reason: fmt.Sprintf("%d succeeded, %d already installed, %d failed",
				all.succeeded(), all[DeviceAlreadyInstalled], all.failures())})
	default:
		return append(acts, Action{Kind: ActTransition, To: StateFailed, Rollback: r.Policy.OnFailure == OnFailureRollback,
			Reason: fmt.Sprintf("%.1f%% succeeded, below %.1f%%", all.ratio(), r.Policy.SuccessThreshold)})
	}
}

// appendFinished appends ActBatchFinished for started batch bi, whose
// device states c tallies, if all of them are terminal and the batch is not
// recorded done yet.
func appendFinished(acts []Action, r *Rollout, bi int, c *counts) []Action {
	if r.Batches[bi].Done || !c.done() {
		return acts
	}
	reason := fmt.Sprintf("%d/%d succeeded, %d failed", c.succeeded(), c.total(), c.failures())
	if n := c[DeviceAlreadyInstalled]; n > 0 {
		reason += fmt.Sprintf(", %d already installed", n)
	}
	if n := c[DeviceCanceled]; n > 0 {
		reason += fmt.Sprintf(", %d canceled", n)
	}
	return append(acts, Action{Kind: ActBatchFinished, Batch: bi, Reason: reason})
}

// failureTripped evaluates the failure threshold.
func failureTripped(r *Rollout, c *counts) (string, bool) {
	p := r.Policy
	f := c.failures()
	if f <= r.FailBase || c.finished() < max(p.MinSample, 1) {
		return "", false
	}
	if p.FailureCount > 0 && f >= p.FailureCount {
		return fmt.Sprintf("%d devices failed, threshold %d", f, p.FailureCount), true
	}
	if p.FailurePercent > 0 {
		if pct := 100 * float64(f) / float64(c.finished()); pct > p.FailurePercent {
			return fmt.Sprintf("%.1f%% of %d finished devices failed, threshold %.1f%%", pct, c.finished(), p.FailurePercent), true
		}
	}
	return "", false
}

func onFailure(r *Rollout, reason string) Action {
	switch r.Policy.OnFailure {
	case OnFailureAbort:
		return Action{Kind: ActTransition, To: StateAborted, Reason: reason}
	case OnFailureRollback:
		return Action{Kind: ActTransition, To: StateAborted, Rollback: true, Reason: reason}
	}
	return Action{Kind: ActTransition, To: StatePaused, Reason: reason}
}

// converge cancels what an aborted rollout still holds and rolls back the
// devices that moved when a rollback is requested.
func converge(r *Rollout, devs []Device) []Action {
	var acts []Action
	for i, d := range devs {
		switch {
		case d.State == DevicePending && r.State == StateAborted:
			acts = append(acts, Action{Kind: ActSetDevice, Index: i,
				Device: Device{State: DeviceCanceled, Attempt: d.Attempt, From: d.From}, Reason: "aborted"})
		case d.State.InFlight() && r.State == StateAborted:
			acts = append(acts, Action{Kind: ActCancel, Index: i,
				Device: Device{State: DeviceCanceled, Attempt: d.Attempt, From: d.From}, Reason: "aborted"})
		case d.State == DeviceSucceeded && r.Rollback && d.From != 0:
			acts = append(acts, Action{Kind: ActRollback, Index: i,
				Device: Device{State: DeviceRolledBack, Attempt: d.Attempt, From: d.From},
				Reason: "rollback to " + r.Versions[d.From-1]})
		}
	}
	return acts
}

// retryOrFinal returns d after a failure (final is DeviceFailed or
// DeviceTimedOut): pending for a retry after backoff if attempts are left,
// else final.
func retryOrFinal(p Policy, d Device, now time.Time, final DeviceState) Device {
	if int(d.Attempt) <= p.Retries {
		return Device{State: DevicePending, Attempt: d.Attempt, From: d.From,
			At: now.Add(backoff(p, int(d.Attempt))).UnixNano()}
	}
	return Device{State: final, Attempt: d.Attempt, From: d.From, At: now.UnixNano()}
}

// Observe applies a device's reported firmware to its record d (in flight
// in rollout r) and returns the new record and, for a failure, the error
// to keep. It is pure. Reports of another job are ignored; a report without
// a job counts only for progress or for success (the target version
// running). Success means state updated with the target version; updated
// with another version is a retryable failure (the device fell back).
func Observe(now time.Time, r *Rollout, d Device, rep firmware.Report) (Device, string) {
	if !d.State.InFlight() {
		return d, ""
	}
	job := Job(r.ID, int(d.Attempt))
	if rep.Job != "" && rep.Job != job {
		return d, ""
	}
	target := string(r.Firmware)
	var ns DeviceState
	switch rep.State {
	case firmware.StateDownloading, firmware.StateVerifying:
		ns = DeviceDownloading
	case firmware.StateInstalling, firmware.StateRebooting:
		ns = DeviceInstalling
	case firmware.StateUpdated:
		switch {
		case rep.Version == target:
			ns = DeviceSucceeded
		case rep.Job == job:
			msg := fmt.Sprintf("reported updated but runs %q", rep.Version)
			return retryOrFinal(r.Policy, d, now, DeviceFailed), msg
		default:
			return d, ""
		}
	case firmware.StateFailed:
		if rep.Job != job {
			return d, ""
		}
		msg := rep.Error
		if msg == "" {
			msg = "failed"
		}
		if !rep.Retryable {
			return Device{State: DeviceFailed, Attempt: d.Attempt, From: d.From, At: now.UnixNano()}, msg
		}
		return retryOrFinal(r.Policy, d, now, DeviceFailed), msg
	default:
		return d, ""
	}
	if ns == d.State {
		return d, ""
	}
	return Device{State: ns, Attempt: d.Attempt, From: d.From, At: now.UnixNano()}, ""
}

// Apply performs the bookkeeping of a on r and devs at now (no I/O): the
// state a runner persists. Transitions out of a finished state are
// ignored, so applying one twice is harmless.
func Apply(now time.Time, r *Rollout, devs []Device, a Action) {
	switch a.Kind {
	case ActTransition:
		if transition(r, a.To) {
			r.Reason = a.Reason
			r.Updated = now
			r.Rollback = r.Rollback || a.Rollback
			if r.State != StateRunning {
				r.Waiting = "" // recomputed when it runs again
			}
			if a.Approval {
				r.Approval = r.Started
			}
		}
	case ActStartBatch:
		if a.Batch == r.Started && a.Batch < len(r.Batches) {
			r.Started++
			r.Updated = now
		}
	case ActBatchFinished:
		if a.Batch >= 0 && a.Batch < r.Started {
			r.Batches[a.Batch].Done = true
		}
	case ActWaiting:
		if r.State == StateRunning {
			r.Waiting = a.Reason
		}
	case ActNotify, ActSetDevice, ActCancel, ActRollback:
		devs[a.Index] = a.Device
	}
}

// transition moves r to to if that is a legal change and reports whether
// it did. Moving to the current state is a no-op (idempotent).
func transition(r *Rollout, to State) bool {
	from := r.State
	ok := false
	switch to {
	case StateRunning:
		ok = from == StateCreated || from == StatePaused
	case StatePaused:
		ok = from == StateCreated || from == StateRunning
	case StateSucceeded, StateFailed, StateAborted:
		ok = from.Active()
	}
	if ok {
		r.State = to
	}
	return ok
}
