package rollout

import (
	"errors"
	"fmt"

	"github.com/umbra-iot/umbra/device"
)

// Sentinel errors. Methods wrap them with context ("pause r3: …"); match
// with errors.Is. Suggested HTTP codes for the API edge: ErrInvalid 400,
// ErrNotFound 404, ErrConflict, ErrIncompatible and ErrState 409,
// ErrClosed and ErrUnavailable 503.
var (
	ErrInvalid  = errors.New("rollout: invalid request")
	ErrNotFound = errors.New("rollout: not found")
	ErrConflict = errors.New("rollout: device already in an active rollout")
	ErrState    = errors.New("rollout: not allowed in this state")
	ErrClosed   = errors.New("rollout: planner closed")
	// ErrUnavailable: the planner cannot be reached now (cluster mode: no
	// node holds the planner lease, a failover is in progress, or the
	// lease holder did not answer in time); the call did not run, or its
	// outcome is unknown. Retry in a few seconds.
	ErrUnavailable = errors.New("rollout: planner unavailable")
	// ErrIncompatible: targets of another hardware model than the image
	// (an *IncompatibleError lists them).
	ErrIncompatible = errors.New("rollout: incompatible hardware")
)

// ConflictError is returned by Create when a target device already belongs
// to an active (created, running or paused) rollout. It unwraps to
// ErrConflict.
type ConflictError struct {
	Device  device.ID // the first conflicting device found
	Rollout string    // the active rollout that holds it
}

// Error implements error.
func (e *ConflictError) Error() string {
	return fmt.Sprintf("rollout: device %s is already in active rollout %s", e.Device, e.Rollout)
}

// Unwrap returns ErrConflict.
func (e *ConflictError) Unwrap() error { return ErrConflict }
