//go:build !race

package broker_test

// raceEnabled reports whether the race detector is on: it changes
// allocation counts (sync.Pool drops a share of what is put back).
const raceEnabled = false
