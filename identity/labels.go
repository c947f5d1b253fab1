package identity

import (
	"fmt"
	"maps"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Label limits.
const (
	// MaxLabels is the most labels a device may carry.
	MaxLabels = 32
	// MaxLabelKeyLen is the longest label key, in bytes.
	MaxLabelKeyLen = 63
	// MaxLabelValueLen is the longest label value, in bytes.
	MaxLabelValueLen = 255
)

// ParseLabels parses "key=value" strings (as given to
// umbra device add --label) into a validated map. A repeated key is an
// error. The error wraps ErrInvalidLabel.
func ParseLabels(kvs []string) (map[string]string, error) {
	labels := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return nil, fmt.Errorf("%w: %q is not key=value", ErrInvalidLabel, clip(kv))
		}
		if _, dup := labels[k]; dup {
			return nil, fmt.Errorf("%w: key %q given twice", ErrInvalidLabel, clip(k))
		}
		labels[k] = v
	}
	if err := ValidateLabels(labels); err != nil {
		return nil, err
	}
	return labels, nil
}

// ParseSelector parses a label selector "key=value[,key=value…]" (umbra
// rollout create --select, GET /v1/devices?selector=) into the labels a
// device must all carry; blanks around the pairs are ignored. The rules
// are ParseLabels'. The error wraps ErrInvalidLabel.
func ParseSelector(s string) (map[string]string, error) {
	var kvs []string
	for f := range strings.SplitSeq(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			kvs = append(kvs, f)
		}
	}
	if len(kvs) == 0 {
		return nil, fmt.Errorf("%w: want key=value[,key=value…]", ErrInvalidLabel)
	}
	return ParseLabels(kvs)
}

// ValidateLabels checks labels: at most MaxLabels; keys 1 to MaxLabelKeyLen
// bytes of [A-Za-z0-9_./-] starting with a letter or digit; values at most
// MaxLabelValueLen bytes of printable UTF-8. The error wraps
// ErrInvalidLabel.
func ValidateLabels(labels map[string]string) error {
	if len(labels) > MaxLabels {
		return fmt.Errorf("%w: %d labels, at most %d allowed", ErrInvalidLabel, len(labels), MaxLabels)
	}
	for k, v := range labels {
		if err := validateLabelKey(k); err != nil {
			return err
		}
		if len(v) > MaxLabelValueLen {
			return fmt.Errorf("%w: value of %q is %d bytes, at most %d allowed", ErrInvalidLabel, k, len(v), MaxLabelValueLen)
		}
		if !utf8.ValidString(v) || strings.ContainsFunc(v, func(r rune) bool { return !unicode.IsPrint(r) }) {
			return fmt.Errorf("%w: value of %q is not printable UTF-8", ErrInvalidLabel, k)
		}
	}
	return nil
}

func validateLabelKey(k string) error {
	if len(k) == 0 || len(k) > MaxLabelKeyLen {
		return fmt.Errorf("%w: key %q must be 1 to %d bytes", ErrInvalidLabel, clip(k), MaxLabelKeyLen)
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || c != '_' && c != '.' && c != '/' && c != '-') {
			return fmt.Errorf("%w: key %q: byte %d (%q) not allowed", ErrInvalidLabel, k, i, c)
		}
	}
	return nil
}

// cloneLabels returns a copy of labels, nil for an empty map.
func cloneLabels(labels map[string]string) map[string]string {
	if len(labels) == 0 {
		return nil
	}
	return maps.Clone(labels)
}

// clip shortens s for error messages.
func clip(s string) string {
	const max = 64
	if len(s) <= max {
		return s
	}
	return s[:max] + "…"
}
