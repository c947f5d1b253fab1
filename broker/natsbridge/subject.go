package natsbridge

import (
	"errors"
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"
)

// The subjects of an MQTT topic and of a filter (see the package
// documentation, "Subjects").
//
// A topic level becomes one subject token: the bytes A-Z, a-z, 0-9, '-'
// and '_' stay, every other byte becomes "%XX" (two upper-case hex
// digits), and an empty level becomes "%" alone. A token therefore never
// contains '.', whitespace, '*' or '>', is never empty, and decodes to
// exactly one level: the mapping is injective and reversible, and a
// subject's tokens are its topic's levels, so NATS wildcards match
// subjects as MQTT's match topics.

// errSubject is wrapped by topicOf for a subject that no topic maps to.
var errSubject = errors.New("natsbridge: not an encoded topic")

// safe reports whether b stays as it is in a token.
func safe(b byte) bool {
	return 'a' <= b && b <= 'z' || 'A' <= b && b <= 'Z' || '0' <= b && b <= '9' || b == '-' || b == '_'
}

const hexDigits = "0123456789ABCDEF"

// appendToken appends the token of level (one topic level, or a client ID
// or group name, whose '/' is then escaped like any other byte).
func appendToken(dst []byte, level string) []byte {
	if level == "" {
		return append(dst, '%')
	}
	for i := 0; i < len(level); i++ {
		b := level[i]
		if safe(b) {
			dst = append(dst, b)
			continue
		}
		dst = append(dst, '%', hexDigits[b>>4], hexDigits[b&0xF])
	}
	return dst
}

// token returns the token of s, a single name (client ID, share group).
func token(s string) string {
	return string(appendToken(make([]byte, 0, len(s)+8), s))
}

// subjectOf returns the subject of topic, an MQTT topic name, under prefix
// (a valid subject without wildcards).
func subjectOf(prefix, topic string) string {
	dst := make([]byte, 0, len(prefix)+1+len(topic)+len(topic)/4+4)
	dst = append(dst, prefix...)
	for level := range strings.SplitSeq(topic, "/") {
		dst = append(dst, '.')
		dst = appendToken(dst, level)
	}
	return string(dst)
}

// topicOf returns the topic whose subject under prefix is subject. It
// wraps errSubject for a subject subjectOf never returns.
func topicOf(prefix, subject string) (string, error) {
	rest, ok := strings.CutPrefix(subject, prefix+".")
	if !ok {
		return "", fmt.Errorf("%w: %q is not under %q", errSubject, subject, prefix)
	}
	var b strings.Builder
	b.Grow(len(rest))
	first := true
	for tok := range strings.SplitSeq(rest, ".") {
		if !first {
			b.WriteByte('/')
		}
		first = false
		if err := decodeToken(&b, tok); err != nil {
			return "", fmt.Errorf("%w: %q: %w", errSubject, subject, err)
		}
	}
	return b.String(), nil
}

// decodeToken writes the level tok encodes.
func decodeToken(b *strings.Builder, tok string) error {
	switch tok {
	case "":
		return errors.New("empty token")
	case "%":
		return nil // an empty level
	}
	for i := 0; i < len(tok); i++ {
		c := tok[i]
		if safe(c) {
			b.WriteByte(c)
			continue
		}
		if c != '%' || i+2 >= len(tok) {
			return fmt.Errorf("byte %q at %d", c, i)
		}
		hi, lo := unhex(tok[i+1]), unhex(tok[i+2])
		if hi < 0 || lo < 0 {
			return fmt.Errorf("escape %q at %d", tok[i:i+3], i)
		}
		v := byte(hi<<4 | lo)
		if safe(v) {
			return fmt.Errorf("needless escape %q at %d", tok[i:i+3], i) // one spelling per level
		}
		b.WriteByte(v)
		i += 2
	}
	return nil
}

// unhex returns the value of an upper-case hex digit, or -1.
func unhex(c byte) int {
	switch {
	case '0' <= c && c <= '9':
		return int(c - '0')
	case 'A' <= c && c <= 'F':
		return int(c - 'A' + 10)
	}
	return -1
}

// subscription is one NATS subscription that a filter needs.
type subscription struct {
	subject string
	queue   string // "" for a plain subscription
}

// subscriptionsOf returns the NATS subscriptions that receive every
// message matching filter, an MQTT filter as broker.Relay.Interest names
// it: "+" becomes "*" and a final "#" becomes ">", plus the parent
// subject, which MQTT's "#" also matches ("a/#" matches "a"). A shared
// subscription "$SHARE/<group>/<filter>" gets queue subscriptions, in a
// queue group of its own named after the group and the filter, so that
// NATS hands each message to one member across the nodes.
func subscriptionsOf(prefix, filter string) []subscription {
	var queue string
	if rest, ok := strings.CutPrefix(filter, sharePrefix); ok {
		group, f, ok := strings.Cut(rest, "/")
		if !ok {
			return nil
		}
		h := fnv.New64a()
		h.Write([]byte(f))
		queue = token(group) + "-" + strconv.FormatUint(h.Sum64(), 36)
		filter = f
	}
	dst := make([]byte, 0, len(prefix)+len(filter)+16)
	dst = append(dst, prefix...)
	levels := strings.Split(filter, "/")
	for i, level := range levels {
		switch {
		case level == "#" && i == len(levels)-1:
			subs := []subscription{{subject: string(dst) + ".>", queue: queue}}
			if i > 0 {
				subs = append(subs, subscription{subject: string(dst), queue: queue})
			}
			return subs
		case level == "+":
			dst = append(dst, '.', '*')
		default:
			dst = append(dst, '.')
			dst = appendToken(dst, level)
		}
	}
	return []subscription{{subject: string(dst), queue: queue}}
}

// sharePrefix starts the filter of a shared subscription as
// broker.Relay.Interest spells it.
const sharePrefix = "$SHARE/"
