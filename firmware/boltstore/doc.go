// Package boltstore is the single-node firmware.Catalog: the image records
// in one bbolt file (firmware.db under the firmware store's directory),
// opened by Open and handed to firmware.Open, which owns it from then on.
//
// The file has one bucket, "images", with one record per version keyed by
// the version string: the JSON form of firmware.Image, as every Umbra
// release has written it. Create's existence check and Delete's read are
// in the same transaction as their write, and every write is fsynced
// before the call returns. The image bytes are not here: they stay in the
// firmware store's blobs/ directory.
package boltstore
