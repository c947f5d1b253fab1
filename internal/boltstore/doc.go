// Package boltstore is what every <pkg>/boltstore adapter shares: the one
// way Umbra opens a bbolt file (mode, lock timeout, the errors for a file
// another process holds or bbolt cannot read). Only packages named
// boltstore import go.etcd.io/bbolt (internal/archtest checks it).
package boltstore
