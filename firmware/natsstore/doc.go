// Package natsstore is firmware's cluster-mode storage on JetStream, shared
// by every node: Catalog, the firmware.Catalog of image records in a
// key-value bucket (default "umbra_firmware"), and Blobs, the
// firmware.Blobs of image bytes in an object store (default
// "umbra_firmware_images"); and ShareKeys, which gives every node the
// fleet's signing key and download-URL secret from one key ("fleet") of
// a third bucket (default "umbra_firmware_keys"), stored by the first
// node that asks, so a URL minted on one node is valid on every node.
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
// # Images
//
// An image is the object named by its SHA-256. A node keeps a verified copy
// of each image it served in BlobsConfig.CacheDir (downloads serve byte
// ranges from a file) and asks the object store before serving a copy, so
// an image deleted on another node is not served from a cache. List leaves
// out images younger than BlobsConfig.Grace (10 minutes), so that firmware's
// collection of unreferenced images on one node's Open never removes an
// image another node has stored but not yet recorded.
//
// Known gap: firmware serialises "remove an unreferenced image" with
// uploads on one node only (its blobMu). A version deleted on one node at
// the moment another node uploads the same bytes as a new version may
// remove the image the new version needs; a cluster-wide lock (a lease)
// would close it.
//
// # Durability
//
// A change returns once JetStream acknowledged it: on a quorum of the
// replicas, on disk with sync_interval: always.
package natsstore
