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

// Choosing targets: the rules of which devices a rollout takes, applied by
// Create and by DevicesEnrolled whatever asked for them (the HTTP API, the
// CLI through it, an enrolment by any path).
//
//   - A rollout's targets are an explicit list (Spec.Devices), the enrolled
//     devices whose labels carry every pair of Spec.Selector, or (Spec.All)
//     every enrolled device and every device that has a shadow. A selector
//     and all are resolved from Config.Inventory at creation, sorted by ID.
//   - An image built for one hardware model (firmware.Image.HW) does not go
//     to a device enrolled with another (its HardwareLabel label): the
//     rollout is refused with an *IncompatibleError, or with
//     Spec.SkipIncompatible those devices are left out and counted in
//     Rollout.Excluded. Devices without the label are taken (they check
//     the signed manifest themselves).
//   - A device enrolled later joins every active dynamic rollout
//     (Policy.Dynamic) whose selector matches its labels or that targets
//     all devices, unless it has another hardware model than the image.

// HardwareLabel is the enrolment label naming a device's hardware model
// (umbra device add d1 --label hw=m2).
const HardwareLabel = "hw"

// Inventory is what the planner reads about the fleet to choose targets:
// the enrolled devices with their labels, and the devices that have a
// shadow. internal/server adapts the identity store and the shadow engine.
type Inventory interface {
	// EnrolledDevices returns every enrolled device with its labels, in
	// any order.
	EnrolledDevices(ctx context.Context) ([]EnrolledDevice, error)
	// ShadowDevices returns every device that has a shadow, enrolled or
	// not (with anonymous access devices are not enrolled), in any order.
	ShadowDevices(ctx context.Context) ([]device.ID, error)
}

// EnrolledDevice is an enrolled device and its labels.
type EnrolledDevice struct {
	ID     device.ID
	Labels map[string]string
}

// IncompatibleDevice is a target whose hardware model is not the image's.
type IncompatibleDevice struct {
	ID device.ID
	HW string // its HardwareLabel
}

// IncompatibleError refuses a rollout whose targets include devices of
// another hardware model than the image's. It unwraps to ErrIncompatible.
type IncompatibleError struct {
	Firmware firmware.Version
	HW       string               // the image's hardware model
	Devices  []IncompatibleDevice // every one, in target order
}

// Error implements error.
func (e *IncompatibleError) Error() string {
	d := e.Devices[0]
	return fmt.Sprintf("%d target devices have another hardware model than firmware %s (hw %q), for example %s (hw %q): leave them out with skip_incompatible (umbra rollout create --skip-incompatible)",
		len(e.Devices), e.Firmware, e.HW, d.ID, d.HW)
}

// Unwrap returns ErrIncompatible.
func (e *IncompatibleError) Unwrap() error { return ErrIncompatible }

// labelsMatch reports whether labels carry every pair of selector.
func labelsMatch(selector, labels map[string]string) bool {
	for k, v := range selector {
		if have, ok := labels[k]; !ok || have != v {
			return false
		}
	}
	return true
}

// chooseTargets fills spec.Devices from its selector or all when it has
// no explicit list. Errors wrap ErrInvalid.
func (p *Planner) chooseTargets(ctx context.Context, spec *Spec) error {
	switch {
	case spec.Devices != nil:
		return nil
	case spec.All && len(spec.Selector) > 0:
		return fmt.Errorf("%w: give a selector or all, not both", ErrInvalid)
	case !spec.All && len(spec.Selector) == 0:
		return fmt.Errorf("%w: no target devices", ErrInvalid)
	case p.cfg.Inventory == nil:
		return fmt.Errorf("%w: targets by label selector or all need Config.Inventory", ErrInvalid)
	}
	set := map[device.ID]struct{}{}
	enrolled, err := p.cfg.Inventory.EnrolledDevices(ctx)
	if err != nil {
		return fmt.Errorf("choose targets: %w", err)
	}
	for _, d := range enrolled {
		if spec.All || labelsMatch(spec.Selector, d.Labels) {
			set[d.ID] = struct{}{}
		}
	}
	if spec.All {
		shadowed, err := p.cfg.Inventory.ShadowDevices(ctx)
		if err != nil {
			return fmt.Errorf("choose targets: %w", err)
		}
		for _, id := range shadowed {
			set[id] = struct{}{}
		}
	}
	if len(set) == 0 {
		return fmt.Errorf("%w: no device matches the selector", ErrInvalid)
	}
	spec.Devices = slices.Sorted(maps.Keys(set))
	return nil
}

