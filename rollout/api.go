package rollout

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"time"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/firmware"
)

// BatchStatus is one batch's progress.
type BatchStatus struct {
	Index  int                 `json:"index"`
	Start  int                 `json:"start"`
	Size   int                 `json:"size"`
	State  string              `json:"state"` // "waiting", "running" or "done"
	Counts map[DeviceState]int `json:"counts"`
}

// DeviceStatus is one target's state in a rollout.
type DeviceStatus struct {
	Device  device.ID   `json:"device"`
	Batch   int         `json:"batch"`
	State   DeviceState `json:"state"`
	Attempt int         `json:"attempt"`
	Since   time.Time   `json:"since,omitzero"` // last change (retry time for a pending retry)
	From    string      `json:"from,omitempty"` // version before the rollout, when known
	Error   string      `json:"error,omitempty"`
}

// Status is a snapshot of a rollout's progress.
type Status struct {
	Rollout
	Counts  map[DeviceState]int `json:"counts"`
	Batches []BatchStatus       `json:"batch_status"`
	// Failing lists up to MaxFailingListed failed or timed-out devices.
	Failing []DeviceStatus `json:"failing,omitempty"`
}

// begin locks mu for an API call; the error wraps ErrClosed.
func (p *Planner) begin() error {
	p.mu.Lock()
	if p.closed.Load() {
		p.mu.Unlock()
		return ErrClosed
	}
	return nil
}

// Create validates spec, checks that the firmware exists and that no
// target is in another active rollout, stores the rollout with its frozen,
// de-duplicated target list and batches, and starts it. Errors wrap
// ErrInvalid, ErrClosed or ErrConflict (a *ConflictError naming the other
// rollout).
func (p *Planner) Create(ctx context.Context, spec Spec) (Rollout, error) {
	return p.create(ctx, spec, "")
}

func (p *Planner) create(ctx context.Context, spec Spec, retryOf string) (Rollout, error) {
	spec.Policy.setDefaults()
	if err := spec.Validate(); err != nil {
		return Rollout{}, fmt.Errorf("create: %w", err)
	}
	spec.Firmware, _ = firmware.ParseVersion(string(spec.Firmware)) // canonical: "v1.2.0" → "1.2.0"
	if _, err := p.cfg.Firmware.Get(ctx, spec.Firmware); err != nil {
		if errors.Is(err, firmware.ErrNotFound) {
			return Rollout{}, fmt.Errorf("create: %w: firmware %s: %w", ErrInvalid, spec.Firmware, err)
		}
		return Rollout{}, fmt.Errorf("create: %w", err)
	}
	set := make(map[device.ID]struct{}, len(spec.Devices))
	targets := make([]device.ID, 0, len(spec.Devices))
	for _, id := range spec.Devices {
		if _, dup := set[id]; !dup {
			set[id] = struct{}{}
			targets = append(targets, id)
		}
	}
	if err := p.begin(); err != nil {
		return Rollout{}, fmt.Errorf("create: %w", err)
	}
	defer p.mu.Unlock()
	if err := p.conflict("", set); err != nil {
		return Rollout{}, fmt.Errorf("create: %w", err)
	}
	now := p.cfg.Now()
	r := Rollout{Firmware: spec.Firmware, State: StateCreated, Policy: spec.Policy, Targets: len(targets),
		Batches: planBatches(len(targets), spec.Policy), Created: now, Updated: now, RetryOf: retryOf,
		Selector: maps.Clone(spec.Selector), All: spec.All, Excluded: spec.Excluded}
	reason := fmt.Sprintf("%d targets in %d batches", len(targets), len(r.Batches))
	if spec.Excluded > 0 {
		reason += fmt.Sprintf(", %d devices excluded for a hardware mismatch", spec.Excluded)
	}
	if retryOf != "" {
		reason += ", retrying " + retryOf
	}
	r, ev, err := p.store.Create(ctx, r, targets, Event{Time: now, Kind: EventCreated, State: StateCreated, Reason: reason})
	if err != nil {
		return Rollout{}, fmt.Errorf("create: %w", err)
	}
	p.adopt(&run{r: r, targets: targets, devs: make([]Device, len(targets)), undelivered: map[int][]byte{},
		jobs: map[device.ID]jobRef{}})
	p.emit(r.ID, ev)
	p.log.Info("rollout created", logKeyRollout, r.ID, "firmware", r.Firmware, "targets", len(targets))
	p.poke()
	return cloneRollout(r), nil
}

