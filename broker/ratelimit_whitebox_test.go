package broker

import (
	"testing"
	"time"
)

// TestBucketEpisode: the bucket refills at the rate up to the burst, and
// an episode (limited, set by OnPublish on a refusal) ends only when the
// bucket is full again, so a client that stays just above its rate is in
// one long episode.
func TestBucketEpisode(t *testing.T) {
	var b bucket
	t0 := time.Unix(1000, 0)
	const rate, burst = 10.0, 2
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	steps := []struct {
		ms      int
		want    bool
		limited bool // after the step, as OnPublish leaves it
	}{
		{0, true, false},    // full: 2 → 1
		{0, true, false},    // 1 → 0
		{0, false, true},    // empty: refused, an episode starts
		{100, true, true},   // one token back (10/s), taken; not full: still the episode
		{150, false, true},  // half a token
		{250, true, true},   // 0.5 + 1 = 1.5 tokens: taken
		{1000, true, false}, // full again: the episode ended
	}
	for i, s := range steps {
		got := b.take(at(s.ms), rate, burst)
		if !got {
			b.limited = true // as OnPublish does
		}
		if got != s.want || b.limited != s.limited {
			t.Errorf("step %d at %d ms: take %v limited %v, want %v %v", i, s.ms, got, b.limited, s.want, s.limited)
		}
	}
}
