package rolloutwire

import (
	"maps"
	"time"

	"github.com/umbra-iot/umbra/firmware"
	"github.com/umbra-iot/umbra/rollout"
	"github.com/umbra-iot/umbra/wire"
)

// Dropped are the JSON names of the planner's Rollout fields that Rollout
// leaves out: its bookkeeping (see the package documentation).
var Dropped = []string{"versions", "forced", "fail_base", "settled", "approval", "approved"}

// Rollout returns r's wire form, without the planner's bookkeeping.
func Rollout(r rollout.Rollout) wire.Rollout {
	return wire.Rollout{
		ID: r.ID, Firmware: string(r.Firmware), State: wire.RolloutState(r.State), Reason: r.Reason,
		Policy: Policy(r.Policy), Targets: r.Targets, Batches: batches(r.Batches), Started: r.Started,
		Created: r.Created, Updated: r.Updated, RetryOf: r.RetryOf, Selector: maps.Clone(r.Selector),
		All: r.All, Excluded: r.Excluded, Rollback: r.Rollback, Waiting: r.Waiting,
		Scheduled: r.State.Active() && r.Waiting != "" && !r.Policy.StartAt.IsZero() && r.Started == 0,
		AwaitingApproval: r.State == rollout.StatePaused && r.Policy.PauseBetweenBatches && r.Approval > 0 &&
			r.Approval == r.Started && r.Approved != r.Approval,
	}
}

// Rollouts returns the wire form of every rollout of list, in order.
func Rollouts(list []rollout.Rollout) []wire.Rollout {
	return mapSlice(list, Rollout)
}

func batches(bs []rollout.Batch) []wire.Batch {
	return mapSlice(bs, func(b rollout.Batch) wire.Batch { return wire.Batch{Start: b.Start, Size: b.Size, Done: b.Done} })
}

// Batches are numbered from 1 on the wire (BatchStatus.Index,
// RolloutDevice.Batch, RolloutEvent.Batch), as people count them; the
// rollout package counts from 0.

// Status returns st's wire form: its rollout (without bookkeeping), the
// counts per state and per batch, and the failing devices.
func Status(st rollout.Status) wire.RolloutStatus {
	return wire.RolloutStatus{
		Rollout: Rollout(st.Rollout),
		Counts:  Counts(st.Counts),
		Batches: mapSlice(st.Batches, func(b rollout.BatchStatus) wire.BatchStatus {
			return wire.BatchStatus{Index: b.Index + 1, Start: b.Start, Size: b.Size, State: b.State, Counts: Counts(b.Counts)}
		}),
		Failing: Devices(st.Failing),
	}
}

// Counts returns device counts keyed by the states' wire names; nil for
// nil.
func Counts(m map[rollout.DeviceState]int) map[wire.DeviceState]int {
	if m == nil {
		return nil
	}
	out := make(map[wire.DeviceState]int, len(m))
	for s, n := range m {
		out[DeviceState(s)] = n
	}
	return out
}

// DeviceState returns s's wire name.
func DeviceState(s rollout.DeviceState) wire.DeviceState { return wire.DeviceState(s.String()) }

// Device returns d's wire form.
func Device(d rollout.DeviceStatus) wire.RolloutDevice {
	return wire.RolloutDevice{Device: d.Device, Batch: d.Batch + 1, State: DeviceState(d.State), Attempt: d.Attempt,
		Since: d.Since, From: d.From, Error: d.Error}
}

// Devices returns the wire form of every device of list, in order; nil for
// nil.
func Devices(list []rollout.DeviceStatus) []wire.RolloutDevice { return mapSlice(list, Device) }

// Event returns ev's wire form.
func Event(ev rollout.Event) wire.RolloutEvent {
	out := wire.RolloutEvent{Seq: ev.Seq, Time: ev.Time, Kind: ev.Kind, State: wire.RolloutState(ev.State),
		Device: ev.Device, Reason: ev.Reason}
	if ev.Kind == rollout.EventBatchStarted || ev.Kind == rollout.EventBatchFinished {
		out.Batch = ev.Batch + 1 // batches are numbered from 1 on the wire
	}
	return out
}

