package awssdktest

import (
	"strings"
	"testing"
)

// TestFindNode: without node, or without the pinned SDKs installed, the
// error says which is missing (Node adds how to install them).
func TestFindNode(t *testing.T) {
	if _, err := findNode(t.TempDir()); err == nil || !strings.Contains(err.Error(), "not installed") {
		t.Errorf("findNode(empty dir): %v; want the missing package named", err)
	}
	t.Setenv("PATH", t.TempDir())
	if _, err := findNode(Dir(t)); err == nil || !strings.Contains(err.Error(), "node not found") {
		t.Errorf("findNode without node in PATH: %v; want node not found", err)
	}
	if !strings.Contains(installHint, "apt-get install nodejs npm") || !strings.Contains(installHint, "make sdk-deps") {
		t.Errorf("install hint %q names neither the Debian packages nor make sdk-deps", installHint)
	}
}
