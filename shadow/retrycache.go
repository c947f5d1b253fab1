package shadow

import (
	"container/list"
	"crypto/sha256"
	"sync"
	"time"
)

// retryEntryOverhead estimates the heap bytes of one retry-cache entry
// beyond its device ID, shadow name and clientToken: the entry itself, its list element
// and its map slot. RetryCacheStats.Bytes counts it.
const retryEntryOverhead = 192

// retryCache remembers the last accepted update of each shadow that
// carried a clientToken, for DedupeWindow, so that a retry of it is
// answered with the original accepted instead of being applied twice.
//
// Only a retry of a shadow's last update may be answered from the cache:
// the cached answer is valid only while the shadow is at the version that
// update produced, and every later change moves the version on. So the
// cache keeps one entry per shadow (the shadow's next update replaces it,
// and any other change of the document drops it): a device cannot grow
// the cache, nor evict other devices' entries, by sending more requests;
// it holds at most one entry per shadow it has (the classic one and at
// most Config.MaxNamedShadows named ones).
//
// An entry keeps what identifies the request (clientToken and a SHA-256
// of its bytes) and what the answer was built from (version and
// timestamp), not the answer: the retry carries the same bytes, from which
// the engine rebuilds the identical accepted message. An entry therefore
// costs a few hundred bytes whatever the size of the request or reply.
//
// The cache is bounded by maxEntries and maxBytes; when either would be
// exceeded, the entries closest to expiry go first (counted in evictions).
type retryCache struct {
	window     time.Duration
	maxEntries int
	maxBytes   int64

	mu        sync.Mutex // guards every field below
	byRef     map[Key]*list.Element
	order     list.List // of *retryEntry, oldest (first to expire) first
	bytes     int64
	evictions uint64
	hits      uint64
}

// retryEntry is the remembered outcome of one shadow's last update.
type retryEntry struct {
	r       Key
	token   string
	sum     [sha256.Size]byte // of the request's bytes
	version Version           // the version the update produced
	ts      int64             // the update's timestamp (Unix seconds)
	expires time.Time
}

func (e *retryEntry) size() int64 {
	return int64(len(e.r.Device) + len(e.r.Name) + len(e.token) + retryEntryOverhead)
}

func newRetryCache(window time.Duration, maxEntries int, maxBytes int64) *retryCache {
	return &retryCache{window: window, maxEntries: maxEntries, maxBytes: maxBytes, byRef: make(map[Key]*list.Element)}
}

// lookup reports whether the request (token, sum) to r is a retry of r's
// last update while the shadow is at version current, and if so returns
// that update's timestamp.
func (c *retryCache) lookup(r Key, token string, sum [sha256.Size]byte, current Version, now time.Time) (ts int64, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el := c.byRef[r]
	if el == nil {
		return 0, false
	}
	e := el.Value.(*retryEntry)
	if e.token != token || e.sum != sum || e.version != current || now.After(e.expires) {
		return 0, false
	}
	c.hits++
	return e.ts, true
}

// put remembers the update (token, sum) that took r to version v at ts,
// replacing r's previous entry.
func (c *retryCache) put(r Key, token string, sum [sha256.Size]byte, v Version, ts int64, now time.Time) {
	e := &retryEntry{r: r, token: token, sum: sum, version: v, ts: ts, expires: now.Add(c.window)}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.removeLocked(r)
	if e.size() > c.maxBytes {
		return // cannot happen with valid IDs and tokens and maxBytes ≥ 1 KiB
	}
	for c.order.Len() > 0 && (c.order.Len() >= c.maxEntries || c.bytes+e.size() > c.maxBytes) {
		c.removeLocked(c.order.Front().Value.(*retryEntry).r)
		c.evictions++
	}
	c.byRef[r] = c.order.PushBack(e)
	c.bytes += e.size()
}

// drop forgets r's entry: the document changed by a request that cannot
// be retried from the cache (no clientToken, or a delete).
func (c *retryCache) drop(r Key) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.removeLocked(r)
}

func (c *retryCache) removeLocked(r Key) {
	el := c.byRef[r]
	if el == nil {
		return
	}
	c.bytes -= el.Value.(*retryEntry).size()
	c.order.Remove(el)
	delete(c.byRef, r)
}

// prune drops expired entries.
func (c *retryCache) prune(now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.order.Len() > 0 {
		e := c.order.Front().Value.(*retryEntry)
		if !now.After(e.expires) {
			return
		}
		c.removeLocked(e.r)
	}
}

// RetryCacheStats describes the retry cache (see Config.DedupeWindow).
type RetryCacheStats struct {
	Entries   int    // entries now (at most one per shadow)
	Bytes     int64  // estimated heap bytes of the entries now
	Evictions uint64 // entries dropped before they expired because the cache was full, since Open
	Hits      uint64 // updates answered from the cache (retries), since Open
}

func (c *retryCache) stats() RetryCacheStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return RetryCacheStats{Entries: c.order.Len(), Bytes: c.bytes, Evictions: c.evictions, Hits: c.hits}
}