// conflict returns a *ConflictError if a device of set is a target of an
// active rollout other than except. Caller holds mu.
func (p *Planner) conflict(except string, set map[device.ID]struct{}) error {
	if len(set) == 0 {
		return nil
	}
	for _, ru := range p.sortedRuns() {
		if !ru.r.State.Active() || ru.r.ID == except {
			continue
		}
		for _, id := range ru.targets {
			if _, ok := set[id]; ok {
				return &ConflictError{Device: id, Rollout: ru.r.ID}
			}
		}
	}
	return nil
}

func cloneRollout(r Rollout) Rollout {
	r.Batches = slices.Clone(r.Batches)
	r.Versions = slices.Clone(r.Versions)
	r.Selector = maps.Clone(r.Selector)
	return r
}

// snapshot returns rollout id with its targets and records: the live run
// (shared; caller holds mu and must not keep it) or a copy loaded from the
// store.
func (p *Planner) snapshot(ctx context.Context, id string) (*run, error) {
	if ru := p.runs[id]; ru != nil {
		return ru, nil
	}
	return p.loadRun(ctx, id)
}

// Get returns rollout id's status: per-state and per-batch counts and the
// failing devices with their errors. Errors wrap ErrNotFound or ErrClosed.
func (p *Planner) Get(ctx context.Context, id string) (Status, error) {
	if err := p.begin(); err != nil {
		return Status{}, fmt.Errorf("get %s: %w", id, err)
	}
	defer p.mu.Unlock()
	ru, err := p.snapshot(ctx, id)
	if err != nil {
		return Status{}, fmt.Errorf("get %s: %w", id, err)
	}
	st := Status{Rollout: cloneRollout(ru.r), Counts: map[DeviceState]int{}}
	var failing []int // positions of st.Failing
	for bi, b := range ru.r.Batches {
		bs := BatchStatus{Index: bi, Start: b.Start, Size: b.Size, State: "waiting", Counts: map[DeviceState]int{}}
		var c counts
		for i := b.Start; i < b.Start+b.Size; i++ {
			d := ru.devs[i]
			c[d.State]++
			if d.State.Failure() && len(st.Failing) < MaxFailingListed {
				st.Failing = append(st.Failing, ru.deviceStatus(i, bi, ""))
				failing = append(failing, i)
			}
		}
		for s, n := range c {
			if n > 0 {
				bs.Counts[DeviceState(s)] = n
				st.Counts[DeviceState(s)] += n
			}
		}
		switch {
		case bi >= ru.r.Started:
		case c.done():
			bs.State = "done"
		default:
			bs.State = "running"
		}
		st.Batches = append(st.Batches, bs)
	}
	if len(failing) > 0 {
		errs, err := p.store.Errors(ctx, id, failing)
		if err != nil {
			return Status{}, fmt.Errorf("get %s: %w", id, err)
		}
		for k, i := range failing {
			st.Failing[k].Error = errs[i]
		}
	}
	return st, nil
}

// batchOf returns the index of the batch holding target position i.
func (r *Rollout) batchOf(i int) int {
	bs := r.Batches
	// The batches cover [0, Targets) in order: the last one starting at
	// or before i holds it.
	return sort.Search(len(bs), func(k int) bool { return bs[k].Start > i }) - 1
}

func (ru *run) deviceStatus(i, batch int, errMsg string) DeviceStatus {
	return ru.r.deviceStatus(ru.targets[i], ru.devs[i], batch, errMsg)
}

// deviceStatus describes target's record d in batch.
func (r *Rollout) deviceStatus(target device.ID, d Device, batch int, errMsg string) DeviceStatus {
	ds := DeviceStatus{Device: target, Batch: batch, State: d.State, Attempt: int(d.Attempt), Error: errMsg}
	if d.At != 0 {
		ds.Since = time.Unix(0, d.At).UTC()
	}
	if d.From > 0 && int(d.From) <= len(r.Versions) {
		ds.From = r.Versions[d.From-1]
	}
	return ds
}

