package client_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDependencies: the client links neither the server nor mochi, bbolt
// or paho. Besides the standard library it imports only package wire and
// the device leaf, so an integrator's program stays small and the client
// cannot reach into the server.
func TestDependencies(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is not on PATH (install Go, or add $(go env GOROOT)/bin to PATH): %v", err)
	}
	out, err := exec.CommandContext(t.Context(), goTool, "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}",
		"github.com/umbra-iot/umbra/client").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	allowed := map[string]bool{
		"github.com/umbra-iot/umbra/client": true,
		"github.com/umbra-iot/umbra/wire":   true,
		"github.com/umbra-iot/umbra/device": true, // the domain leaf
	}
	var seen []string
	for _, dep := range strings.Fields(string(out)) {
		seen = append(seen, dep)
		if !allowed[dep] {
			t.Errorf("client depends on %s; it may import only the standard library, wire and the device leaf", dep)
		}
	}
	for dep := range allowed {
		if !strings.Contains(string(out), dep) {
			t.Errorf("go list -deps did not list %s (got %q): is the listing broken?", dep, seen)
		}
	}
}
