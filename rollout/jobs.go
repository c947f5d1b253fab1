package rollout

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/umbra-iot/umbra/device"
)

// Jobs devices and their executions.
//
// A device is a Jobs device once it has used its AWS IoT Jobs topics
// (MarkJobs; rollout.db remembers it for good). For a Jobs device the
// planner writes no firmware command into the shadow and reads nothing
// from reported.firmware: its attempts are executions, created QUEUED when
// it is notified and moved by the device's own Jobs requests
// (UpdateExecution, StartNextExecution), by timeouts and by aborts. So an
// AWS app that echoes every delta into reported can neither receive the
// command twice nor fool the planner with an echoed version. A device
// notified through its shadow before it became a Jobs device is converted
// when it is marked: its attempt in flight becomes an execution and its
// reported firmware is ignored from then on.

// jobRef is a device of a run driven through the Jobs API.
type jobRef struct {
	i int // target index
	// shadow is set when the attempt's command was also written into the
	// device's shadow (it was notified before it became a Jobs device):
	// an abort then clears it there.
	shadow bool
}

// ExecRecord is the stored form of a Jobs device's latest execution of a
// rollout (see Store), with the final state of the earlier ones. Its JSON
// is its storage form.
type ExecRecord struct {
	Index   int               `json:"index"`
	Number  int               `json:"n"`
	Status  ExecStatus        `json:"status"`
	Version int64             `json:"v"`
	Details map[string]string `json:"details,omitempty"`
	Queued  int64             `json:"queued"` // unix nanoseconds
	Started int64             `json:"started,omitempty"`
	Updated int64             `json:"updated"`
	Shadow  bool              `json:"shadow,omitempty"` // see jobRef.shadow
	Past    []PastExec        `json:"past,omitempty"`   // earlier executions, oldest first
}

// PastExec is the final state of an earlier execution, kept in an
// ExecRecord.
type PastExec struct {
	Number  int        `json:"n"`
	Status  ExecStatus `json:"status"`
	Version int64      `json:"v"`
	Updated int64      `json:"updated"`
}

// execWrite stores the result of patch (applied to the stored record, if
// any) as device id's execution of ru, in the pass's commit.
type execWrite struct {
	ru    *run
	id    device.ID
	patch func(old ExecRecord, found bool) ExecRecord
}

func unixNS(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns).UTC()
}

// execution returns rec as the Execution of device id in r.
func (r *Rollout) execution(id device.ID, rec ExecRecord) Execution {
	return Execution{
		JobID: r.ID, Device: id, Number: rec.Number, Status: rec.Status, Details: rec.Details,
		Version: rec.Version, QueuedAt: unixNS(rec.Queued), StartedAt: unixNS(rec.Started), UpdatedAt: unixNS(rec.Updated),
		Firmware: r.Firmware, Job: Job(r.ID, rec.Number), URLTTL: r.Policy.URLTTL,
	}
}

// PastExecution returns execution number n of rec's history, if any.
func (r *Rollout) PastExecution(id device.ID, rec ExecRecord, n int) (Execution, bool) {
	for _, p := range rec.Past {
		if p.Number == n {
			return Execution{JobID: r.ID, Device: id, Number: n, Status: p.Status, Version: p.Version,
				UpdatedAt: unixNS(p.Updated), Firmware: r.Firmware, Job: Job(r.ID, n), URLTTL: r.Policy.URLTTL}, true
		}
	}
	return Execution{}, false
}

// inflightRecord is the execution record of device d, in flight and
// notified through its shadow, when it becomes a Jobs device at now.
func inflightRecord(i int, d Device, now time.Time) ExecRecord {
	rec := ExecRecord{Index: i, Number: int(d.Attempt), Status: ExecQueued, Version: 1,
		Queued: d.At, Updated: d.At, Shadow: true}
	if d.State != DeviceNotified {
		rec.Status = ExecInProgress
		rec.Queued, rec.Started = min(d.At, now.UnixNano()), d.At
	}
	return rec
}

