package natsstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/umbra-iot/umbra/firmware"
	"github.com/umbra-iot/umbra/internal/natskv"
)

// Defaults of CatalogConfig.
const (
	DefaultBucket  = "umbra_firmware"
	DefaultTimeout = 10 * time.Second
)

// SchemaVersion is the version of the bucket's layout (see doc.go).
const SchemaVersion = 1

// maxAttempts bounds the retries of a change another node's write refused.
const maxAttempts = 10

// prefixImage is the prefix of an image record's key: "v.<version>".
const prefixImage = "v."

// CatalogConfig configures OpenCatalog.
type CatalogConfig struct {
	// JetStream is the client the Catalog talks through; the caller owns
	// its connection. Required.
	JetStream jetstream.JetStream
	// Bucket is the bucket's name. Default DefaultBucket.
	Bucket string
	// Replicas is the bucket's replica count when OpenCatalog creates it.
	// Default 1.
	Replicas int
	// Timeout bounds each call's JetStream requests. Default
	// DefaultTimeout.
	Timeout time.Duration
}

// Catalog is a firmware.Catalog in a JetStream key-value bucket. It is
// safe for concurrent use, from any number of nodes.
type Catalog struct {
	b       *natskv.Bucket
	timeout time.Duration
	closed  atomic.Bool
}

var _ firmware.Catalog = (*Catalog)(nil)

// OpenCatalog opens (creating it if missing) the firmware bucket. It fails
// with an error wrapping natskv.ErrSchemaMismatch if the bucket was written
// with another layout.
func OpenCatalog(ctx context.Context, cfg CatalogConfig) (*Catalog, error) {
	if cfg.JetStream == nil {
		return nil, fmt.Errorf("firmware/natsstore: %w: CatalogConfig.JetStream is required", firmware.ErrInvalid)
	}
	if cfg.Bucket == "" {
		cfg.Bucket = DefaultBucket
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	b, err := natskv.Open(ctx, cfg.JetStream, natskv.BucketConfig{Name: cfg.Bucket, Replicas: cfg.Replicas,
		Schema: natskv.Schema{Kind: "firmware", Version: SchemaVersion}})
	if err != nil {
		return nil, fmt.Errorf("firmware/natsstore: %w", err)
	}
	return &Catalog{b: b, timeout: cfg.Timeout}, nil
}

func imageKey(v firmware.Version) string { return prefixImage + natskv.Token(string(v)) }

// start checks the Catalog and ctx, and bounds ctx by the timeout.
func (c *Catalog) start(ctx context.Context) (context.Context, context.CancelFunc, error) {
	if c.closed.Load() {
		return nil, nil, fmt.Errorf("firmware/natsstore: %w", firmware.ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		return nil, nil, fmt.Errorf("firmware/natsstore: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	return ctx, cancel, nil
}

func decode(k string, raw []byte) (firmware.Image, error) {
	var img firmware.Image
	if err := json.Unmarshal(raw, &img); err != nil {
		return img, fmt.Errorf("firmware/natsstore: decode %s: %w", k, err)
	}
	return img, nil
}

// Get returns version v's record.
func (c *Catalog) Get(ctx context.Context, v firmware.Version) (firmware.Image, error) {
	ctx, cancel, err := c.start(ctx)
	if err != nil {
		return firmware.Image{}, err
	}
	defer cancel()
	if v == "" {
		return firmware.Image{}, fmt.Errorf("firmware/natsstore: %q: %w", v, firmware.ErrNotFound)
	}
	e, err := c.b.Read(ctx, imageKey(v))
	switch {
	case err != nil:
		return firmware.Image{}, fmt.Errorf("firmware/natsstore: get %s: %w", v, err)
	case e.Rev == 0:
		return firmware.Image{}, fmt.Errorf("firmware/natsstore: %s: %w", v, firmware.ErrNotFound)
	}
	return decode(imageKey(v), e.Value)
}

// List returns every record, read in one pass.
func (c *Catalog) List(ctx context.Context) ([]firmware.Image, error) {
	ctx, cancel, err := c.start(ctx)
	if err != nil {
		return nil, err
	}
	defer cancel()
	vals, err := c.b.Values(ctx, prefixImage+">")
	if err != nil {
		return nil, fmt.Errorf("firmware/natsstore: list: %w", err)
	}
	out := make([]firmware.Image, 0, len(vals))
	for k, raw := range vals {
		img, err := decode(k, raw)
		if err != nil {
			return nil, err
		}
		out = append(out, img)
	}
	return out, nil
}

// Create stores img unless its version has a record (firmware.ErrExists),
// a compare-and-set on the key's absence.
func (c *Catalog) Create(ctx context.Context, img firmware.Image) error {
	raw, err := json.Marshal(img)
	if err != nil {
		return err
	}
	return c.change(ctx, "create "+string(img.Version), func(ctx context.Context, t *natskv.Txn) error {
		if _, found, err := t.Get(ctx, imageKey(img.Version)); err != nil || found {
			if found {
				return fmt.Errorf("firmware/natsstore: %s: %w", img.Version, firmware.ErrExists)
			}
			return err
		}
		t.Put(imageKey(img.Version), raw)
		return nil
	})
}

// Replace overwrites the records of imgs' versions that exist, in one
// atomic batch, each checked against the revision read.
func (c *Catalog) Replace(ctx context.Context, imgs ...firmware.Image) error {
	return c.change(ctx, "replace", func(ctx context.Context, t *natskv.Txn) error {
		for _, img := range imgs {
			_, found, err := t.Get(ctx, imageKey(img.Version))
			if err != nil {
				return err
			}
			if !found {
				continue
			}
			raw, err := json.Marshal(img)
			if err != nil {
				return err
			}
			t.Put(imageKey(img.Version), raw)
		}
		return nil
	})
}

// Delete removes version v's record and returns it.
func (c *Catalog) Delete(ctx context.Context, v firmware.Version) (firmware.Image, error) {
	var img firmware.Image
	err := c.change(ctx, "delete "+string(v), func(ctx context.Context, t *natskv.Txn) error {
		raw, found, err := t.Get(ctx, imageKey(v))
		if err != nil {
			return err
		}
		if !found {
			return fmt.Errorf("firmware/natsstore: %s: %w", v, firmware.ErrNotFound)
		}
		if img, err = decode(imageKey(v), raw); err != nil {
			return err
		}
		t.Delete(imageKey(v))
		return nil
	})
	return img, err
}

// change runs stage on a new Txn and commits it, again (up to
// maxAttempts) when another node's write refused it.
func (c *Catalog) change(ctx context.Context, what string, stage func(context.Context, *natskv.Txn) error) error {
	for attempt := range maxAttempts {
		if err := natskv.Backoff(ctx, attempt); err != nil {
			return fmt.Errorf("firmware/natsstore: %s: %w", what, err)
		}
		actx, cancel, err := c.start(ctx)
		if err != nil {
			return err
		}
		t := c.b.Txn()
		if err := stage(actx, t); err != nil {
			cancel()
			return err
		}
		err = t.Commit(actx)
		cancel()
		if !errors.Is(err, natskv.ErrConflict) {
			if err != nil {
				return fmt.Errorf("firmware/natsstore: %s: %w", what, err)
			}
			return nil
		}
	}
	return fmt.Errorf("firmware/natsstore: %s: the record kept changing", what)
}

// Close marks the Catalog closed (later calls fail with
// firmware.ErrClosed); it leaves the connection open and is idempotent.
func (c *Catalog) Close(context.Context) error {
	c.closed.Store(true)
	return nil
}
