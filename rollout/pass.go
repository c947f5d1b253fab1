package rollout

import (
	"context"
	"slices"
	"strings"
	"time"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/firmware"
)

// A pass is one round of the planner, in three steps around a plan:
//
//  1. decide: the reports of the devices in flight that changed are read;
//     then, without I/O, from the clock, the runs in memory and those
//     reports, Observe moves the devices, Step decides every run's next
//     actions and the bookkeeping is applied (Apply, setDevice). The plan
//     holds the records to write, the notifications decided (at most
//     Config.NotifyPerPass) and the cancels and rollbacks to do.
//  2. persist: each notification is prepared (a device that already runs
//     the version is recorded as already-installed, a Jobs device gets a
//     queued execution, any other its command as an intent), and the
//     plan's records are committed in one Store.Commit. No shadow is
//     written before that commit.
//  3. deliver: the recorded commands, then the cancels and rollbacks, are
//     written into the shadows, Config.WriteConcurrency at a time; what was
//     delivered is committed.
//
// The pass checks its ctx (cancelled by Close) between reads and between
// writes: once it is done no new shadow read or write starts, the
// decisions made so far are committed, and what was not delivered stays
// recorded as intents, which the next Open re-issues.

// plan is one pass's decision, carried from decide to persist and deliver.
type plan struct {
	// w are the record changes, events and errors decided; persist adds
	// the notifications' intents and executions and commits it.
	w writes
	// notify are the notifications decided, in order.
	notify []runAction
	// undo are the cancels and rollbacks, written after the commit.
	undo []runAction
	// more says that another pass should follow at once: a state moved, a
	// batch started, or the notification budget ran out.
	more bool
}

// runAction is an action of Step for a run (in the slice Step returned).
type runAction struct {
	ru *run
	a  *Action
}

// report is a device's reported firmware, read for decide.
type report struct {
	rf  ref
	rep firmware.Report
}

// pass is one round of the planner. It reports whether another pass should
// follow at once.
func (p *Planner) pass(ctx context.Context) (more bool) {
	ids, overflow := p.takeDirty()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed.Load() {
		return false
	}
	now := p.cfg.Now()
	reports := p.readReports(ctx, p.changed(ids, overflow))
	runs := p.sortedRuns()
	pl := p.decide(now, runs, reports)
	if err := p.persist(ctx, &pl); err != nil {
		// Memory is ahead of the store now; writing shadows without the
		// recorded intents would break crash safety, so none is written.
		p.log.Error("persist rollout state", logKeyErr, err)
		return false
	}
	p.deliver(ctx, runs, &pl)
	return pl.more
}

// changed returns the in-flight devices whose report is to be read: those
// Notify named, or every one after an overflow or at a rescan.
func (p *Planner) changed(ids []device.ID, overflow bool) []ref {
	var refs []ref
	if overflow {
		for _, rf := range p.inflight {
			refs = append(refs, rf)
		}
		return refs
	}
	for _, id := range ids {
		if rf, ok := p.inflight[id]; ok {
			refs = append(refs, rf)
		}
	}
	return refs
}

// readReports reads the reported firmware of refs, leaving out Jobs
// devices (their Jobs requests move them; their reported firmware may be
// an echo), devices without one and those that cannot be read. It stops
// when ctx is done.
func (p *Planner) readReports(ctx context.Context, refs []ref) []report {
	out := make([]report, 0, len(refs))
	for _, rf := range refs {
		if ctx.Err() != nil {
			break
		}
		id := rf.run.targets[rf.i]
		if _, jobs := rf.run.jobs[id]; jobs {
			continue
		}
		rep, ok, err := p.cfg.Shadows.ReportedFirmware(ctx, id)
		if err != nil {
			p.log.Warn("read reported firmware", logKeyDevice, id, logKeyErr, err)
			continue
		}
		if ok {
			out = append(out, report{rf, rep})
		}
	}
	return out
}

