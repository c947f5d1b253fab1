package rollout

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/firmware"
)

// Persist and deliver (see pass.go): the notifications decided are
// prepared, recorded and written, then the cancels and rollbacks are
// written and recorded. Each step reads what it needs from the runs
// under mu into a value (a notice, a delivery, an undoIO), does its I/O
// on that value without mu, and takes mu again to re-validate and record.

// delivery is a recorded command to write into a device's shadow.
type delivery struct {
	ru  *run
	i   int
	id  device.ID
	raw []byte         // the intent as recorded
	cmd map[string]any // raw decoded
	job string
	// check says that the intent was recovered by Open: if the device
	// already echoes job, it was written before a crash and is only
	// marked delivered.
	check bool
	// fresh is set for a notification recorded by this pass: its write
	// does not start once a control action halted its run, and it then
	// goes back to was (rec is the record it was given).
	fresh    bool
	was, rec Device
}

// errHalted is the result of a fresh delivery not written because a
// control action halted its run.
var errHalted = errors.New("rollout halted by a control action")

// notice is a notification decided by Step, with what its preparation
// needs copied from the run under mu, and what the preparation read
// without mu.
type notice struct {
	ru  *run
	rid string // ru's ID, for the logs written without mu
	a   Action
	id  device.ID
	was Device // the record Step saw: the notice is stale once it changed
	fw  firmware.Version
	ttl time.Duration
	img *firmware.Image // the run's cached image, if read already

	// Read by prepare without mu.
	jobs  bool // a Jobs device: notified through an execution
	rep   firmware.Report
	found bool
	raw   []byte
	cmd   map[string]any
	err   error // the device could not be prepared: it stays pending
}

// notice returns a's notice. Caller holds mu.
func (ru *run) notice(a Action) notice {
	id := ru.targets[a.Index]
	_, jobs := ru.jobs[id]
	return notice{ru: ru, rid: ru.r.ID, a: a, id: id, was: ru.devs[a.Index], fw: ru.r.Firmware,
		ttl: ru.r.Policy.URLTTL, img: ru.img, jobs: jobs}
}

// live reports whether n may still be recorded: its run is live and
// running and the device is as Step saw it. Caller holds mu.
func (p *Planner) live(n *notice) bool {
	ru := n.ru
	return p.runs[ru.r.ID] == ru && ru.r.State == StateRunning && ru.devs[n.a.Index] == n.was
}

// reissues returns the commands recorded and not yet delivered of every
// run that is not aborted (an abort's cancel clears what was recorded).
// Caller holds mu.
func (p *Planner) reissues() []delivery {
	var ds []delivery
	for _, ru := range p.sortedRuns() {
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
			ds = append(ds, delivery{ru: ru, i: i, id: ru.targets[i], raw: raw, cmd: cmd,
				job: Job(ru.r.ID, int(ru.devs[i].Attempt)), check: ru.recovered[i]})
			delete(ru.recovered, i)
		}
	}
	return ds
}

// redeliver writes the recorded commands of ds without mu, then records
// what was delivered.
func (p *Planner) redeliver(ctx context.Context, ds []delivery) {
	if len(ds) == 0 {
		return
	}
	errs := p.write(ctx, ds)
	p.mu.Lock()
	defer p.mu.Unlock()
	var w writes
	p.delivered(ctx, &w, ds, errs)
	if err := p.commit(context.WithoutCancel(ctx), &w); err != nil {
		p.log.Error("persist rollout state", logKeyErr, err)
	}
}

// write writes the commands of ds into the shadows, Config.WriteConcurrency
// at once so that the shadow engine groups their commits (one at a time,
// each write would wait for its own fsync). A fresh delivery whose run a
// control action halted is not written (errHalted). Caller does not hold
// mu.
func (p *Planner) write(ctx context.Context, ds []delivery) []error {
	return parallel(ctx, len(ds), p.cfg.WriteConcurrency, func(k int) error {
		d := &ds[k]
		if d.fresh && d.ru.halted.Load() {
			return errHalted
		}
		if d.check {
			if rep, ok, err := p.cfg.Shadows.ReportedFirmware(ctx, d.id); err == nil && ok && rep.Job == d.job {
				return nil // written before a crash
			}
		}
		return p.cfg.Shadows.SetDesiredFirmware(ctx, d.id, d.cmd, d.job)
	})
}