// List returns every rollout, oldest first. The error wraps ErrClosed.
func (p *Planner) List(ctx context.Context) ([]Rollout, error) {
	if err := p.begin(); err != nil {
		return nil, fmt.Errorf("list: %w", err)
	}
	defer p.mu.Unlock()
	out, err := p.store.Rollouts(ctx)
	if err != nil {
		return nil, fmt.Errorf("list: %w", err)
	}
	for i, r := range out {
		if ru := p.runs[r.ID]; ru != nil {
			out[i] = cloneRollout(ru.r)
		}
	}
	slices.SortFunc(out, func(a, b Rollout) int { return compareIDs(a.ID, b.ID) })
	return out, nil
}

// Devices returns rollout id's targets in rollout order, only those in one
// of states when any are given. Errors wrap ErrNotFound or ErrClosed.
func (p *Planner) Devices(ctx context.Context, id string, states ...DeviceState) ([]DeviceStatus, error) {
	if err := p.begin(); err != nil {
		return nil, fmt.Errorf("devices %s: %w", id, err)
	}
	defer p.mu.Unlock()
	ru, err := p.snapshot(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("devices %s: %w", id, err)
	}
	errs, err := p.store.Errors(ctx, id, nil)
	if err != nil {
		return nil, fmt.Errorf("devices %s: %w", id, err)
	}
	out := []DeviceStatus{}
	for bi, b := range ru.r.Batches {
		for i := b.Start; i < b.Start+b.Size; i++ {
			if len(states) == 0 || slices.Contains(states, ru.devs[i].State) {
				out = append(out, ru.deviceStatus(i, bi, errs[i]))
			}
		}
	}
	return out, nil
}

// DevicesPage returns up to limit targets of rollout id from position
// start on, in rollout order, keeping only those in states (all when
// empty), and the position the next page starts at (-1 after the last).
// The work is proportional to the positions scanned, not to the number of
// targets, for active rollouts (in memory) and finished ones (an ordered
// scan of the store from start) alike; error texts are read only for the
// devices returned. Errors wrap ErrInvalid (start or limit), ErrNotFound
// or ErrClosed.
func (p *Planner) DevicesPage(ctx context.Context, id string, states []DeviceState, start, limit int) ([]DeviceStatus, int, error) {
	if start < 0 || limit < 1 {
		return nil, -1, fmt.Errorf("devices %s: %w: start %d, limit %d", id, ErrInvalid, start, limit)
	}
	if err := p.begin(); err != nil {
		return nil, -1, fmt.Errorf("devices %s: %w", id, err)
	}
	defer p.mu.Unlock()
	out, next, err := p.devicesPage(ctx, id, states, start, limit)
	if err != nil {
		return nil, -1, fmt.Errorf("devices %s: %w", id, err)
	}
	return out, next, nil
}

// devicesPage is DevicesPage with mu held.
func (p *Planner) devicesPage(ctx context.Context, id string, states []DeviceState, start, limit int) ([]DeviceStatus, int, error) {
	r, ru := Rollout{}, p.runs[id]
	if ru != nil {
		r = ru.r
	} else { // finished: only its record, not its devices
		var err error
		if r, err = p.store.Rollout(ctx, id); err != nil {
			return nil, -1, err
		}
	}
	out, next := []DeviceStatus{}, -1
	var pos []int // positions of out
	keep := func(i int, target device.ID, d Device) bool {
		if len(states) > 0 && !slices.Contains(states, d.State) {
			return true
		}
		if len(out) == limit {
			next = i
			return false
		}
		out = append(out, r.deviceStatus(target, d, r.batchOf(i), ""))
		pos = append(pos, i)
		return true
	}
	if start >= r.Targets {
		return out, -1, nil // past the end: an empty page
	}
	if ru != nil {
		for i := start; i < r.Targets && keep(i, ru.targets[i], ru.devs[i]); i++ {
		}
	} else if err := p.store.Targets(ctx, id, start, keep); err != nil {
		return nil, -1, err
	}
	if len(pos) > 0 {
		// The last error of each device, as Devices shows it: a failure,
		// or the reason of a retry to come.
		errs, err := p.store.Errors(ctx, id, pos)
		if err != nil {
			return nil, -1, err
		}
		for k, i := range pos {
			out[k].Error = errs[i]
		}
	}
	return out, next, nil
}

