// Package storetest is the contract of rollout.Store: one table of cases
// that every implementation runs (rollout/boltstore now, a JetStream store
// in cluster mode). Each case makes its calls, checks their answers, and
// then reopens the store and compares everything it reads back with the
// state the case expects: what a store acknowledged is still there after
// a restart, and a call that failed left nothing behind.
//
// Run is the entry point: an adapter's test calls
//
//	func TestContract(t *testing.T) { storetest.Run(t, open) }
//
// with an Opener that opens the adapter's store in a directory. Besides
// the table (creation numbers from a sequence that survives a reopen, a
// commit of every kind of write at once, the last write of a record
// winning, intents deleted after new ones, execution patches applied in
// order, a target list that grows, Jobs marks, a failed commit leaving
// nothing), it checks the ordered scans from a position (Targets, Events
// after a sequence number), the errors of given positions, ErrNotFound for
// an unknown rollout, and that a cancelled ctx writes nothing.
package storetest
