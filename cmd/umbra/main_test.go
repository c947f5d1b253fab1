package main

import (
	"fmt"
	"os"
	"testing"
)

// TestMain gives the tests an empty per-user config directory, so a
// developer's own client profile (umbra config) never reaches them.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "umbra-test-config-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	os.Setenv("XDG_CONFIG_HOME", dir)
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}