// Events returns rollout id's event log, oldest first. Errors wrap
// ErrNotFound or ErrClosed.
func (p *Planner) Events(ctx context.Context, id string) ([]Event, error) {
	return p.EventsAfter(ctx, id, 0)
}

// EventsAfter returns the events of rollout id whose Seq is above after,
// oldest first, read from that point on. Errors wrap ErrNotFound or
// ErrClosed.
func (p *Planner) EventsAfter(ctx context.Context, id string, after uint64) ([]Event, error) {
	if err := p.begin(); err != nil {
		return nil, fmt.Errorf("events %s: %w", id, err)
	}
	defer p.mu.Unlock()
	out, err := p.store.Events(ctx, id, after)
	if err != nil {
		return nil, fmt.Errorf("events %s: %w", id, err)
	}
	return out, nil
}

// control applies an operator command to rollout id under mu: f changes
// the live run and returns the event reason ("" when nothing changed, which
// makes every command idempotent).
func (p *Planner) control(ctx context.Context, op, id string, f func(ru *run) (string, error)) (Rollout, error) {
	if err := p.begin(); err != nil {
		return Rollout{}, fmt.Errorf("%s %s: %w", op, id, err)
	}
	defer p.mu.Unlock()
	ru, err := p.snapshot(ctx, id)
	if err != nil {
		return Rollout{}, fmt.Errorf("%s %s: %w", op, id, err)
	}
	before := ru.r
	reason, err := f(ru)
	if err != nil {
		ru.r = before
		return Rollout{}, fmt.Errorf("%s %s: %w", op, id, err)
	}
	if reason == "" {
		return cloneRollout(ru.r), nil
	}
	now := p.cfg.Now()
	ru.r.Updated = now
	ru.r.Settled = false
	evs, err := p.store.Commit(ctx, &Changes{Rollouts: []Rollout{ru.r},
		Events: []EventWrite{{Rollout: id, Event: Event{Time: now, Kind: EventState, State: ru.r.State, Reason: reason}}}})
	if err != nil {
		ru.r = before
		return Rollout{}, fmt.Errorf("%s %s: %w", op, id, err)
	}
	if p.runs[id] == nil {
		p.adopt(ru)
	}
	p.emit(id, evs[0])
	p.log.Info("rollout "+op, logKeyRollout, id, logKeyState, ru.r.State)
	p.poke()
	return cloneRollout(ru.r), nil
}

// Pause stops new notifications of rollout id; devices already notified
// continue and still time out. Pausing a paused rollout does nothing.
// Errors wrap ErrNotFound, ErrState (finished) or ErrClosed.
func (p *Planner) Pause(ctx context.Context, id string) (Rollout, error) {
	return p.control(ctx, "pause", id, func(ru *run) (string, error) {
		if ru.r.State == StatePaused {
			return "", nil
		}
		if !transition(&ru.r, StatePaused) {
			return "", fmt.Errorf("%w: rollout is %s", ErrState, ru.r.State)
		}
		ru.r.Reason = "paused by operator"
		return ru.r.Reason, nil
	})
}

// Resume continues a paused rollout. It overrides what paused it: the
// current batch may advance although it missed the success threshold, and
// the failure threshold trips again only on a new failure. Resuming a
// running rollout does nothing. Errors wrap ErrNotFound, ErrState or
// ErrClosed.
func (p *Planner) Resume(ctx context.Context, id string) (Rollout, error) {
	return p.control(ctx, "resume", id, func(ru *run) (string, error) {
		if ru.r.State == StateRunning {
			return "", nil
		}
		if !transition(&ru.r, StateRunning) {
			return "", fmt.Errorf("%w: rollout is %s", ErrState, ru.r.State)
		}
		var c counts
		for _, d := range ru.devs {
			c[d.State]++
		}
		ru.r.Forced = ru.r.Started
		ru.r.FailBase = c.failures()
		if ru.r.Approval == ru.r.Started {
			ru.r.Approved = ru.r.Started // this pause was the approval step
		}
		ru.r.Reason = "resumed by operator"
		return ru.r.Reason, nil
	})
}

