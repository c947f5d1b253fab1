package firmware

import (
	"errors"
	"fmt"
)

// Sentinel errors. Methods wrap them with context ("upload 1.2.0: …"); match
// with errors.Is. The HTTP edge maps them to status codes: ErrInvalid and
// ErrInvalidVersion 400, ErrNotFound 404, ErrExists and ErrInUse 409,
// ErrTooLarge 413, ErrChecksumMismatch 422, ErrClosed 503.
var (
	ErrInvalid          = errors.New("firmware: invalid request")
	ErrInvalidVersion   = errors.New("firmware: invalid version")
	ErrNotFound         = errors.New("firmware: version not found")
	ErrExists           = errors.New("firmware: version already exists")
	ErrTooLarge         = errors.New("firmware: image too large")
	ErrChecksumMismatch = errors.New("firmware: sha256 mismatch")
	ErrInUse            = errors.New("firmware: version in use")
	ErrBadSignature     = errors.New("firmware: signature does not verify")
	ErrClosed           = errors.New("firmware: store closed")
)

// InUseError is returned by Delete when Config.InUse reports that a rollout
// still uses the version. It unwraps to ErrInUse.
type InUseError struct {
	Version Version
	Rollout string // the rollout that uses Version
}

// Error implements error.
func (e *InUseError) Error() string {
	return fmt.Sprintf("firmware: version %s in use by rollout %q", e.Version, e.Rollout)
}

// Unwrap returns ErrInUse.
func (e *InUseError) Unwrap() error { return ErrInUse }
