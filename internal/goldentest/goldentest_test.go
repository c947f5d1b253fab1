package goldentest_test

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/umbra-iot/umbra/internal/goldentest"
)

// fakeTB records what Check reports instead of failing the real test.
// Fatalf ends the calling goroutine like the real one, so run calls the
// code under test on a goroutine of its own.
type fakeTB struct {
	testing.TB // the real test, for everything not overridden
	name       string
	errors     []string
	fatals     []string
	logs       []string
}

func (f *fakeTB) Helper()      {}
func (f *fakeTB) Name() string { return f.name }
func (f *fakeTB) Errorf(format string, args ...any) {
	f.errors = append(f.errors, fmt.Sprintf(format, args...))
}
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.fatals = append(f.fatals, fmt.Sprintf(format, args...))
	runtime.Goexit()
}
func (f *fakeTB) Logf(format string, args ...any) {
	f.logs = append(f.logs, fmt.Sprintf(format, args...))
}

// run calls fn with a fakeTB named name on its own goroutine and returns
// the fake once fn has returned or called Fatalf.
func run(t *testing.T, name string, fn func(tb testing.TB)) *fakeTB {
	t.Helper()
	f := &fakeTB{TB: t, name: name}
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(f)
	}()
	<-done
	return f
}

// setUpdate sets the -update flag for the rest of the test.
func setUpdate(t *testing.T, on bool) {
	t.Helper()
	fl := flag.Lookup("update")
	if fl == nil {
		t.Fatal(`flag.Lookup("update") = nil, want the flag goldentest registers`)
	}
	old := fl.Value.String()
	if err := flag.Set("update", strconv.FormatBool(on)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = flag.Set("update", old) })
}

// numbered returns lines "l01\n" … up to n, with the lines in repl
// (1-based) replaced.
func numbered(n int, repl map[int]string) string {
	var b strings.Builder
	for i := 1; i <= n; i++ {
		if r, ok := repl[i]; ok {
			b.WriteString(r + "\n")
			continue
		}
		fmt.Fprintf(&b, "l%02d\n", i)
	}
	return b.String()
}

