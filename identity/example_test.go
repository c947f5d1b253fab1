package identity_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/umbra-iot/umbra/identity"
	"github.com/umbra-iot/umbra/identity/boltstore"
	"github.com/umbra-iot/umbra/policy"
)

func ExampleStore_SetPolicy() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "umbra-example")
	defer os.RemoveAll(dir)
	st, err := boltstore.Open(ctx, boltstore.Config{Path: filepath.Join(dir, "identity.db")})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer st.Close(ctx) // after the store
	s, err := identity.Open(ctx, identity.Config{Storage: st})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer s.Close(ctx)
	secret, _ := s.AddDevice(ctx, "lamp1", nil)
	lamp, _ := s.Authenticate(ctx, identity.Credentials{ClientID: "lamp1", Username: "lamp1", Password: []byte(secret)})

	// The built-in default: a device publishes telemetry, not a status.
	fmt.Println(s.Allow(lamp, "devices/lamp1/telemetry", true), s.Allow(lamp, "devices/lamp1/status", true))
	// A policy file extending the default (umbra serve --acl-file).
	f, _ := policy.Parse("acl.conf", []byte("role device\npattern write devices/%u/status\n"))
	s.SetPolicy(policy.New(f))
	fmt.Println(s.Allow(lamp, "devices/lamp1/telemetry", true), s.Allow(lamp, "devices/lamp1/status", true))
	// Output:
	// true false
	// true true
}

func ExampleStore_AddDevice() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "umbra-example")
	defer os.RemoveAll(dir)
	st, err := boltstore.Open(ctx, boltstore.Config{Path: filepath.Join(dir, "identity.db")})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer st.Close(ctx) // after the store
	s, err := identity.Open(ctx, identity.Config{Storage: st})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer s.Close(ctx)

	secret, _ := s.AddDevice(ctx, "dev-1", map[string]string{"site": "berlin"})
	// The device logs in with its ID as client ID and user name.
	id, err := s.Authenticate(ctx, identity.Credentials{ClientID: "dev-1", Username: "dev-1", Password: []byte(secret)})
	fmt.Println(id.Principal.Device, err)
	_, err = s.Authenticate(ctx, identity.Credentials{ClientID: "dev-2", Username: "dev-1", Password: []byte(secret)})
	fmt.Println(err)
	// Output:
	// dev-1 <nil>
	// identity: unauthenticated: device dev-1 connected with client id "dev-2"
}
