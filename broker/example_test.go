package broker_test

import (
	"context"
	"fmt"
	"sync"

	"github.com/umbra-iot/umbra/broker"
)

func ExampleServer_Subscribe() {
	ctx := context.Background()
	// No listeners: in-process publish and subscribe only. Real servers set
	// TCPAddr (and WSAddr), for example ":1883".
	b, err := broker.Open(ctx, broker.Config{})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer b.Close(ctx)

	err = b.Subscribe("state/+/update", func(clientID, topic string, payload []byte) {
		fmt.Printf("from %q on %s: %s\n", clientID, topic, payload)
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(b.HasSubscribers("state/dev-1/update"))
	// Handlers run before Publish returns; clientID is "" for Publish.
	if err := b.Publish("state/dev-1/update", []byte(`{"state":{}}`), false, 1); err != nil {
		fmt.Println(err)
	}
	// Output:
	// true
	// from "" on state/dev-1/update: {"state":{}}
}

// ExampleConfig_presence keeps per-device presence from OnConnect and
// OnDisconnect, using ConnInfo.Seq so that the late disconnect of a
// connection replaced by a reconnect never marks the device offline.
func ExampleConfig_presence() {
	type state struct {
		seq    uint64
		online bool
	}
	var (
		mu       sync.Mutex
		presence = map[string]state{}
	)
	cfg := broker.Config{
		TCPAddr: "127.0.0.1:0",
		OnConnect: func(ci broker.ConnInfo) {
			mu.Lock()
			defer mu.Unlock()
			if ci.Seq > presence[ci.ClientID].seq {
				presence[ci.ClientID] = state{ci.Seq, true}
			}
		},
		OnDisconnect: func(ci broker.ConnInfo, err error) {
			mu.Lock()
			defer mu.Unlock()
			if ci.Seq >= presence[ci.ClientID].seq { // not replaced by a newer connection
				presence[ci.ClientID] = state{ci.Seq, false}
			}
		},
	}
	b, err := broker.Open(context.Background(), cfg)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer b.Close(context.Background())
	mu.Lock()
	fmt.Println(len(presence))
	mu.Unlock()
	// Output: 0
}
