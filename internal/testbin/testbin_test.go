package testbin_test

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/umbra-iot/umbra/internal/testbin"
)

func TestMain(m *testing.M) { testbin.Main(m) }

func TestFind(t *testing.T) {
	if _, err := testbin.Find("sh", "dash"); err != nil {
		t.Errorf("Find(sh) = %v", err)
	}
	_, err := testbin.Find("umbra-no-such-tool", "umbra-no-such-package")
	if err == nil || !strings.Contains(err.Error(), "install the Debian package umbra-no-such-package") || !strings.Contains(err.Error(), "make deps") {
		t.Errorf("Find of a missing tool = %v, want the package to install and make deps", err)
	}
}

// TestUmbraOnce: the binary is built once and runs.
func TestUmbraOnce(t *testing.T) {
	a := testbin.Umbra(t)
	if b := testbin.Umbra(t); b != a {
		t.Errorf("second Umbra = %s, want the first's %s", b, a)
	}
	if os.Getenv(testbin.EnvUmbra) != "" {
		return
	}
	out, err := exec.CommandContext(t.Context(), a, "version").CombinedOutput()
	if err != nil {
		t.Fatalf("umbra version: %v\n%s", err, out)
	}
}
