package firmware

import "context"

// Catalog is where a Store keeps its image records: one Image per version
// (the metadata; the image bytes are blobs, kept apart under Config.Dir).
// firmware/boltstore is the single-node Catalog (firmware.db); a cluster
// catalog (a JetStream KV bucket) implements the same contract, which
// firmware/storetest checks against every adapter. The Store never
// closes its Catalog: whoever opened it closes it after Store.Close.
//
// Every method honours ctx (it returns ctx's error, wrapped, once ctx is
// done, having changed nothing), is durable when it returns nil (on disk,
// or on a quorum), and returns an error wrapping ErrClosed after Close.
// The Store serialises Create, Replace and Delete with its own blob
// bookkeeping; a Catalog must still be safe for concurrent use.
type Catalog interface {
	// Get returns the record of version v, or an error wrapping
	// ErrNotFound.
	Get(ctx context.Context, v Version) (Image, error)
	// List returns every record, in no particular order.
	List(ctx context.Context) ([]Image, error)
	// Create stores img under img.Version if no record has that version,
	// and otherwise fails with an error wrapping ErrExists: two uploads
	// of one version never both succeed (compare-and-set on absence).
	Create(ctx context.Context, img Image) error
	// Replace overwrites the records of imgs' versions, all or nothing,
	// leaving out any that no longer exists (a version deleted meanwhile
	// stays deleted). Open uses it to re-sign manifests after a change of
	// signing key.
	Replace(ctx context.Context, imgs ...Image) error
	// Delete removes the record of version v and returns it, or fails
	// with an error wrapping ErrNotFound.
	Delete(ctx context.Context, v Version) (Image, error)
}