// queuedRecord is the record of a new execution (attempt n) of target i
// queued at now, after old (if found).
func queuedRecord(i, n int, now time.Time, old ExecRecord, found bool) ExecRecord {
	ns := now.UnixNano()
	rec := ExecRecord{Index: i, Number: n, Status: ExecQueued, Version: 1, Queued: ns, Updated: ns}
	if found && old.Number > 0 && old.Number != n {
		rec.Past = append(slices.Clone(old.Past), PastExec{Number: old.Number, Status: old.Status, Version: old.Version, Updated: old.Updated})
		if len(rec.Past) > MaxRetries+1 {
			rec.Past = rec.Past[len(rec.Past)-MaxRetries-1:]
		}
	}
	return rec
}

// isJobsDevice reports whether id has been marked (MarkJobs).
func (p *Planner) isJobsDevice(ctx context.Context, id device.ID) bool {
	found, err := p.store.JobsDevice(ctx, id)
	if err != nil {
		p.log.Warn("read jobs devices", logKeyDevice, id, logKeyErr, err)
	}
	return found
}

// MarkJobs records that device id uses the AWS IoT Jobs API (it subscribed
// to or called its jobs topics); the mark is kept in rollout.db. From then
// on the planner notifies id through Jobs executions only and ignores its
// reported.firmware. If id is in flight with an attempt notified through
// its shadow, that attempt becomes an execution now (QUEUED, or
// IN_PROGRESS once the device reported progress). Marking a marked device
// does nothing. The error wraps ErrClosed.
func (p *Planner) MarkJobs(ctx context.Context, id device.ID) error {
	if err := p.begin(); err != nil {
		return fmt.Errorf("mark jobs %s: %w", id, err)
	}
	defer p.mu.Unlock()
	return p.markLocked(ctx, id)
}

// markLocked is MarkJobs with mu held.
func (p *Planner) markLocked(ctx context.Context, id device.ID) error {
	rf, convert := p.inflight[id]
	if convert {
		_, done := rf.run.jobs[id]
		convert = !done
	}
	if !convert && p.isJobsDevice(ctx, id) {
		return nil
	}
	now := p.cfg.Now()
	c := Changes{JobsDevices: []JobsMark{{Device: id, Since: now}}}
	var rec ExecRecord
	if convert {
		rec = inflightRecord(rf.i, rf.run.devs[rf.i], now)
		c.Executions = []ExecWrite{{Rollout: rf.run.r.ID, Device: id, Patch: func(ExecRecord, bool) ExecRecord { return rec }}}
	}
	if _, err := p.store.Commit(ctx, &c); err != nil {
		return fmt.Errorf("mark jobs %s: %w", id, err)
	}
	if p.marked != nil {
		p.marked[id] = struct{}{} // a pass preparing id may have read it unmarked
	}
	if convert {
		rf.run.jobs[id] = jobRef{i: rf.i, shadow: true}
		p.log.Info("device uses the jobs API; its attempt in flight is now an execution",
			logKeyRollout, rf.run.r.ID, logKeyDevice, id, "execution", rec.Number)
	}
	return nil
}

// pendingLocked returns id's pending execution and where it is: the
// attempt it is in flight with. For a device driven through its shadow the
// execution is derived from its record (version 1). Caller holds mu.
func (p *Planner) pendingLocked(ctx context.Context, id device.ID) (Execution, *run, bool, error) {
	rf, ok := p.inflight[id]
	if !ok {
		return Execution{}, nil, false, nil
	}
	ru := rf.run
	if _, jobs := ru.jobs[id]; !jobs {
		return ru.r.execution(id, inflightRecord(rf.i, ru.devs[rf.i], p.cfg.Now())), ru, true, nil
	}
	rec, found, err := p.store.Execution(ctx, ru.r.ID, id)
	if err != nil {
		return Execution{}, nil, false, err
	}
	if !found || rec.Number != int(ru.devs[rf.i].Attempt) {
		return Execution{}, nil, false, fmt.Errorf("execution of %s in %s: stored execution %d, device at attempt %d",
			id, ru.r.ID, rec.Number, ru.devs[rf.i].Attempt)
	}
	return ru.r.execution(id, rec), ru, true, nil
}

