package device

import (
	"errors"
	"fmt"
)

// MaxIDLen is the longest device ID accepted, in bytes.
const MaxIDLen = 128

// ErrInvalidID is returned (wrapped) by ParseID for a string that is not a
// valid device ID.
var ErrInvalidID = errors.New("device: invalid id")

// ID identifies one device. It is 1 to MaxIDLen bytes drawn from
// [A-Za-z0-9_.:-], so it is safe as an MQTT topic level, a URL path segment,
// a file name component and a bbolt key.
type ID string

// ParseID validates s and returns it as an ID. The error wraps ErrInvalidID
// and says which rule failed.
func ParseID(s string) (ID, error) {
	if len(s) == 0 {
		return "", fmt.Errorf("%w: empty", ErrInvalidID)
	}
	if len(s) > MaxIDLen {
		return "", fmt.Errorf("%w: %d bytes, at most %d allowed", ErrInvalidID, len(s), MaxIDLen)
	}
	if s == "." || s == ".." {
		return "", fmt.Errorf("%w: %q is reserved", ErrInvalidID, s)
	}
	for i := 0; i < len(s); i++ {
		if !validByte(s[i]) {
			return "", fmt.Errorf("%w: byte %d (%q) not in [A-Za-z0-9_.:-]", ErrInvalidID, i, s[i])
		}
	}
	return ID(s), nil
}

// MustParseID is ParseID for constants and tests; it panics on an invalid ID.
func MustParseID(s string) ID {
	id, err := ParseID(s)
	if err != nil {
		panic(err)
	}
	return id
}

// String returns the ID as a string.
func (id ID) String() string { return string(id) }

func validByte(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	case c == '_', c == '.', c == ':', c == '-':
		return true
	}
	return false
}
