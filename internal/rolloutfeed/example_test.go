package rolloutfeed_test

import (
	"context"
	"fmt"
	"time"

	"github.com/umbra-iot/umbra/internal/rolloutfeed"
	"github.com/umbra-iot/umbra/rollout"
)

// printer is a Publisher that prints what it is given.
type printer struct{}

func (printer) Publish(topic string, payload []byte, retain bool, qos byte) error {
	fmt.Printf("%s retain=%t qos=%d %s\n", topic, retain, qos, payload)
	return nil
}

// Example wires a Feed the way the server does: rollout.Config.OnEvent is
// feed.OnEvent and Status is the planner's Get (here a fixed status).
func Example() {
	ctx := context.Background()
	at := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	feed, err := rolloutfeed.Open(ctx, rolloutfeed.Config{
		Publisher: printer{},
		Status: func(ctx context.Context, id string) (rollout.Status, error) {
			return rollout.Status{
				Rollout: rollout.Rollout{ID: id, Firmware: "1.2.0", State: rollout.StateCreated, Targets: 3,
					Batches: []rollout.Batch{{Start: 0, Size: 1}, {Start: 1, Size: 2}}, Updated: at},
				Counts: map[rollout.DeviceState]int{rollout.DevicePending: 3},
			}, nil
		},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	// What the planner calls, under its lock, for each committed event.
	feed.OnEvent("r1", rollout.Event{Seq: 1, Time: at, Kind: rollout.EventCreated, State: rollout.StateCreated})
	if err := feed.Close(ctx); err != nil {
		fmt.Println(err)
	}
	// Output:
	// rollouts/r1/events retain=false qos=1 {"rollout":"r1","seq":1,"time":"2026-11-23T12:00:00Z","kind":"created","state":"created"}
	// rollouts/r1/status retain=true qos=1 {"id":"r1","firmware":"1.2.0","state":"created","targets":3,"batches":2,"batches_started":0,"counts":{"pending":3},"updated":"2026-11-23T12:00:00Z"}
}