// NextExecution returns device id's pending execution (QUEUED or
// IN_PROGRESS): the attempt it is in flight with, if any. A device is in
// at most one active rollout, so it has at most one. It changes nothing.
// The error wraps ErrClosed.
func (p *Planner) NextExecution(ctx context.Context, id device.ID) (Execution, bool, error) {
	if err := p.begin(); err != nil {
		return Execution{}, false, fmt.Errorf("next execution %s: %w", id, err)
	}
	defer p.mu.Unlock()
	x, _, ok, err := p.pendingLocked(ctx, id)
	if err != nil {
		return Execution{}, false, fmt.Errorf("next execution %s: %w", id, err)
	}
	return x, ok, nil
}

// findLocked returns device id's execution number (0: the latest) of
// rollout jobID, from memory or from the file for a settled rollout, and
// the live run (nil when settled). Errors wrap ErrNotFound. Caller holds
// mu.
func (p *Planner) findLocked(ctx context.Context, id device.ID, jobID string, number int) (Execution, *run, error) {
	if ru := p.runs[jobID]; ru != nil {
		if rf, ok := p.inflight[id]; ok && rf.run == ru {
			if _, jobs := ru.jobs[id]; !jobs && (number == 0 || number == int(ru.devs[rf.i].Attempt)) {
				return ru.r.execution(id, inflightRecord(rf.i, ru.devs[rf.i], p.cfg.Now())), ru, nil
			}
		}
		if _, jobs := ru.jobs[id]; !jobs {
			return Execution{}, nil, fmt.Errorf("%w: no execution of job %s on %s", ErrNotFound, jobID, id)
		}
		rec, found, err := p.store.Execution(ctx, jobID, id)
		if err != nil {
			return Execution{}, nil, err
		}
		if !found {
			return Execution{}, nil, fmt.Errorf("%w: no execution of job %s on %s", ErrNotFound, jobID, id)
		}
		x, err := selectExecution(&ru.r, id, rec, number)
		return x, ru, err
	}
	r, err := p.store.Rollout(ctx, jobID)
	if errors.Is(err, ErrNotFound) {
		return Execution{}, nil, fmt.Errorf("%w: no job %s", ErrNotFound, jobID)
	}
	if err != nil {
		return Execution{}, nil, err
	}
	rec, found, err := p.store.Execution(ctx, jobID, id)
	if err != nil {
		return Execution{}, nil, err
	}
	if !found {
		return Execution{}, nil, fmt.Errorf("%w: no execution of job %s on %s", ErrNotFound, jobID, id)
	}
	x, err := selectExecution(&r, id, rec, number)
	return x, nil, err
}

func selectExecution(r *Rollout, id device.ID, rec ExecRecord, number int) (Execution, error) {
	if number == 0 || number == rec.Number {
		return r.execution(id, rec), nil
	}
	if x, ok := r.PastExecution(id, rec, number); ok {
		return x, nil
	}
	return Execution{}, fmt.Errorf("%w: no execution %d of job %s on %s", ErrNotFound, number, r.ID, id)
}

// DescribeExecution returns execution number (0: the latest) of job jobID
// on device id; jobID "$next" means its pending execution, whatever the
// number (NextExecution; ErrNotFound when there is none). An earlier execution of a retried
// device carries only its final status and version. It changes nothing.
// Errors wrap ErrNotFound or ErrClosed.
func (p *Planner) DescribeExecution(ctx context.Context, id device.ID, jobID string, number int) (Execution, error) {
	if err := p.begin(); err != nil {
		return Execution{}, fmt.Errorf("describe execution %s of %s: %w", jobID, id, err)
	}
	defer p.mu.Unlock()
	var x Execution
	var err error
	if jobID == NextJob {
		var ok bool
		x, _, ok, err = p.pendingLocked(ctx, id)
		if err == nil && !ok {
			err = fmt.Errorf("%w: no pending execution on %s", ErrNotFound, id)
		}
	} else {
		x, _, err = p.findLocked(ctx, id, jobID, number)
	}
	if err != nil {
		return Execution{}, fmt.Errorf("describe execution %s of %s: %w", jobID, id, err)
	}
	return x, nil
}

// NextJob is the job ID that names a device's next pending execution.
const NextJob = "$next"

