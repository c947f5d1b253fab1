package natsstore_test

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/internal/natstest"
	"github.com/umbra-iot/umbra/shadow"
	"github.com/umbra-iot/umbra/shadow/natsstore"
)

// TestDurabilityUnderServerKills: devices report increasing sequence
// numbers through an R3 shadow store while each NATS server in turn is
// killed -9 and restarted; then all three are killed and restarted. Every
// report the store acknowledged is still there: each device's stored
// number is at least its last acknowledged one.
func TestDurabilityUnderServerKills(t *testing.T) {
	c := natstest.StartCluster(t)
	js := natstest.JetStream(t, c.URLs())
	open := func() *natsstore.Store {
		// After a restart of every server the stream elects its leader
		// first: Open waits for it, bounded by ctx.
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		s, err := natsstore.Open(ctx, natsstore.Config{JetStream: js, Replicas: 3, Timeout: 2 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	s := open()
	const devices = 8
	acked := make([]int, devices)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex // guards errs
	errs := map[string]int{}
	for d := range devices {
		wg.Go(func() {
			k := shadow.Key{Device: device.ID(fmt.Sprintf("dev-%d", d))}
			for n := 1; ; {
				select {
				case <-stop:
					return
				default:
				}
				rec, err := s.Get(context.Background(), k)
				if err == nil {
					err = s.Commit(context.Background(), shadow.Write{Key: k, Rev: rec.Rev, Value: []byte(strconv.Itoa(n))})
				}
				if err != nil { // unavailable during an election: not acknowledged, try again
					mu.Lock()
					errs[err.Error()]++
					mu.Unlock()
					continue
				}
				mu.Lock()
				acked[d] = n
				mu.Unlock()
				n++
			}
		})
	}
	progress := func() int {
		t.Helper()
		// Wait for the writers to be acknowledged again: no event spans
		// them, so poll the counts (bounded).
		deadline := time.Now().Add(20 * time.Second)
		start := sum(acked, &mu)
		for time.Now().Before(deadline) {
			if n := sum(acked, &mu); n >= start+devices*5 {
				return n
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Fatalf("writers made no progress for 20 s (acknowledged %d); errors: %v", sum(acked, &mu), errs)
		return 0
	}
	progress()
	for _, srv := range c.Servers {
		srv.Kill()
		progress() // two of three servers are a quorum: writes go on
		srv.Restart()
		progress()
	}
	close(stop)
	wg.Wait()
	if err := s.Close(t.Context()); err != nil {
		t.Fatal(err)
	}

	for _, srv := range c.Servers { // the whole cluster dies at once
		srv.Kill()
	}
	c.RestartAll()
	s = open()
	defer s.Close(context.Background())
	for d := range devices {
		k := shadow.Key{Device: device.ID(fmt.Sprintf("dev-%d", d))}
		var rec shadow.Record
		var err error
		for range 100 { // the streams elect their leaders after the restart
			if rec, err = s.Get(t.Context(), k); err == nil {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if err != nil {
			t.Fatalf("Get %s after restarting every server: %v", k, err)
		}
		got, _ := strconv.Atoi(string(rec.Value))
		if got < acked[d] {
			t.Errorf("%s: stored %d, but %d was acknowledged", k, got, acked[d])
		}
	}
	t.Logf("acknowledged %d updates; refused while servers were down: %v", sum(acked, &mu), errs)
}

func sum(xs []int, mu *sync.Mutex) int {
	mu.Lock()
	defer mu.Unlock()
	n := 0
	for _, x := range xs {
		n += x
	}
	return n
}
