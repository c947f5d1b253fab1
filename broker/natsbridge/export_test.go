package natsbridge

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// Settle waits until b has applied every interest and session change the
// broker reported so far and the NATS server has processed b's
// subscriptions: a message published after it reaches the filters
// subscribed before, and a connect elsewhere finds the sessions.
func Settle(tb testing.TB, b *Bridge) {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !b.interest.settled() || !b.sessions.settled() {
		if time.Now().After(deadline) {
			tb.Fatalf("natsbridge: interest changes not applied within 10s")
		}
		time.Sleep(time.Millisecond) // no event: a poll, as checkFor
	}
	for _, nc := range []*nats.Conn{b.nc, b.ctl} {
		if err := nc.FlushTimeout(10 * time.Second); err != nil {
			tb.Fatalf("natsbridge: flush: %v", err)
		}
	}
}

// Origin returns the origin b stamps on its messages.
func (b *Bridge) Origin() string { return b.origin }

// ConnectedURL returns the URL of the NATS server b is connected to.
func (b *Bridge) ConnectedURL() string { return b.nc.ConnectedUrl() }
