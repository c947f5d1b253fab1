// Package wiretest checks that a domain type and its wire form (package
// wire) carry the same JSON, so that a field added to one side and not
// converted fails a test: Filled builds a value with every field set, and
// SameFields compares the two JSON objects field by field, but for the
// fields the conversion drops on purpose. It is for tests only, and
// reports through testing.TB.
package wiretest
