package shadowclient_test

import (
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/internal/shadowclient"
)

// BenchmarkUpdate measures request/answer round trips of concurrent updates
// on one Client against a real broker and engine (each update goes to a new
// device, so per-device rate limits do not apply).
func BenchmarkUpdate(b *testing.B) {
	srv := startServer(b, true)
	c := srv.dial(b, shadowclient.Config{})
	var n atomic.Int64
	b.SetParallelism(16) // 16 × GOMAXPROCS requests in flight
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			id := device.ID(fmt.Sprintf("bench-%d", n.Add(1)))
			if _, err := c.Update(b.Context(), id, []byte(`{"state":{"reported":{"temp":21.5}}}`)); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
