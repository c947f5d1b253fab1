package policy

import (
	_ "embed"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
)

// Access is what a client wants to do with a topic.
type Access uint8

// The two kinds of access.
const (
	// Read is subscribing to a filter and receiving a message on a topic.
	Read Access = 1 << iota
	// Write is publishing on a topic.
	Write
)

// String returns "read", "write" or "readwrite".
func (a Access) String() string {
	switch a {
	case Read:
		return "read"
	case Write:
		return "write"
	case Read | Write:
		return "readwrite"
	}
	return fmt.Sprintf("Access(%d)", uint8(a))
}

// The roles a "role" line may name.
const (
	RoleDevice     = "device"
	RoleOperator   = "operator"
	RoleIntegrator = "integrator"
)

// Roles lists the roles a "role" line may name.
var Roles = []string{RoleDevice, RoleOperator, RoleIntegrator}

func validRole(s string) bool { return roleIndex(s) < len(Roles) }

// roleIndex returns the index of role s in Roles, or len(Roles) for a
// string that is no role.
func roleIndex(s string) int {
	switch s {
	case RoleDevice:
		return 0
	case RoleOperator:
		return 1
	case RoleIntegrator:
		return 2
	}
	return len(Roles)
}

// Subject is who asks for access.
type Subject struct {
	// Role is one of Roles; any other value gets only the rules for every
	// client (pattern lines outside role sections).
	Role string
	// User is the authenticated name (a device ID or a token name), which
	// "user" lines and %u match; "" for an anonymous client, which gets
	// the topic lines before the first user or role line instead.
	User string
	// ClientID is the MQTT client ID, which %c matches.
	ClientID string
}

//go:embed default.acl
var defaultSrc []byte

//go:embed reserved.acl
var reservedSrc []byte

// DefaultName is the name of the built-in default policy in errors and
// logs.
const DefaultName = "<built-in default>"

// DefaultSource returns the text of the built-in default policy.
func DefaultSource() string { return string(defaultSrc) }

// Reserved returns the filters of the topics only Umbra publishes on, in
// the order of the embedded list; Allow refuses Write on them to every
// subject, whatever the policy says.
func Reserved() []string { return append([]string(nil), reserved...) }

var (
	defaultFile *File
	reserved    []string
	// reservedTrie holds the reserved filters (denied Write);
	// reservedLast and reservedFirst let most topics skip its walk: a
	// topic can match a reserved filter only if its last level is the
	// literal last level of one, or its first level the literal first
	// level of one ending in a wildcard.
	reservedTrie                *node
	reservedLast, reservedFirst []string
	defaultTier                 tier
	builtin                     *Policy
)

func init() {
	for i, line := range strings.Split(string(reservedSrc), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' {
			continue
		}
		if err := checkFilter(line, false); err != nil {
			panic(fmt.Sprintf("reserved.acl:%d: %v", i+1, err))
		}
		reserved = append(reserved, line)
	}
	var err error
	if defaultFile, err = Parse(DefaultName, defaultSrc); err != nil {
		panic(err)
	}
	defaultTier = compile(defaultFile)
	builtin = &Policy{tiers: []tier{defaultTier}, source: DefaultName}
}

// Policy is a compiled policy: a file (if any) and, unless the file
// replaces it, the built-in default. It is immutable and safe for
// concurrent use.
type Policy struct {
	tiers  []tier // consulted in order; the first that decides wins
	source string
}

// tier is one compiled file.
type tier struct {
	anonymous *section            // topic lines before the first section; nil if none
	users     map[string]*section // topic lines of user sections
	// roles holds, per roleIndex, the role's section, the every-client
	// patterns and, in its Write trie, the reserved topics (denied), so
	// that they cost no walk of their own.
	roles [4]*section
}

// section holds the rules of a section in two tries, by the access they
// grant or deny (a deny line is in both): a check walks only the trie of
// its access.
type section [2]*node // Read, Write

// trie returns the trie of access a (Read or Write), or nil.
func (s *section) trie(a Access) *node { return s[a>>1] }

