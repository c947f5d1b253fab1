package shadowclient_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/umbra-iot/umbra/internal/shadowclient"
	"github.com/umbra-iot/umbra/shadow"
)

// An operator sets a device's desired state, guarded by the version it last
// read.
func ExampleClient_Update() {
	ctx := context.Background()
	c, err := shadowclient.Dial(ctx, shadowclient.Config{Server: "tcp://127.0.0.1:1883", Timeout: 5 * time.Second})
	if err != nil {
		log.Fatal(err) // e.g. "connect to tcp://127.0.0.1:1883: connection refused"
	}
	defer c.Close()
	accepted, err := c.Update(ctx, "lamp-1", []byte(`{"state":{"desired":{"color":"red"}},"version":4}`))
	if errors.Is(err, shadow.ErrVersionConflict) {
		fmt.Println("someone else changed lamp-1 first; read it again")
		return
	}
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s\n", accepted)
}

// Follow every device's deltas until ctx ends.
func ExampleClient_Watch() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := shadowclient.Dial(ctx, shadowclient.Config{})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	err = c.Watch(ctx, nil, []string{shadowclient.KindDelta}, func(e shadowclient.Event) {
		fmt.Printf("%s wants %s\n", e.Device, e.Payload)
	})
	if err != nil {
		log.Fatal(err)
	}
}
