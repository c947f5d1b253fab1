package cluster_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/internal/natstest"
)

// BenchmarkPresenceConnect measures what a connect costs a node in
// cluster mode for its presence: one compare-and-set write (a read and a
// conditional publish) to the presence bucket on one nats-server, made
// before the connection handles its first packet.
func BenchmarkPresenceConnect(b *testing.B) {
	ns := natstest.Start(b)
	live := &liveNodes{}
	live.set("a")
	p := openPresence(b, ns.URLs(), "a", live, time.Hour)
	now := time.Now()
	b.ResetTimer()
	for i := range b.N {
		p.Connected(device.ID(fmt.Sprintf("dev-%d", i%1000)), uint64(i+1), now, "10.0.0.1:1")
	}
}
