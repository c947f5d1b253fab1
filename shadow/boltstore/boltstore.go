package boltstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"

	boltdb "github.com/umbra-iot/umbra/internal/boltstore"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/shadow"
)

// DefaultTimeout is how long Open waits for the file lock when
// Config.Timeout is zero.
const DefaultTimeout = time.Second

// maxCommitBatch bounds how many Commit calls one bbolt transaction
// carries.
const maxCommitBatch = 2048

// scanCheck is how many records a scan visits between two checks of its
// context.
const scanCheck = 256

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

// ErrLocked is wrapped by Open when another process holds the file.
var ErrLocked = errors.New("boltstore: database is locked by another process")

// Config configures Open.
type Config struct {
	// Path is the bbolt file; it is created (mode 0600) if missing.
	// Required.
	Path string
	// Timeout bounds the wait for the file lock held by another process.
	// Default DefaultTimeout.
	Timeout time.Duration
	// CommitObserved, when set, is called after every transaction with
	// its duration (fsync included) and the number of Commit calls it
	// carried. Used for metrics.
	CommitObserved func(d time.Duration, batch int)
}

// Store is a shadow.Store in one bbolt file. It is safe for concurrent
// use.
//
// Commits from many goroutines are grouped into one transaction (one
// fsync) by a single committer goroutine: while one transaction is being
// synced to disk the next batch fills up, so throughput grows with
// concurrency instead of collapsing to one fsync per update. The batch is
// whatever is queued when the committer is free, up to maxCommitBatch,
// with no artificial delay. This beats bolt.DB.Batch for this workload:
// Batch waits up to MaxBatchDelay for a batch to fill, runs every
// function again alone when one fails, and would make one failing update
// fail or repeat its neighbours'; here each Commit's compare-and-set is
// checked inside the transaction, and only that Commit fails.
//
// A record's revision is a 64-bit hash of its bytes (never 0) under a
// seed chosen at Open: it changes whenever the bytes do, which is all
// compare-and-set needs (a write over identical bytes loses nothing), and
// the file format stays what it always was: the Document's JSON under the
// shadow's key.
type Store struct {
	db   *bolt.DB
	path string
	seed maphash.Seed

	writes chan *write

	mu     sync.RWMutex // guards closed against a send on writes after Close
	closed bool
	stop   chan struct{} // closed by Close: commit what is queued and exit
	abort  chan struct{} // closed when Close's ctx ends: refuse what is queued
	done   chan struct{} // closed when the committer has exited

	observe func(d time.Duration, n int)

	commits    atomic.Uint64 // transactions committed
	committed  atomic.Uint64 // Commit calls committed
	commitNano atomic.Uint64 // total time spent in transactions
	refused    atomic.Uint64 // Commit calls refused by Close

	closeOnce sync.Once
	closeErr  error
}

// write is one Commit call: its writes are applied in one transaction,
// all or none.
type write struct {
	ws   []shadow.Write
	err  error // a compare-and-set failure, set inside the transaction
	done chan error
}

// Open opens (or creates) the file at cfg.Path and starts its committer.
// It fails fast, with an error wrapping ErrLocked, if another process
// holds the file.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("boltstore: open: %w", err)
	}
	if cfg.Path == "" {
		return nil, errors.New("boltstore: open: Config.Path is required")
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	db, err := boltdb.Open(cfg.Path, boltdb.Options{Timeout: cfg.Timeout, Locked: ErrLocked})
	if err != nil {
		return nil, err
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
		return nil, fmt.Errorf("boltstore: init %s: %w", cfg.Path, err)
	}
	s := &Store{
		db:      db,
		path:    cfg.Path,
		seed:    maphash.MakeSeed(),
		writes:  make(chan *write, maxCommitBatch),
		stop:    make(chan struct{}),
		abort:   make(chan struct{}),
		done:    make(chan struct{}),
		observe: cfg.CommitObserved,
	}
	go s.commitLoop()
	return s, nil
}

