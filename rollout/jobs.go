package rollout

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"

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

// execRecord is the stored form of a device's latest execution of a
// rollout (rollouts/<id>/exec/<device>), with the final state of the
// earlier ones.
type execRecord struct {
	Index   int               `json:"index"`
	Number  int               `json:"n"`
	Status  ExecStatus        `json:"status"`
	Version int64             `json:"v"`
	Details map[string]string `json:"details,omitempty"`
	Queued  int64             `json:"queued"` // unix nanoseconds
	Started int64             `json:"started,omitempty"`
	Updated int64             `json:"updated"`
	Shadow  bool              `json:"shadow,omitempty"` // see jobRef.shadow
	Past    []pastExec        `json:"past,omitempty"`   // earlier executions, oldest first
}

// pastExec is the final state of an earlier execution.
type pastExec struct {
	Number  int        `json:"n"`
	Status  ExecStatus `json:"status"`
	Version int64      `json:"v"`
	Updated int64      `json:"updated"`
}

// execWrite stores the result of patch (applied to the stored record, if
// any) as device id's execution of ru, in the pass's transaction.
type execWrite struct {
	ru    *run
	id    device.ID
	patch func(old execRecord, found bool) execRecord
}

func unixNS(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns).UTC()
}

// execution returns rec as the Execution of device id in r.
func (r *Rollout) execution(id device.ID, rec execRecord) Execution {
	return Execution{
		JobID: r.ID, Device: id, Number: rec.Number, Status: rec.Status, Details: rec.Details,
		Version: rec.Version, QueuedAt: unixNS(rec.Queued), StartedAt: unixNS(rec.Started), UpdatedAt: unixNS(rec.Updated),
		Firmware: r.Firmware, Job: Job(r.ID, rec.Number), URLTTL: r.Policy.URLTTL,
	}
}

