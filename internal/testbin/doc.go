// Package testbin gives tests the programs they run: the umbra binary,
// built at most once per test run, and the Debian tools the interop tests
// need, with one clear failure when a tool is missing.
package testbin
