package shadow

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/umbra-iot/umbra/device"
)

// The file's buckets. The classic shadows' bucket is the one every Umbra
// version wrote; named shadows live in a bucket of their own, so files
// written before named shadows existed open and read unchanged, and the
// classic listing (GET /v1/devices) never walks named shadows.
var (
	// bucketShadows holds the classic shadows, keyed by device ID.
	bucketShadows = []byte("shadows")
	// bucketNamed holds the named shadows, keyed by "<device ID>/<name>".
	// Neither IDs nor names contain "/", so one device's named shadows are
	// exactly the keys with its prefix "<id>/": one short cursor scan.
	bucketNamed = []byte("named")
)

// location returns the bucket and key of shadow r.
func location(r ref) (bucket, key []byte) {
	if r.name == "" {
		return bucketShadows, []byte(r.id)
	}
	return bucketNamed, []byte(r.String())
}

// maxCommitBatch bounds how many writes one bbolt transaction carries.
const maxCommitBatch = 2048

// store persists documents in one bbolt file. Writes from many goroutines
// are grouped into one transaction (one fsync) by a single committer
// goroutine: while one commit is being synced to disk the next batch fills
// up, so throughput grows with concurrency instead of collapsing to one fsync
// per update.
type store struct {
	db     *bolt.DB
	writes chan *write
	quit   chan struct{}
	wg     sync.WaitGroup

	commits    atomic.Uint64 // transactions committed
	committed  atomic.Uint64 // documents written
	commitNano atomic.Uint64 // total time spent in commits
	observe    func(d time.Duration, n int)
}

// write is a group of changes committed together, in one transaction.
type write struct {
	ops  []op
	done chan error
}

// op stores val under r, or deletes r's key when val is nil.
type op struct {
	r   ref
	val []byte
}

func openStore(path string, timeout time.Duration, observe func(time.Duration, int)) (*store, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: timeout})
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("open %s: database is locked by another process (is another umbra serve using this data dir?): %w", path, err)
		}
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketShadows, bucketNamed} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		db.Close()
		return nil, fmt.Errorf("init %s: %w", path, err)
	}
	s := &store{
		db:      db,
		writes:  make(chan *write, maxCommitBatch),
		quit:    make(chan struct{}),
		observe: observe,
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.commitLoop()
	}()
	return s, nil
}

// get returns the stored bytes for r, or nil if there are none. The bytes
// are a copy, valid after the transaction.
func (s *store) get(r ref) ([]byte, error) {
	var out []byte
	bucket, key := location(r)
	err := s.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucket).Get(key); v != nil {
			out = append([]byte(nil), v...)
		}
		return nil
	})
	return out, err
}

// put durably applies ops, all in one transaction: it returns once the
// transaction holding them has been committed and synced.
func (s *store) put(ops ...op) error {
	w := &write{ops: ops, done: make(chan error, 1)}
	select {
	case s.writes <- w:
	case <-s.quit:
		return ErrClosed
	}
	return <-w.done
}

func (s *store) commitLoop() {
	batch := make([]*write, 0, maxCommitBatch)
	for {
		select {
		case w := <-s.writes:
			batch = append(batch[:0], w)
		case <-s.quit:
			// Writers that got into the queue before quit still get committed.
			for {
				select {
				case w := <-s.writes:
					s.commit([]*write{w})
				default:
					return
				}
			}
		}
	fill:
		for len(batch) < maxCommitBatch {
			select {
			case w := <-s.writes:
				batch = append(batch, w)
			default:
				break fill
			}
		}
		s.commit(batch)
	}
}

func (s *store) commit(batch []*write) {
	start := time.Now()
	err := s.db.Update(func(tx *bolt.Tx) error {
		for _, w := range batch {
			for _, o := range w.ops {
				bucket, key := location(o.r)
				b := tx.Bucket(bucket)
				var err error
				if o.val == nil {
					err = b.Delete(key)
				} else {
					err = b.Put(key, o.val)
				}
				if err != nil {
					return err
				}
			}
		}
		return nil
	})
	d := time.Since(start)
	s.commits.Add(1)
	s.commitNano.Add(uint64(d))
	if err == nil {
		s.committed.Add(uint64(len(batch)))
	}
	if s.observe != nil {
		s.observe(d, len(batch))
	}
	for _, w := range batch {
		w.done <- err
	}
}

// close stops the committer after it has committed every queued write, then
// closes the file.
func (s *store) close() error {
	close(s.quit)
	s.wg.Wait()
	return s.db.Close()
}

// Summary is one line of a shadow listing.
type Summary struct {
	ID      device.ID `json:"id"`
	Version Version   `json:"version"`
	Updated time.Time `json:"updated"`
}

// list returns up to limit live documents with IDs greater than after, in ID
// order, and the cursor for the next page ("" at the end).
func (s *store) list(after string, limit int) ([]Summary, string, error) {
	var out []Summary
	next := ""
	err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketShadows).Cursor()
		k, v := c.Seek([]byte(after))
		if k != nil && string(k) == after {
			k, v = c.Next()
		}
		for ; k != nil; k, v = c.Next() {
			hdr, err := decodeHeader(k, v)
			if err != nil {
				return err
			}
			if hdr.Deleted {
				continue
			}
			if len(out) == limit {
				next = out[len(out)-1].ID.String()
				return nil
			}
			out = append(out, Summary{ID: device.ID(k), Version: hdr.Version, Updated: time.UnixMilli(hdr.Updated).UTC()})
		}
		return nil
	})
	return out, next, err
}

// header is the part of a stored document a listing needs.
type header struct {
	Version Version `json:"version"`
	Updated int64   `json:"updated"`
	Deleted bool    `json:"deleted"`
}

func decodeHeader(k, v []byte) (header, error) {
	var hdr header
	if err := json.Unmarshal(v, &hdr); err != nil {
		return hdr, fmt.Errorf("decode %q: %w", k, err)
	}
	return hdr, nil
}

// namedEntry is one stored named shadow of a device: live or a tombstone.
type namedEntry struct {
	name Name
	header
}

// named returns every stored named shadow of id, live ones and tombstones,
// in name order.
func (s *store) named(id device.ID) ([]namedEntry, error) {
	var out []namedEntry
	prefix := []byte(string(id) + "/")
	err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketNamed).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			hdr, err := decodeHeader(k, v)
			if err != nil {
				return err
			}
			out = append(out, namedEntry{name: Name(k[len(prefix):]), header: hdr})
		}
		return nil
	})
	return out, err
}

// countNamed returns how many live named shadows the file holds.
func (s *store) countNamed() (int64, error) {
	var n int64
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketNamed).ForEach(func(k, v []byte) error {
			hdr, err := decodeHeader(k, v)
			if err == nil && !hdr.Deleted {
				n++
			}
			return err
		})
	})
	return n, err
}
