// Package heapfloor keeps the garbage collector from running more often
// than a small heap needs: after every collection it sets GOGC so that the
// next one starts no sooner than a given number of bytes (the floor) has
// been allocated, and never later than Go's default (GOGC=100) would.
//
// Go's default starts a collection when the heap has grown by as much as
// the live heap (plus goroutine stacks and globals) since the last one. A
// broker whose live heap is small but which allocates for every message
// therefore collects several times a second, and each collection scans
// every goroutine's stack and shrinks the stacks that are mostly unused,
// which the broker's connection goroutines grow again with their next
// packet. With a floor F, the heap goal is
//
//	live + max(live + stacks + globals, F)
//
// so memory stays bounded by the live heap plus at most F (or plus Go's
// own allowance, whichever is larger), and a large heap is collected as
// Go collects it by default.
//
// It adjusts a process-wide setting, so only a program's main (umbra
// serve) starts it, once; it does nothing when the environment sets GOGC
// or GOMEMLIMIT, which the operator then controls.
package heapfloor
