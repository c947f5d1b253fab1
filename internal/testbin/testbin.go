package testbin

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
)

// EnvUmbra names an umbra binary built for the test run (the Makefile's
// test target builds one and sets it); tests use it instead of building
// their own.
const EnvUmbra = "UMBRA_TEST_BIN"

var (
	buildOnce sync.Once
	built     string // the binary Umbra built, or EnvUmbra's
	buildDir  string // the temp dir Umbra built into; "" when none
	buildErr  error
)

// Umbra returns the path of an umbra binary of this checkout: EnvUmbra's
// if set, or else one it builds (go build ./cmd/umbra) the first time a
// test of this process asks, into a temp dir that Cleanup removes. A
// failed build fails tb, with the compiler's output.
func Umbra(tb testing.TB) string {
	tb.Helper()
	buildOnce.Do(func() { built, buildErr = umbra() })
	if buildErr != nil {
		tb.Fatalf("testbin: %v", buildErr)
	}
	return built
}

func umbra() (string, error) {
	if p := os.Getenv(EnvUmbra); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("%s=%s: %w", EnvUmbra, p, err)
		}
		return filepath.Abs(p)
	}
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp("", "umbra-test-bin-")
	if err != nil {
		return "", err
	}
	buildDir = dir
	bin := filepath.Join(dir, "umbra")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/umbra")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/umbra: %w\n%s", err, out)
	}
	return bin, nil
}

// moduleRoot is the directory of this module's go.mod, found from this
// source file's path.
func moduleRoot() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("cannot locate the module")
	}
	dir := filepath.Dir(file)
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above " + filepath.Dir(file))
		}
		dir = parent
	}
}

// Cleanup removes the binary Umbra built (not EnvUmbra's). Call it from
// TestMain after m.Run.
func Cleanup() {
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
}

// Main runs m, removes the binary Umbra built, and exits with m's code.
func Main(m *testing.M) {
	code := m.Run()
	Cleanup()
	os.Exit(code)
}

// Need returns the path of tool, a program of Debian package pkg, and
// fails tb when it is not in PATH (nor in /usr/sbin), saying which package
// to install and that `make deps` installs it. A test never skips for a
// missing tool: interop is part of the suite.
func Need(tb testing.TB, tool, pkg string) string {
	tb.Helper()
	p, err := Find(tool, pkg)
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

// Find is Need without a test: the error names the package to install.
func Find(tool, pkg string) (string, error) {
	if p, err := exec.LookPath(tool); err == nil {
		return p, nil
	}
	if p := filepath.Join("/usr/sbin", tool); isExecutable(p) {
		return p, nil
	}
	return "", fmt.Errorf("testbin: %s not found in PATH: install the Debian package %s (`make deps` installs every tool the tests need)", tool, pkg)
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0
}
