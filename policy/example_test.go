package policy_test

import (
	"fmt"

	"github.com/umbra-iot/umbra/policy"
)

func ExamplePolicy_Allow() {
	f, err := policy.Parse("acl.conf", []byte(`
role device
# Devices may also publish a status, but their logs stay on the device.
pattern write devices/%u/status
pattern deny devices/%u/logs/#
`))
	if err != nil {
		fmt.Println(err)
		return
	}
	p := policy.New(f) // extends the built-in default
	dev := policy.Subject{Role: policy.RoleDevice, User: "lamp1", ClientID: "lamp1"}
	fmt.Println(p.Allow(dev, "devices/lamp1/status", policy.Write))        // the file adds it
	fmt.Println(p.Allow(dev, "devices/lamp1/telemetry", policy.Write))     // the default allows it
	fmt.Println(p.Allow(dev, "devices/lamp1/logs", policy.Write))          // the file denies it
	fmt.Println(p.Allow(dev, "devices/lamp2/telemetry", policy.Read))      // another device's
	fmt.Println(p.Allow(dev, "state/lamp1/update/accepted", policy.Write)) // reserved for Umbra
	// Output:
	// true
	// true
	// false
	// false
	// false
}

func ExampleParse() {
	_, err := policy.Parse("acl.conf", []byte("role device\ntopic raed fleet/#\n"))
	fmt.Println(err)
	// Output:
	// acl.conf:2: topic: unknown access "raed" (want read, write, readwrite or deny)
}