// decide observes reports and steps every run at now, applying the
// bookkeeping to memory; it does no I/O. Runs that are finished with no
// work left are settled (dropped from memory).
func (p *Planner) decide(now time.Time, runs []*run, reports []report) plan {
	var pl plan
	w := &pl.w
	for _, o := range reports {
		ru, i := o.rf.run, o.rf.i
		nd, msg := Observe(now, &ru.r, ru.devs[i], o.rep)
		if nd == ru.devs[i] {
			continue
		}
		p.setDevice(w, ru, i, nd, msg)
		if msg != "" {
			w.errs = append(w.errs, errWrite{ru, i, truncate(msg, 512)})
		}
	}
	for _, ru := range runs {
		acts := Step(now, &ru.r, ru.devs)
		if len(acts) == 0 && !ru.r.State.Active() && len(ru.undelivered) == 0 {
			ru.r.Settled = true
			w.meta(ru)
			p.dropRun(ru)
			continue
		}
		for k := range acts {
			a := &acts[k]
			switch a.Kind {
			case ActTransition:
				before := ru.r.State
				Apply(now, &ru.r, ru.devs, *a)
				if ru.r.State != before || a.Rollback {
					w.meta(ru)
					w.events = append(w.events, evWrite{ru, Event{Time: now, Kind: EventState, State: ru.r.State, Reason: a.Reason}})
					p.log.Info("rollout state", logKeyRollout, ru.r.ID, logKeyState, ru.r.State, logKeyReason, a.Reason)
					pl.more = true
				}
			case ActStartBatch:
				Apply(now, &ru.r, ru.devs, *a)
				w.meta(ru)
				w.events = append(w.events, evWrite{ru, Event{Time: now, Kind: EventBatchStarted, Batch: a.Batch, Reason: a.Reason}})
				pl.more = true
			case ActWaiting:
				Apply(now, &ru.r, ru.devs, *a)
				w.meta(ru)
				reason := a.Reason
				if reason == "" {
					reason = "notifying again"
				}
				w.events = append(w.events, evWrite{ru, Event{Time: now, Kind: EventWaiting, Reason: reason}})
				p.log.Info("rollout waiting", logKeyRollout, ru.r.ID, logKeyReason, reason)
			case ActBatchFinished:
				Apply(now, &ru.r, ru.devs, *a)
				w.meta(ru)
				w.events = append(w.events, evWrite{ru, Event{Time: now, Kind: EventBatchFinished, Batch: a.Batch, Reason: a.Reason}})
			case ActSetDevice:
				p.setDevice(w, ru, a.Index, a.Device, a.Reason)
				if a.Device.State.Failure() || a.Device.State == DevicePending && a.Device.Attempt > 0 {
					w.errs = append(w.errs, errWrite{ru, a.Index, a.Reason})
				}
			case ActNotify:
				if len(pl.notify) >= p.cfg.NotifyPerPass || ru.r.State != StateRunning {
					pl.more = pl.more || len(pl.notify) >= p.cfg.NotifyPerPass
					continue
				}
				pl.notify = append(pl.notify, runAction{ru, a})
			case ActCancel, ActRollback:
				pl.undo = append(pl.undo, runAction{ru, a})
			}
		}
	}
	return pl
}

// persist prepares the plan's notifications (until ctx is done) and
// commits its records. The commit runs even when ctx is done: it is one
// write, and it keeps what the pass decided.
func (p *Planner) persist(ctx context.Context, pl *plan) error {
	for _, n := range pl.notify {
		if ctx.Err() != nil {
			break // the devices stay pending
		}
		p.prepareNotify(ctx, &pl.w, n.ru, *n.a)
	}
	return p.commit(context.WithoutCancel(ctx), &pl.w)
}

func (p *Planner) dropRun(ru *run) {
	delete(p.runs, ru.r.ID)
	for i, d := range ru.devs {
		if d.State.InFlight() {
			delete(p.inflight, ru.targets[i])
		}
	}
}

func (p *Planner) sortedRuns() []*run {
	runs := make([]*run, 0, len(p.runs))
	for _, ru := range p.runs {
		runs = append(runs, ru)
	}
	slices.SortFunc(runs, func(a, b *run) int { return compareIDs(a.r.ID, b.r.ID) })
	return runs
}

// compareIDs orders "r2" before "r10".
func compareIDs(a, b string) int {
	if len(a) != len(b) {
		return len(a) - len(b)
	}
	return strings.Compare(a, b)
}

func sortedKeys[V any](m map[int]V) []int {
	keys := make([]int, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
