package shadow

import (
	"sync"
	"time"
)

// maxDedupeEntries bounds the dedupe cache's memory whatever the traffic.
const maxDedupeEntries = 100_000

// dedupeCache remembers accepted responses by request key for a window.
type dedupeCache struct {
	window time.Duration

	mu      sync.Mutex // guards entries and order
	entries map[string]dedupeEntry
	order   []string // insertion order, for expiry and the size bound
}

type dedupeEntry struct {
	response []byte
	version  Version // the version the response announced
	expires  time.Time
}

func newDedupeCache(window time.Duration) *dedupeCache {
	return &dedupeCache{window: window, entries: make(map[string]dedupeEntry)}
}

// get returns the response remembered for key if it is still the answer to
// a retry: within the window, and only while the version it announced is
// still current. A later change to the document means the request is no
// longer "the last update", and it must be applied as new (the AWS SDKs
// number clientTokens from 0 in every process, so a device that restarts
// sends the same tokens again).
func (c *dedupeCache) get(key string, current Version, now time.Time) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[key]
	if !ok || now.After(e.expires) || e.version != current {
		return nil, false
	}
	return e.response, true
}

func (c *dedupeCache) put(key string, response []byte, v Version, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.entries[key]; !ok {
		c.order = append(c.order, key)
	}
	c.entries[key] = dedupeEntry{response: response, version: v, expires: now.Add(c.window)}
	for len(c.order) > maxDedupeEntries {
		delete(c.entries, c.order[0])
		c.order = c.order[1:]
	}
}

// prune drops expired entries.
func (c *dedupeCache) prune(now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	i := 0
	for ; i < len(c.order); i++ {
		e, ok := c.entries[c.order[i]]
		if ok && !now.After(e.expires) {
			break
		}
		delete(c.entries, c.order[i])
	}
	c.order = append([]string(nil), c.order[i:]...)
}
