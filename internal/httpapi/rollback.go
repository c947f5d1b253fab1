package httpapi

import (
	"context"
	"fmt"

	"github.com/umbra-iot/umbra/rollout"
)

// A rollback "applies" when it can change something: the rollout is still
// active (the rollback aborts it), or at least one of its devices moved to
// the new version (succeeded) with a known previous version to go back
// to. A finished rollout with no such device is refused with 409 rather
// than answered 200 with nothing done (which read as "rolling back (now
// succeeded)"). Rolling back a rolled back rollout again stays idempotent
// (200, "rollback":true). docs/rollouts.md says so.

// rollbackPage is the page size of the scan for devices to roll back.
const rollbackPage = 1000

// rollbackApplies returns nil when rolling rollout id back would change
// something, else an error wrapping rollout.ErrState that says why not.
func rollbackApplies(ctx context.Context, rs Rollouts, id string) error {
	st, err := rs.Get(ctx, id)
	if err != nil {
		return err
	}
	r := st.Rollout
	if r.State.Active() {
		return nil
	}
	if r.Rollback {
		return nil // idempotent: answered with the rollout, which says rollback
	}
	for start := 0; start >= 0; {
		devs, next, err := rs.DevicesPage(ctx, id, []rollout.DeviceState{rollout.DeviceSucceeded}, start, rollbackPage)
		if err != nil {
			return fmt.Errorf("rollback %s: list devices: %w", id, err)
		}
		for _, d := range devs {
			if d.From != "" {
				return nil
			}
		}
		start = next
	}
	return clientErr(rollout.ErrState, "Nothing to roll back: rollout %s is %s and none of its devices moved to %s from a known earlier version", id, r.State, r.Firmware)
}
