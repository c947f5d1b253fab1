package rollout

import (
	"context"
	"fmt"

	"github.com/umbra-iot/umbra/device"
)

// Operator commands on a rollout: pause, resume, abort and rollback. Each
// is idempotent and recorded as a state event.

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
	// A pass writing this rollout's new notifications stops before its
	// next write (see pass.go).
	ru.halted.Store(ru.r.State != StateRunning)
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