// Path returns the file's path.
func (s *Store) Path() string { return s.path }

// location returns the bucket and key of shadow k.
func location(k shadow.Key) (bucket, key []byte) {
	if k.Name == "" {
		return bucketShadows, []byte(k.Device)
	}
	return bucketNamed, []byte(string(k.Device) + "/" + string(k.Name))
}

// rev is the revision of a record with bytes v (nil: no record).
func (s *Store) rev(v []byte) shadow.Rev {
	if v == nil {
		return 0
	}
	return shadow.Rev(max(maphash.Bytes(s.seed, v), 1))
}

// view runs fn in a read transaction, or fails with ErrClosed or ctx's
// error.
func (s *Store) view(ctx context.Context, op string, fn func(*bolt.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("boltstore: %s: %w", op, err)
	}
	s.mu.RLock()
	closed := s.closed
	s.mu.RUnlock()
	if closed {
		return fmt.Errorf("boltstore: %s: %w", op, shadow.ErrClosed)
	}
	if err := s.db.View(fn); err != nil {
		if errors.Is(err, bolt.ErrDatabaseNotOpen) {
			err = shadow.ErrClosed
		}
		return fmt.Errorf("boltstore: %s: %w", op, err)
	}
	return nil
}

// Get implements shadow.Store. The bytes are copied out of the
// transaction.
func (s *Store) Get(ctx context.Context, k shadow.Key) (shadow.Record, error) {
	var rec shadow.Record
	bucket, key := location(k)
	err := s.view(ctx, "get", func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucket).Get(key); v != nil {
			rec = shadow.Record{Value: bytes.Clone(v), Rev: s.rev(v)}
		}
		return nil
	})
	return rec, err
}

// Scan implements shadow.Store.
func (s *Store) Scan(ctx context.Context, after device.ID, fn func(id device.ID, rec shadow.Record) bool) error {
	return s.view(ctx, "scan", func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketShadows).Cursor()
		k, v := c.Seek([]byte(after))
		if k != nil && string(k) == string(after) {
			k, v = c.Next()
		}
		for n := 0; k != nil; k, v = c.Next() {
			if n++; n%scanCheck == 0 {
				if err := ctx.Err(); err != nil {
					return err
				}
			}
			if !fn(device.ID(k), shadow.Record{Value: v, Rev: s.rev(v)}) {
				return nil
			}
		}
		return nil
	})
}

// ScanNamed implements shadow.Store: one short cursor scan over the
// device's prefix "<id>/", or the whole bucket when id is "".
func (s *Store) ScanNamed(ctx context.Context, id device.ID, fn func(k shadow.Key, rec shadow.Record) bool) error {
	var prefix []byte
	if id != "" {
		prefix = []byte(string(id) + "/")
	}
	return s.view(ctx, "scan named", func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketNamed).Cursor()
		n := 0
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			if n++; n%scanCheck == 0 {
				if err := ctx.Err(); err != nil {
					return err
				}
			}
			dev, name, ok := bytes.Cut(k, []byte("/"))
			if !ok {
				return fmt.Errorf("named shadow key %q has no '/'", k)
			}
			if !fn(shadow.Key{Device: device.ID(dev), Name: shadow.Name(name)}, shadow.Record{Value: v, Rev: s.rev(v)}) {
				return nil
			}
		}
		return nil
	})
}

// Commit implements shadow.Store: the writes join the committer's next
// transaction, and Commit returns once it is committed and synced. ctx
// bounds only the wait to join the queue (which is full only while the
// committer is behind by maxCommitBatch calls).
func (s *Store) Commit(ctx context.Context, ws ...shadow.Write) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("boltstore: commit: %w", err)
	}
	w := &write{ws: ws, done: make(chan error, 1)}
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return fmt.Errorf("boltstore: commit: %w", shadow.ErrClosed)
	}
	select {
	case s.writes <- w:
		s.mu.RUnlock()
	case <-ctx.Done():
		s.mu.RUnlock()
		return fmt.Errorf("boltstore: commit: %w", ctx.Err())
	}
	if err := <-w.done; err != nil {
		return fmt.Errorf("boltstore: commit: %w", err)
	}
	return nil
}

