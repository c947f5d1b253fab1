// Package boltstore is the rollout planner's store (rollout.Store) in one
// bbolt file, rollout.db: the single-node default, opened by umbra serve
// beside the planner and closed after it.
//
// The layout is the one the planner used when it kept the file itself, so
// existing files open unchanged (TestOpensFileOfEarlierVersion reads one
// written before the store moved here). Each Create and Commit is one
// bbolt transaction, synced to disk before it returns: what the planner
// was told is stored survives a crash, and a failed call leaves nothing
// behind. Reads are read transactions and run concurrently; Targets and
// Events seek a cursor, so a page of a finished rollout or the events
// after a sequence number cost what they return.
//
// This is the only package that imports bbolt for rollouts; the contract
// it passes is rollout/storetest's.
package boltstore
