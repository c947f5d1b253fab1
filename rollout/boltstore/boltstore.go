package boltstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	boltdb "github.com/umbra-iot/umbra/internal/boltstore"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/rollout"
)

// DefaultTimeout is how long Open waits for the file lock when
// Config.Timeout is zero.
const DefaultTimeout = time.Second

// Layout of rollout.db (unchanged since the planner kept it itself):
//
//	rollouts/                  bucket, one sub-bucket per rollout ID
//	  <id>/meta                Rollout as JSON
//	  <id>/targets             target IDs joined by '\n', in rollout order
//	  <id>/dev/<u32 index>     Device record, 12 bytes (absent = pending)
//	  <id>/ev/<u64 seq>        Event as JSON
//	  <id>/intent/<u32 index>  undelivered firmware command (desired JSON)
//	  <id>/err/<u32 index>     last error of a device (a Jobs device's last word)
//	  <id>/exec/<device ID>    a Jobs device's latest execution (JSON; created on first use)
//	seq                        bucket; "rollout" holds the last ID number
//	jobs/<device ID>           devices that use the AWS IoT Jobs API (u64 unix ns, first use)
var (
	bucketRollouts = []byte("rollouts")
	bucketSeq      = []byte("seq")
	keyMeta        = []byte("meta")
	keyTargets     = []byte("targets")
	keyRolloutSeq  = []byte("rollout")
	bucketDev      = []byte("dev")
	bucketEv       = []byte("ev")
	bucketIntent   = []byte("intent")
	bucketErr      = []byte("err")
	bucketExec     = []byte("exec")
	bucketJobs     = []byte("jobs")
)

// deviceRecordLen is the size of a stored rollout.Device: state, attempt,
// from (u16) and at (u64 unix nanoseconds), big-endian.
const deviceRecordLen = 12

// Errors of Open and of the methods.
var (
	// ErrClosed is returned by every method after Close.
	ErrClosed = errors.New("boltstore: closed")
	// ErrCorrupt is wrapped when a record cannot be decoded.
	ErrCorrupt = errors.New("boltstore: rollout database unreadable")
	// ErrLocked is wrapped by Open when another process holds the file.
	ErrLocked = errors.New("boltstore: database locked by another process")
)

// Config configures Open.
type Config struct {
	// Path is the bbolt file (rollout.db); it is created (mode 0600) if
	// missing. Required.
	Path string
	// Timeout bounds the wait for the file lock. Default DefaultTimeout.
	Timeout time.Duration
}

// Store is a rollout.Store in one bbolt file. It is safe for concurrent
// use.
type Store struct {
	db   *bolt.DB
	path string

	closeOnce sync.Once
	closeErr  error
}

var _ rollout.Store = (*Store)(nil)

// Open opens (or creates) the file at cfg.Path. It fails with an error
// wrapping ErrLocked when another process has the file open.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("boltstore: open: %w", err)
	}
	if cfg.Path == "" {
		return nil, fmt.Errorf("boltstore: open: %w: empty Path", rollout.ErrInvalid)
	}
	if cfg.Timeout < 0 {
		return nil, fmt.Errorf("boltstore: open: %w: negative Timeout", rollout.ErrInvalid)
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	db, err := boltdb.Open(cfg.Path, boltdb.Options{Timeout: cfg.Timeout, Locked: ErrLocked})
	if err != nil {
		return nil, err
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, name := range [][]byte{bucketRollouts, bucketSeq, bucketJobs} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("boltstore: init %s: %w", cfg.Path, err)
	}
	return &Store{db: db, path: cfg.Path}, nil
}

// Close closes the file. It waits for the calls in progress, which are
// short (one transaction each); ctx is not needed to bound them. It is
// idempotent: later calls return the first call's result.
func (s *Store) Close(context.Context) error {
	s.closeOnce.Do(func() { s.closeErr = s.db.Close() })
	return s.closeErr
}

