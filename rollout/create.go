package rollout

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/firmware"
)

// Creating rollouts: Create, Retry (a new rollout over the failed devices
// of one) and AddDevices (a dynamic rollout grows).

// Create chooses the targets of spec (its devices, or those its selector
// or all picks from Config.Inventory; see targets.go), checks their
// hardware models against the image's, validates spec, checks that the
// firmware exists and that no target is in another active rollout, stores
// the rollout with its frozen, de-duplicated target list and batches, and
// starts it. Errors wrap ErrInvalid (no device matches the selector
// included), ErrIncompatible (an *IncompatibleError listing the devices
// of another hardware model), ErrClosed or ErrConflict (a *ConflictError
// naming the other rollout).
func (p *Planner) Create(ctx context.Context, spec Spec) (Rollout, error) {
	return p.createOrPreview(ctx, spec, false)
}

// Preview is Create without the creation: it applies the same rules
// (targets chosen, hardware checked, spec validated, firmware and
// conflicts checked) and returns the rollout Create would store now, with
// its targets and batches but no ID, storing nothing. Errors are
// Create's.
func (p *Planner) Preview(ctx context.Context, spec Spec) (Rollout, error) {
	return p.createOrPreview(ctx, spec, true)
}

func (p *Planner) createOrPreview(ctx context.Context, spec Spec, preview bool) (Rollout, error) {
	spec.Policy.setDefaults()
	if v, err := firmware.ParseVersion(string(spec.Firmware)); err == nil {
		spec.Firmware = v // canonical: "v1.2.0" → "1.2.0"
	}
	if err := p.chooseTargets(ctx, &spec); err != nil {
		return Rollout{}, fmt.Errorf("create: %w", err)
	}
	excluded, err := p.checkHardware(ctx, &spec)
	if err != nil {
		return Rollout{}, fmt.Errorf("create: %w", err)
	}
	return p.create(ctx, spec, excluded, "", preview)
}

// create validates spec (its targets chosen) and stores it as a new
// rollout, which retries retryOf when set; with preview it stores nothing
// and returns the rollout it would have stored.
func (p *Planner) create(ctx context.Context, spec Spec, excluded int, retryOf string, preview bool) (Rollout, error) {
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
		Selector: maps.Clone(spec.Selector), All: spec.All, Excluded: excluded}
	reason := fmt.Sprintf("%d targets in %d batches", len(targets), len(r.Batches))
	if excluded > 0 {
		reason += fmt.Sprintf(", %d devices excluded for a hardware mismatch", excluded)
	}
	if retryOf != "" {
		reason += ", retrying " + retryOf
	}
	if preview {
		return cloneRollout(r), nil
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
	return p.create(ctx, spec, 0, id, false)
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
	r, err := p.addDevices(ctx, ru, devices)
	if err != nil {
		return Rollout{}, fmt.Errorf("add devices %s: %w", id, err)
	}
	return r, nil
}

// addDevices appends the devices ru does not target yet to it, as new
// batches. Caller holds mu.
func (p *Planner) addDevices(ctx context.Context, ru *run, devices []device.ID) (Rollout, error) {
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
	id := ru.r.ID
	if err := p.conflict(id, added); err != nil {
		return Rollout{}, err
	}
	pol := ru.r.Policy
	pol.FirstBatch = 0
	batches := planBatches(len(list), pol)
	n := len(ru.targets)
	if n+len(list) > MaxTargets || len(ru.r.Batches)+len(batches) > MaxBatches {
		return Rollout{}, fmt.Errorf("%w: more than %d targets or %d batches", ErrInvalid, MaxTargets, MaxBatches)
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
		return Rollout{}, err
	}
	ru.r, ru.targets = r, targets
	ru.devs = append(ru.devs, make([]Device, len(list))...)
	p.emit(id, evs[0])
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
