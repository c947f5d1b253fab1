package policy

import "strings"

// node is one level of a trie of rule filters. The masks of a rule sit on
// the node its last level leads to; a "#" level leads to the hash child,
// whose masks apply to its parent's topic and everything below it.
type node struct {
	label  string  // the literal level leading here
	lits   []*node // literal children, while few
	litMap map[string]*node
	plus   *node // "+"
	hash   *node // "#"
	client *node // "%c"
	user   *node // "%u"

	grant Access // granted by rules ending here
	deny  Access // denied by rules ending here (Read|Write for a deny line)
}

// litMapMin is the number of literal children from which a node looks
// them up in a map instead of scanning.
const litMapMin = 8

// add inserts filter with its masks.
func (n *node) add(filter string, grant, deny Access) {
	for level := range strings.SplitSeq(filter, "/") {
		var next **node
		switch level {
		case "+":
			next = &n.plus
		case "#":
			next = &n.hash
		case "%c":
			next = &n.client
		case "%u":
			next = &n.user
		default:
			c := n.lit(level)
			if c == nil {
				c = &node{label: level}
				n.lits = append(n.lits, c)
			}
			n = c
			continue
		}
		if *next == nil {
			*next = &node{}
		}
		n = *next
	}
	n.grant |= grant
	n.deny |= deny
}

// freeze indexes nodes with many literal children.
func (n *node) freeze() {
	if n == nil {
		return
	}
	if len(n.lits) >= litMapMin {
		n.litMap = make(map[string]*node, len(n.lits))
		for _, c := range n.lits {
			n.litMap[c.label] = c
		}
	}
	for _, c := range n.lits {
		c.freeze()
	}
	n.plus.freeze()
	n.hash.freeze()
	n.client.freeze()
	n.user.freeze()
}

// lit returns the literal child labelled level, or nil.
func (n *node) lit(level string) *node {
	if n.litMap != nil {
		return n.litMap[level]
	}
	for _, c := range n.lits {
		if c.label == level {
			return c
		}
	}
	return nil
}

// walk returns the union of the masks of every rule below n that covers
// levels[i:], the remaining levels of a filter or topic. A rule covers a
// filter when every topic the filter matches is one the rule matches; for
// a topic without wildcards that is a plain match. client and user are
// what %c and %u match ("" matches nothing). At the first level (i 0),
// wildcards and substitutions do not match a level starting with "$"
// (MQTT's rule for $SYS and the like).
//
// It follows one path in a loop and recurses only where the trie
// branches (a literal and a wildcard both matching a level); every node
// is visited at most once.
func (n *node) walk(levels []string, i int, client, user string) (grant, deny Access) {
	for {
		if i == len(levels) {
			grant, deny = grant|n.grant, deny|n.deny
			if h := n.hash; h != nil {
				// "a/#" covers "a" itself.
				grant, deny = grant|h.grant, deny|h.deny
			}
			return grant, deny
		}
		level := levels[i]
		dollar := i == 0 && len(level) > 0 && level[0] == '$'
		if h := n.hash; h != nil && !dollar {
			grant, deny = grant|h.grant, deny|h.deny
		}
		switch level {
		case "#":
			// Only a "#" covers a "#", and it was counted above.
			return grant, deny
		case "+":
			if n.plus == nil || dollar {
				return grant, deny
			}
			n, i = n.plus, i+1
			continue
		}
		c := n.lit(level)
		if dollar || n.plus == nil && n.client == nil && n.user == nil {
			// Only a literal child can match: the common case.
			if c == nil {
				return grant, deny
			}
			n, i = c, i+1
			continue
		}
		var cands [4]*node
		k := 0
		if c != nil {
			cands[k] = c
			k++
		}
		if n.plus != nil {
			cands[k] = n.plus
			k++
		}
		if n.client != nil && client != "" && level == client {
			cands[k] = n.client
			k++
		}
		if n.user != nil && user != "" && level == user {
			cands[k] = n.user
			k++
		}
		if k == 0 {
			return grant, deny
		}
		for _, c := range cands[:k-1] {
			g, d := c.walk(levels, i+1, client, user)
			grant, deny = grant|g, deny|d
		}
		n, i = cands[k-1], i+1
	}
}

// splitLevels appends the "/"-separated levels of topic to dst; with a
// stack buffer as dst, topics of a few levels cost no allocation.
func splitLevels(dst []string, topic string) []string {
	for {
		i := strings.IndexByte(topic, '/')
		if i < 0 {
			return append(dst, topic)
		}
		dst = append(dst, topic[:i])
		topic = topic[i+1:]
	}
}
