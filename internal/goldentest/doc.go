// Package goldentest compares test output with golden files under a
// package's testdata directory and rewrites them when the tests run with
// -update. Use it only from tests.
//
// A test builds its output and hands it to Check together with the golden
// file's path, relative to the package directory as tests run in it:
//
//	goldentest.Check(t, filepath.Join("testdata", "status.golden.json"), got)
//
// Without -update, Check fails the test when the file is missing (Fatal) or
// differs from got (Error). The failure shows a short, unified-style hunk
// around the first region that differs (three lines of context, long runs
// cut, lines holding control characters quoted) and the command that
// rewrites the file, for example
//
//	go test ./shadow -run TestTranscripts -update
//
// With -update, Check writes got to the file (creating missing directories,
// leaving identical files untouched) and passes. CheckJSON does the same for
// a value encoded as indented JSON with a trailing newline.
//
// # The -update flag
//
// Importing goldentest registers the boolean flag -update on the default
// flag set; Update reports its value once the testing package has parsed
// the flags (that is, inside a test, not during package initialisation). A
// test package that imports goldentest must not register its own -update
// flag: the flag package panics on the second registration.
//
// # Concurrency
//
// Check and CheckJSON may be called from parallel tests as long as no two
// of them use the same path at the same time.
package goldentest
