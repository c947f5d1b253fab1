package broker_test

import (
	"context"
	"fmt"

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
