package main

import (
	"fmt"
	"os"
	"testing"

	"github.com/umbra-iot/umbra/internal/testbin"
)

// TestMain gives the tests an empty per-user config directory, so a
// developer's own client profile (umbra config) never reaches them, and
// removes the umbra binary the tests built (once, testbin.Umbra).
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "umbra-test-config-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	os.Setenv("XDG_CONFIG_HOME", dir)
	code := m.Run()
	os.RemoveAll(dir)
	testbin.Cleanup()
	os.Exit(code)
}