func (s *section) add(filter string, grant, deny Access) {
	for i, a := range []Access{Read, Write} {
		if (grant|deny)&a == 0 {
			continue
		}
		if s[i] == nil {
			s[i] = &node{}
		}
		s[i].add(filter, grant&a, deny&a)
	}
}

func (s *section) freeze() {
	if s != nil {
		s[0].freeze()
		s[1].freeze()
	}
}

// Default returns the built-in default policy alone.
func Default() *Policy { return builtin }

// New compiles f: with Mode Extend the result consults f first and the
// built-in default where f decides nothing, with Replace only f. A nil f
// gives Default().
func New(f *File) *Policy {
	if f == nil {
		return builtin
	}
	p := &Policy{tiers: []tier{compile(f)}, source: f.name}
	if f.mode == Extend {
		p.tiers = append(p.tiers, defaultTier)
	}
	return p
}

// Load reads and parses the policy file at path and compiles it with New.
// Errors name the file: the *fs.PathError of opening or reading it, or a
// *ParseError for each bad line (see Parse).
func Load(path string) (*Policy, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	src, err := io.ReadAll(io.LimitReader(fh, MaxFileSize+1))
	if err != nil {
		return nil, err
	}
	f, err := Parse(path, src)
	if err != nil {
		return nil, err
	}
	return New(f), nil
}

// String describes the policy for logs, e.g. "acl.conf + <built-in
// default>".
func (p *Policy) String() string {
	switch {
	case p == builtin:
		return DefaultName
	case len(p.tiers) > 1:
		return p.source + " + " + DefaultName
	}
	return p.source
}

func compile(f *File) tier {
	var t tier
	for i := range t.roles {
		t.roles[i] = &section{}
	}
	// The reserved topics go into the Write trie of each role that some
	// rule of the file could let write one (a grant overlapping it in the
	// role's section, a user or anonymous section, or an every-client
	// pattern): elsewhere they change no answer, and leaving them out
	// spares the walk of a device's publish a branch.
	var shared []string    // Write grants that apply across roles
	var byRole [4][]string // Write grants of each role's section
	for _, r := range f.rules {
		if r.deny || r.access&Write == 0 {
			continue
		}
		if r.scope == scopeRole {
			i := roleIndex(r.name)
			byRole[i] = append(byRole[i], r.filter)
		} else {
			shared = append(shared, r.filter)
		}
	}
	for i, sec := range t.roles {
		for _, res := range reserved {
			if slices.ContainsFunc(shared, func(g string) bool { return overlap(res, g) }) ||
				slices.ContainsFunc(byRole[i], func(g string) bool { return overlap(res, g) }) {
				sec.add(res, 0, Write)
			}
		}
	}
	for _, r := range f.rules {
		grant, deny := r.access, Access(0)
		if r.deny {
			grant, deny = 0, Read|Write
		}
		switch r.scope {
		case scopeAnonymous:
			if t.anonymous == nil {
				t.anonymous = &section{}
			}
			t.anonymous.add(r.filter, grant, deny)
		case scopeUser:
			if t.users == nil {
				t.users = make(map[string]*section)
			}
			sec := t.users[r.name]
			if sec == nil {
				sec = &section{}
				t.users[r.name] = sec
			}
			sec.add(r.filter, grant, deny)
		case scopeRole:
			t.roles[roleIndex(r.name)].add(r.filter, grant, deny)
		case scopeAll:
			for _, sec := range t.roles {
				sec.add(r.filter, grant, deny)
			}
		}
	}
	t.anonymous.freeze()
	for _, sec := range t.users {
		sec.freeze()
	}
	for _, sec := range t.roles {
		sec.freeze()
	}
	return t
}

