package broker_test

import (
	"os"
	"testing"

	"golang.org/x/mod/modfile"
)

// TestMochiVersion fails when the mochi module Umbra builds changes: the
// broker works around mochi behaviour that a new version may change (see
// broker/doc.go and third_party/mochi/PATCHES.md), so an upgrade must
// re-read both and then update this test.
func TestMochiVersion(t *testing.T) {
	const (
		path    = "github.com/mochi-mqtt/server/v2"
		version = "v2.7.9"
		replace = "./third_party/mochi"
	)
	data, err := os.ReadFile("../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	f, err := modfile.Parse("go.mod", data, nil)
	if err != nil {
		t.Fatal(err)
	}
	var required string
	for _, r := range f.Require {
		if r.Mod.Path == path {
			required = r.Mod.Version
		}
	}
	if required != version {
		t.Errorf("go.mod requires %s %q, want %s: re-review broker/doc.go's workarounds and third_party/mochi/PATCHES.md, then update this test", path, required, version)
	}
	var replaced string
	for _, r := range f.Replace {
		if r.Old.Path == path {
			replaced = r.New.Path
		}
	}
	if replaced != replace {
		t.Errorf("go.mod replaces %s with %q, want %q (the patched copy)", path, replaced, replace)
	}
}
