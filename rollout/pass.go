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
//     actions and the bookkeeping is applied (Apply, setDevice) and
//     committed. The plan holds the notifications decided (at most
//     Config.NotifyPerPass) and the cancels and rollbacks to do.
//  2. persist: the notifications are prepared without the lock (a device
//     that already runs the version is recorded as already-installed, a
//     Jobs device gets a queued execution, any other its command as an
//     intent), and those still valid are committed in one Store.Commit.
//     No shadow is written before the commit that records its intent.
//  3. deliver: the commands recorded and not delivered by an earlier
//     pass, then this pass's, then the cancels and rollbacks, are written
//     into the shadows, Config.WriteConcurrency at a time; what was
//     delivered is committed.
//
// The planner's lock (mu) is held only to read and change the runs in
// memory and to commit: every shadow read and write, every firmware read
// and every Jobs-mark read runs without it, on values copied under it.
// So an API call waits at most for one such step (an in-memory decision,
// or one Store.Commit), never for shadow I/O. What the pass read without
// the lock is re-validated when it takes the lock again: a notification
// is recorded only if its run is still live and running and the device's
// record is still the one Step saw. A control action that halts a
// rollout (Pause, Abort, Rollback) while its notifications are written
// stops them between devices: no write starts after it returned (the
// run's halted flag), the writes in progress finish, and the devices
// whose command was recorded and not written go back to their record
// before the pass in the pass's last commit.
//
// The pass checks its ctx (cancelled by Close) between reads and between
// writes: once it is done no new shadow read or write starts, the
// decisions made so far are committed, and what was not delivered stays
// recorded as intents, which the next Open re-issues.

// plan is one pass's decision, carried from decide to persist and deliver.
type plan struct {
	// w are the record changes, events and errors decided, committed at
	// the end of decide.
	w writes
	// notify are the notifications decided, in order.
	notify []notice
	// undo are the cancels and rollbacks, written after the notifications.
	undo []undoIO
	// more says that another pass should follow at once: a state moved, a
	// batch started, or the notification budget ran out.
	more bool
}

// report is a device's reported firmware, read for decide without the
// lock.
type report struct {
	rf    ref
	id    device.ID
	rep   firmware.Report
	found bool
}

// pass is one round of the planner. It reports whether another pass should
// follow at once.
func (p *Planner) pass(ctx context.Context) (more bool) {
	ids, overflow := p.takeDirty()
	p.mu.Lock()
	if p.closed.Load() {
		p.mu.Unlock()
		return false
	}
	reads := p.changed(ids, overflow)
	p.mu.Unlock()
	reports := p.readReports(ctx, reads)

	p.mu.Lock()
	pl := p.decide(p.cfg.Now(), p.sortedRuns(), reports)
	err := p.commit(context.WithoutCancel(ctx), &pl.w)
	var again []delivery
	if err == nil {
		again = p.reissues()
		if len(pl.notify) > 0 {
			p.marked = map[device.ID]struct{}{} // until admit: see MarkJobs
		}
	}
	p.mu.Unlock()
	if err != nil {
		// Memory is ahead of the store now; writing shadows without the
		// recorded decisions would break crash safety, so none is written.
		p.log.Error("persist rollout state", logKeyErr, err)
		return false
	}
	p.redeliver(ctx, again)
	p.notify(ctx, pl.notify)
	p.undo(ctx, pl.undo)
	return pl.more
}

// changed returns the in-flight devices whose report is to be read: those
// Notify named, or every one after an overflow or at a rescan, leaving
// out Jobs devices (their Jobs requests move them; their reported
// firmware may be an echo). Caller holds mu.
func (p *Planner) changed(ids []device.ID, overflow bool) []report {
	var out []report
	add := func(id device.ID, rf ref) {
		if _, jobs := rf.run.jobs[id]; !jobs {
			out = append(out, report{rf: rf, id: id})
		}
	}
	if overflow {
		for id, rf := range p.inflight {
			add(id, rf)
		}
		return out
	}
	for _, id := range ids {
		if rf, ok := p.inflight[id]; ok {
			add(id, rf)
		}
	}
	return out
}

// readReports reads the reported firmware of rs without the lock,
// Config.WriteConcurrency at once, leaving out devices without one and
// those that cannot be read. It stops when ctx is done.
func (p *Planner) readReports(ctx context.Context, rs []report) []report {
	errs := parallel(ctx, len(rs), p.cfg.WriteConcurrency, func(k int) error {
		var err error
		rs[k].rep, rs[k].found, err = p.cfg.Shadows.ReportedFirmware(ctx, rs[k].id)
		return err
	})
	out := rs[:0]
	for k, r := range rs {
		switch {
		case errs[k] != nil && ctx.Err() != nil:
		case errs[k] != nil:
			p.log.Warn("read reported firmware", logKeyDevice, r.id, logKeyErr, errs[k])
		case r.found:
			out = append(out, r)
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
		if _, jobs := ru.jobs[o.id]; jobs || p.runs[ru.r.ID] != ru {
			continue // it became a Jobs device while its report was read
		}
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
				pl.notify = append(pl.notify, ru.notice(*a))
			case ActCancel, ActRollback:
				pl.undo = append(pl.undo, ru.undoIO(*a))
			}
		}
	}
	return pl
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
