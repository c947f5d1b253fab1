package natskv_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/umbra-iot/umbra/internal/natskv"
	"github.com/umbra-iot/umbra/internal/natstest"
)

// TestFeedFollowsAcrossServerRestart: a feed delivers the current values
// before StartFeed returns, then every change in order, also changes
// made after its NATS server was killed and restarted.
func TestFeedFollowsAcrossServerRestart(t *testing.T) {
	s := natstest.Start(t)
	ctx := t.Context()
	b, err := natskv.Open(ctx, natstest.JetStream(t, s.URLs()), natskv.BucketConfig{Name: "feed", Schema: natskv.Schema{Kind: "test", Version: 1}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Apply(ctx, natskv.Op{Key: "k.a", Value: []byte("1")}); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	got := map[string]string{}
	changes := make(chan string, 16)
	apply := func(e jetstream.KeyValueEntry) {
		mu.Lock()
		got[e.Key()] = string(e.Value())
		mu.Unlock()
		select {
		case changes <- e.Key() + "=" + string(e.Value()):
		default:
		}
	}
	feed, err := b.StartFeed(ctx, "k.>", apply)
	if err != nil {
		t.Fatal(err)
	}
	if mu.Lock(); got["k.a"] != "1" {
		t.Fatalf("after StartFeed: %v, want k.a=1", got)
	}
	mu.Unlock()
	<-changes
	fctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); feed.Follow(fctx, apply, nil) }()
	defer func() { cancel(); <-done }()

	await := func(want string) {
		t.Helper()
		timeout := time.After(30 * time.Second)
		for {
			select {
			case c := <-changes:
				if c == want {
					return
				}
			case <-timeout:
				t.Fatalf("no change %s within 30 s", want)
			}
		}
	}
	if _, err := b.Apply(ctx, natskv.Op{Key: "k.b", Value: []byte("2")}); err != nil {
		t.Fatal(err)
	}
	await("k.b=2")

	s.Kill()
	s.Restart()
	start := time.Now()
	deadline := time.Now().Add(30 * time.Second)
	for { // the client reconnects by itself: retry the write until it lands
		wctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := b.Apply(wctx, natskv.Op{Key: "k.c", Value: []byte("3")})
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("write after the restart: %v", err)
		}
	}
	t.Logf("written %v after the restart", time.Since(start))
	await("k.c=3")
	t.Logf("followed %v after the restart", time.Since(start))
}
