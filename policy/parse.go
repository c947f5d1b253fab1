package policy

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// MaxFileSize is the largest policy file Parse and Load accept, in bytes.
const MaxFileSize = 8 << 20

// maxErrors is how many bad lines one Parse reports before it stops.
const maxErrors = 20

// maxFilterLen is the longest topic filter MQTT can carry.
const maxFilterLen = 65535

// ErrSyntax is wrapped by every *ParseError.
var ErrSyntax = errors.New("policy: syntax error")

// ErrTooLarge is wrapped by Parse and Load for a file over MaxFileSize.
var ErrTooLarge = errors.New("policy: file too large")

// ParseError is one bad line of a policy file. Its message reads
// "<file>:<line>: <what is wrong>". It unwraps to ErrSyntax.
type ParseError struct {
	File string // the name given to Parse
	Line int    // 1-based
	Msg  string
}

func (e *ParseError) Error() string { return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg) }

// Unwrap returns ErrSyntax.
func (e *ParseError) Unwrap() error { return ErrSyntax }

// Mode says how a file combines with the built-in default policy.
type Mode uint8

// The modes, set by a file's "default" directive.
const (
	// Extend (the default, or "default extend") consults the file first
	// and the built-in default where the file decides nothing.
	Extend Mode = iota
	// Replace ("default replace") uses the file alone.
	Replace
)

// String returns "extend" or "replace".
func (m Mode) String() string {
	if m == Replace {
		return "replace"
	}
	return "extend"
}

// scopeKind is whom a rule applies to.
type scopeKind uint8

const (
	scopeAnonymous scopeKind = iota // topic lines before the first user or role line: clients without a user name
	scopeUser                       // topic lines after "user <name>"
	scopeRole                       // topic and pattern lines after "role <name>"
	scopeAll                        // pattern lines outside role sections: every client
)

// rule is one topic or pattern line.
type rule struct {
	line   int
	scope  scopeKind
	name   string // user name or role for scopeUser and scopeRole
	deny   bool
	access Access // granted access; 0 for deny
	filter string
}

// File is a parsed policy file. It is immutable; compile it with New.
type File struct {
	name  string
	mode  Mode
	rules []rule
}

// Name returns the name the file was parsed under.
func (f *File) Name() string { return f.name }

// Mode returns how the file combines with the built-in default.
func (f *File) Mode() Mode { return f.mode }

// Rules returns the number of topic and pattern lines.
func (f *File) Rules() int { return len(f.rules) }

// Parse parses src, the content of a policy file in mosquitto's acl_file
// syntax with Umbra's extensions (see the package documentation). name
// is used in errors only. Every bad line is reported (up to 20), each as a
// *ParseError, joined with errors.Join; a src over MaxFileSize fails with
// ErrTooLarge.
func Parse(name string, src []byte) (*File, error) {
	if len(src) > MaxFileSize {
		return nil, fmt.Errorf("%s: %d bytes, at most %d: %w", name, len(src), MaxFileSize, ErrTooLarge)
	}
	p := parser{f: &File{name: name}, scope: scopeAnonymous}
	src = bytes.TrimPrefix(src, []byte("\ufeff"))
	for n := 1; len(src) > 0 && len(p.errs) < maxErrors; n++ {
		line := src
		if i := bytes.IndexByte(src, '\n'); i >= 0 {
			line, src = src[:i], src[i+1:]
		} else {
			src = nil
		}
		p.line(n, line)
	}
	if len(p.errs) > 0 {
		return nil, errors.Join(p.errs...)
	}
	return p.f, nil
}

// parser holds the state of one Parse.
type parser struct {
	f        *File
	scope    scopeKind // of the next topic line
	name     string    // user or role of the current section
	modeLine int       // line of the "default" directive; 0 if none yet
	errs     []error
}

func (p *parser) fail(n int, format string, args ...any) {
	p.errs = append(p.errs, &ParseError{File: p.f.name, Line: n, Msg: fmt.Sprintf(format, args...)})
}

// blanks are the separators between tokens; mosquitto splits on spaces only.
const blanks = " \t"

