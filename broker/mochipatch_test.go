package broker_test

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/internal/brokertest"
)

// TestMochiPatchRetainedScanRace runs retained publishes against wildcard
// SUBSCRIBEs that scan the same topic level. Unpatched mochi v2.7.9 read a
// topic node's retained path without the lock RetainMessage writes it
// under (third_party/mochi/PATCHES.md, patch 1); under -race this test
// reported that data race.
func TestMochiPatchRetainedScanRace(t *testing.T) {
	s := brokertest.New(t, broker.Config{})
	c := brokertest.Connect(t, brokertest.URL(s), "scanner")
	const rounds = 200
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := range rounds {
			// Setting and clearing the retained message writes the node's
			// retained path each time.
			payload := []byte(fmt.Sprint(i))
			if i%2 == 1 {
				payload = nil
			}
			if err := s.Publish("scan/x", payload, true, 0); err != nil {
				t.Errorf("publish %d: %v", i, err)
				return
			}
		}
	})
	for i := range rounds {
		tok := c.Subscribe("scan/+", 0, nil)
		if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatalf("subscribe %d: %v", i, tok.Error())
		}
		tok = c.Unsubscribe("scan/+")
		if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatalf("unsubscribe %d: %v", i, tok.Error())
		}
	}
	wg.Wait()
}