// StartNextExecution starts device id's pending execution: a QUEUED one
// goes IN_PROGRESS (an update, with details unless nil); an IN_PROGRESS
// one is returned unchanged. false when it has none. Errors wrap
// ErrInvalid (details) or ErrClosed.
func (p *Planner) StartNextExecution(ctx context.Context, id device.ID, details map[string]string) (Execution, bool, error) {
	if err := ValidateStatusDetails(details); err != nil {
		return Execution{}, false, fmt.Errorf("start next execution of %s: %w", id, err)
	}
	if err := p.begin(); err != nil {
		return Execution{}, false, fmt.Errorf("start next execution of %s: %w", id, err)
	}
	defer p.mu.Unlock()
	if err := p.markLocked(ctx, id); err != nil {
		return Execution{}, false, err
	}
	x, ru, ok, err := p.pendingLocked(ctx, id)
	if err != nil || !ok || x.Status != ExecQueued {
		if err != nil {
			err = fmt.Errorf("start next execution of %s: %w", id, err)
		}
		return x, ok && err == nil, err
	}
	nx, err := p.updateLocked(ctx, ru, id, x, ExecutionUpdate{Status: ExecInProgress, Details: details})
	if err != nil {
		return Execution{}, false, fmt.Errorf("start next execution of %s: %w", id, err)
	}
	return nx, true, nil
}

// UpdateExecution applies a device's update to its execution of job jobID
// (u.Number, 0: the latest) and commits it before returning: see
// ObserveExecution for what each status does. The device becomes a Jobs
// device (MarkJobs). Errors wrap ErrInvalid, ErrNotFound, ErrClosed, or
// come as an *ExecutionError wrapping ErrTerminal or ErrVersionMismatch;
// nothing is stored then.
func (p *Planner) UpdateExecution(ctx context.Context, id device.ID, jobID string, u ExecutionUpdate) (Execution, error) {
	if err := p.begin(); err != nil {
		return Execution{}, fmt.Errorf("update execution %s of %s: %w", jobID, id, err)
	}
	defer p.mu.Unlock()
	if err := p.markLocked(ctx, id); err != nil {
		return Execution{}, err
	}
	x, ru, err := p.findLocked(ctx, id, jobID, u.Number)
	if err == nil {
		if ru == nil { // a settled rollout: every execution is final
			err = &ExecutionError{Err: ErrTerminal, State: x.State(), Msg: fmt.Sprintf("execution %d of job %s is %s", x.Number, jobID, x.Status)}
		} else {
			x, err = p.updateLocked(ctx, ru, id, x, u)
		}
	}
	if err != nil {
		return Execution{}, fmt.Errorf("update execution %s of %s: %w", jobID, id, err)
	}
	return x, nil
}

// updateLocked applies u to x, id's execution in ru, and commits. Caller
// holds mu.
func (p *Planner) updateLocked(ctx context.Context, ru *run, id device.ID, x Execution, u ExecutionUpdate) (Execution, error) {
	ref, jobs := ru.jobs[id]
	if !jobs {
		// Not in flight (so not converted by markLocked): a final
		// execution, which ObserveExecution refuses.
		ref.i = -1
	}
	d := Device{}
	if ref.i >= 0 {
		d = ru.devs[ref.i]
	}
	now := p.cfg.Now()
	nd, nx, msg, err := ObserveExecution(now, &ru.r, d, x, u)
	if err != nil {
		return Execution{}, err
	}
	var w writes
	p.recordDevice(&w, ru, ref.i, nd, msg)
	if msg != "" {
		w.errs = append(w.errs, errWrite{ru, ref.i, truncate(msg, 512)})
	}
	w.execs = append(w.execs, execWrite{ru, id, func(old ExecRecord, _ bool) ExecRecord {
		rec := old
		rec.Index, rec.Number = ref.i, nx.Number
		if rec.Queued == 0 {
			rec.Queued = nx.QueuedAt.UnixNano()
		}
		rec.Status, rec.Version, rec.Details = nx.Status, nx.Version, nx.Details
		rec.Started, rec.Updated = nx.StartedAt.UnixNano(), nx.UpdatedAt.UnixNano()
		if nx.StartedAt.IsZero() {
			rec.Started = 0
		}
		return rec
	}})
	if nx.Status.Terminal() {
		w.changed = append(w.changed, id)
	}
	if err := p.commit(ctx, &w); err != nil {
		// Keep memory as it was: the device's request failed.
		p.recordDevice(&writes{}, ru, ref.i, d, "")
		return Execution{}, err
	}
	p.poke() // the gates and the failure threshold may move
	return nx, nil
}