// checkHardware refuses spec (an *IncompatibleError) if a target is
// enrolled with another hardware model than the image's, or with
// spec.SkipIncompatible leaves such targets out and returns how many. It
// lets everything through when the image names no model, when there is no
// Inventory, or when the image is missing (Create refuses that).
func (p *Planner) checkHardware(ctx context.Context, spec *Spec) (excluded int, err error) {
	if p.cfg.Inventory == nil {
		return 0, nil
	}
	img, err := p.cfg.Firmware.Get(ctx, spec.Firmware)
	switch {
	case errors.Is(err, firmware.ErrNotFound):
		return 0, nil
	case err != nil:
		return 0, fmt.Errorf("hardware check: %w", err)
	case img.HW == "":
		return 0, nil
	}
	hw, err := p.hardware(ctx)
	if err != nil {
		return 0, err
	}
	var bad []IncompatibleDevice
	keep := make([]device.ID, 0, len(spec.Devices))
	seen := make(map[device.ID]struct{}, len(spec.Devices))
	for _, id := range spec.Devices {
		if _, dup := seen[id]; dup {
			continue // Create drops duplicates too
		}
		seen[id] = struct{}{}
		if h, ok := hw[id]; ok && h != img.HW {
			bad = append(bad, IncompatibleDevice{ID: id, HW: h})
		} else {
			keep = append(keep, id)
		}
	}
	switch {
	case len(bad) == 0:
		return 0, nil
	case !spec.SkipIncompatible:
		return 0, &IncompatibleError{Firmware: img.Version, HW: img.HW, Devices: bad}
	case len(keep) == 0:
		return 0, fmt.Errorf("%w: no target can run firmware %s: all %d have another hardware model than %q", ErrInvalid, img.Version, len(bad), img.HW)
	}
	spec.Devices = keep
	return len(bad), nil
}

// hardware returns the hardware model of every enrolled device that has
// one.
func (p *Planner) hardware(ctx context.Context) (map[device.ID]string, error) {
	enrolled, err := p.cfg.Inventory.EnrolledDevices(ctx)
	if err != nil {
		return nil, fmt.Errorf("hardware of targets: %w", err)
	}
	out := map[device.ID]string{}
	for _, d := range enrolled {
		if hw, ok := d.Labels[HardwareLabel]; ok {
			out[d.ID] = hw
		}
	}
	return out, nil
}

// DevicesEnrolled adds newly enrolled devices to every active dynamic
// rollout whose selector matches their labels or that targets all
// devices, leaving out a device whose hardware model differs from the
// rollout's image. The rollouts are taken oldest first, and a device joins
// at most one (a device is in at most one active rollout); the devices a
// rollout takes form new batches after its others, as AddDevices does.
// Wire identity.Config.OnEnrolled to it (every enrolment path calls that:
// a device added, a bulk import, a certificate binding). Nothing it does
// undoes the enrolment: problems are logged, not returned.
func (p *Planner) DevicesEnrolled(ctx context.Context, devs []EnrolledDevice) {
	if len(devs) == 0 {
		return
	}
	if err := p.begin(); err != nil {
		p.log.Warn("dynamic rollouts: enrolled devices not added", "devices", len(devs), logKeyErr, err)
		return
	}
	defer p.mu.Unlock()
	for _, ru := range p.sortedRuns() {
		if !ru.r.State.Active() || !ru.r.Policy.Dynamic || !ru.r.All && len(ru.r.Selector) == 0 {
			continue
		}
		hw := ""
		if img, err := ru.image(ctx, p.cfg.Firmware); err == nil {
			hw = img.HW
		}
		var join []device.ID
		for _, d := range devs {
			if !ru.r.All && !labelsMatch(ru.r.Selector, d.Labels) {
				continue
			}
			if h := d.Labels[HardwareLabel]; hw != "" && h != "" && h != hw {
				p.log.Info("dynamic rollout: enrolled device not added: another hardware model",
					logKeyRollout, ru.r.ID, logKeyDevice, d.ID, "hw", h)
				continue
			}
			if err := p.conflict(ru.r.ID, map[device.ID]struct{}{d.ID: {}}); err != nil {
				p.log.Warn("dynamic rollout: add enrolled device", logKeyRollout, ru.r.ID, logKeyDevice, d.ID, logKeyErr, err)
				continue
			}
			join = append(join, d.ID)
		}
		if len(join) == 0 {
			continue
		}
		if _, err := p.addDevices(ctx, ru, join); err != nil {
			p.log.Warn("dynamic rollout: add enrolled devices", logKeyRollout, ru.r.ID, "devices", len(join), logKeyErr, err)
			continue
		}
		p.log.Info("dynamic rollout: added enrolled devices", logKeyRollout, ru.r.ID, "devices", len(join))
	}
}
