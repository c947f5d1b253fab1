package identity_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/internal/identity"
)

func ExampleAllow() {
	dev := identity.Principal{Role: identity.RoleDevice, Name: "dev-1", Device: "dev-1"}
	integrator := identity.Principal{Role: identity.RoleIntegrator, Name: "dashboard"}
	fmt.Println(identity.Allow(dev, "state/dev-1/update", true))
	fmt.Println(identity.Allow(dev, "state/dev-1/update/accepted", true))
	fmt.Println(identity.Allow(dev, "state/dev-2/#", false))
	fmt.Println(identity.Allow(integrator, "state/+/update/accepted", false))
	fmt.Println(identity.Allow(integrator, "state/dev-1/update", true))
	// Output:
	// true
	// false
	// false
	// true
	// false
}

func ExampleStore_AddDevice() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "umbra-example")
	defer os.RemoveAll(dir)
	s, err := identity.Open(ctx, identity.Config{Path: filepath.Join(dir, "identity.db")})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer s.Close(ctx)

	secret, _ := s.AddDevice(ctx, "dev-1", map[string]string{"site": "berlin"})
	// The device logs in with its ID as client ID and user name.
	id, err := s.Authenticate(ctx, broker.Credentials{ClientID: "dev-1", Username: "dev-1", Password: []byte(secret)})
	fmt.Println(id.Device, err)
	_, err = s.Authenticate(ctx, broker.Credentials{ClientID: "dev-2", Username: "dev-1", Password: []byte(secret)})
	fmt.Println(err)
	// Output:
	// dev-1 <nil>
	// identity: unauthenticated: device dev-1 connected with client id "dev-2"
}
