package natsstore_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
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

// TestNATSLostAnswers503: while its NATS server is down, the shadow
// engine refuses updates and reads with 503 (ErrUnavailable), promptly and
// without writing; when the server is back, it serves again by itself.
func TestNATSLostAnswers503(t *testing.T) {
	srv := natstest.Start(t)
	js := natstest.JetStream(t, srv.URLs())
	st, err := natsstore.Open(t.Context(), natsstore.Config{JetStream: js, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close(context.Background())
	eng, err := shadow.Open(t.Context(), shadow.Config{Store: st, DeviceRate: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close(context.Background())
	ctx := t.Context()
	if _, err := eng.Update(ctx, "dev-1", []byte(`{"state":{"reported":{"n":1}}}`)); err != nil {
		t.Fatal(err)
	}

	srv.Kill()
	for _, call := range []struct {
		name string
		do   func() ([]byte, error)
	}{
		{"update", func() ([]byte, error) { return eng.Update(ctx, "dev-1", []byte(`{"state":{"reported":{"n":2}}}`)) }},
		{"get", func() ([]byte, error) { return eng.Get(ctx, "dev-1", nil) }},
	} {
		start := time.Now()
		_, err := call.do()
		var re *shadow.RequestError
		if !errors.As(err, &re) || re.Code != 503 || !errors.Is(err, shadow.ErrUnavailable) {
			t.Errorf("%s with NATS down = %v, want a 503 wrapping ErrUnavailable", call.name, err)
		}
		if d := time.Since(start); d > 10*time.Second {
			t.Errorf("%s with NATS down took %v, want it bounded by the store's timeout", call.name, d)
		}
	}

	srv.Restart()
	var out []byte
	for range 100 { // the client reconnects on its own schedule: retry, bounded
		if out, err = eng.Update(ctx, "dev-1", []byte(`{"state":{"reported":{"n":3}}}`)); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("update after NATS came back: %v", err)
	}
	if !strings.Contains(string(out), `"version":2`) {
		t.Errorf("accepted after recovery = %s, want version 2 (the refused update wrote nothing)", out)
	}
}
