package goldentest

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"
)

const (
	// contextLines is how many equal lines a mismatch report shows around
	// the region that differs.
	contextLines = 3
	// maxHunkLines is how many lines of each side of the differing region
	// a mismatch report shows before it cuts the rest.
	maxHunkLines = 10
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/ with the output the tests produce")

// Update reports whether the tests run with -update, that is whether Check
// rewrites golden files instead of comparing with them. It is meaningful
// only after the testing package has parsed the flags, i.e. inside a test.
func Update() bool { return *update }

// Check compares got with the golden file at path (relative to the
// package directory). With -update it writes got to path instead, creating
// missing parent directories, and passes.
//
// Check calls tb.Fatal when the file cannot be read and tb.Error when its
// content differs from got; both messages name the command that rewrites
// the file.
func Check(tb testing.TB, path string, got []byte) {
	tb.Helper()
	if *update {
		write(tb, path, got)
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		tb.Fatalf("read golden file: %v\nto create it, run: %s", err, updateCommand(tb))
		return
	}
	if bytes.Equal(got, want) {
		return
	}
	tb.Errorf("output differs from the golden file\n%s\nif the new output is right, run: %s",
		diff(path, want, got), updateCommand(tb))
}

// CheckJSON encodes v as JSON indented by two spaces, adds a trailing
// newline and calls Check with the result. A json.RawMessage is indented as
// it is, without the HTML escaping and key checks json.Marshal would apply;
// invalid JSON fails the test.
func CheckJSON(tb testing.TB, path string, v any) {
	tb.Helper()
	var buf bytes.Buffer
	if raw, ok := v.(json.RawMessage); ok {
		if err := json.Indent(&buf, raw, "", "  "); err != nil {
			tb.Fatalf("indent JSON for %s: %v", path, err)
			return
		}
	} else {
		b, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			tb.Fatalf("encode JSON for %s: %v", path, err)
			return
		}
		buf.Write(b)
	}
	buf.WriteByte('\n')
	Check(tb, path, buf.Bytes())
}

// write stores got at path unless the file already holds exactly got, so an
// -update run leaves unchanged goldens (and their modification times) alone.
func write(tb testing.TB, path string, got []byte) {
	tb.Helper()
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, got) {
		return
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		tb.Fatalf("update golden file: %v", err)
		return
	}
	if err := os.WriteFile(path, got, 0o644); err != nil {
		tb.Fatalf("update golden file: %v", err)
		return
	}
	tb.Logf("updated golden file %s", path)
}

// updateCommand returns the go test command line that reruns the current
// top-level test with -update, from the module root.
func updateCommand(tb testing.TB) string {
	top, _, _ := strings.Cut(tb.Name(), "/")
	sel := "-run " + top
	if _, ok := tb.(*testing.B); ok {
		sel = "-run '^$' -bench " + top
	}
	return fmt.Sprintf("go test %s %s -update", packageDir(), sel)
}

// packageDir returns the working directory (the package under test)
// relative to the nearest enclosing directory holding go.mod, as "./dir",
// or "." when there is no such directory.
func packageDir() string {
	wd, err := os.Getwd()
	if err != nil {
		return "."
	}
	for root := wd; ; {
		if _, err := os.Stat(filepath.Join(root, "go.mod")); err == nil {
			rel, err := filepath.Rel(root, wd)
			if err != nil || rel == "." {
				return "."
			}
			return "./" + filepath.ToSlash(rel)
		}
		parent := filepath.Dir(root)
		if parent == root {
			return "."
		}
		root = parent
	}
}

// diff returns a unified-style hunk for the first region in which want and
// got differ: the lines before it that both share, the region's lines from
// want ("-") and from got ("+"), and the shared lines after it. Identical
// inputs give "".
func diff(path string, want, got []byte) string {
	wl, gl := splitLines(want), splitLines(got)
	p := 0
	for p < len(wl) && p < len(gl) && wl[p] == gl[p] {
		p++
	}
	s := 0
	for s < len(wl)-p && s < len(gl)-p && wl[len(wl)-1-s] == gl[len(gl)-1-s] {
		s++
	}
	if p == len(wl) && p == len(gl) {
		return ""
	}
	var b strings.Builder
	fmt.Fprintf(&b, "--- want %s (%d lines)\n+++ got (%d lines)\n", path, len(wl), len(gl))
	fmt.Fprintf(&b, "@@ first difference at line %d @@\n", p+1)
	writeLines(&b, " ", wl[max(0, p-contextLines):p], len(wl))
	writeLines(&b, "-", wl[p:len(wl)-s], maxHunkLines)
	writeLines(&b, "+", gl[p:len(gl)-s], maxHunkLines)
	writeLines(&b, " ", wl[len(wl)-s:len(wl)-s+min(s, contextLines)], contextLines)
	return strings.TrimSuffix(b.String(), "\n")
}

// writeLines writes at most limit of lines, each behind prefix, and a note
// saying how many it left out.
func writeLines(b *strings.Builder, prefix string, lines []string, limit int) {
	for i, l := range lines {
		if i == limit {
			fmt.Fprintf(b, "%s ... %d more lines\n", prefix, len(lines)-limit)
			return
		}
		text, complete := strings.CutSuffix(l, "\n")
		if !printable(text) {
			text = strconv.Quote(text)
		}
		fmt.Fprintf(b, "%s %s\n", prefix, text)
		if !complete {
			b.WriteString(`\ no newline at end of file` + "\n")
		}
	}
}

// splitLines splits b after every newline; the last line lacks one only if
// b does not end with a newline.
func splitLines(b []byte) []string {
	if len(b) == 0 {
		return nil
	}
	lines := strings.SplitAfter(string(b), "\n")
	if lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	return lines
}

// printable reports whether s is valid UTF-8 without control characters
// other than tab, so it can be shown without quoting.
func printable(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	return !strings.ContainsFunc(s, func(r rune) bool { return r != '\t' && unicode.IsControl(r) })
}
