package policy

import (
	"strings"
	"testing"
	"unicode/utf8"
)

// refAllow is a slow, direct reading of Allow's documentation: a linear
// scan over the rules of each file, without the trie. The fuzzers compare
// the two.
func refAllow(files []*File, s Subject, topic string, a Access) bool {
	if a != Read && a != Write || !refValid(topic, a == Read) {
		return false
	}
	if a == Read && strings.HasPrefix(topic, "$share/") {
		parts := strings.SplitN(topic, "/", 3)
		if len(parts) < 3 || parts[1] == "" || parts[1] == "+" || parts[1] == "#" || parts[2] == "" {
			return false
		}
		topic = parts[2]
	}
	levels := strings.Split(topic, "/")
	if a == Write {
		for _, r := range reserved {
			if refCovers(strings.Split(r, "/"), levels, "", "") {
				return false
			}
		}
	}
	client, user := s.ClientID, s.User
	if strings.ContainsAny(client, "+#/") {
		client = ""
	}
	if strings.ContainsAny(user, "+#/") {
		user = ""
	}
	for _, f := range files {
		var grant, deny bool
		for _, r := range f.rules {
			if !refApplies(r, s) || !refCovers(strings.Split(r.filter, "/"), levels, client, user) {
				continue
			}
			if r.deny {
				deny = true
			} else if r.access&a != 0 {
				grant = true
			}
		}
		if deny {
			return false
		}
		if grant {
			return true
		}
	}
	return false
}

// refApplies reports whether rule r is one of s's.
func refApplies(r rule, s Subject) bool {
	switch r.scope {
	case scopeAnonymous:
		return s.User == ""
	case scopeUser:
		return s.User != "" && s.User == r.name
	case scopeRole:
		return s.Role == r.name
	}
	return true // scopeAll
}

// refCovers reports whether the rule's levels match every topic the
// filter's levels match.
func refCovers(rule, filter []string, client, user string) bool {
	dollar := strings.HasPrefix(filter[0], "$")
	for i, r := range rule {
		wild := r == "+" || r == "#" || r == "%c" || r == "%u"
		if i == 0 && dollar && wild {
			return false
		}
		if r == "#" {
			return len(filter) >= i
		}
		if i >= len(filter) {
			return false
		}
		f := filter[i]
		switch {
		case f == "#":
			return false
		case r == "+":
		case r == "%c":
			if client == "" || f != client {
				return false
			}
		case r == "%u":
			if user == "" || f != user {
				return false
			}
		case r != f:
			return false
		}
	}
	return len(filter) == len(rule)
}

// refValid checks a topic name or filter level by level.
func refValid(topic string, filter bool) bool {
	if topic == "" || len(topic) > 65535 {
		return false
	}
	levels := strings.Split(topic, "/")
	for i, l := range levels {
		if !strings.ContainsAny(l, "+#") {
			continue
		}
		if !filter || (l != "+" && l != "#") || (l == "#" && i != len(levels)-1) {
			return false
		}
	}
	return true
}

// tiersOf returns the files a Policy made by New(f) consults.
func tiersOf(f *File) []*File {
	if f == nil {
		return []*File{defaultFile}
	}
	if f.mode == Replace {
		return []*File{f}
	}
	return []*File{f, defaultFile}
}

// FuzzParseRules checks that Parse never panics, that every error names
// the file and a line, and that an accepted file's rules hold valid
// filters on lines that exist.
func FuzzParseRules(f *testing.F) {
	for _, tc := range parseErrorCases {
		f.Add(tc.src)
	}
	f.Add(string(defaultSrc))
	f.Add("user a b\ntopic read a b/c\n\tpattern\tdeny\t%c/#\n  # c\n")
	f.Fuzz(func(t *testing.T, src string) {
		file, err := Parse("fuzz.acl", []byte(src))
		lines := strings.Count(src, "\n") + 1
		if err != nil {
			for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
				pe, ok := e.(*ParseError)
				if !ok || pe.File != "fuzz.acl" || pe.Line < 1 || pe.Line > lines || !strings.HasPrefix(e.Error(), "fuzz.acl:") {
					t.Errorf("Parse(%q): error %v is no ParseError of fuzz.acl within %d lines", src, e, lines)
				}
			}
			return
		}
		for _, r := range file.rules {
			if r.line < 1 || r.line > lines || !utf8.ValidString(r.filter) || !refValid(r.filter, true) ||
				r.deny != (r.access == 0) {
				t.Errorf("Parse(%q): rule %+v", src, r)
			}
		}
	})
}