// Events returns the wire form of every event of list, in order; nil for
// nil.
func Events(list []rollout.Event) []wire.RolloutEvent { return mapSlice(list, Event) }

// Summary returns the retained MQTT status of st: its counts without the
// states no device is in.
func Summary(st rollout.Status) wire.RolloutSummary {
	counts := make(map[wire.DeviceState]int, len(st.Counts))
	for s, n := range st.Counts {
		if n > 0 {
			counts[DeviceState(s)] = n
		}
	}
	return wire.RolloutSummary{
		ID: st.ID, Firmware: string(st.Firmware), State: wire.RolloutState(st.State), Reason: st.Reason,
		Targets: st.Targets, Batches: len(st.Rollout.Batches), BatchesStarted: st.Started,
		Counts: counts, Waiting: st.Waiting, Updated: st.Updated,
	}
}

// Policy returns p's wire form; PolicyFrom is its inverse.
func Policy(p rollout.Policy) wire.Policy {
	return wire.Policy{
		BatchSize: p.BatchSize, BatchPercent: p.BatchPercent, FirstBatch: p.FirstBatch, Ramp: p.Ramp,
		MaxBatchSize: p.MaxBatchSize, MaxInFlight: p.MaxInFlight, SuccessThreshold: p.SuccessThreshold,
		FailurePercent: p.FailurePercent, FailureCount: p.FailureCount, MinSample: p.MinSample,
		OnFailure: wire.FailureAction(p.OnFailure), Retries: p.Retries, Dynamic: p.Dynamic,
		PauseBetweenBatches: p.PauseBetweenBatches, StartAt: p.StartAt, Window: p.Window, WindowTZ: p.WindowTZ,
		DeviceTimeout: wire.Duration(p.DeviceTimeout), RetryBackoff: wire.Duration(p.RetryBackoff),
		URLTTL: wire.Duration(p.URLTTL),
	}
}

// PolicyFrom returns the planner's Policy of p, a policy from the wire.
// It does not validate it: the planner does.
func PolicyFrom(p wire.Policy) rollout.Policy {
	return rollout.Policy{
		BatchSize: p.BatchSize, BatchPercent: p.BatchPercent, FirstBatch: p.FirstBatch, Ramp: p.Ramp,
		MaxBatchSize: p.MaxBatchSize, MaxInFlight: p.MaxInFlight, SuccessThreshold: p.SuccessThreshold,
		FailurePercent: p.FailurePercent, FailureCount: p.FailureCount, MinSample: p.MinSample,
		OnFailure: rollout.FailureAction(p.OnFailure), Retries: p.Retries, Dynamic: p.Dynamic,
		PauseBetweenBatches: p.PauseBetweenBatches, StartAt: p.StartAt, Window: p.Window, WindowTZ: p.WindowTZ,
		DeviceTimeout: time.Duration(p.DeviceTimeout), RetryBackoff: time.Duration(p.RetryBackoff),
		URLTTL: time.Duration(p.URLTTL),
	}
}

// Spec returns the planner's Spec of req: its firmware, devices, selector,
// all, skip_incompatible and policy. The planner resolves a selector or
// all into devices (Planner.Create).
func Spec(req wire.CreateRollout) rollout.Spec {
	return rollout.Spec{Firmware: firmware.Version(req.Firmware), Devices: req.Devices, Selector: req.Select,
		All: req.All, SkipIncompatible: req.SkipIncompatible, Policy: PolicyFrom(req.Policy)}
}

// mapSlice applies f to every element of s; nil for nil.
func mapSlice[S, T any](s []S, f func(S) T) []T {
	if s == nil {
		return nil
	}
	out := make([]T, len(s))
	for i, v := range s {
		out[i] = f(v)
	}
	return out
}