// pastExecution returns execution number n of rec's history, if any.
func (r *Rollout) pastExecution(id device.ID, rec execRecord, n int) (Execution, bool) {
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
func inflightRecord(i int, d Device, now time.Time) execRecord {
	rec := execRecord{Index: i, Number: int(d.Attempt), Status: ExecQueued, Version: 1,
		Queued: d.At, Updated: d.At, Shadow: true}
	if d.State != DeviceNotified {
		rec.Status = ExecInProgress
		rec.Queued, rec.Started = min(d.At, now.UnixNano()), d.At
	}
	return rec
}

// queuedRecord is the record of a new execution (attempt n) of target i
// queued at now, after old (if found).
func queuedRecord(i, n int, now time.Time, old execRecord, found bool) execRecord {
	ns := now.UnixNano()
	rec := execRecord{Index: i, Number: n, Status: ExecQueued, Version: 1, Queued: ns, Updated: ns}
	if found && old.Number > 0 && old.Number != n {
		rec.Past = append(slices.Clone(old.Past), pastExec{Number: old.Number, Status: old.Status, Version: old.Version, Updated: old.Updated})
		if len(rec.Past) > MaxRetries+1 {
			rec.Past = rec.Past[len(rec.Past)-MaxRetries-1:]
		}
	}
	return rec
}

// loadJobs returns the Jobs devices of the rollout in b, which has n
// targets.
func loadJobs(b *bolt.Bucket, n int) (map[device.ID]jobRef, error) {
	jobs := map[device.ID]jobRef{}
	eb := b.Bucket(bucketExec)
	if eb == nil {
		return jobs, nil
	}
	err := eb.ForEach(func(k, v []byte) error {
		var rec execRecord
		if err := json.Unmarshal(v, &rec); err != nil || rec.Index < 0 || rec.Index >= n {
			return fmt.Errorf("corrupt execution of %s", k)
		}
		jobs[device.ID(k)] = jobRef{i: rec.Index, shadow: rec.Shadow}
		return nil
	})
	return jobs, err
}

func getExec(b *bolt.Bucket, id device.ID) (execRecord, bool, error) {
	eb := b.Bucket(bucketExec)
	if eb == nil {
		return execRecord{}, false, nil
	}
	raw := eb.Get([]byte(id))
	if raw == nil {
		return execRecord{}, false, nil
	}
	var rec execRecord
	if err := json.Unmarshal(raw, &rec); err != nil {
		return execRecord{}, false, fmt.Errorf("corrupt execution of %s: %w", id, err)
	}
	return rec, true, nil
}

func putExec(b *bolt.Bucket, id device.ID, rec execRecord) error {
	eb, err := b.CreateBucketIfNotExists(bucketExec)
	if err != nil {
		return err
	}
	raw, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	return eb.Put([]byte(id), raw)
}

// isJobsDevice reports whether id has been marked (MarkJobs).
func (p *Planner) isJobsDevice(id device.ID) bool {
	found := false
	err := p.db.View(func(tx *bolt.Tx) error {
		found = tx.Bucket(bucketJobs).Get([]byte(id)) != nil
		return nil
	})
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
	return p.markLocked(id)
}

// markLocked is MarkJobs with mu held.
func (p *Planner) markLocked(id device.ID) error {
	rf, convert := p.inflight[id]
	if convert {
		_, done := rf.run.jobs[id]
		convert = !done
	}
	if !convert && p.isJobsDevice(id) {
		return nil
	}
	now := p.cfg.Now()
	var rec execRecord
	err := p.db.Update(func(tx *bolt.Tx) error {
		jb := tx.Bucket(bucketJobs)
		if jb.Get([]byte(id)) == nil {
			if err := jb.Put([]byte(id), binary.BigEndian.AppendUint64(nil, uint64(now.UnixNano()))); err != nil {
				return err
			}
		}
		if !convert {
			return nil
		}
		b, err := rolloutBucket(tx, rf.run.r.ID)
		if err != nil {
			return err
		}
		rec = inflightRecord(rf.i, rf.run.devs[rf.i], now)
		return putExec(b, id, rec)
	})
	if err != nil {
		return fmt.Errorf("mark jobs %s: %w", id, err)
	}
	if convert {
		rf.run.jobs[id] = jobRef{i: rf.i, shadow: true}
		p.log.Info("device uses the jobs API; its attempt in flight is now an execution",
			logKeyRollout, rf.run.r.ID, logKeyDevice, id, "execution", rec.Number)
	}
	return nil
}

// readExec returns the stored execution record of id in ru.
func (p *Planner) readExec(ru *run, id device.ID) (execRecord, bool, error) {
	var rec execRecord
	var found bool
	err := p.db.View(func(tx *bolt.Tx) error {
		b, err := rolloutBucket(tx, ru.r.ID)
		if err != nil {
			return err
		}
		rec, found, err = getExec(b, id)
		return err
	})
	return rec, found, err
}

// pendingLocked returns id's pending execution and where it is: the
// attempt it is in flight with. For a device driven through its shadow the
// execution is derived from its record (version 1). Caller holds mu.
func (p *Planner) pendingLocked(id device.ID) (Execution, *run, bool, error) {
	rf, ok := p.inflight[id]
	if !ok {
		return Execution{}, nil, false, nil
	}
	ru := rf.run
	if _, jobs := ru.jobs[id]; !jobs {
		return ru.r.execution(id, inflightRecord(rf.i, ru.devs[rf.i], p.cfg.Now())), ru, true, nil
	}
	rec, found, err := p.readExec(ru, id)
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
	x, _, ok, err := p.pendingLocked(id)
	if err != nil {
		return Execution{}, false, fmt.Errorf("next execution %s: %w", id, err)
	}
	return x, ok, nil
}

// findLocked returns device id's execution number (0: the latest) of
// rollout jobID, from memory or from the file for a settled rollout, and
// the live run (nil when settled). Errors wrap ErrNotFound. Caller holds
// mu.
func (p *Planner) findLocked(id device.ID, jobID string, number int) (Execution, *run, error) {
	if ru := p.runs[jobID]; ru != nil {
		if rf, ok := p.inflight[id]; ok && rf.run == ru {
			if _, jobs := ru.jobs[id]; !jobs && (number == 0 || number == int(ru.devs[rf.i].Attempt)) {
				return ru.r.execution(id, inflightRecord(rf.i, ru.devs[rf.i], p.cfg.Now())), ru, nil
			}
		}
		if _, jobs := ru.jobs[id]; !jobs {
			return Execution{}, nil, fmt.Errorf("%w: no execution of job %s on %s", ErrNotFound, jobID, id)
		}
		rec, found, err := p.readExec(ru, id)
		if err != nil {
			return Execution{}, nil, err
		}
		if !found {
			return Execution{}, nil, fmt.Errorf("%w: no execution of job %s on %s", ErrNotFound, jobID, id)
		}
		x, err := selectExecution(&ru.r, id, rec, number)
		return x, ru, err
	}
	var x Execution
	err := p.db.View(func(tx *bolt.Tx) error {
		b, err := rolloutBucket(tx, jobID)
		if err != nil {
			return fmt.Errorf("%w: no job %s", ErrNotFound, jobID)
		}
		rec, found, err := getExec(b, id)
		if err != nil {
			return err
		}
		if !found {
			return fmt.Errorf("%w: no execution of job %s on %s", ErrNotFound, jobID, id)
		}
		r, err := getMeta(b)
		if err != nil {
			return err
		}
		x, err = selectExecution(&r, id, rec, number)
		return err
	})
	return x, nil, err
}

func selectExecution(r *Rollout, id device.ID, rec execRecord, number int) (Execution, error) {
	if number == 0 || number == rec.Number {
		return r.execution(id, rec), nil
	}
	if x, ok := r.pastExecution(id, rec, number); ok {
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
		x, _, ok, err = p.pendingLocked(id)
		if err == nil && !ok {
			err = fmt.Errorf("%w: no pending execution on %s", ErrNotFound, id)
		}
	} else {
		x, _, err = p.findLocked(id, jobID, number)
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
	if err := p.markLocked(id); err != nil {
		return Execution{}, false, err
	}
	x, ru, ok, err := p.pendingLocked(id)
	if err != nil || !ok || x.Status != ExecQueued {
		if err != nil {
			err = fmt.Errorf("start next execution of %s: %w", id, err)
		}
		return x, ok && err == nil, err
	}
	nx, err := p.updateLocked(ru, id, x, ExecutionUpdate{Status: ExecInProgress, Details: details})
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
	if err := p.markLocked(id); err != nil {
		return Execution{}, err
	}
	x, ru, err := p.findLocked(id, jobID, u.Number)
	if err == nil {
		if ru == nil { // a settled rollout: every execution is final
			err = &ExecutionError{Err: ErrTerminal, State: x.State(), Msg: fmt.Sprintf("execution %d of job %s is %s", x.Number, jobID, x.Status)}
		} else {
			x, err = p.updateLocked(ru, id, x, u)
		}
	}
	if err != nil {
		return Execution{}, fmt.Errorf("update execution %s of %s: %w", jobID, id, err)
	}
	return x, nil
}

// updateLocked applies u to x, id's execution in ru, and commits. Caller
// holds mu.
func (p *Planner) updateLocked(ru *run, id device.ID, x Execution, u ExecutionUpdate) (Execution, error) {
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
	w.execs = append(w.execs, execWrite{ru, id, func(old execRecord, _ bool) execRecord {
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
	if err := p.commit(&w); err != nil {
		// Keep memory as it was: the device's request failed.
		p.recordDevice(&writes{}, ru, ref.i, d, "")
		return Execution{}, err
	}
	p.poke() // the gates and the failure threshold may move
	return nx, nil
}
