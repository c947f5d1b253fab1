package rollout

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/firmware"
)

// writes collects one pass's changes for a single Store.Commit.
type writes struct {
	metas   []*run
	devs    []devWrite
	errs    []errWrite
	events  []evWrite
	intents []devIntent
	deleted []devIntent // intents delivered
	execs   []execWrite
	// changed are devices whose pending Jobs execution was added or ended
	// (Config.OnExecution after the commit).
	changed []device.ID
}

type devWrite struct {
	ru *run
	i  int
}

type errWrite struct {
	ru  *run
	i   int
	msg string
}

type evWrite struct {
	ru *run
	ev Event
}

type devIntent struct {
	ru  *run
	i   int
	raw []byte
}

func (w *writes) meta(ru *run) {
	if !slices.Contains(w.metas, ru) {
		w.metas = append(w.metas, ru)
	}
}

// changes returns w as the store's Changes, with the records as they are
// in memory now (the last change of a device in a pass wins).
func (w *writes) changes() *Changes {
	c := &Changes{}
	for _, ru := range w.metas {
		c.Rollouts = append(c.Rollouts, ru.r)
	}
	for _, d := range w.devs {
		c.Devices = append(c.Devices, DeviceWrite{Position{d.ru.r.ID, d.i}, d.ru.devs[d.i]})
	}
	for _, e := range w.errs {
		c.Errors = append(c.Errors, ErrorWrite{Position{e.ru.r.ID, e.i}, e.msg})
	}
	for _, e := range w.events {
		c.Events = append(c.Events, EventWrite{e.ru.r.ID, e.ev})
	}
	for _, in := range w.intents {
		c.Intents = append(c.Intents, IntentWrite{Position{in.ru.r.ID, in.i}, in.raw})
	}
	for _, in := range w.deleted {
		c.Delivered = append(c.Delivered, Position{in.ru.r.ID, in.i})
	}
	for _, x := range w.execs {
		c.Executions = append(c.Executions, ExecWrite{x.ru.r.ID, x.id, x.patch})
	}
	return c
}

// commit stores w (atomically: all or nothing), then hands its events to
// Config.OnEvent and its ended or added executions to Config.OnExecution.
func (p *Planner) commit(ctx context.Context, w *writes) error {
	c := w.changes()
	if c.Empty() {
		return nil
	}
	evs, err := p.store.Commit(ctx, c)
	if err != nil {
		return err
	}
	for k, e := range w.events {
		p.emit(e.ru.r.ID, evs[k])
	}
	if p.cfg.OnExecution != nil {
		for _, id := range w.changed {
			p.cfg.OnExecution(id)
		}
	}
	return nil
}

// emit hands a committed event to Config.OnEvent.
func (p *Planner) emit(id string, ev Event) {
	if p.cfg.OnEvent != nil {
		p.cfg.OnEvent(id, ev)
	}
}

// setDevice records d for target i of ru, keeping the in-flight index and
// the event log in step, and ends the device's Jobs execution when the
// planner ends its attempt (a timeout, an abort).
func (p *Planner) setDevice(w *writes, ru *run, i int, d Device, reason string) {
	old := ru.devs[i]
	id := ru.targets[i]
	if _, jobs := ru.jobs[id]; jobs && old.State.InFlight() && !d.State.InFlight() {
		st := ExecTimedOut // from the pass, only a timeout or an abort ends an attempt of a Jobs device
		switch d.State {
		case DeviceCanceled:
			st = ExecCanceled
		case DeviceSucceeded:
			st = ExecSucceeded
		case DeviceFailed:
			st = ExecFailed
		}
		now := p.cfg.Now().UnixNano()
		w.execs = append(w.execs, execWrite{ru, id, func(rec ExecRecord, _ bool) ExecRecord {
			if !rec.Status.Terminal() {
				rec.Status, rec.Updated = st, now
			}
			return rec
		}})
		w.changed = append(w.changed, id)
	}
	p.recordDevice(w, ru, i, d, reason)
}

// recordDevice is setDevice without the Jobs execution.
func (p *Planner) recordDevice(w *writes, ru *run, i int, d Device, reason string) {
	old := ru.devs[i]
	ru.devs[i] = d
	w.devs = append(w.devs, devWrite{ru, i})
	id := ru.targets[i]
	if d.State.InFlight() {
		p.inflight[id] = ref{ru, i}
	} else if old.State.InFlight() {
		delete(p.inflight, id)
	}
	if _, ok := ru.undelivered[i]; ok && !d.State.InFlight() {
		// Never delivered (the shadow kept failing) and now moot.
		delete(ru.undelivered, i)
		w.deleted = append(w.deleted, devIntent{ru: ru, i: i})
	}
	switch {
	case d.State.Failure():
		w.events = append(w.events, evWrite{ru, Event{Time: p.cfg.Now(), Kind: EventDeviceFailed, Device: id, State: "", Reason: d.State.String() + ": " + reason}})
	case d.State == DevicePending && d.Attempt > 0 && old.State != DevicePending:
		w.events = append(w.events, evWrite{ru, Event{Time: p.cfg.Now(), Kind: EventRetry, Device: id, Reason: reason}})
	}
}