// Abort stops rollout id: pending devices are canceled and the desired
// firmware of in-flight devices is cleared. With rollback, devices that
// already moved get their previous version back as desired. Aborting an
// aborted rollout does nothing (but may add the rollback). Errors wrap
// ErrNotFound, ErrState (succeeded or failed; use Rollback) or ErrClosed.
func (p *Planner) Abort(ctx context.Context, id string, rollback bool) (Rollout, error) {
	return p.control(ctx, "abort", id, func(ru *run) (string, error) {
		switch {
		case ru.r.State == StateAborted:
			if !rollback || ru.r.Rollback {
				return "", nil
			}
		case !transition(&ru.r, StateAborted):
			return "", fmt.Errorf("%w: rollout is %s", ErrState, ru.r.State)
		}
		ru.r.Rollback = ru.r.Rollback || rollback
		ru.r.Reason = "aborted by operator"
		if rollback {
			ru.r.Reason += " with rollback"
		}
		return ru.r.Reason, nil
	})
}

// Rollback writes the previous version back as desired for every device
// rollout id moved (succeeded devices whose earlier version is known),
// aborting the rollout first if it is active. It is idempotent. It is
// refused with a *ConflictError while such a device is in another active
// rollout. Errors wrap ErrNotFound, ErrConflict or ErrClosed.
func (p *Planner) Rollback(ctx context.Context, id string) (Rollout, error) {
	return p.control(ctx, "rollback", id, func(ru *run) (string, error) {
		if ru.r.Rollback && !ru.r.State.Active() {
			return "", nil
		}
		// Devices that moved on to an active rollout are not pulled back.
		moved := map[device.ID]struct{}{}
		for i, d := range ru.devs {
			if d.State == DeviceSucceeded {
				moved[ru.targets[i]] = struct{}{}
			}
		}
		if err := p.conflict(ru.r.ID, moved); err != nil {
			return "", err
		}
		if ru.r.State.Active() {
			transition(&ru.r, StateAborted)
		}
		ru.r.Rollback = true
		ru.r.Reason = "rollback by operator"
		return ru.r.Reason, nil
	})
}

// Retry creates a new rollout of the same firmware and policy over the
// failed and timed-out devices of finished rollout id. Errors wrap
// ErrNotFound, ErrState (still active, or nothing failed), ErrConflict,
// ErrInvalid or ErrClosed.
func (p *Planner) Retry(ctx context.Context, id string) (Rollout, error) {
	if err := p.begin(); err != nil {
		return Rollout{}, fmt.Errorf("retry %s: %w", id, err)
	}
	ru, err := p.snapshot(ctx, id)
	var spec Spec
	if err == nil {
		if ru.r.State.Active() {
			err = fmt.Errorf("%w: rollout is %s", ErrState, ru.r.State)
		}
		spec = Spec{Firmware: ru.r.Firmware, Policy: ru.r.Policy}
		for i, d := range ru.devs {
			if d.State.Failure() {
				spec.Devices = append(spec.Devices, ru.targets[i])
			}
		}
		if err == nil && len(spec.Devices) == 0 {
			err = fmt.Errorf("%w: no failed or timed-out devices", ErrState)
		}
	}
	p.mu.Unlock()
	if err != nil {
		return Rollout{}, fmt.Errorf("retry %s: %w", id, err)
	}
	// One batch: the devices already went through the gates once.
	spec.BatchSize, spec.BatchPercent, spec.FirstBatch, spec.Ramp = 0, 0, 0, 0
	return p.create(ctx, spec, id)
}

