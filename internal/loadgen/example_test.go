package loadgen_test

import (
	"context"
	"fmt"
	"time"

	"github.com/umbra-iot/umbra/internal/loadgen"
	"github.com/umbra-iot/umbra/internal/loadgen/loadgentest"
)

// The echo baseline: a bare broker whose in-process responder answers every
// shadow update, driven by 4 closed-loop clients until 1,000 responses.
func ExampleRun() {
	srv, url, err := loadgentest.Start()
	if err != nil {
		fmt.Println(err)
		return
	}
	defer srv.Close(context.Background())
	echo := loadgen.Echo(srv, 1)
	if err := srv.Subscribe("state/+/update", echo); err != nil {
		fmt.Println(err)
		return
	}
	r, err := loadgen.Run(context.Background(), loadgen.Config{
		Server: url, Clients: 4, QoS: 1, MaxRequests: 1000, Duration: 30 * time.Second,
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(r.Requests, "requests,", r.Errors, "errors")
	// Output: 1000 requests, 0 errors
}