// pass is one round of the planner: observe dirty devices, step every run,
// persist, then write shadows. It reports whether another pass should
// follow at once.
func (p *Planner) pass(ctx context.Context) (more bool) {
	ids, overflow := p.takeDirty()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed.Load() {
		return false
	}
	now := p.cfg.Now()
	var w writes

	// 1. Device reports.
	var refs []ref
	if overflow {
		for _, rf := range p.inflight {
			refs = append(refs, rf)
		}
	} else {
		for _, id := range ids {
			if rf, ok := p.inflight[id]; ok {
				refs = append(refs, rf)
			}
		}
	}
	for _, rf := range refs {
		id := rf.run.targets[rf.i]
		if _, jobs := rf.run.jobs[id]; jobs {
			continue // its Jobs requests move it; its reported firmware may be an echo
		}
		rep, ok, err := p.cfg.Shadows.ReportedFirmware(ctx, id)
		if err != nil {
			p.log.Warn("read reported firmware", logKeyDevice, id, logKeyErr, err)
			continue
		}
		if !ok {
			continue
		}
		nd, msg := Observe(now, &rf.run.r, rf.run.devs[rf.i], rep)
		if nd == rf.run.devs[rf.i] {
			continue
		}
		p.setDevice(&w, rf.run, rf.i, nd, msg)
		if msg != "" {
			w.errs = append(w.errs, errWrite{rf.run, rf.i, truncate(msg, 512)})
		}
	}

	// 2. Decisions.
	runs := p.sortedRuns()
	type io struct {
		ru *run
		a  Action
	}
	var later []io
	notified := 0
	for _, ru := range runs {
		acts := Step(now, &ru.r, ru.devs)
		if len(acts) == 0 && !ru.r.State.Active() && len(ru.undelivered) == 0 {
			ru.r.Settled = true
			w.meta(ru)
			p.dropRun(ru)
			continue
		}
		for _, a := range acts {
			switch a.Kind {
			case ActTransition:
				before := ru.r.State
				Apply(now, &ru.r, ru.devs, a)
				if ru.r.State != before || a.Rollback {
					w.meta(ru)
					w.events = append(w.events, evWrite{ru, Event{Time: now, Kind: EventState, State: ru.r.State, Reason: a.Reason}})
					p.log.Info("rollout state", logKeyRollout, ru.r.ID, logKeyState, ru.r.State, logKeyReason, a.Reason)
					more = true
				}
			case ActStartBatch:
				Apply(now, &ru.r, ru.devs, a)
				w.meta(ru)
				w.events = append(w.events, evWrite{ru, Event{Time: now, Kind: EventBatchStarted, Batch: a.Batch, Reason: a.Reason}})
				more = true
			case ActWaiting:
				Apply(now, &ru.r, ru.devs, a)
				w.meta(ru)
				reason := a.Reason
				if reason == "" {
					reason = "notifying again"
				}
				w.events = append(w.events, evWrite{ru, Event{Time: now, Kind: EventWaiting, Reason: reason}})
				p.log.Info("rollout waiting", logKeyRollout, ru.r.ID, logKeyReason, reason)
			case ActBatchFinished:
				Apply(now, &ru.r, ru.devs, a)
				w.meta(ru)
				w.events = append(w.events, evWrite{ru, Event{Time: now, Kind: EventBatchFinished, Batch: a.Batch, Reason: a.Reason}})
			case ActSetDevice:
				p.setDevice(&w, ru, a.Index, a.Device, a.Reason)
				if a.Device.State.Failure() || a.Device.State == DevicePending && a.Device.Attempt > 0 {
					w.errs = append(w.errs, errWrite{ru, a.Index, a.Reason})
				}
			case ActNotify:
				if notified >= p.cfg.NotifyPerPass || ru.r.State != StateRunning {
					more = more || notified >= p.cfg.NotifyPerPass
					continue
				}
				notified++
				p.prepareNotify(ctx, &w, ru, a)
			case ActCancel, ActRollback:
				later = append(later, io{ru, a})
			}
		}
	}
	if err := p.commit(ctx, &w); err != nil {
		// Memory is ahead of disk now; writing shadows without the recorded
		// intents would break crash safety, so no shadow is written.
		p.log.Error("persist rollout state", logKeyErr, err)
		return false
	}

	// 3. Shadow writes, after the intents are durable. They run
	// concurrently (Config.WriteConcurrency) so that the shadow engine
	// groups their commits: one at a time, each write would wait for its
	// own fsync.
	w = writes{}
	type delivery struct {
		ru  *run
		i   int
		cmd map[string]any
		job string
		err error
	}
	var ds []delivery
	for _, ru := range runs {
		if ru.r.State == StateAborted {
			continue // the cancel below clears what was recorded
		}
		for _, i := range sortedKeys(ru.undelivered) {
			raw := ru.undelivered[i]
			var cmd map[string]any
			if err := json.Unmarshal(raw, &cmd); err != nil {
				p.log.Error("corrupt intent", logKeyRollout, ru.r.ID, logKeyErr, err)
				delete(ru.undelivered, i)
				continue
			}
			id := ru.targets[i]
			job := Job(ru.r.ID, int(ru.devs[i].Attempt))
			if ru.recovered[i] {
				// Recorded before a crash: if the device already echoes the
				// job, the write happened and is not repeated.
				delete(ru.recovered, i)
				if rep, ok, err := p.cfg.Shadows.ReportedFirmware(ctx, id); err == nil && ok && rep.Job == job {
					delete(ru.undelivered, i)
					w.deleted = append(w.deleted, devIntent{ru: ru, i: i})
					continue
				}
			}
			ds = append(ds, delivery{ru: ru, i: i, cmd: cmd, job: job})
		}
	}
	parallel(len(ds), p.cfg.WriteConcurrency, func(k int) {
		d := &ds[k]
		d.err = p.cfg.Shadows.SetDesiredFirmware(ctx, d.ru.targets[d.i], d.cmd, d.job)
	})
	for _, d := range ds {
		id := d.ru.targets[d.i]
		if d.err != nil {
			p.log.Warn("write desired firmware", logKeyRollout, d.ru.r.ID, logKeyDevice, id, logKeyErr, d.err)
			continue
		}
		delete(d.ru.undelivered, d.i)
		w.deleted = append(w.deleted, devIntent{ru: d.ru, i: d.i})
		// Re-read the device next pass even if its change hint is lost
		// (say, a device that answered before Notify was wired).
		p.Notify(id)
	}
	ios := make([]pendingIO, len(later))
	for k, l := range later {
		ios[k] = p.prepareIO(ctx, &w, l.ru, l.a)
	}
	parallel(len(ios), p.cfg.WriteConcurrency, func(k int) {
		if io := &ios[k]; io.write {
			io.err = p.cfg.Shadows.SetDesiredFirmware(ctx, io.ru.targets[io.a.Index], io.cmd, io.token)
		}
	})
	for k := range ios {
		p.finishIO(&w, &ios[k])
	}
	if err := p.commit(ctx, &w); err != nil {
		p.log.Error("persist rollout state", logKeyErr, err)
	}
	return more
}