func (s *Store) commitLoop() {
	defer close(s.done)
	batch := make([]*write, 0, maxCommitBatch)
	for {
		select {
		case w := <-s.writes:
			batch = append(batch[:0], w)
		case <-s.stop:
			// Close holds off new senders: what is queued is all there
			// is. Commit it (or refuse it, once Close gives up) and exit.
			for {
				if batch = s.fill(batch[:0]); len(batch) == 0 {
					return
				}
				s.commitOrRefuse(batch)
			}
		}
		s.commitOrRefuse(s.fill(batch))
	}
}

// fill adds queued writes to batch without waiting, up to maxCommitBatch.
func (s *Store) fill(batch []*write) []*write {
	for len(batch) < maxCommitBatch {
		select {
		case w := <-s.writes:
			batch = append(batch, w)
		default:
			return batch
		}
	}
	return batch
}

func (s *Store) commitOrRefuse(batch []*write) {
	select {
	case <-s.abort:
		s.refused.Add(uint64(len(batch)))
		for _, w := range batch {
			w.done <- shadow.ErrClosed
		}
	default:
		s.commit(batch)
	}
}

func (s *Store) commit(batch []*write) {
	start := time.Now()
	err := s.db.Update(func(tx *bolt.Tx) error {
		for _, w := range batch {
			w.err = s.check(tx, w.ws)
			if w.err != nil {
				continue
			}
			for _, o := range w.ws {
				bucket, key := location(o.Key)
				b := tx.Bucket(bucket)
				var err error
				if o.Value == nil {
					err = b.Delete(key)
				} else {
					err = b.Put(key, o.Value)
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
		if err != nil {
			w.done <- err
		} else {
			w.done <- w.err
		}
	}
}

// check reports ErrRevisionMismatch if a write's key is no longer at the
// revision the write expects.
func (s *Store) check(tx *bolt.Tx, ws []shadow.Write) error {
	for _, o := range ws {
		bucket, key := location(o.Key)
		if got := s.rev(tx.Bucket(bucket).Get(key)); got != o.Rev {
			return fmt.Errorf("%s: %w", o.Key, shadow.ErrRevisionMismatch)
		}
	}
	return nil
}

// CommitStats reports the committer's counters (see shadow.CommitStats).
func (s *Store) CommitStats() shadow.CommitStats {
	return shadow.CommitStats{
		Commits: s.commits.Load(),
		Writes:  s.committed.Load(),
		Time:    time.Duration(s.commitNano.Load()),
	}
}

// Close implements shadow.Store: it stops taking writes, commits the
// queued ones while ctx lasts and refuses the rest once it ends, waits for
// the transaction in flight (a bbolt transaction cannot be abandoned; it
// lasts one fsync) and closes the file. It is idempotent; later calls
// return the first call's result.
func (s *Store) Close(ctx context.Context) error {
	s.closeOnce.Do(func() {
		// Taking the write lock waits for senders that are in the middle
		// of queueing (at most one commit, when the queue is full).
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		close(s.stop)
		var waitErr error
		select {
		case <-s.done:
		case <-ctx.Done():
			close(s.abort)
			<-s.done
			if n := s.refused.Load(); n > 0 {
				waitErr = fmt.Errorf("boltstore: close: refused %d queued writes: %w", n, ctx.Err())
			}
		}
		if err := s.db.Close(); err != nil {
			s.closeErr = errors.Join(waitErr, fmt.Errorf("boltstore: close %s: %w", s.path, err))
		} else {
			s.closeErr = waitErr
		}
	})
	return s.closeErr
}