// overlap reports whether some topic could match both filters, with %c
// and %u counted as "+" (and MQTT's "$" rule ignored): a conservative
// answer, true when unsure.
func overlap(a, b string) bool {
	al, bl := strings.Split(a, "/"), strings.Split(b, "/")
	for i := 0; ; i++ {
		switch {
		case i < len(al) && al[i] == "#", i < len(bl) && bl[i] == "#":
			return true
		case i == len(al) || i == len(bl):
			return len(al) == len(bl)
		}
		x, y := al[i], bl[i]
		if x != y && !wild(x) && !wild(y) {
			return false
		}
	}
}

// wild reports whether a rule level matches more than one literal.
func wild(l string) bool { return l == "+" || l == "%c" || l == "%u" }

// Allow reports whether s may have access a to topic: for Write, publish
// on the topic; for Read, subscribe to the filter topic (which may hold
// wildcards, and may be a shared subscription "$share/<group>/<filter>",
// checked as <filter>) or receive a message on the topic.
//
// Write on a reserved topic (see Reserved) is refused first. Then each
// file is consulted in turn, the policy file before the built-in default:
// its rules that apply to s (s's user section, or the anonymous section
// for User "", s's role section, and the every-client patterns) decide if
// any of them covers the topic: a deny line refuses, else a line granting
// a allows. A file none of whose rules covers the topic with a or deny
// leaves the decision to the next; after the last, Allow refuses. A rule
// covers a filter when it matches every topic the filter matches, so a
// deny line that covers only part of a subscription's filter lets the
// subscription through and refuses the messages it covers at delivery.
//
// Empty, over-long (65,535 bytes) and malformed topics and filters, and
// wildcards in a Write, are refused (UTF-8 validity is the broker's
// check: a rule holds no NUL, so only wildcard rules can match a topic
// holding one). Allow does not allocate.
func (p *Policy) Allow(s Subject, topic string, a Access) bool {
	if (a != Read && a != Write) || !validTopic(topic, a) {
		return false
	}
	if a == Read && strings.HasPrefix(topic, "$share/") {
		group, rest, _ := strings.Cut(topic[len("$share/"):], "/")
		if group == "" || group == "+" || group == "#" || rest == "" {
			return false
		}
		topic = rest
	}
	// A level is never "" when it matches, and the levels compared with
	// %c and %u hold no "+", "#" or "/": a client ID or user name holding
	// one never matches (mosquitto refuses them pattern access).
	client, user := s.ClientID, s.User
	ri := roleIndex(s.Role)
	var buf [8]string
	levels := splitLevels(buf[:0], topic)
	for i := range p.tiers {
		t := &p.tiers[i]
		var grant, deny Access
		sec := t.anonymous
		if s.User != "" {
			sec = nil
			if t.users != nil {
				sec = t.users[s.User]
			}
		}
		if sec != nil {
			if n := sec.trie(a); n != nil {
				grant, deny = n.walk(levels, 0, client, user)
			}
		}
		if n := t.roles[ri].trie(a); n != nil { // nil only for Read
			g, d := n.walk(levels, 0, client, user)
			grant, deny = grant|g, deny|d
		}
		if deny&a != 0 {
			return false
		}
		if grant&a != 0 {
			return true
		}
	}
	return false
}

// validTopic reports whether topic is a valid topic name (Write) or
// filter (Read): 1 to 65,535 bytes, "+" and "#" only as whole levels, "#"
// last, no wildcards at all in a topic name. The broker refuses invalid
// UTF-8 and NUL characters before it asks.
func validTopic(topic string, a Access) bool {
	if len(topic) == 0 || len(topic) > maxFilterLen {
		return false
	}
	if h := strings.IndexByte(topic, '#'); h >= 0 {
		// Only as the last level of a filter.
		if a == Write || h != len(topic)-1 || h > 0 && topic[h-1] != '/' {
			return false
		}
	}
	for i := strings.IndexByte(topic, '+'); i >= 0; {
		// Only as a whole level of a filter.
		if a == Write || i > 0 && topic[i-1] != '/' || i+1 < len(topic) && topic[i+1] != '/' {
			return false
		}
		j := strings.IndexByte(topic[i+1:], '+')
		if j < 0 {
			break
		}
		i += 1 + j
	}
	return true
}