// InUse reports whether an active rollout installs firmware version v, or
// a rollback in progress writes it back, and which rollout (the lowest ID). Wire firmware.Config.InUse to it. The error wraps
// ErrClosed.
func (p *Planner) InUse(ctx context.Context, v firmware.Version) (string, bool, error) {
	if err := p.begin(); err != nil {
		return "", false, fmt.Errorf("in use %s: %w", v, err)
	}
	defer p.mu.Unlock()
	for _, ru := range p.sortedRuns() {
		rollingBack := ru.r.Rollback && !ru.r.Settled && slices.Contains(ru.r.Versions, string(v))
		if ru.r.Firmware == v && ru.r.State.Active() || rollingBack {
			return ru.r.ID, true, nil
		}
	}
	return "", false, nil
}

// AddDevices appends devices to dynamic rollout id (Policy.Dynamic) while it
// is active, e.g. devices enrolled after creation that match its selector.
// Devices it already targets are ignored; the others form new batches
// (BatchSize or BatchPercent of the added devices, no canary, with the
// ramp) after the existing ones. A dynamic rollout still finishes when its
// last batch is done. Errors wrap ErrInvalid, ErrNotFound, ErrState (not
// dynamic or not active), ErrConflict (*ConflictError) or ErrClosed.
func (p *Planner) AddDevices(ctx context.Context, id string, devices []device.ID) (Rollout, error) {
	for _, d := range devices {
		if _, err := device.ParseID(string(d)); err != nil {
			return Rollout{}, fmt.Errorf("add devices %s: %w: %w", id, ErrInvalid, err)
		}
	}
	if err := p.begin(); err != nil {
		return Rollout{}, fmt.Errorf("add devices %s: %w", id, err)
	}
	defer p.mu.Unlock()
	ru := p.runs[id]
	if ru == nil {
		if _, err := p.store.Rollout(ctx, id); err != nil {
			return Rollout{}, fmt.Errorf("add devices %s: %w", id, err)
		}
		return Rollout{}, fmt.Errorf("add devices %s: %w: rollout is finished", id, ErrState)
	}
	switch {
	case !ru.r.Policy.Dynamic:
		return Rollout{}, fmt.Errorf("add devices %s: %w: rollout is not dynamic", id, ErrState)
	case !ru.r.State.Active():
		return Rollout{}, fmt.Errorf("add devices %s: %w: rollout is %s", id, ErrState, ru.r.State)
	}
	have := make(map[device.ID]struct{}, len(ru.targets))
	for _, t := range ru.targets {
		have[t] = struct{}{}
	}
	added := map[device.ID]struct{}{}
	var list []device.ID
	for _, d := range devices {
		if _, dup := have[d]; dup {
			continue
		}
		if _, dup := added[d]; !dup {
			added[d] = struct{}{}
			list = append(list, d)
		}
	}
	if len(list) == 0 {
		return cloneRollout(ru.r), nil
	}
	if err := p.conflict(id, added); err != nil {
		return Rollout{}, fmt.Errorf("add devices %s: %w", id, err)
	}
	pol := ru.r.Policy
	pol.FirstBatch = 0
	batches := planBatches(len(list), pol)
	n := len(ru.targets)
	if n+len(list) > MaxTargets || len(ru.r.Batches)+len(batches) > MaxBatches {
		return Rollout{}, fmt.Errorf("add devices %s: %w: more than %d targets or %d batches", id, ErrInvalid, MaxTargets, MaxBatches)
	}
	r := cloneRollout(ru.r)
	for _, b := range batches {
		r.Batches = append(r.Batches, Batch{Start: n + b.Start, Size: b.Size})
	}
	r.Targets = n + len(list)
	r.Updated = p.cfg.Now()
	targets := append(slices.Clip(ru.targets), list...)
	evs, err := p.store.Commit(ctx, &Changes{Rollouts: []Rollout{r}, Targets: []TargetList{{Rollout: id, Targets: targets}},
		Events: []EventWrite{{Rollout: id, Event: Event{Time: r.Updated, Kind: EventDevicesAdded,
			Reason: fmt.Sprintf("%d devices in %d batches", len(list), len(batches))}}}})
	if err != nil {
		return Rollout{}, fmt.Errorf("add devices %s: %w", id, err)
	}
	ru.r, ru.targets = r, targets
	ru.devs = append(ru.devs, make([]Device, len(list))...)
	p.emit(id, evs[0])
	p.poke()
	return cloneRollout(r), nil
}
