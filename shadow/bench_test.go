package shadow_test

import (
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/shadow"
)

// BenchmarkEngineUpdate measures the in-process update path: parse, merge,
// encode, the durable grouped commit on a real bbolt file and the replies
// (to a publisher that drops them), with 16 goroutines per CPU, each on
// its own device, so commits group as they do under a fleet. It isolates
// the engine and its store from MQTT: compare allocs/op and ns/op across
// changes to either.
func BenchmarkEngineUpdate(b *testing.B) {
	eng, err := shadow.Open(b.Context(), shadow.Config{
		Store:       storeAt(b, filepath.Join(b.TempDir(), "shadow.db")),
		Publisher:   dropPublisher{},
		DeviceRate:  -1,
		MaxInFlight: -1,
	})
	if err != nil {
		b.Fatal(err)
	}
	defer eng.Close(b.Context())
	var next atomic.Int64
	b.SetParallelism(16)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		id := device.ID(fmt.Sprintf("bench-%d", next.Add(1)))
		for i := 0; pb.Next(); i++ {
			body := fmt.Appendf(nil, `{"state":{"reported":{"seq":%d,"temp":21.5}},"clientToken":"t%d"}`, i, i)
			if _, err := eng.Update(b.Context(), id, body); err != nil {
				b.Error(err)
				return
			}
		}
	})
	st := eng.Stats()
	b.ReportMetric(float64(st.DocumentsWritten)/float64(max(st.Commits, 1)), "docs/commit")
}

type dropPublisher struct{}

func (dropPublisher) Publish(string, []byte, bool, byte) error { return nil }