// prepareNotify turns a notify decision into a recorded intent, or into
// already-installed when the device already runs the target version.
func (p *Planner) prepareNotify(ctx context.Context, w *writes, ru *run, a Action) {
	id := ru.targets[a.Index]
	if _, jobs := ru.jobs[id]; jobs || p.isJobsDevice(ctx, id) {
		p.prepareExecution(ctx, w, ru, a)
		return
	}
	rep, ok, err := p.cfg.Shadows.ReportedFirmware(ctx, id)
	if err != nil {
		p.log.Warn("read reported firmware", logKeyDevice, id, logKeyErr, err)
		return
	}
	d := a.Device
	if ok && rep.Version == string(ru.r.Firmware) && (rep.State == "" || rep.State == firmware.StateUpdated) {
		d.State = DeviceAlreadyInstalled
		if a.Device.Attempt > 1 {
			d.State = DeviceSucceeded // an earlier attempt got there late
			d.Attempt--
		}
		p.setDevice(w, ru, a.Index, d, "")
		return
	}
	if ok && rep.Version != "" && d.From == 0 {
		d.From = ru.intern(rep.Version, w)
	}
	img, err := ru.image(ctx, p.cfg.Firmware)
	if err != nil {
		p.log.Error("firmware image", logKeyRollout, ru.r.ID, logKeyErr, err)
		return
	}
	cmd := p.cfg.Firmware.Command(img, id, ru.r.Policy.URLTTL, a.Job).Desired()["firmware"]
	raw, err := json.Marshal(cmd)
	if err != nil {
		p.log.Error("encode command", logKeyErr, err)
		return
	}
	p.setDevice(w, ru, a.Index, d, "")
	w.intents = append(w.intents, devIntent{ru, a.Index, raw})
	ru.undelivered[a.Index] = raw
}

