package shadow

import "github.com/umbra-iot/umbra/device"

// MaxNameLen is the longest shadow name, in bytes, as in AWS IoT.
const MaxNameLen = 64

// Name is a named shadow's name: 1 to MaxNameLen bytes of [a-zA-Z0-9:_-],
// the characters AWS IoT allows. The empty Name is the classic (unnamed)
// shadow, which is distinct from every named one. A leading "$" (AWS's
// reserved "$package") is not a valid name.
type Name string

// ParseName validates s as the name of a named shadow. The error is a
// *RequestError wrapping ErrInvalid (a 400), so it can be sent as is.
func ParseName(s string) (Name, error) {
	if s == "" || len(s) > MaxNameLen {
		return "", reject(ErrInvalid, "", "Invalid shadow name: must be 1 to %d bytes of [a-zA-Z0-9:_-]", MaxNameLen)
	}
	for i := 0; i < len(s); i++ {
		if !nameByte(s[i]) {
			return "", reject(ErrInvalid, "", "Invalid shadow name: byte %d (%q) is not in [a-zA-Z0-9:_-]", i, s[i])
		}
	}
	return Name(s), nil
}

func nameByte(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	case c == ':', c == '_', c == '-':
		return true
	}
	return false
}

// Key names one shadow: a device's classic shadow (Name "") or one of its
// named shadows. Every shadow of a device shares the device's limits and
// is serialised with the device's other requests. It is also how a Store
// addresses documents.
type Key struct {
	Device device.ID
	Name   Name // "" for the classic shadow
}

// String is the device ID, or "<id>/<name>" for a named shadow (for logs).
func (k Key) String() string {
	if k.Name == "" {
		return string(k.Device)
	}
	return string(k.Device) + "/" + string(k.Name)
}
