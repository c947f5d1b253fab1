package shadow

import (
	"crypto/sha256"
	"testing"
	"time"
)

func TestRetryCacheExpiryAndOrder(t *testing.T) {
	t0 := time.Unix(1700000000, 0)
	sum := sha256.Sum256([]byte("request"))
	c := newRetryCache(time.Minute, 2, 1<<20)
	c.put(Key{Device: "a"}, "t", sum, 1, 10, t0)
	c.put(Key{Device: "b"}, "t", sum, 1, 11, t0.Add(10*time.Second))
	// a's next update replaces its entry and makes it the newest: the
	// cache is full, so c evicts b, the oldest.
	c.put(Key{Device: "a"}, "t2", sum, 2, 12, t0.Add(20*time.Second))
	c.put(Key{Device: "c"}, "t", sum, 1, 13, t0.Add(30*time.Second))
	if st := c.stats(); st.Entries != 2 || st.Evictions != 1 {
		t.Fatalf("stats %+v, want 2 entries and 1 eviction", st)
	}
	tests := []struct {
		name    string
		r       Key
		token   string
		body    string
		version Version
		at      time.Duration
		want    bool
	}{
		{"evicted", Key{Device: "b"}, "t", "request", 1, 31 * time.Second, false},
		{"replaced token", Key{Device: "a"}, "t", "request", 1, 31 * time.Second, false},
		{"current", Key{Device: "a"}, "t2", "request", 2, 31 * time.Second, true},
		{"moved on", Key{Device: "a"}, "t2", "request", 3, 31 * time.Second, false},
		{"expired", Key{Device: "a"}, "t2", "request", 2, 81 * time.Second, false},
		{"other bytes", Key{Device: "c"}, "t", "other", 1, 31 * time.Second, false},
	}
	for _, tc := range tests {
		if _, got := c.lookup(tc.r, tc.token, sha256.Sum256([]byte(tc.body)), tc.version, t0.Add(tc.at)); got != tc.want {
			t.Errorf("%s: lookup = %t, want %t", tc.name, got, tc.want)
		}
	}
	if st := c.stats(); st.Hits != 1 {
		t.Errorf("hits %d, want 1", st.Hits)
	}
	// prune drops a (expires at +80s) but keeps c (+90s) at +85s.
	c.prune(t0.Add(85 * time.Second))
	if st := c.stats(); st.Entries != 1 || st.Bytes != int64(len("c")+len("t")+retryEntryOverhead) {
		t.Errorf("after prune: %+v, want only c's entry", st)
	}
	c.drop(Key{Device: "c"})
	if st := c.stats(); st.Entries != 0 || st.Bytes != 0 || st.Evictions != 1 {
		t.Errorf("after drop: %+v, want empty with the one eviction counted", st)
	}
}