// view runs f in a read transaction, after checking ctx.
func (s *Store) view(ctx context.Context, f func(*bolt.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	err := s.db.View(f)
	if errors.Is(err, bolt.ErrDatabaseNotOpen) {
		return ErrClosed
	}
	return err
}

// update runs f in a write transaction, after checking ctx. bbolt syncs
// the file before Update returns: an acknowledged write is on disk.
func (s *Store) update(ctx context.Context, f func(*bolt.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	err := s.db.Update(f)
	if errors.Is(err, bolt.ErrDatabaseNotOpen) {
		return ErrClosed
	}
	return err
}

// rolloutBucket returns the bucket of rollout id.
func rolloutBucket(tx *bolt.Tx, id string) (*bolt.Bucket, error) {
	b := tx.Bucket(bucketRollouts).Bucket([]byte(id))
	if b == nil {
		return nil, fmt.Errorf("rollout %.40q: %w", id, rollout.ErrNotFound)
	}
	return b, nil
}

// Create implements rollout.Store.
func (s *Store) Create(ctx context.Context, r rollout.Rollout, targets []device.ID, first rollout.Event) (rollout.Rollout, rollout.Event, error) {
	err := s.update(ctx, func(tx *bolt.Tx) error {
		sb := tx.Bucket(bucketSeq)
		n := uint64(0)
		if v := sb.Get(keyRolloutSeq); v != nil {
			if len(v) != 8 {
				return fmt.Errorf("%w: rollout sequence %x", ErrCorrupt, v)
			}
			n = binary.BigEndian.Uint64(v)
		}
		n++
		if err := sb.Put(keyRolloutSeq, binary.BigEndian.AppendUint64(nil, n)); err != nil {
			return err
		}
		r.ID = "r" + strconv.FormatUint(n, 10)
		b, err := tx.Bucket(bucketRollouts).CreateBucket([]byte(r.ID))
		if err != nil {
			return err
		}
		for _, name := range [][]byte{bucketDev, bucketEv, bucketIntent, bucketErr} {
			if _, err := b.CreateBucket(name); err != nil {
				return err
			}
		}
		if err := b.Put(keyTargets, encodeTargets(targets)); err != nil {
			return err
		}
		if err := putMeta(b, &r); err != nil {
			return err
		}
		first, err = appendEvent(b, first)
		return err
	})
	if err != nil {
		return rollout.Rollout{}, rollout.Event{}, fmt.Errorf("boltstore: create: %w", err)
	}
	return r, first, nil
}

// Commit implements rollout.Store.
func (s *Store) Commit(ctx context.Context, w *rollout.Changes) ([]rollout.Event, error) {
	if w.Empty() {
		return nil, nil
	}
	var evs []rollout.Event
	err := s.update(ctx, func(tx *bolt.Tx) error {
		buckets := map[string]*bolt.Bucket{}
		bucket := func(id string) (*bolt.Bucket, error) {
			if b, ok := buckets[id]; ok {
				return b, nil
			}
			b, err := rolloutBucket(tx, id)
			buckets[id] = b
			return b, err
		}
		for i := range w.Rollouts {
			b, err := bucket(w.Rollouts[i].ID)
			if err == nil {
				err = putMeta(b, &w.Rollouts[i])
			}
			if err != nil {
				return err
			}
		}
		for _, t := range w.Targets {
			b, err := bucket(t.Rollout)
			if err == nil {
				err = b.Put(keyTargets, encodeTargets(t.Targets))
			}
			if err != nil {
				return err
			}
		}
		for _, d := range w.Devices {
			b, err := bucket(d.Rollout)
			if err == nil {
				err = b.Bucket(bucketDev).Put(indexKey(d.Index), encodeDevice(d.Device))
			}
			if err != nil {
				return err
			}
		}
		for _, e := range w.Errors {
			b, err := bucket(e.Rollout)
			if err == nil {
				err = b.Bucket(bucketErr).Put(indexKey(e.Index), []byte(e.Text))
			}
			if err != nil {
				return err
			}
		}
		for _, e := range w.Events {
			b, err := bucket(e.Rollout)
			if err != nil {
				return err
			}
			ev, err := appendEvent(b, e.Event)
			if err != nil {
				return err
			}
			evs = append(evs, ev)
		}
		for _, in := range w.Intents {
			b, err := bucket(in.Rollout)
			if err == nil {
				err = b.Bucket(bucketIntent).Put(indexKey(in.Index), in.Command)
			}
			if err != nil {
				return err
			}
		}
		for _, p := range w.Delivered {
			b, err := bucket(p.Rollout)
			if err == nil {
				err = b.Bucket(bucketIntent).Delete(indexKey(p.Index))
			}
			if err != nil {
				return err
			}
		}
		for _, x := range w.Executions {
			b, err := bucket(x.Rollout)
			if err != nil {
				return err
			}
			old, found, err := getExec(b, x.Device)
			if err != nil {
				return err
			}
			if err := putExec(b, x.Device, x.Patch(old, found)); err != nil {
				return err
			}
		}
		jb := tx.Bucket(bucketJobs)
		for _, m := range w.JobsDevices {
			if jb.Get([]byte(m.Device)) != nil {
				continue
			}
			if err := jb.Put([]byte(m.Device), binary.BigEndian.AppendUint64(nil, uint64(m.Since.UnixNano()))); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("boltstore: commit: %w", err)
	}
	return evs, nil
}

// Rollouts implements rollout.Store.
func (s *Store) Rollouts(ctx context.Context) ([]rollout.Rollout, error) {
	var out []rollout.Rollout
	err := s.view(ctx, func(tx *bolt.Tx) error {
		rb := tx.Bucket(bucketRollouts)
		return rb.ForEachBucket(func(k []byte) error {
			r, err := getMeta(rb.Bucket(k))
			out = append(out, r)
			return err
		})
	})
	if err != nil {
		return nil, fmt.Errorf("boltstore: rollouts: %w", err)
	}
	return out, nil
}

// Rollout implements rollout.Store.
func (s *Store) Rollout(ctx context.Context, id string) (rollout.Rollout, error) {
	var r rollout.Rollout
	err := s.view(ctx, func(tx *bolt.Tx) error {
		b, err := rolloutBucket(tx, id)
		if err == nil {
			r, err = getMeta(b)
		}
		return err
	})
	if err != nil {
		return rollout.Rollout{}, fmt.Errorf("boltstore: %w", err)
	}
	return r, nil
}

// Load implements rollout.Store.
func (s *Store) Load(ctx context.Context, id string) (rollout.Stored, error) {
	var st rollout.Stored
	err := s.view(ctx, func(tx *bolt.Tx) error {
		b, err := rolloutBucket(tx, id)
		if err != nil {
			return err
		}
		if st.Rollout, err = getMeta(b); err != nil {
			return err
		}
		if st.Targets, st.Devices, err = loadTargets(b); err != nil {
			return err
		}
		n := len(st.Targets)
		st.Intents = map[int][]byte{}
		err = b.Bucket(bucketIntent).ForEach(func(k, v []byte) error {
			i, ok := index(k, n)
			if !ok {
				return fmt.Errorf("%w: intent key %x of %d targets", ErrCorrupt, k, n)
			}
			st.Intents[i] = bytes.Clone(v)
			return nil
		})
		if err != nil {
			return err
		}
		st.Executions = map[device.ID]rollout.ExecRecord{}
		eb := b.Bucket(bucketExec)
		if eb == nil {
			return nil
		}
		return eb.ForEach(func(k, v []byte) error {
			var rec rollout.ExecRecord
			if err := json.Unmarshal(v, &rec); err != nil || rec.Index < 0 || rec.Index >= n {
				return fmt.Errorf("%w: execution of %s", ErrCorrupt, k)
			}
			st.Executions[device.ID(k)] = rec
			return nil
		})
	})
	if err != nil {
		return rollout.Stored{}, fmt.Errorf("boltstore: load %s: %w", id, err)
	}
	return st, nil
}

// Targets implements rollout.Store: it skips start entries of the stored
// list and seeks the device records' cursor to start.
func (s *Store) Targets(ctx context.Context, id string, start int, f func(i int, target device.ID, d rollout.Device) bool) error {
	err := s.view(ctx, func(tx *bolt.Tx) error {
		b, err := rolloutBucket(tx, id)
		if err != nil {
			return err
		}
		list := b.Get(keyTargets)
		for range start {
			j := bytes.IndexByte(list, '\n')
			if j < 0 {
				return nil // past the end
			}
			list = list[j+1:]
		}
		cur := b.Bucket(bucketDev).Cursor()
		k, v := cur.Seek(indexKey(start))
		for i := start; len(list) > 0; i++ {
			end := bytes.IndexByte(list, '\n')
			if end < 0 {
				end = len(list)
			}
			target := device.ID(list[:end])
			list = list[min(end+1, len(list)):]
			var d rollout.Device
			if k != nil && bytes.Equal(k, indexKey(i)) {
				if d, err = decodeDevice(v); err != nil {
					return err
				}
				k, v = cur.Next()
			}
			if !f(i, target, d) {
				return nil
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("boltstore: targets of %s: %w", id, err)
	}
	return nil
}

// Errors implements rollout.Store.
func (s *Store) Errors(ctx context.Context, id string, which []int) (map[int]string, error) {
	out := map[int]string{}
	err := s.view(ctx, func(tx *bolt.Tx) error {
		b, err := rolloutBucket(tx, id)
		if err != nil {
			return err
		}
		eb := b.Bucket(bucketErr)
		if which == nil {
			return eb.ForEach(func(k, v []byte) error {
				if len(k) != 4 {
					return fmt.Errorf("%w: error key %x", ErrCorrupt, k)
				}
				out[int(binary.BigEndian.Uint32(k))] = string(v)
				return nil
			})
		}
		for _, i := range which {
			if v := eb.Get(indexKey(i)); v != nil {
				out[i] = string(v)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("boltstore: errors of %s: %w", id, err)
	}
	return out, nil
}

// Events implements rollout.Store.
func (s *Store) Events(ctx context.Context, id string, after uint64) ([]rollout.Event, error) {
	var out []rollout.Event
	err := s.view(ctx, func(tx *bolt.Tx) error {
		b, err := rolloutBucket(tx, id)
		if err != nil {
			return err
		}
		if after == 1<<64-1 {
			return nil
		}
		c := b.Bucket(bucketEv).Cursor()
		for k, v := c.Seek(binary.BigEndian.AppendUint64(nil, after+1)); k != nil; k, v = c.Next() {
			var ev rollout.Event
			if err := json.Unmarshal(v, &ev); err != nil {
				return fmt.Errorf("%w: event %x: %w", ErrCorrupt, k, err)
			}
			out = append(out, ev)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("boltstore: events of %s: %w", id, err)
	}
	return out, nil
}

// Execution implements rollout.Store.
func (s *Store) Execution(ctx context.Context, id string, dev device.ID) (rollout.ExecRecord, bool, error) {
	var rec rollout.ExecRecord
	var found bool
	err := s.view(ctx, func(tx *bolt.Tx) error {
		b, err := rolloutBucket(tx, id)
		if err == nil {
			rec, found, err = getExec(b, dev)
		}
		return err
	})
	if err != nil {
		return rollout.ExecRecord{}, false, fmt.Errorf("boltstore: execution of %s in %s: %w", dev, id, err)
	}
	return rec, found, nil
}

// JobsDevice implements rollout.Store.
func (s *Store) JobsDevice(ctx context.Context, dev device.ID) (bool, error) {
	found := false
	err := s.view(ctx, func(tx *bolt.Tx) error {
		found = tx.Bucket(bucketJobs).Get([]byte(dev)) != nil
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("boltstore: jobs device %s: %w", dev, err)
	}
	return found, nil
}

func encodeTargets(targets []device.ID) []byte {
	var buf bytes.Buffer
	for i, id := range targets {
		if i > 0 {
			buf.WriteByte('\n')
		}
		buf.WriteString(string(id))
	}
	return buf.Bytes()
}

func putMeta(b *bolt.Bucket, r *rollout.Rollout) error {
	raw, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return b.Put(keyMeta, raw)
}

func getMeta(b *bolt.Bucket) (rollout.Rollout, error) {
	var r rollout.Rollout
	if err := json.Unmarshal(b.Get(keyMeta), &r); err != nil {
		return rollout.Rollout{}, fmt.Errorf("%w: rollout meta: %w", ErrCorrupt, err)
	}
	return r, nil
}

// appendEvent stores ev with the next sequence number of b's log and
// returns it.
func appendEvent(b *bolt.Bucket, ev rollout.Event) (rollout.Event, error) {
	eb := b.Bucket(bucketEv)
	seq, err := eb.NextSequence()
	if err != nil {
		return ev, err
	}
	ev.Seq = seq
	raw, err := json.Marshal(ev)
	if err != nil {
		return ev, err
	}
	return ev, eb.Put(binary.BigEndian.AppendUint64(nil, seq), raw)
}

// loadTargets returns the target list of b and the device records
// (pending where none is stored).
func loadTargets(b *bolt.Bucket) ([]device.ID, []rollout.Device, error) {
	raw := b.Get(keyTargets)
	var targets []device.ID
	if len(raw) > 0 {
		targets = make([]device.ID, 0, bytes.Count(raw, []byte{'\n'})+1)
	}
	for len(raw) > 0 {
		i := bytes.IndexByte(raw, '\n')
		if i < 0 {
			i = len(raw)
		}
		targets = append(targets, device.ID(raw[:i]))
		raw = raw[min(i+1, len(raw)):]
	}
	n := len(targets)
	devs := make([]rollout.Device, n)
	err := b.Bucket(bucketDev).ForEach(func(k, v []byte) error {
		i, ok := index(k, n)
		if !ok {
			return fmt.Errorf("%w: device key %x of %d targets", ErrCorrupt, k, n)
		}
		d, err := decodeDevice(v)
		devs[i] = d
		return err
	})
	return targets, devs, err
}

func getExec(b *bolt.Bucket, id device.ID) (rollout.ExecRecord, bool, error) {
	eb := b.Bucket(bucketExec)
	if eb == nil {
		return rollout.ExecRecord{}, false, nil
	}
	raw := eb.Get([]byte(id))
	if raw == nil {
		return rollout.ExecRecord{}, false, nil
	}
	var rec rollout.ExecRecord
	if err := json.Unmarshal(raw, &rec); err != nil {
		return rollout.ExecRecord{}, false, fmt.Errorf("%w: execution of %s: %w", ErrCorrupt, id, err)
	}
	return rec, true, nil
}

func putExec(b *bolt.Bucket, id device.ID, rec rollout.ExecRecord) error {
	eb, err := b.CreateBucketIfNotExists(bucketExec)
	if err != nil {
		return err
	}
	raw, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	return eb.Put([]byte(id), raw)
}

func encodeDevice(d rollout.Device) []byte {
	b := make([]byte, deviceRecordLen)
	b[0] = byte(d.State)
	b[1] = d.Attempt
	binary.BigEndian.PutUint16(b[2:], d.From)
	binary.BigEndian.PutUint64(b[4:], uint64(d.At))
	return b
}

func decodeDevice(b []byte) (rollout.Device, error) {
	if len(b) != deviceRecordLen || !rollout.DeviceState(b[0]).Valid() {
		return rollout.Device{}, fmt.Errorf("%w: device record %x", ErrCorrupt, b)
	}
	return rollout.Device{State: rollout.DeviceState(b[0]), Attempt: b[1], From: binary.BigEndian.Uint16(b[2:]),
		At: int64(binary.BigEndian.Uint64(b[4:]))}, nil
}

func indexKey(i int) []byte { return binary.BigEndian.AppendUint32(nil, uint32(i)) }

// index decodes a position key, which must be below n.
func index(k []byte, n int) (int, bool) {
	if len(k) != 4 {
		return 0, false
	}
	i := int(binary.BigEndian.Uint32(k))
	return i, i < n
}
