package broker_test

import (
	"os"
	"testing"

	"golang.org/x/mod/modfile"
)

// TestMochiVersion fails when the mochi module Umbra builds changes: the
// broker works around mochi behaviour that a new version may change, and
// builds on the patched copy's additions (docs/upstream.md indexes every
// workaround; third_party/mochi/PATCHES.md lists the patches), so an
// upgrade must re-read both and then update this test.
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
		t.Errorf("go.mod requires %s %q, want %s: %s", path, required, version, upgradeChecklist)
	}
	var replaced string
	for _, r := range f.Replace {
		if r.Old.Path == path {
			replaced = r.New.Path
		}
	}
	if replaced != replace {
		t.Errorf("go.mod replaces %s with %q, want %q (the patched copy): %s", path, replaced, replace, upgradeChecklist)
	}
}

// upgradeChecklist is what TestMochiVersion asks of a mochi upgrade.
const upgradeChecklist = "re-review every workaround in docs/upstream.md and re-apply third_party/mochi/PATCHES.md " +
	"(broker/queue.go and broker/deliver.go reach mochi's outbound queue through patch 14's Client methods, " +
	"which replaced an unsafe write into its unexported field), then update this test"