// delivered records in w the deliveries of ds that succeeded (errs[k] is
// ds[k]'s). An intent that became moot meanwhile (the device left flight,
// which deleted it) is left alone. A fresh delivery that was not written
// because its run was halted goes back to its record before the pass:
// its command was never written, so the attempt it was given is given
// again later (with a new command) without repeating or skipping one.
// Caller holds mu.
func (p *Planner) delivered(ctx context.Context, w *writes, ds []delivery, errs []error) {
	stopped, halted := 0, 0
	for k, d := range ds {
		switch {
		case errors.Is(errs[k], errHalted):
			if p.revert(w, &d) {
				halted++
			}
			continue
		case errs[k] != nil && ctx.Err() != nil:
			stopped++
			continue
		case errs[k] != nil:
			p.log.Warn("write desired firmware", logKeyRollout, d.ru.r.ID, logKeyDevice, d.id, logKeyErr, errs[k])
			continue
		}
		if raw, ok := d.ru.undelivered[d.i]; !ok || !bytes.Equal(raw, d.raw) {
			continue
		}
		delete(d.ru.undelivered, d.i)
		w.deleted = append(w.deleted, devIntent{ru: d.ru, i: d.i})
		// Re-read the device next pass even if its change hint is lost
		// (say, a device that answered before Notify was wired).
		p.Notify(d.id)
	}
	if stopped > 0 {
		p.log.Info("pass stopped", "writes_left", stopped, logKeyErr, ctx.Err())
	}
	if halted > 0 {
		p.log.Info("notifications taken back unwritten: their rollout was paused or aborted", "devices", halted)
	}
}

// revert takes back fresh delivery d, not written: its device returns to
// the record it had before the pass and its intent is deleted, unless the
// device moved meanwhile. Caller holds mu.
func (p *Planner) revert(w *writes, d *delivery) bool {
	ru, i := d.ru, d.i
	if _, jobs := ru.jobs[d.id]; jobs || ru.devs[i] != d.rec || p.runs[ru.r.ID] != ru {
		return false // moved, or converted to a Jobs execution: re-issued as recorded
	}
	ru.devs[i] = d.was
	delete(p.inflight, d.id)
	delete(ru.undelivered, i)
	w.devs = append(w.devs, devWrite{ru, i})
	w.deleted = append(w.deleted, devIntent{ru: ru, i: i})
	return true
}

// notify prepares the notifications ns without mu, records those still
// live (see live) in one commit, writes their commands without mu
// (stopping, per rollout, once a control action halted it), and records
// what was delivered and what was taken back.
func (p *Planner) notify(ctx context.Context, ns []notice) {
	if len(ns) == 0 {
		return
	}
	p.prepare(ctx, ns)
	p.mu.Lock()
	var w writes
	ds := p.admit(&w, ns)
	err := p.commit(context.WithoutCancel(ctx), &w)
	p.mu.Unlock()
	if err != nil {
		// Nothing is written: the intents may not be recorded.
		p.log.Error("persist rollout state", logKeyErr, err)
		return
	}
	if len(ds) == 0 {
		return
	}
	p.redeliver(ctx, ds)
}

// prepare reads, without mu and Config.WriteConcurrency at once, what
// recording each notice of ns needs: whether the device is a Jobs
// device, its reported firmware, and its command (minted with a fresh
// URL).
func (p *Planner) prepare(ctx context.Context, ns []notice) {
	if len(ns) == 0 {
		return
	}
	imgs := map[*run]*firmware.Image{}
	for k := range ns {
		n := &ns[k]
		if n.img == nil {
			if img, ok := imgs[n.ru]; ok {
				n.img = img
				continue
			}
			img, err := p.cfg.Firmware.Get(ctx, n.fw)
			if err != nil {
				p.log.Error("firmware image", logKeyRollout, n.rid, logKeyErr, err)
				imgs[n.ru] = nil
				continue
			}
			n.img, imgs[n.ru] = &img, &img
		}
	}
	errs := parallel(ctx, len(ns), p.cfg.WriteConcurrency, func(k int) error {
		n := &ns[k]
		if !n.jobs {
			n.jobs = p.isJobsDevice(ctx, n.id)
		}
		if n.jobs {
			return n.needImage()
		}
		var err error
		if n.rep, n.found, err = p.cfg.Shadows.ReportedFirmware(ctx, n.id); err != nil {
			p.log.Warn("read reported firmware", logKeyDevice, n.id, logKeyErr, err)
			return err
		}
		if n.installed() {
			return nil
		}
		if err := n.needImage(); err != nil {
			return err
		}
		n.raw, err = json.Marshal(p.cfg.Firmware.Command(*n.img, n.id, n.ttl, n.a.Job).Desired()["firmware"])
		if err == nil {
			err = json.Unmarshal(n.raw, &n.cmd)
		}
		if err != nil {
			p.log.Error("encode command", logKeyErr, err)
		}
		return err
	})
	for k := range ns {
		ns[k].err = errs[k]
	}
}

