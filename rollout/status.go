package rollout

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"time"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/firmware"
)

// Reading rollouts: status, devices (whole or a page), events, and which
// rollout uses a firmware version.

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

// Get returns rollout id's status: per-state and per-batch counts and the
// failing devices with their errors. Errors wrap ErrNotFound or ErrClosed.
func (p *Planner) Get(ctx context.Context, id string) (Status, error) {
	var st Status
	var failing []int // positions of st.Failing
	err := p.view(ctx, id, func(ru *run) { st, failing = ru.status() })
	if err != nil {
		return Status{}, fmt.Errorf("get %s: %w", id, err)
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

// view calls f with rollout id: the live run under mu (f must not keep
// it), or else a copy loaded from the store without mu. The error wraps
// ErrNotFound or ErrClosed. The API's reads use it, so that they wait for
// the pass in progress only while it holds mu (never for shadow I/O), and
// do their own store reads without mu.
func (p *Planner) view(ctx context.Context, id string, f func(ru *run)) error {
	if err := p.begin(); err != nil {
		return err
	}
	ru := p.runs[id]
	if ru != nil {
		f(ru)
	}
	p.mu.Unlock()
	if ru != nil {
		return nil
	}
	ru, err := p.loadRun(ctx, id)
	if err != nil {
		return err
	}
	f(ru)
	return nil
}

// status returns ru's Status without the error texts, and the positions
// of its Failing devices.
func (ru *run) status() (Status, []int) {
	st := Status{Rollout: cloneRollout(ru.r), Counts: map[DeviceState]int{}}
	var failing []int
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
	return st, failing
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
	if p.closed.Load() {
		return nil, fmt.Errorf("list: %w", ErrClosed)
	}
	out, err := p.store.Rollouts(ctx)
	if err != nil {
		return nil, fmt.Errorf("list: %w", err)
	}
	// The live runs are ahead of their stored records only by what the
	// pass in progress has not committed yet.
	if err := p.begin(); err != nil {
		return nil, fmt.Errorf("list: %w", err)
	}
	for i, r := range out {
		if ru := p.runs[r.ID]; ru != nil {
			out[i] = cloneRollout(ru.r)
		}
	}
	p.mu.Unlock()
	slices.SortFunc(out, func(a, b Rollout) int { return compareIDs(a.ID, b.ID) })
	return out, nil
}

// Devices returns rollout id's targets in rollout order, only those in one
// of states when any are given. Errors wrap ErrNotFound or ErrClosed.
func (p *Planner) Devices(ctx context.Context, id string, states ...DeviceState) ([]DeviceStatus, error) {
	out := []DeviceStatus{}
	var pos []int // positions of out
	err := p.view(ctx, id, func(ru *run) {
		for bi, b := range ru.r.Batches {
			for i := b.Start; i < b.Start+b.Size; i++ {
				if len(states) == 0 || slices.Contains(states, ru.devs[i].State) {
					out = append(out, ru.deviceStatus(i, bi, ""))
					pos = append(pos, i)
				}
			}
		}
	})
	if err != nil {
		return nil, fmt.Errorf("devices %s: %w", id, err)
	}
	errs, err := p.store.Errors(ctx, id, nil)
	if err != nil {
		return nil, fmt.Errorf("devices %s: %w", id, err)
	}
	for k, i := range pos {
		out[k].Error = errs[i]
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
	out, next, err := p.devicesPage(ctx, id, states, start, limit)
	if err != nil {
		return nil, -1, fmt.Errorf("devices %s: %w", id, err)
	}
	return out, next, nil
}

// devicesPage is DevicesPage: an active rollout's page is read from
// memory under mu, a finished one's from the store without it, and the
// error texts without it.
func (p *Planner) devicesPage(ctx context.Context, id string, states []DeviceState, start, limit int) ([]DeviceStatus, int, error) {
	out, next := []DeviceStatus{}, -1
	var pos []int // positions of out
	var r Rollout
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
	if err := p.begin(); err != nil {
		return nil, -1, err
	}
	ru := p.runs[id]
	if ru != nil {
		r = ru.r
		for i := start; i < r.Targets && keep(i, ru.targets[i], ru.devs[i]); i++ {
		}
	}
	p.mu.Unlock()
	if ru == nil { // finished: only its record, not its devices
		var err error
		if r, err = p.store.Rollout(ctx, id); err != nil {
			return nil, -1, err
		}
		if start >= r.Targets {
			return out, -1, nil // past the end: an empty page
		}
		if err := p.store.Targets(ctx, id, start, keep); err != nil {
			return nil, -1, err
		}
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
	if p.closed.Load() {
		return nil, fmt.Errorf("events %s: %w", id, ErrClosed)
	}
	out, err := p.store.Events(ctx, id, after)
	if err != nil {
		return nil, fmt.Errorf("events %s: %w", id, err)
	}
	return out, nil
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

// snapshot returns rollout id with its targets and records: the live run
// (shared; caller holds mu and must not keep it) or a copy loaded from the
// store.
func (p *Planner) snapshot(ctx context.Context, id string) (*run, error) {
	if ru := p.runs[id]; ru != nil {
		return ru, nil
	}
	return p.loadRun(ctx, id)
}
