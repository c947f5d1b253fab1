package policy_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/umbra-iot/umbra/policy"
)

// TestDocsMatchPolicy: docs/acl.md shows the built-in default verbatim and
// lists every reserved topic, so the page cannot drift from the code.
func TestDocsMatchPolicy(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "docs", "acl.md"))
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	if !strings.Contains(doc, "```\n"+policy.DefaultSource()+"```\n") {
		t.Error("docs/acl.md does not show policy/default.acl verbatim in a code block")
	}
	for _, f := range policy.Reserved() {
		if !strings.Contains(doc, "`"+f+"`") {
			t.Errorf("docs/acl.md does not list reserved topic %s", f)
		}
	}
}