// errNoImage stops a notice whose run's image could not be read (logged).
var errNoImage = errors.New("no firmware image")

func (n *notice) needImage() error {
	if n.img == nil {
		return errNoImage
	}
	return nil
}

// installed reports whether n's device already runs the target version.
func (n *notice) installed() bool {
	return n.found && n.rep.Version == string(n.fw) && (n.rep.State == "" || n.rep.State == firmware.StateUpdated)
}

// admit records the prepared notices of ns that are still live in w
// (see live): a device that already runs the version as already-installed,
// a Jobs device with a queued execution, any other notified with its
// command as an intent, which it returns to be delivered after the
// commit. A notice that is stale or could not be prepared is dropped: the
// device stays pending and a later pass decides again. Caller holds mu.
func (p *Planner) admit(w *writes, ns []notice) []delivery {
	var ds []delivery
	for k := range ns {
		n := &ns[k]
		if n.err != nil || !p.live(n) {
			continue
		}
		ru, i := n.ru, n.a.Index
		if ru.img == nil {
			ru.img = n.img
		}
		_, marked := p.marked[n.id] // marked a Jobs device after prepare read it
		if _, jobs := ru.jobs[n.id]; jobs || n.jobs || marked {
			p.recordExecution(w, ru, n.a)
			continue
		}
		d := n.a.Device
		if n.installed() {
			d.State = DeviceAlreadyInstalled
			if n.a.Device.Attempt > 1 {
				d.State = DeviceSucceeded // an earlier attempt got there late
				d.Attempt--
			}
			p.setDevice(w, ru, i, d, "")
			continue
		}
		if n.found && n.rep.Version != "" && d.From == 0 {
			d.From = ru.intern(n.rep.Version, w)
		}
		p.setDevice(w, ru, i, d, "")
		w.intents = append(w.intents, devIntent{ru, i, n.raw})
		ru.undelivered[i] = n.raw
		ds = append(ds, delivery{ru: ru, i: i, id: n.id, raw: n.raw, cmd: n.cmd, job: n.a.Job,
			fresh: true, was: n.was, rec: d})
	}
	p.marked = nil
	return ds
}

// recordExecution notifies a Jobs device: its attempt becomes a QUEUED
// execution, recorded with the device in w's commit; nothing is written
// into its shadow (the job document, with a fresh URL, is minted when the
// device asks for it). Nothing is read from its reported firmware: no
// already-installed check, no previous version (so no rollback). Caller
// holds mu.
func (p *Planner) recordExecution(w *writes, ru *run, a Action) {
	id := ru.targets[a.Index]
	p.setDevice(w, ru, a.Index, a.Device, "")
	ru.jobs[id] = jobRef{i: a.Index}
	i, n, now := a.Index, int(a.Device.Attempt), p.cfg.Now()
	w.execs = append(w.execs, execWrite{ru, id, func(old ExecRecord, found bool) ExecRecord {
		return queuedRecord(i, n, now, old, found)
	}})
	w.changed = append(w.changed, id)
}

// undoIO is a cancel or rollback: copied from the run under mu, prepared
// and written without it, then recorded under it.
type undoIO struct {
	ru      *run
	rid     string // ru's ID, for the logs written without mu
	a       Action
	id      device.ID
	was     Device // the record Step saw
	token   string
	version firmware.Version // a rollback's version to write back
	ttl     time.Duration
	clears  bool // a cancel clears a command from the shadow

	// Set without mu.
	skip    bool   // nothing to record (the image could not be read)
	missing string // a rollback skipped: the version is not in the store
	write   bool   // a shadow write is needed
	cmd     map[string]any
	err     error
}

