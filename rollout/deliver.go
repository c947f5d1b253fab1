package rollout

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"

	"github.com/umbra-iot/umbra/firmware"
)

// delivery is a recorded command to write into a device's shadow.
type delivery struct {
	ru  *run
	i   int
	cmd map[string]any
	job string
}

// deliver writes the commands recorded as intents, then the plan's cancels
// and rollbacks, into the shadows, Config.WriteConcurrency at once so that
// the shadow engine groups their commits (one at a time, each write would
// wait for its own fsync), and commits what was delivered. Once ctx is done
// no more writes start; what is left stays recorded for the next Open.
func (p *Planner) deliver(ctx context.Context, runs []*run, pl *plan) {
	var w writes
	ds := p.deliveries(ctx, runs, &w)
	errs := parallel(ctx, len(ds), p.cfg.WriteConcurrency, func(k int) error {
		d := &ds[k]
		return p.cfg.Shadows.SetDesiredFirmware(ctx, d.ru.targets[d.i], d.cmd, d.job)
	})
	stopped := 0
	for k, d := range ds {
		id := d.ru.targets[d.i]
		switch {
		case errs[k] != nil && ctx.Err() != nil:
			stopped++
			continue
		case errs[k] != nil:
			p.log.Warn("write desired firmware", logKeyRollout, d.ru.r.ID, logKeyDevice, id, logKeyErr, errs[k])
			continue
		}
		delete(d.ru.undelivered, d.i)
		w.deleted = append(w.deleted, devIntent{ru: d.ru, i: d.i})
		// Re-read the device next pass even if its change hint is lost
		// (say, a device that answered before Notify was wired).
		p.Notify(id)
	}
	ios := make([]pendingIO, len(pl.undo))
	for k, u := range pl.undo {
		ios[k] = p.prepareIO(ctx, &w, u.ru, *u.a)
	}
	errs = parallel(ctx, len(ios), p.cfg.WriteConcurrency, func(k int) error {
		if io := &ios[k]; io.write {
			return p.cfg.Shadows.SetDesiredFirmware(ctx, io.ru.targets[io.a.Index], io.cmd, io.token)
		}
		return nil
	})
	for k := range ios {
		if io := &ios[k]; io.write {
			io.err = errs[k]
			if io.err != nil && ctx.Err() != nil {
				stopped++
				continue
			}
		}
		p.finishIO(&w, &ios[k])
	}
	if stopped > 0 {
		p.log.Info("pass stopped", "writes_left", stopped, logKeyErr, ctx.Err())
	}
	if err := p.commit(context.WithoutCancel(ctx), &w); err != nil {
		p.log.Error("persist rollout state", logKeyErr, err)
	}
}

// deliveries returns the recorded commands not yet delivered of every run
// that is not aborted (an abort's cancel clears what was recorded). An
// intent recovered by Open whose job the device already echoes was
// written before a crash: it is marked delivered in w, not written again.
func (p *Planner) deliveries(ctx context.Context, runs []*run, w *writes) []delivery {
	var ds []delivery
	for _, ru := range runs {
		if ru.r.State == StateAborted {
			continue
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
			if ru.recovered[i] && ctx.Err() == nil {
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
	return ds
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

// parallel calls f(0) … f(n-1), in order, on at most limit goroutines,
// and returns when all returned, with their errors. Once ctx is done it
// starts no more calls: their errors are ctx's.
func parallel(ctx context.Context, n, limit int, f func(k int) error) []error {
	errs := make([]error, n)
	call := func(k int) {
		if err := ctx.Err(); err != nil {
			errs[k] = err
			return
		}
		errs[k] = f(k)
	}
	if n <= 1 || limit <= 1 {
		for k := range n {
			call(k)
		}
		return errs
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, limit)
	for k := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			call(k)
		})
	}
	wg.Wait()
	return errs
}

// image returns ru's target image, read once.
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
