package natsbridge

import (
	"slices"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestSubjectOf(t *testing.T) {
	cases := []struct{ topic, subject string }{
		{"a/b/c", "umbra.m.a.b.c"},
		{"state/dev-1/update", "umbra.m.state.dev-1.update"},
		{"a.b/c d", "umbra.m.a%2Eb.c%20d"},
		{"a//b", "umbra.m.a.%.b"},
		{"/", "umbra.m.%.%"},
		{"$aws/things/x", "umbra.m.%24aws.things.x"},
		{"*/>", "umbra.m.%2A.%3E"},
		{"%", "umbra.m.%25"},
		{"é", "umbra.m.%C3%A9"},
	}
	for _, c := range cases {
		if got := subjectOf("umbra.m", c.topic); got != c.subject {
			t.Errorf("subjectOf(%q) = %q, want %q", c.topic, got, c.subject)
		}
		if got, err := topicOf("umbra.m", c.subject); err != nil || got != c.topic {
			t.Errorf("topicOf(%q) = %q, %v; want %q", c.subject, got, err, c.topic)
		}
	}
}

func TestTopicOfRefuses(t *testing.T) {
	for _, subject := range []string{
		"other.m.a", "umbra.m", "umbra.m.", "umbra.m.a..b", "umbra.m.a%", "umbra.m.%4", "umbra.m.%zz",
		"umbra.m.%41", // a needless escape: "A" is spelled A
		"umbra.m.a b", "umbra.m.*", "umbra.m.>", "umbra.m.a%2",
	} {
		if got, err := topicOf("umbra.m", subject); err == nil {
			t.Errorf("topicOf(%q) = %q, want an error", subject, got)
		}
	}
}

func TestSubscriptionsOf(t *testing.T) {
	h := func(f string) string { return subscriptionsOf("p", "$SHARE/g/"+f)[0].queue }
	cases := []struct {
		filter string
		want   []subscription
	}{
		{"a/b", []subscription{{"p.a.b", ""}}},
		{"a/+/c", []subscription{{"p.a.*.c", ""}}},
		{"#", []subscription{{"p.>", ""}}},
		{"a/#", []subscription{{"p.a.>", ""}, {"p.a", ""}}},
		{"+/#", []subscription{{"p.*.>", ""}, {"p.*", ""}}},
		{"a.b/+", []subscription{{"p.a%2Eb.*", ""}}},
		{"$SHARE/g/a/+", []subscription{{"p.a.*", h("a/+")}}},
		{"$SHARE/g.1/a/#", []subscription{{"p.a.>", "g%2E1-" + strings.SplitN(h("a/#"), "-", 2)[1]}, {"p.a", "g%2E1-" + strings.SplitN(h("a/#"), "-", 2)[1]}}},
	}
	for _, c := range cases {
		if got := subscriptionsOf("p", c.filter); !slices.Equal(got, c.want) {
			t.Errorf("subscriptionsOf(%q) = %v, want %v", c.filter, got, c.want)
		}
	}
	if h("a/+") == h("a/#") {
		t.Error("two shared filters of one group share a queue group: each must get its own copy")
	}
}

// mqttMatch reports whether MQTT filter matches topic (without the $
// rule, which the broker applies after delivery).
func mqttMatch(filter, topic string) bool {
	f, tp := strings.Split(filter, "/"), strings.Split(topic, "/")
	for i, level := range f {
		if level == "#" {
			return true
		}
		if i >= len(tp) || level != "+" && level != tp[i] {
			return false
		}
	}
	return len(f) == len(tp)
}

// natsMatch reports whether NATS subject pattern matches subject.
func natsMatch(pattern, subject string) bool {
	p, s := strings.Split(pattern, "."), strings.Split(subject, ".")
	for i, tok := range p {
		if tok == ">" {
			return len(s) > i
		}
		if i >= len(s) || tok != "*" && tok != s[i] {
			return false
		}
	}
	return len(p) == len(s)
}

// validSubject reports whether s is a NATS subject without wildcards:
// non-empty tokens of printable ASCII without whitespace.
func validSubject(s string) bool {
	for tok := range strings.SplitSeq(s, ".") {
		if tok == "" || tok == "*" || tok == ">" {
			return false
		}
		for i := 0; i < len(tok); i++ {
			if tok[i] <= ' ' || tok[i] >= 0x7f {
				return false
			}
		}
	}
	return true
}

// FuzzSubject checks, for any topic and filter: the subject is a valid
// NATS subject, decodes to the topic (reversible, hence injective), and
// the filter's subscriptions match the topic's subject exactly when the
// filter matches the topic.
func FuzzSubject(f *testing.F) {
	for _, seed := range [][2]string{
		{"a/b", "a/+"}, {"a.b/c d", "a.b/#"}, {"a//b", "a/+/b"}, {"/", "+/+"}, {"*/>", "#"},
		{"%", "%"}, {"é/x", "é/#"}, {"a", "a/#"}, {"$aws/t", "+/t"}, {"a/b/c", "a/b"},
	} {
		f.Add(seed[0], seed[1])
	}
	f.Fuzz(func(t *testing.T, topic, filter string) {
		if topic == "" || strings.ContainsAny(topic, "+#\x00") || !utf8.ValidString(topic) {
			return // not a topic name MQTT allows
		}
		s := subjectOf("umbra.m", topic)
		if !validSubject(s) {
			t.Fatalf("subjectOf(%q) = %q: not a valid NATS subject", topic, s)
		}
		back, err := topicOf("umbra.m", s)
		if err != nil || back != topic {
			t.Fatalf("topicOf(subjectOf(%q)) = %q, %v", topic, back, err)
		}
		if !validFilter(filter) {
			return
		}
		matched := false
		for _, sub := range subscriptionsOf("umbra.m", filter) {
			matched = matched || natsMatch(sub.subject, s)
		}
		if want := mqttMatch(filter, topic); matched != want {
			t.Fatalf("filter %q, topic %q: NATS match %t, MQTT match %t (subscriptions %v, subject %q)",
				filter, topic, matched, want, subscriptionsOf("umbra.m", filter), s)
		}
	})
}

// validFilter reports whether f is an MQTT filter: '+' and '#' only as
// whole levels, '#' last.
func validFilter(f string) bool {
	if f == "" || strings.ContainsRune(f, 0) || !utf8.ValidString(f) || strings.HasPrefix(f, "$SHARE/") {
		return false
	}
	levels := strings.Split(f, "/")
	for i, l := range levels {
		if strings.ContainsAny(l, "+#") && l != "+" && l != "#" || l == "#" && i != len(levels)-1 {
			return false
		}
	}
	return true
}
