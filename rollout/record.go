package rollout

import (
	"context"
	"slices"

	"github.com/umbra-iot/umbra/device"
)

// Recording: a pass, an operator command or a device's Jobs request
// changes the runs in memory through setDevice and friends, which collect
// the matching writes; commit stores them in one Store.Commit and only
// then tells Config.OnEvent and Config.OnExecution.

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
	c := &Changes{
		Rollouts:   make([]Rollout, len(w.metas)),
		Devices:    make([]DeviceWrite, len(w.devs)),
		Errors:     make([]ErrorWrite, len(w.errs)),
		Events:     make([]EventWrite, len(w.events)),
		Intents:    make([]IntentWrite, len(w.intents)),
		Delivered:  make([]Position, len(w.deleted)),
		Executions: make([]ExecWrite, len(w.execs)),
	}
	for k, ru := range w.metas {
		c.Rollouts[k] = ru.r
	}
	for k, d := range w.devs {
		c.Devices[k] = DeviceWrite{Position{d.ru.r.ID, d.i}, d.ru.devs[d.i]}
	}
	for k, e := range w.errs {
		c.Errors[k] = ErrorWrite{Position{e.ru.r.ID, e.i}, e.msg}
	}
	for k, e := range w.events {
		c.Events[k] = EventWrite{e.ru.r.ID, e.ev}
	}
	for k, in := range w.intents {
		c.Intents[k] = IntentWrite{Position{in.ru.r.ID, in.i}, in.raw}
	}
	for k, in := range w.deleted {
		c.Delivered[k] = Position{in.ru.r.ID, in.i}
	}
	for k, x := range w.execs {
		c.Executions[k] = ExecWrite{x.ru.r.ID, x.id, x.patch}
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

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
