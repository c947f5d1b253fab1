// Package natsstore is firmware's cluster-mode storage on JetStream:
// Catalog, the firmware.Catalog of image records in a key-value bucket
// (default "umbra_firmware") shared by every node.
//
// # Bucket layout (schema version 1)
//
//	v.<version>   the Image record (JSON), the version escaped by natskv.Token
//
// Create is a compare-and-set on the key's absence (its delete marker
// included), so two uploads of one version on two nodes never both
// succeed; Replace is one atomic batch of the records that still exist,
// each checked against the revision read; Delete is checked likewise. A
// change refused because another node wrote meanwhile is read and tried
// again.
//
// # Not done yet
//
// The image bytes are still files under firmware.Config.Dir on each node
// (firmware's blobStore). Issue 15 puts them in the JetStream object
// store, so that an image uploaded on one node is served by every node;
// that needs firmware's blob seam turned into an interface, which this
// package does not do yet (docs/cluster.md).
//
// # Durability
//
// A change returns once JetStream acknowledged it: on a quorum of the
// replicas, on disk with sync_interval: always.
package natsstore
