//go:build !linux

package natstest

import "os/exec"

// setParentDeathSignal does nothing where the kernel has no parent-death
// signal; the servers are stopped at cleanup.
func setParentDeathSignal(*exec.Cmd) {}