func TestCheck(t *testing.T) {
	const cmd = "go test ./internal/goldentest -run TestGolden -update"
	many := map[int]string{}
	for i := 5; i <= 34; i++ {
		many[i] = fmt.Sprintf("new%02d", i)
	}
	tests := []struct {
		name      string
		golden    *string // nil: no file
		got       string
		wantErr   []string // substrings of the one Errorf message; nil: no error
		wantFatal []string // substrings of the one Fatalf message
		notWant   []string // substrings the message must not have
	}{
		{name: "equal", golden: ptr(numbered(20, nil)), got: numbered(20, nil)},
		{name: "both empty", golden: ptr(""), got: ""},
		{
			name:      "missing file",
			got:       "x\n",
			wantFatal: []string{"read golden file", "no such file", "to create it, run: " + cmd},
		},
		{
			name:   "changed line",
			golden: ptr(numbered(20, nil)),
			got:    numbered(20, map[int]string{10: "L10"}),
			wantErr: []string{
				"output differs from the golden file\n--- want ",
				"case.golden (20 lines)\n+++ got (20 lines)\n@@ first difference at line 10 @@\n",
				"\n  l07\n  l08\n  l09\n- l10\n+ L10\n  l11\n  l12\n  l13\n",
				"if the new output is right, run: " + cmd,
			},
			notWant: []string{"l06", "l14"},
		},
		{
			name:    "line added at the end",
			golden:  ptr(numbered(20, nil)),
			got:     numbered(20, nil) + "extra\n",
			wantErr: []string{"+++ got (21 lines)", "line 21 @@\n  l18\n  l19\n  l20\n+ extra\n"},
		},
		{
			name:    "line removed at the start",
			golden:  ptr(numbered(5, nil)),
			got:     strings.TrimPrefix(numbered(5, nil), "l01\n"),
			wantErr: []string{"line 1 @@\n- l01\n  l02\n  l03\n  l04\n"},
			notWant: []string{"l05"},
		},
		{
			name:    "missing final newline",
			golden:  ptr("a\nb\n"),
			got:     "a\nb",
			wantErr: []string{"line 2 @@\n  a\n- b\n+ b\n\\ no newline at end of file"},
		},
		{
			name:    "empty output",
			golden:  ptr("a\n"),
			got:     "",
			wantErr: []string{"+++ got (0 lines)", "- a\n"},
		},
		{
			name:    "control characters quoted",
			golden:  ptr("\x1b[31mred\x1b[0m\tx\n"),
			got:     "\x1b[32mred\x1b[0m\tx\n",
			wantErr: []string{`- "\x1b[31mred\x1b[0m\tx"`, `+ "\x1b[32mred\x1b[0m\tx"`},
		},
		{
			name:    "long change cut",
			golden:  ptr(numbered(40, nil)),
			got:     numbered(40, many),
			wantErr: []string{"- l14\n- ... 20 more lines\n+ new05\n", "+ new14\n+ ... 20 more lines\n  l35\n  l36\n  l37\nif the new"},
			notWant: []string{"l15", "new15"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			setUpdate(t, false)
			path := filepath.Join(t.TempDir(), "case.golden")
			if tc.golden != nil {
				if err := os.WriteFile(path, []byte(*tc.golden), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			f := run(t, "TestGolden/case", func(tb testing.TB) { goldentest.Check(tb, path, []byte(tc.got)) })
			checkReports(t, "Errorf", f.errors, tc.wantErr, tc.notWant)
			checkReports(t, "Fatalf", f.fatals, tc.wantFatal, tc.notWant)
		})
	}
}

// checkReports checks that reports holds one message with every substring
// in want and none in notWant, or no message when want is nil.
func checkReports(t *testing.T, kind string, reports, want, notWant []string) {
	t.Helper()
	if want == nil {
		if len(reports) != 0 {
			t.Errorf("%s calls = %q, want none", kind, reports)
		}
		return
	}
	if len(reports) != 1 {
		t.Fatalf("%s calls = %q, want one", kind, reports)
	}
	for _, s := range want {
		if !strings.Contains(reports[0], s) {
			t.Errorf("%s message:\n%s\nwant it to contain %q", kind, reports[0], s)
		}
	}
	for _, s := range notWant {
		if strings.Contains(reports[0], s) {
			t.Errorf("%s message:\n%s\nwant it not to contain %q", kind, reports[0], s)
		}
	}
}

func TestUpdate(t *testing.T) {
	tests := []struct {
		name    string
		old     *string // nil: no file (nor directory)
		got     string
		written bool // whether Check should rewrite the file
	}{
		{name: "create with directory", got: "new\n", written: true},
		{name: "rewrite", old: ptr("old\n"), got: "new\n", written: true},
		{name: "identical left alone", old: ptr("same\n"), got: "same\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			setUpdate(t, true)
			if !goldentest.Update() {
				t.Fatal("Update() = false with -update=true, want true")
			}
			path := filepath.Join(t.TempDir(), "sub", "dir", "x.golden")
			if tc.old != nil {
				if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, []byte(*tc.old), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			f := run(t, t.Name(), func(tb testing.TB) { goldentest.Check(tb, path, []byte(tc.got)) })
			if len(f.errors)+len(f.fatals) != 0 {
				t.Fatalf("Check with -update reported %q %q, want nothing", f.errors, f.fatals)
			}
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if string(b) != tc.got {
				t.Errorf("file after update = %q, want %q", b, tc.got)
			}
			if written := len(f.logs) > 0; written != tc.written {
				t.Errorf("logged an update = %v (%q), want %v", written, f.logs, tc.written)
			}
		})
	}
	t.Run("flag off", func(t *testing.T) {
		setUpdate(t, false)
		if goldentest.Update() {
			t.Error("Update() = true with -update=false, want false")
		}
	})
}

func TestCheckJSON(t *testing.T) {
	type doc struct {
		ID    string   `json:"id"`
		Tags  []string `json:"tags,omitempty"`
		Count int      `json:"count"`
	}
	tests := []struct {
		name      string
		v         any
		want      string // the golden file content that must match
		wantFatal string
	}{
		{name: "struct", v: doc{ID: "a&b", Tags: []string{"x"}, Count: 2},
			want: "{\n  \"id\": \"a\\u0026b\",\n  \"tags\": [\n    \"x\"\n  ],\n  \"count\": 2\n}\n"},
		{name: "map sorted", v: map[string]int{"b": 2, "a": 1}, want: "{\n  \"a\": 1,\n  \"b\": 2\n}\n"},
		{name: "raw kept as is", v: json.RawMessage(`{"z":"<&>","a":[1, 2]}`),
			want: "{\n  \"z\": \"<&>\",\n  \"a\": [\n    1,\n    2\n  ]\n}\n"},
		{name: "invalid raw", v: json.RawMessage(`{"a":`), wantFatal: "indent JSON for "},
		{name: "unencodable", v: map[string]any{"c": make(chan int)}, wantFatal: "encode JSON for "},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			setUpdate(t, false)
			path := filepath.Join(t.TempDir(), "x.golden.json")
			if err := os.WriteFile(path, []byte(tc.want), 0o644); err != nil {
				t.Fatal(err)
			}
			f := run(t, t.Name(), func(tb testing.TB) { goldentest.CheckJSON(tb, path, tc.v) })
			if len(f.errors) != 0 {
				t.Errorf("CheckJSON(%v) errors = %q, want none", tc.v, f.errors)
			}
			var want []string
			if tc.wantFatal != "" {
				want = []string{tc.wantFatal}
			}
			checkReports(t, "Fatalf", f.fatals, want, nil)
		})
	}
}

func ptr(s string) *string { return &s }
