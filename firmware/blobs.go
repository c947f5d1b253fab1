package firmware

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// Blobs keeps the image bytes, content-addressed by their SHA-256
// (lowercase hex): a version's record (Image.SHA256) names its blob, and
// versions with identical bytes share one. By default (Config.Blobs nil)
// they are files under Config.Dir, blobs/<sha256>; firmware/natsstore
// keeps them in a JetStream object store shared by every node (cluster
// mode), so an image uploaded on one node is served by all. The Store
// serialises Put and Remove with its records (an unreferenced blob is
// removed only while no upload can start referencing it); a Blobs must
// still be safe for concurrent use.
type Blobs interface {
	// Put stores the file at path, size bytes hashing to sum, as blob
	// sum, unless a blob sum of that size is stored already, and reports
	// whether it stored it. It may move the file away; the caller removes
	// it afterwards if it is still there.
	Put(ctx context.Context, sum, path string, size int64) (stored bool, err error)
	// Open returns blob sum for reading, as a file (downloads serve byte
	// ranges from it). The error wraps fs.ErrNotExist when there is none.
	Open(ctx context.Context, sum string) (*os.File, error)
	// Remove deletes blob sum; a missing blob is not an error.
	Remove(ctx context.Context, sum string) error
	// List returns the sum of every stored blob.
	List(ctx context.Context) ([]string, error)
}

// uploads keeps uploads in progress in tmp/ under Config.Dir: an upload
// is received and hashed there before its blob is stored.
type uploads struct {
	tmp string // tmp/
}

// openUploads creates (if needed) dir and its temp directory.
func openUploads(dir string) (*uploads, error) {
	u := &uploads{tmp: filepath.Join(dir, tmpDir)}
	for _, d := range []string{dir, u.tmp} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			return nil, err
		}
	}
	return u, nil
}

// cleanTmp removes everything in tmp/ and returns how many entries it
// removed: only uploads in progress live there, and none are in progress
// during Open.
func (u *uploads) cleanTmp() (int, error) {
	ents, err := os.ReadDir(u.tmp)
	if err != nil {
		return 0, err
	}
	for _, e := range ents {
		if err := os.RemoveAll(filepath.Join(u.tmp, e.Name())); err != nil {
			return 0, err
		}
	}
	return len(ents), nil
}

// fileBlobs is the default Blobs: blobs/<sha256> under Config.Dir.
type fileBlobs struct {
	dir string // blobs/
}

// openFileBlobs creates (if needed) the blob directory under dir.
func openFileBlobs(dir string) (*fileBlobs, error) {
	b := &fileBlobs{dir: filepath.Join(dir, blobsDir)}
	if err := os.MkdirAll(b.dir, 0o750); err != nil {
		return nil, err
	}
	return b, nil
}

// List returns the blob files' names that are sums.
func (b *fileBlobs) List(context.Context) ([]string, error) {
	ents, err := os.ReadDir(b.dir)
	if err != nil {
		return nil, err
	}
	var sums []string
	for _, e := range ents {
		if isSHA256(e.Name()) {
			sums = append(sums, e.Name())
		}
	}
	return sums, nil
}

// receive copies r into a new temp file, at most max bytes, fsynced and
// closed, and returns its path, size and sha256. On error nothing is left
// behind.
func (u *uploads) receive(ctx context.Context, r io.Reader, max int64) (path string, size int64, sum string, err error) {
	f, err := os.CreateTemp(u.tmp, "upload-*")
	if err != nil {
		return "", 0, "", err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	h := sha256.New()
	src := io.LimitReader(ctxReader{ctx, r}, max+1)
	size, err = io.CopyBuffer(io.MultiWriter(f, h), src, make([]byte, copyBufSize))
	switch {
	case err != nil:
		return "", 0, "", fmt.Errorf("receive image: %w", err)
	case size > max:
		return "", 0, "", fmt.Errorf("more than %d bytes: %w", max, ErrTooLarge)
	case size == 0:
		return "", 0, "", fmt.Errorf("%w: empty image", ErrInvalid)
	}
	if err = f.Sync(); err != nil {
		return "", 0, "", err
	}
	if err = f.Close(); err != nil {
		return "", 0, "", err
	}
	return f.Name(), size, hex.EncodeToString(h.Sum(nil)), nil
}

// Put renames the received temp file path to blob sum, unless a blob of
// that size is already there (the same bytes, under another version).
func (b *fileBlobs) Put(_ context.Context, sum, path string, size int64) (stored bool, err error) {
	blob := filepath.Join(b.dir, sum)
	if st, err := os.Stat(blob); err == nil && st.Size() == size {
		return false, nil
	}
	if err := os.Rename(path, blob); err != nil {
		return false, err
	}
	return true, syncDir(b.dir)
}

// Remove deletes blob sum; a missing blob is not an error.
func (b *fileBlobs) Remove(_ context.Context, sum string) error {
	if err := os.Remove(filepath.Join(b.dir, sum)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return syncDir(b.dir)
}

// Open opens blob sum for reading.
func (b *fileBlobs) Open(_ context.Context, sum string) (*os.File, error) {
	return os.Open(filepath.Join(b.dir, sum))
}

// ctxReader is a reader that fails once ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