// undoIO returns a's undoIO. Caller holds mu.
func (ru *run) undoIO(a Action) undoIO {
	id := ru.targets[a.Index]
	u := undoIO{ru: ru, rid: ru.r.ID, a: a, id: id, was: ru.devs[a.Index], token: ru.r.ID + "/cancel",
		ttl: ru.r.Policy.URLTTL}
	if a.Kind == ActRollback {
		u.token = ru.r.ID + "/rollback"
		u.version = firmware.Version(ru.r.Versions[a.Device.From-1])
	}
	// A Jobs device notified through Jobs only has no command in its
	// shadow to clear.
	jr, jobs := ru.jobs[id]
	u.clears = a.Kind == ActCancel && (!jobs || jr.shadow)
	return u
}

// undo prepares and writes the cancels and rollbacks of us without mu,
// then records those that succeeded and whose device did not move
// meanwhile.
func (p *Planner) undo(ctx context.Context, us []undoIO) {
	if len(us) == 0 {
		return
	}
	for k := range us {
		p.prepareIO(ctx, &us[k])
	}
	errs := parallel(ctx, len(us), p.cfg.WriteConcurrency, func(k int) error {
		if u := &us[k]; u.write {
			return p.cfg.Shadows.SetDesiredFirmware(ctx, u.id, u.cmd, u.token)
		}
		return nil
	})
	p.mu.Lock()
	defer p.mu.Unlock()
	var w writes
	stopped := 0
	for k := range us {
		u := &us[k]
		if u.write {
			u.err = errs[k]
			if u.err != nil && ctx.Err() != nil {
				stopped++
				continue
			}
		}
		if p.runs[u.ru.r.ID] != u.ru || u.ru.devs[u.a.Index] != u.was {
			continue // moved meanwhile: the next pass decides again
		}
		p.finishIO(&w, u)
	}
	if stopped > 0 {
		p.log.Info("pass stopped", "writes_left", stopped, logKeyErr, ctx.Err())
	}
	if err := p.commit(context.WithoutCancel(ctx), &w); err != nil {
		p.log.Error("persist rollout state", logKeyErr, err)
	}
}

// prepareIO works out the shadow write of a cancel or rollback. Caller
// does not hold mu.
func (p *Planner) prepareIO(ctx context.Context, u *undoIO) {
	if u.a.Kind == ActRollback {
		img, err := p.cfg.Firmware.Get(ctx, u.version)
		if err != nil {
			if !errors.Is(err, firmware.ErrNotFound) {
				p.log.Warn("rollback image", logKeyRollout, u.rid, logKeyErr, err)
				u.skip = true
				return
			}
			u.missing = fmt.Sprintf("rollback skipped: version %s not in the store", u.version)
		} else {
			raw, err := json.Marshal(p.cfg.Firmware.Command(img, u.id, u.ttl, u.token).Desired()["firmware"])
			if err == nil {
				err = json.Unmarshal(raw, &u.cmd)
			}
			if err != nil {
				p.log.Error("encode command", logKeyErr, err)
				u.skip = true
				return
			}
		}
	}
	u.write = u.clears || u.cmd != nil
}

// finishIO records a cancel or rollback whose shadow write (if any)
// succeeded. Caller holds mu.
func (p *Planner) finishIO(w *writes, u *undoIO) {
	ru, a := u.ru, u.a
	if u.skip {
		return
	}
	if u.err != nil {
		p.log.Warn("write desired firmware", logKeyRollout, ru.r.ID, logKeyDevice, u.id, logKeyErr, u.err)
		return
	}
	if u.missing != "" {
		w.errs = append(w.errs, errWrite{ru, a.Index, u.missing})
	}
	delete(ru.undelivered, a.Index)
	w.deleted = append(w.deleted, devIntent{ru: ru, i: a.Index})
	p.setDevice(w, ru, a.Index, a.Device, a.Reason)
	if a.Kind == ActRollback {
		w.events = append(w.events, evWrite{ru, Event{Time: p.cfg.Now(), Kind: EventRollback, Device: u.id, Reason: a.Reason}})
	}
}

// parallel calls f(0) … f(n-1), started in order, on at most limit
// goroutines (workers that each take the next index, so that their grown
// stacks are reused), and returns when all returned, with their errors.
// Once ctx is done it starts no more calls: their errors are ctx's.
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
	var next atomic.Int64
	for range min(limit, n) {
		wg.Go(func() {
			for k := int(next.Add(1)) - 1; k < n; k = int(next.Add(1)) - 1 {
				call(k)
			}
		})
	}
	wg.Wait()
	return errs
}

// image returns ru's target image, read once. Caller holds mu.
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
