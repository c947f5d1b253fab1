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

// blobStore keeps the image bytes: blobs/<sha256>, content-addressed and
// shared by versions with identical bytes, and tmp/ for uploads in
// progress. It is the one place that touches them, the seam where cluster
// mode will put an object store (the records are in the Catalog).
type blobStore struct {
	dir string // blobs/
	tmp string // tmp/
}

// openBlobs creates (if needed) the blob and temp directories under dir.
func openBlobs(dir string) (*blobStore, error) {
	b := &blobStore{dir: filepath.Join(dir, blobsDir), tmp: filepath.Join(dir, tmpDir)}
	for _, d := range []string{dir, b.dir, b.tmp} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			return nil, err
		}
	}
	return b, nil
}

// cleanTmp removes everything in tmp/ and returns how many entries it
// removed: only uploads in progress live there, and none are in progress
// during Open.
func (b *blobStore) cleanTmp() (int, error) {
	ents, err := os.ReadDir(b.tmp)
	if err != nil {
		return 0, err
	}
	for _, e := range ents {
		if err := os.RemoveAll(filepath.Join(b.tmp, e.Name())); err != nil {
			return 0, err
		}
	}
	return len(ents), nil
}

// collect removes the blobs refs does not name and returns how many.
func (b *blobStore) collect(refs map[string]bool) (int, error) {
	ents, err := os.ReadDir(b.dir)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, e := range ents {
		if !isSHA256(e.Name()) || refs[e.Name()] {
			continue
		}
		if err := os.Remove(filepath.Join(b.dir, e.Name())); err != nil {
			return n, err
		}
		n++
	}
	if n > 0 {
		return n, syncDir(b.dir)
	}
	return 0, nil
}

// receive copies r into a new temp file, at most max bytes, fsynced and
// closed, and returns its path, size and sha256. On error nothing is left
// behind.
func (b *blobStore) receive(ctx context.Context, r io.Reader, max int64) (path string, size int64, sum string, err error) {
	f, err := os.CreateTemp(b.tmp, "upload-*")
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

// link makes the received temp file tmp the blob sum, unless a blob of
// that size is already there (the same bytes, under another version), and
// reports whether it linked it. The caller holds Store.blobMu.
func (b *blobStore) link(tmp, sum string, size int64) (linked bool, err error) {
	blob := filepath.Join(b.dir, sum)
	if st, err := os.Stat(blob); err == nil && st.Size() == size {
		return false, nil
	}
	if err := os.Rename(tmp, blob); err != nil {
		return false, err
	}
	return true, syncDir(b.dir)
}

// remove deletes blob sum; a missing blob is not an error.
func (b *blobStore) remove(sum string) error {
	if err := os.Remove(filepath.Join(b.dir, sum)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return syncDir(b.dir)
}

// open opens blob sum for reading; the error wraps os.ErrNotExist if
// there is none.
func (b *blobStore) open(sum string) (*os.File, error) {
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
