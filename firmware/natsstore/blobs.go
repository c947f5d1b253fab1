package natsstore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/umbra-iot/umbra/firmware"
	"github.com/umbra-iot/umbra/internal/natskv"
)

// DefaultImageBucket is the object store's name when BlobsConfig.Bucket is
// empty.
const DefaultImageBucket = "umbra_firmware_images"

// BlobsConfig configures OpenBlobs.
type BlobsConfig struct {
	// JetStream is the client; the caller owns its connection. Required.
	JetStream jetstream.JetStream
	// Bucket is the object store's name. Default DefaultImageBucket.
	Bucket string
	// Replicas is the object store's replica count when OpenBlobs
	// creates it. Default 1.
	Replicas int
	// CacheDir keeps this node's copies of the images it served (a
	// download is a file served by byte ranges). Required; created 0750.
	CacheDir string
	// Timeout bounds each metadata request; transfers are bounded by
	// their caller's ctx. Default DefaultTimeout.
	Timeout time.Duration
	// Grace is how long a new image is left out of List: another node
	// may be between storing an upload's image and committing its
	// record, and a List at that moment must not make firmware collect
	// the image as unreferenced. Default DefaultGrace.
	Grace time.Duration
}

// DefaultGrace is BlobsConfig.Grace's default.
const DefaultGrace = 10 * time.Minute

// Blobs is a firmware.Blobs in a JetStream object store shared by every
// node: an image uploaded on one node is downloadable from all. Each node
// keeps a verified copy of the images it served in CacheDir.
type Blobs struct {
	store   jetstream.ObjectStore
	cache   string
	timeout time.Duration
	grace   time.Duration
}

var _ firmware.Blobs = (*Blobs)(nil)

// OpenBlobs opens (creating it if missing) the image object store.
func OpenBlobs(ctx context.Context, cfg BlobsConfig) (*Blobs, error) {
	if cfg.JetStream == nil || cfg.CacheDir == "" {
		return nil, fmt.Errorf("firmware/natsstore: %w: BlobsConfig.JetStream and CacheDir are required", firmware.ErrInvalid)
	}
	if cfg.Bucket == "" {
		cfg.Bucket = DefaultImageBucket
	}
	if cfg.Replicas == 0 {
		cfg.Replicas = 1
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Grace == 0 {
		cfg.Grace = DefaultGrace
	}
	if err := os.MkdirAll(cfg.CacheDir, 0o750); err != nil {
		return nil, fmt.Errorf("firmware/natsstore: image cache: %w", err)
	}
	st, err := cfg.JetStream.ObjectStore(ctx, cfg.Bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		err = natskv.WhilePlacing(ctx, func() error {
			st, err = cfg.JetStream.CreateObjectStore(ctx, jetstream.ObjectStoreConfig{Bucket: cfg.Bucket,
				Description: "umbra firmware images", Replicas: cfg.Replicas, Storage: jetstream.FileStorage})
			return err
		})
		if errors.Is(err, jetstream.ErrBucketExists) {
			st, err = cfg.JetStream.ObjectStore(ctx, cfg.Bucket)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("firmware/natsstore: image store %s: %w", cfg.Bucket, err)
	}
	return &Blobs{store: st, cache: cfg.CacheDir, timeout: cfg.Timeout, grace: cfg.Grace}, nil
}

// Put uploads the file at path as object sum unless an object sum of that
// size is stored, then keeps the file as this node's cached copy.
func (b *Blobs) Put(ctx context.Context, sum, path string, size int64) (bool, error) {
	ictx, cancel := context.WithTimeout(ctx, b.timeout)
	info, err := b.store.GetInfo(ictx, sum)
	cancel()
	switch {
	case err == nil && !info.Deleted && int64(info.Size) == size:
		return false, nil
	case err != nil && !errors.Is(err, jetstream.ErrObjectNotFound):
		return false, fmt.Errorf("firmware/natsstore: image %s: %w", sum, err)
	}
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	if _, err := b.store.Put(ctx, jetstream.ObjectMeta{Name: sum}, f); err != nil {
		return false, fmt.Errorf("firmware/natsstore: store image %s: %w", sum, err)
	}
	_ = os.Rename(path, filepath.Join(b.cache, sum)) // a cache: the object store has it
	return true, nil
}

// Open returns this node's copy of blob sum, fetching and verifying it
// first if there is none. It asks the object store whether sum still
// exists, so an image deleted on another node is not served from a cache.
func (b *Blobs) Open(ctx context.Context, sum string) (*os.File, error) {
	ictx, cancel := context.WithTimeout(ctx, b.timeout)
	info, err := b.store.GetInfo(ictx, sum)
	cancel()
	cached := filepath.Join(b.cache, sum)
	switch {
	case errors.Is(err, jetstream.ErrObjectNotFound) || err == nil && info.Deleted:
		os.Remove(cached)
		return nil, fmt.Errorf("firmware/natsstore: image %s: %w", sum, fs.ErrNotExist)
	case err != nil:
		return nil, fmt.Errorf("firmware/natsstore: image %s: %w", sum, err)
	}
	if f, err := os.Open(cached); err == nil {
		if st, err := f.Stat(); err == nil && st.Size() == int64(info.Size) {
			return f, nil
		}
		f.Close()
	}
	if err := b.fetch(ctx, sum); err != nil {
		return nil, err
	}
	return os.Open(cached)
}

// fetch copies object sum into the cache, verifying its SHA-256.
func (b *Blobs) fetch(ctx context.Context, sum string) error {
	obj, err := b.store.Get(ctx, sum)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return fmt.Errorf("firmware/natsstore: image %s: %w", sum, fs.ErrNotExist)
	}
	if err != nil {
		return fmt.Errorf("firmware/natsstore: fetch image %s: %w", sum, err)
	}
	defer obj.Close()
	tmp, err := os.CreateTemp(b.cache, "fetch-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // no-op once renamed
	h := sha256.New()
	_, err = io.Copy(io.MultiWriter(tmp, h), obj)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("firmware/natsstore: fetch image %s: %w", sum, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != sum {
		return fmt.Errorf("firmware/natsstore: fetched image %s hashes to %s", sum, got)
	}
	return os.Rename(tmp.Name(), filepath.Join(b.cache, sum))
}

// Remove deletes object sum and this node's copy.
func (b *Blobs) Remove(ctx context.Context, sum string) error {
	ctx, cancel := context.WithTimeout(ctx, b.timeout)
	defer cancel()
	if err := b.store.Delete(ctx, sum); err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
		return fmt.Errorf("firmware/natsstore: delete image %s: %w", sum, err)
	}
	if err := os.Remove(filepath.Join(b.cache, sum)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// List returns the sum of every stored image older than the grace period.
func (b *Blobs) List(ctx context.Context) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, b.timeout)
	defer cancel()
	objs, err := b.store.List(ctx)
	if errors.Is(err, jetstream.ErrNoObjectsFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("firmware/natsstore: list images: %w", err)
	}
	sums := make([]string, 0, len(objs))
	for _, o := range objs {
		if !o.Deleted && time.Since(o.ModTime) >= b.grace {
			sums = append(sums, o.Name)
		}
	}
	return sums, nil
}