// prepareExecution notifies a Jobs device: its attempt becomes a QUEUED
// execution, recorded with the device in this pass's commit; nothing is
// written into its shadow (the job document, with a fresh URL, is minted
// when the device asks for it). Nothing is read from its reported
// firmware: no already-installed check, no previous version (so no
// rollback).
func (p *Planner) prepareExecution(ctx context.Context, w *writes, ru *run, a Action) {
	id := ru.targets[a.Index]
	if _, err := ru.image(ctx, p.cfg.Firmware); err != nil {
		p.log.Error("firmware image", logKeyRollout, ru.r.ID, logKeyErr, err)
		return
	}
	p.setDevice(w, ru, a.Index, a.Device, "")
	ru.jobs[id] = jobRef{i: a.Index}
	i, n, now := a.Index, int(a.Device.Attempt), p.cfg.Now()
	w.execs = append(w.execs, execWrite{ru, id, func(old ExecRecord, found bool) ExecRecord {
		return queuedRecord(i, n, now, old, found)
	}})
	w.changed = append(w.changed, id)
}

// pendingIO is a cancel or rollback: prepared, written, then recorded.
type pendingIO struct {
	ru    *run
	a     Action
	skip  bool // nothing to record (the image could not be read)
	write bool // a shadow write is needed
	cmd   map[string]any
	token string
	err   error
}

// prepareIO works out the shadow write of a cancel or rollback.
func (p *Planner) prepareIO(ctx context.Context, w *writes, ru *run, a Action) pendingIO {
	io := pendingIO{ru: ru, a: a, token: ru.r.ID + "/cancel"}
	id := ru.targets[a.Index]
	if a.Kind == ActRollback {
		io.token = ru.r.ID + "/rollback"
		v := firmware.Version(ru.r.Versions[a.Device.From-1])
		img, err := p.cfg.Firmware.Get(ctx, v)
		if err != nil {
			if !errors.Is(err, firmware.ErrNotFound) {
				p.log.Warn("rollback image", logKeyRollout, ru.r.ID, logKeyErr, err)
				io.skip = true
				return io
			}
			w.errs = append(w.errs, errWrite{ru, a.Index, fmt.Sprintf("rollback skipped: version %s not in the store", v)})
		} else {
			raw, err := json.Marshal(p.cfg.Firmware.Command(img, id, ru.r.Policy.URLTTL, io.token).Desired()["firmware"])
			if err == nil {
				err = json.Unmarshal(raw, &io.cmd)
			}
			if err != nil {
				p.log.Error("encode command", logKeyErr, err)
				io.skip = true
				return io
			}
		}
	}
	// A Jobs device notified through Jobs only has no command in its
	// shadow to clear.
	jr, jobs := ru.jobs[id]
	io.write = a.Kind == ActCancel && (!jobs || jr.shadow) || io.cmd != nil
	return io
}

// finishIO records a cancel or rollback whose shadow write (if any)
// succeeded.
func (p *Planner) finishIO(w *writes, io *pendingIO) {
	ru, a := io.ru, io.a
	id := ru.targets[a.Index]
	if io.skip {
		return
	}
	if io.err != nil {
		p.log.Warn("write desired firmware", logKeyRollout, ru.r.ID, logKeyDevice, id, logKeyErr, io.err)
		return
	}
	delete(ru.undelivered, a.Index)
	w.deleted = append(w.deleted, devIntent{ru: ru, i: a.Index})
	p.setDevice(w, ru, a.Index, a.Device, a.Reason)
	if a.Kind == ActRollback {
		w.events = append(w.events, evWrite{ru, Event{Time: p.cfg.Now(), Kind: EventRollback, Device: id, Reason: a.Reason}})
	}
}

// parallel calls f(0) … f(n-1) on at most limit goroutines and returns
// when all returned.
func parallel(n, limit int, f func(k int)) {
	if n <= 1 || limit <= 1 {
		for k := range n {
			f(k)
		}
		return
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, limit)
	for k := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			f(k)
		})
	}
	wg.Wait()
}

// intern returns the Device.From index of version v, adding it to the
// rollout's version table.
func (ru *run) intern(v string, w *writes) uint16 {
	if i := slices.Index(ru.r.Versions, v); i >= 0 {
		return uint16(i + 1)
	}
	if len(ru.r.Versions) >= 1<<16-1 {
		return 0
	}
	ru.r.Versions = append(ru.r.Versions, v)
	w.meta(ru)
	return uint16(len(ru.r.Versions))
}

func (ru *run) image(ctx context.Context, fw Firmware) (firmware.Image, error) {
	if ru.img != nil {
		return *ru.img, nil
	}
	img, err := fw.Get(ctx, ru.r.Firmware)
	if err != nil {
		return firmware.Image{}, err
	}
	ru.img = &img
	return img, nil
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

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
