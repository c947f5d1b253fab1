package firmware

import (
	"fmt"
	"strings"

	"golang.org/x/mod/semver"
)

// maxVersionLen bounds a version string; it is a bbolt key and appears in URLs
// and desired state.
const maxVersionLen = 64

// Version is a firmware version in canonical semantic-version form without a
// leading "v": MAJOR.MINOR.PATCH with an optional -PRERELEASE, e.g. "1.2.0" or
// "2.0.0-rc.1". Obtain one from ParseVersion; a Version is a different type
// from shadow.Version (the document counter) on purpose.
type Version string

// ParseVersion validates s and returns its canonical form. It accepts "1.2.0"
// and "v1.2.0" (both give "1.2.0"). It rejects shorthands such as "1.2" (write
// "1.2.0"), leading zeros, build metadata ("1.2.0+abc", since versions that
// differ only in build metadata have equal precedence and could not be told
// apart) and anything longer than 64 bytes. The error wraps ErrInvalidVersion.
func ParseVersion(s string) (Version, error) {
	if s == "" {
		return "", fmt.Errorf("%w: empty", ErrInvalidVersion)
	}
	if len(s) > maxVersionLen {
		return "", fmt.Errorf("%w: %d bytes, at most %d allowed", ErrInvalidVersion, len(s), maxVersionLen)
	}
	v := s
	if !strings.HasPrefix(v, "v") {
		v = "v" + v
	}
	if !semver.IsValid(v) {
		return "", fmt.Errorf("%w: %q is not a semantic version MAJOR.MINOR.PATCH[-PRERELEASE]", ErrInvalidVersion, s)
	}
	if semver.Build(v) != "" {
		return "", fmt.Errorf("%w: %q has build metadata, which is not supported", ErrInvalidVersion, s)
	}
	c := semver.Canonical(v)
	if c != v {
		return "", fmt.Errorf("%w: %q is a shorthand, write %q", ErrInvalidVersion, s, strings.TrimPrefix(c, "v"))
	}
	return Version(c[1:]), nil
}

// String returns the version without a leading "v".
func (v Version) String() string { return string(v) }

// Compare returns -1, 0 or +1 as v is lower than, equal to or higher than w
// in semantic-version precedence (so "1.2.0-rc.1" < "1.2.0" < "1.10.0").
func (v Version) Compare(w Version) int {
	return semver.Compare("v"+string(v), "v"+string(w))
}
