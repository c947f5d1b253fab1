// Package waitfor is the test plumbing every package shares: Poll, for a
// condition no event announces, and Main, the goroutine-leak check of a
// package's TestMain. A test that can wait on an event (a channel, a
// callback, a reply) waits on it with a deadline instead of polling.
package waitfor