// line parses line n.
func (p *parser) line(n int, b []byte) {
	if !utf8.Valid(b) {
		p.fail(n, "not valid UTF-8")
		return
	}
	s := strings.TrimRight(string(b), " \t\r\v\f")
	s = strings.TrimLeft(s, blanks)
	if s == "" || s[0] == '#' {
		return
	}
	keyword, rest := cutToken(s)
	switch keyword {
	case "topic", "pattern":
		p.rule(n, keyword, rest)
	case "user":
		if rest == "" {
			p.fail(n, "user: missing user name")
			return
		}
		p.scope, p.name = scopeUser, rest
	case "role":
		if !validRole(rest) {
			p.fail(n, "role %q: unknown role (want %s)", clip(rest), strings.Join(Roles, ", "))
			return
		}
		p.scope, p.name = scopeRole, rest
	case "default":
		switch {
		case p.modeLine != 0:
			p.fail(n, "default: repeated (first on line %d)", p.modeLine)
		case rest == "extend":
			p.f.mode, p.modeLine = Extend, n
		case rest == "replace":
			p.f.mode, p.modeLine = Replace, n
		default:
			p.fail(n, "default %q: want \"default extend\" or \"default replace\"", clip(rest))
		}
	default:
		p.fail(n, "unknown keyword %q (want topic, pattern, user, role or default)", clip(keyword))
	}
}

// rule parses the rest of a topic or pattern line:
// "[read|write|readwrite|deny] <filter>".
func (p *parser) rule(n int, keyword, rest string) {
	r := rule{line: n, scope: p.scope, name: p.name, access: Read | Write}
	if keyword == "pattern" && p.scope != scopeRole {
		// mosquitto: pattern lines apply to every client, whatever user
		// line came before.
		r.scope, r.name = scopeAll, ""
	}
	word, filter := cutToken(rest)
	switch {
	case word == "":
		p.fail(n, "%s: missing access and topic filter", keyword)
		return
	case filter == "" && isAccess(word):
		p.fail(n, "%s %s: missing topic filter", keyword, word)
		return
	case filter == "":
		filter = word // "topic <filter>" grants read and write
	default:
		switch word {
		case "read":
			r.access = Read
		case "write":
			r.access = Write
		case "readwrite":
		case "deny":
			r.deny, r.access = true, 0
		default:
			p.fail(n, "%s: unknown access %q (want read, write, readwrite or deny)", keyword, clip(word))
			return
		}
	}
	if err := checkFilter(filter, keyword == "pattern"); err != nil {
		p.fail(n, "%s %q: %v", keyword, clip(filter), err)
		return
	}
	r.filter = filter
	p.f.rules = append(p.f.rules, r)
}

func isAccess(s string) bool {
	switch s {
	case "read", "write", "readwrite", "deny":
		return true
	}
	return false
}

// cutToken splits s at its first run of blanks; rest has no leading or
// trailing blanks.
func cutToken(s string) (token, rest string) {
	i := strings.IndexAny(s, blanks)
	if i < 0 {
		return s, ""
	}
	return s[:i], strings.Trim(s[i:], blanks)
}

// checkFilter reports what is wrong with a rule's topic filter: it must be
// a valid MQTT filter ("+" and "#" whole levels, "#" last), not a shared
// subscription, and may hold %c and %u only as whole levels of a pattern.
func checkFilter(f string, pattern bool) error {
	if len(f) > maxFilterLen {
		return fmt.Errorf("%d bytes, at most %d", len(f), maxFilterLen)
	}
	if strings.IndexByte(f, 0) >= 0 {
		return errors.New("holds a NUL character")
	}
	if f == "$share" || strings.HasPrefix(f, "$share/") {
		return errors.New("a rule names topics, not shared subscriptions: a $share/<group>/<filter> subscription is checked as <filter>")
	}
	levels := strings.Split(f, "/")
	for i, l := range levels {
		switch {
		case l == "#" && i != len(levels)-1:
			return errors.New(`"#" must be the last level`)
		case l != "#" && l != "+" && strings.ContainsAny(l, "+#"):
			return fmt.Errorf(`level %q: "+" and "#" must be whole levels`, clip(l))
		case l == "%c" || l == "%u":
			if !pattern {
				return fmt.Errorf("%s in a topic line: only pattern lines substitute %%c and %%u", l)
			}
		case strings.Contains(l, "%c") || strings.Contains(l, "%u"):
			return fmt.Errorf("level %q: %%c and %%u must be whole levels", clip(l))
		}
	}
	return nil
}

// clip shortens s for an error message.
func clip(s string) string {
	const n = 64
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
