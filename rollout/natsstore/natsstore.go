package natsstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/internal/natskv"
	"github.com/umbra-iot/umbra/rollout"
)

// Defaults of Config.
const (
	DefaultBucket  = "umbra_rollout"
	DefaultTimeout = 10 * time.Second
)

// SchemaVersion is the version of the bucket's layout (see doc.go).
const SchemaVersion = 1

// Chunk sizes: how many positions one key of a rollout holds.
const (
	// targetChunk IDs per target-list key: at most 4096 × 129 bytes, half
	// of nats-server's default 1 MB max_payload.
	targetChunk = 4096
	// recordChunk positions per key of device records, errors and intents.
	recordChunk = 1024
)

// Errors of the Store.
var (
	// ErrClosed is returned by every method after Close.
	ErrClosed = errors.New("rollout/natsstore: closed")
	// ErrCorrupt is wrapped when a record cannot be decoded.
	ErrCorrupt = errors.New("rollout/natsstore: rollout bucket unreadable")
)

// Config configures Open.
type Config struct {
	// JetStream is the client the Store talks through; the caller owns
	// its connection. Required.
	JetStream jetstream.JetStream
	// Bucket is the bucket's name. Default DefaultBucket.
	Bucket string
	// Replicas is the bucket's replica count when Open creates it.
	// Default 1.
	Replicas int
	// Timeout bounds each call's JetStream requests. Default
	// DefaultTimeout.
	Timeout time.Duration
}

// Store is a rollout.Store in one JetStream key-value bucket. It is safe
// for concurrent use; its writer is the planner of the node that holds the
// planner lease.
type Store struct {
	b       *natskv.Bucket
	timeout time.Duration
	closed  atomic.Bool
}

var _ rollout.Store = (*Store)(nil)

// Open opens (creating it if missing) the rollout bucket. It fails with an
// error wrapping natskv.ErrSchemaMismatch if the bucket was written with
// another layout.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("rollout/natsstore: open: %w", err)
	}
	if cfg.JetStream == nil {
		return nil, fmt.Errorf("rollout/natsstore: open: %w: Config.JetStream is required", rollout.ErrInvalid)
	}
	if cfg.Bucket == "" {
		cfg.Bucket = DefaultBucket
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	b, err := natskv.Open(ctx, cfg.JetStream, natskv.BucketConfig{Name: cfg.Bucket, Replicas: cfg.Replicas,
		Schema: natskv.Schema{Kind: "rollout", Version: SchemaVersion}})
	if err != nil {
		return nil, fmt.Errorf("rollout/natsstore: %w", err)
	}
	return &Store{b: b, timeout: cfg.Timeout}, nil
}

// Close marks the Store closed (later calls fail with ErrClosed). It
// leaves the connection open and is idempotent.
func (s *Store) Close(context.Context) error {
	s.closed.Store(true)
	return nil
}

// start checks the Store and ctx, and bounds ctx by the Store's timeout.
func (s *Store) start(ctx context.Context) (context.Context, context.CancelFunc, error) {
	if s.closed.Load() {
		return nil, nil, ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	return ctx, cancel, nil
}

// Keys of the bucket.
const keySeq = "seq"

func rkey(id, part string) string            { return "r." + natskv.Token(id) + "." + part }
func chunkKey(id, kind string, c int) string { return rkey(id, kind+"."+strconv.Itoa(c)) }
func execKey(id string, dev device.ID) string {
	return rkey(id, "x."+natskv.Token(string(dev)))
}
func jobsKey(dev device.ID) string { return "j." + natskv.Token(string(dev)) }

// Create stores r (numbered from the sequence key), its target list in
// chunks and its first event in one atomic batch, the sequence checked
// against the value read.
func (s *Store) Create(ctx context.Context, r rollout.Rollout, targets []device.ID, first rollout.Event) (rollout.Rollout, rollout.Event, error) {
	ctx, cancel, err := s.start(ctx)
	if err != nil {
		return rollout.Rollout{}, rollout.Event{}, err
	}
	defer cancel()
	t := s.b.Txn()
	raw, _, err := t.Get(ctx, keySeq)
	if err != nil {
		return rollout.Rollout{}, rollout.Event{}, fmt.Errorf("rollout/natsstore: create: %w", err)
	}
	n := uint64(0)
	if raw != nil {
		if n, err = strconv.ParseUint(string(raw), 10, 64); err != nil {
			return rollout.Rollout{}, rollout.Event{}, fmt.Errorf("%w: rollout sequence %q", ErrCorrupt, raw)
		}
	}
	n++
	t.Put(keySeq, []byte(strconv.FormatUint(n, 10)))
	r.ID = "r" + strconv.FormatUint(n, 10)
	meta, err := json.Marshal(r)
	if err != nil {
		return rollout.Rollout{}, rollout.Event{}, err
	}
	t.Put(rkey(r.ID, "meta"), meta)
	putTargets(t, r.ID, targets)
	first.Seq = 1
	if err := putEvents(t, r.ID, []rollout.Event{first}); err != nil {
		return rollout.Rollout{}, rollout.Event{}, err
	}
	t.Put(rkey(r.ID, "evseq"), []byte("1"))
	if err := t.Commit(ctx); err != nil {
		return rollout.Rollout{}, rollout.Event{}, fmt.Errorf("rollout/natsstore: create: %w", err)
	}
	return r, first, nil
}

// putTargets stages targets as the target list of id, in chunks.
func putTargets(t *natskv.Txn, id string, targets []device.ID) {
	t.Put(rkey(id, "n"), []byte(strconv.Itoa(len(targets))))
	for c := 0; c*targetChunk < len(targets); c++ {
		t.Put(chunkKey(id, "tg", c), encodeTargets(targets[c*targetChunk:min((c+1)*targetChunk, len(targets))]))
	}
}

// putEvents stages evs (numbered) as one key named after the first's Seq.
func putEvents(t *natskv.Txn, id string, evs []rollout.Event) error {
	raw, err := json.Marshal(evs)
	if err != nil {
		return err
	}
	t.Put(chunkKey(id, "ev", int(evs[0].Seq)), raw)
	return nil
}

// Commit applies c in one atomic batch: each chunk it changes is read,
// changed and written back, checked against the revision it was read at.
func (s *Store) Commit(ctx context.Context, c *rollout.Changes) ([]rollout.Event, error) {
	ctx, cancel, err := s.start(ctx)
	if err != nil {
		return nil, err
	}
	defer cancel()
	if c.Empty() {
		return nil, nil
	}
	t := s.b.Txn()
	exists := map[string]error{}
	check := func(id string) error {
		if err, ok := exists[id]; ok {
			return err
		}
		_, ok, err := t.Get(ctx, rkey(id, "meta"))
		if err == nil && !ok {
			err = fmt.Errorf("rollout %.40q: %w", id, rollout.ErrNotFound)
		}
		exists[id] = err
		return err
	}
	for _, r := range c.Rollouts {
		if err := check(r.ID); err != nil {
			return nil, fmt.Errorf("rollout/natsstore: commit: %w", err)
		}
		meta, err := json.Marshal(r)
		if err != nil {
			return nil, err
		}
		t.Put(rkey(r.ID, "meta"), meta)
	}
	for _, tl := range c.Targets {
		if err := check(tl.Rollout); err != nil {
			return nil, fmt.Errorf("rollout/natsstore: commit: %w", err)
		}
		putTargets(t, tl.Rollout, tl.Targets)
	}
	chunks := &chunkPatches{t: t, m: map[string]map[int][]byte{}}
	for _, d := range c.Devices {
		if err := chunks.patch(ctx, check, d.Position, "dev", func(m map[int][]byte) { m[d.Index%recordChunk] = encodeDevice(d.Device) }); err != nil {
			return nil, err
		}
	}
	for _, e := range c.Errors {
		if err := chunks.patch(ctx, check, e.Position, "err", func(m map[int][]byte) { m[e.Index%recordChunk] = []byte(e.Text) }); err != nil {
			return nil, err
		}
	}
	evs, err := s.appendEvents(ctx, t, check, c.Events)
	if err != nil {
		return nil, err
	}
	for _, in := range c.Intents {
		if err := chunks.patch(ctx, check, in.Position, "in", func(m map[int][]byte) { m[in.Index%recordChunk] = in.Command }); err != nil {
			return nil, err
		}
	}
	for _, p := range c.Delivered {
		if err := chunks.patch(ctx, check, p, "in", func(m map[int][]byte) { delete(m, p.Index%recordChunk) }); err != nil {
			return nil, err
		}
	}
	chunks.stage()
	for _, x := range c.Executions {
		if err := check(x.Rollout); err != nil {
			return nil, fmt.Errorf("rollout/natsstore: commit: %w", err)
		}
		k := execKey(x.Rollout, x.Device)
		raw, found, err := t.Get(ctx, k)
		if err != nil {
			return nil, fmt.Errorf("rollout/natsstore: commit: %w", err)
		}
		var old rollout.ExecRecord
		if found {
			if err := json.Unmarshal(raw, &old); err != nil {
				return nil, fmt.Errorf("%w: execution of %s: %w", ErrCorrupt, x.Device, err)
			}
		}
		next, err := json.Marshal(x.Patch(old, found))
		if err != nil {
			return nil, err
		}
		t.Put(k, next)
	}
	for _, m := range c.JobsDevices {
		k := jobsKey(m.Device)
		if _, found, err := t.Get(ctx, k); err != nil {
			return nil, fmt.Errorf("rollout/natsstore: commit: %w", err)
		} else if !found {
			t.Put(k, binary.BigEndian.AppendUint64(nil, uint64(m.Since.UnixNano())))
		}
	}
	if err := t.Commit(ctx); err != nil {
		return nil, fmt.Errorf("rollout/natsstore: commit: %w", err)
	}
	return evs, nil
}

// chunkPatches are the record chunks one Commit changes, each decoded
// once when first patched and encoded once when staged: a commit of a
// batch's notifications changes up to recordChunk records of one chunk,
// and decoding and encoding the whole chunk for each record made the
// commit quadratic in the batch (half of the lease holder's CPU in
// BenchmarkClusterRollout).
type chunkPatches struct {
	t     *natskv.Txn
	m     map[string]map[int][]byte // decoded chunks, by key
	order []string                  // keys in the order first patched
}

// patch applies f to the chunk of kind holding position p.
func (c *chunkPatches) patch(ctx context.Context, check func(string) error, p rollout.Position, kind string, f func(map[int][]byte)) error {
	if err := check(p.Rollout); err != nil {
		return fmt.Errorf("rollout/natsstore: commit: %w", err)
	}
	k := chunkKey(p.Rollout, kind, p.Index/recordChunk)
	m, ok := c.m[k]
	if !ok {
		raw, _, err := c.t.Get(ctx, k)
		if err != nil {
			return fmt.Errorf("rollout/natsstore: commit: %w", err)
		}
		if m, err = decodeChunk(raw); err != nil {
			return fmt.Errorf("%w: %s: %w", ErrCorrupt, k, err)
		}
		c.m[k] = m
		c.order = append(c.order, k)
	}
	f(m)
	return nil
}

// stage stages every patched chunk in the transaction: a chunk left
// empty is deleted.
func (c *chunkPatches) stage() {
	for _, k := range c.order {
		if m := c.m[k]; len(m) == 0 {
			c.t.Delete(k)
		} else {
			c.t.Put(k, encodeChunk(m))
		}
	}
}

// appendEvents numbers ws's events per rollout and stages each rollout's
// new events as one key.
func (s *Store) appendEvents(ctx context.Context, t *natskv.Txn, check func(string) error, ws []rollout.EventWrite) ([]rollout.Event, error) {
	out := make([]rollout.Event, len(ws))
	byRollout := map[string][]rollout.Event{}
	var order []string
	for i, w := range ws {
		if err := check(w.Rollout); err != nil {
			return nil, fmt.Errorf("rollout/natsstore: commit: %w", err)
		}
		if _, ok := byRollout[w.Rollout]; !ok {
			order = append(order, w.Rollout)
			raw, _, err := t.Get(ctx, rkey(w.Rollout, "evseq"))
			if err != nil {
				return nil, fmt.Errorf("rollout/natsstore: commit: %w", err)
			}
			last, err := strconv.ParseUint(string(raw), 10, 64)
			if err != nil {
				return nil, fmt.Errorf("%w: event sequence of %s: %q", ErrCorrupt, w.Rollout, raw)
			}
			byRollout[w.Rollout] = []rollout.Event{{Seq: last}} // a placeholder holding the last Seq
		}
		evs := byRollout[w.Rollout]
		ev := w.Event
		ev.Seq = evs[len(evs)-1].Seq + 1
		byRollout[w.Rollout] = append(evs, ev)
		out[i] = ev
	}
	for _, id := range order {
		evs := byRollout[id][1:]
		if err := putEvents(t, id, evs); err != nil {
			return nil, err
		}
		t.Put(rkey(id, "evseq"), []byte(strconv.FormatUint(evs[len(evs)-1].Seq, 10)))
	}
	return out, nil
}

// Rollouts returns every rollout's record, read in one pass.
func (s *Store) Rollouts(ctx context.Context) ([]rollout.Rollout, error) {
	ctx, cancel, err := s.start(ctx)
	if err != nil {
		return nil, err
	}
	defer cancel()
	vals, err := s.b.Values(ctx, "r.*.meta")
	if err != nil {
		return nil, fmt.Errorf("rollout/natsstore: rollouts: %w", err)
	}
	out := make([]rollout.Rollout, 0, len(vals))
	for k, v := range vals {
		var r rollout.Rollout
		if err := json.Unmarshal(v, &r); err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrCorrupt, k, err)
		}
		out = append(out, r)
	}
	return out, nil
}

// Rollout returns rollout id's record.
func (s *Store) Rollout(ctx context.Context, id string) (rollout.Rollout, error) {
	ctx, cancel, err := s.start(ctx)
	if err != nil {
		return rollout.Rollout{}, err
	}
	defer cancel()
	return s.meta(ctx, id)
}

func (s *Store) meta(ctx context.Context, id string) (rollout.Rollout, error) {
	if id == "" {
		return rollout.Rollout{}, fmt.Errorf("rollout/natsstore: rollout %q: %w", id, rollout.ErrNotFound)
	}
	e, err := s.b.Read(ctx, rkey(id, "meta"))
	if err != nil {
		return rollout.Rollout{}, fmt.Errorf("rollout/natsstore: %w", err)
	}
	if e.Rev == 0 {
		return rollout.Rollout{}, fmt.Errorf("rollout/natsstore: rollout %.40q: %w", id, rollout.ErrNotFound)
	}
	var r rollout.Rollout
	if err := json.Unmarshal(e.Value, &r); err != nil {
		return rollout.Rollout{}, fmt.Errorf("%w: rollout %s: %w", ErrCorrupt, id, err)
	}
	return r, nil
}

// Load returns rollout id whole, its keys read in one pass.
func (s *Store) Load(ctx context.Context, id string) (rollout.Stored, error) {
	ctx, cancel, err := s.start(ctx)
	if err != nil {
		return rollout.Stored{}, err
	}
	defer cancel()
	r, err := s.meta(ctx, id)
	if err != nil {
		return rollout.Stored{}, err
	}
	vals, err := s.b.Values(ctx, rkey(id, ">"))
	if err != nil {
		return rollout.Stored{}, fmt.Errorf("rollout/natsstore: load %s: %w", id, err)
	}
	st := rollout.Stored{Rollout: r, Intents: map[int][]byte{}, Executions: map[device.ID]rollout.ExecRecord{}}
	n, err := strconv.Atoi(string(vals[rkey(id, "n")]))
	if err != nil {
		return rollout.Stored{}, fmt.Errorf("%w: target count of %s", ErrCorrupt, id)
	}
	if n > 0 {
		st.Targets = make([]device.ID, 0, n)
	}
	for c := 0; c*targetChunk < n; c++ {
		st.Targets = append(st.Targets, decodeTargets(vals[chunkKey(id, "tg", c)])...)
	}
	if len(st.Targets) != n {
		return rollout.Stored{}, fmt.Errorf("%w: %s has %d of its %d targets", ErrCorrupt, id, len(st.Targets), n)
	}
	st.Devices = make([]rollout.Device, n)
	prefix := rkey(id, "")
	for k, v := range vals {
		part := strings.TrimPrefix(k, prefix)
		kind, rest, _ := strings.Cut(part, ".")
		switch kind {
		case "dev", "in":
			c, err := strconv.Atoi(rest)
			if err != nil {
				return rollout.Stored{}, fmt.Errorf("%w: key %s", ErrCorrupt, k)
			}
			m, err := decodeChunk(v)
			if err != nil {
				return rollout.Stored{}, fmt.Errorf("%w: %s: %w", ErrCorrupt, k, err)
			}
			for j, raw := range m {
				i := c*recordChunk + j
				if i >= n {
					return rollout.Stored{}, fmt.Errorf("%w: %s position %d of %d targets", ErrCorrupt, k, i, n)
				}
				if kind == "in" {
					st.Intents[i] = raw
					continue
				}
				if st.Devices[i], err = decodeDevice(raw); err != nil {
					return rollout.Stored{}, err
				}
			}
		case "x":
			dev, err := natskv.Untoken(rest)
			var rec rollout.ExecRecord
			if err == nil {
				err = json.Unmarshal(v, &rec)
			}
			if err != nil || rec.Index < 0 || rec.Index >= n {
				return rollout.Stored{}, fmt.Errorf("%w: execution %s", ErrCorrupt, k)
			}
			st.Executions[device.ID(dev)] = rec
		}
	}
	return st, nil
}

// Targets calls f with the targets of id from start on, reading one
// chunk of targets (and of device records) at a time.
func (s *Store) Targets(ctx context.Context, id string, start int, f func(i int, target device.ID, d rollout.Device) bool) error {
	ctx, cancel, err := s.start(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	if _, err := s.meta(ctx, id); err != nil {
		return err
	}
	e, err := s.b.Read(ctx, rkey(id, "n"))
	if err != nil {
		return fmt.Errorf("rollout/natsstore: targets of %s: %w", id, err)
	}
	n, err := strconv.Atoi(string(e.Value))
	if err != nil {
		return fmt.Errorf("%w: target count of %s", ErrCorrupt, id)
	}
	var targets []device.ID
	var devs map[int][]byte
	tc, dc := -1, -1
	for i := start; i < n; i++ {
		if c := i / targetChunk; c != tc {
			e, err := s.b.Read(ctx, chunkKey(id, "tg", c))
			if err != nil {
				return fmt.Errorf("rollout/natsstore: targets of %s: %w", id, err)
			}
			targets, tc = decodeTargets(e.Value), c
		}
		if c := i / recordChunk; c != dc {
			e, err := s.b.Read(ctx, chunkKey(id, "dev", c))
			if err != nil {
				return fmt.Errorf("rollout/natsstore: targets of %s: %w", id, err)
			}
			if devs, err = decodeChunk(e.Value); err != nil {
				return fmt.Errorf("%w: device records of %s: %w", ErrCorrupt, id, err)
			}
			dc = c
		}
		j := i % targetChunk
		if j >= len(targets) {
			return fmt.Errorf("%w: %s target %d missing", ErrCorrupt, id, i)
		}
		var d rollout.Device
		if raw, ok := devs[i%recordChunk]; ok {
			if d, err = decodeDevice(raw); err != nil {
				return err
			}
		}
		if !f(i, targets[j], d) {
			return nil
		}
	}
	return nil
}

// Errors returns the last error texts of id's targets at which (all when
// nil), reading only the chunks they are in.
func (s *Store) Errors(ctx context.Context, id string, which []int) (map[int]string, error) {
	ctx, cancel, err := s.start(ctx)
	if err != nil {
		return nil, err
	}
	defer cancel()
	if _, err := s.meta(ctx, id); err != nil {
		return nil, err
	}
	chunks := map[int]map[int][]byte{}
	read := func(c int, raw []byte) error {
		m, err := decodeChunk(raw)
		if err != nil {
			return fmt.Errorf("%w: errors of %s: %w", ErrCorrupt, id, err)
		}
		chunks[c] = m
		return nil
	}
	out := map[int]string{}
	if which == nil {
		vals, err := s.b.Values(ctx, rkey(id, "err.*"))
		if err != nil {
			return nil, fmt.Errorf("rollout/natsstore: errors of %s: %w", id, err)
		}
		for k, v := range vals {
			c, err := strconv.Atoi(strings.TrimPrefix(k, rkey(id, "err.")))
			if err != nil {
				return nil, fmt.Errorf("%w: key %s", ErrCorrupt, k)
			}
			if err := read(c, v); err != nil {
				return nil, err
			}
			for j, text := range chunks[c] {
				out[c*recordChunk+j] = string(text)
			}
		}
		return out, nil
	}
	for _, i := range which {
		if i < 0 {
			continue
		}
		c := i / recordChunk
		if _, ok := chunks[c]; !ok {
			e, err := s.b.Read(ctx, chunkKey(id, "err", c))
			if err != nil {
				return nil, fmt.Errorf("rollout/natsstore: errors of %s: %w", id, err)
			}
			if err := read(c, e.Value); err != nil {
				return nil, err
			}
		}
		if text, ok := chunks[c][i%recordChunk]; ok {
			out[i] = string(text)
		}
	}
	return out, nil
}

// Events returns id's events after after: it lists the rollout's event
// keys (one per commit that logged events) and reads those that may hold
// later ones.
func (s *Store) Events(ctx context.Context, id string, after uint64) ([]rollout.Event, error) {
	ctx, cancel, err := s.start(ctx)
	if err != nil {
		return nil, err
	}
	defer cancel()
	if _, err := s.meta(ctx, id); err != nil {
		return nil, err
	}
	if after == 1<<64-1 {
		return nil, nil
	}
	keys, err := s.b.Keys(ctx, rkey(id, "ev.*"))
	if err != nil {
		return nil, fmt.Errorf("rollout/natsstore: events of %s: %w", id, err)
	}
	var firsts []uint64
	for _, k := range keys {
		n, err := strconv.ParseUint(strings.TrimPrefix(k, rkey(id, "ev.")), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%w: key %s", ErrCorrupt, k)
		}
		firsts = append(firsts, n)
	}
	slices.Sort(firsts)
	var out []rollout.Event
	for i, first := range firsts {
		if i+1 < len(firsts) && firsts[i+1] <= after+1 {
			continue // every event of this key is at most after
		}
		e, err := s.b.Read(ctx, chunkKey(id, "ev", int(first)))
		if err != nil {
			return nil, fmt.Errorf("rollout/natsstore: events of %s: %w", id, err)
		}
		var evs []rollout.Event
		if err := json.Unmarshal(e.Value, &evs); err != nil {
			return nil, fmt.Errorf("%w: events of %s: %w", ErrCorrupt, id, err)
		}
		for _, ev := range evs {
			if ev.Seq > after {
				out = append(out, ev)
			}
		}
	}
	return out, nil
}

// Execution returns dev's execution record in id.
func (s *Store) Execution(ctx context.Context, id string, dev device.ID) (rollout.ExecRecord, bool, error) {
	ctx, cancel, err := s.start(ctx)
	if err != nil {
		return rollout.ExecRecord{}, false, err
	}
	defer cancel()
	if _, err := s.meta(ctx, id); err != nil {
		return rollout.ExecRecord{}, false, err
	}
	if dev == "" {
		return rollout.ExecRecord{}, false, nil
	}
	e, err := s.b.Read(ctx, execKey(id, dev))
	if err != nil || e.Rev == 0 {
		return rollout.ExecRecord{}, false, err
	}
	var rec rollout.ExecRecord
	if err := json.Unmarshal(e.Value, &rec); err != nil {
		return rollout.ExecRecord{}, false, fmt.Errorf("%w: execution of %s: %w", ErrCorrupt, dev, err)
	}
	return rec, true, nil
}

// JobsDevice reports whether dev is marked as a Jobs device.
func (s *Store) JobsDevice(ctx context.Context, dev device.ID) (bool, error) {
	ctx, cancel, err := s.start(ctx)
	if err != nil {
		return false, err
	}
	defer cancel()
	if dev == "" {
		return false, nil
	}
	e, err := s.b.Read(ctx, jobsKey(dev))
	if err != nil {
		return false, fmt.Errorf("rollout/natsstore: jobs device %s: %w", dev, err)
	}
	return e.Rev != 0, nil
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

func decodeTargets(raw []byte) []device.ID {
	var out []device.ID
	for len(raw) > 0 {
		i := bytes.IndexByte(raw, '\n')
		if i < 0 {
			i = len(raw)
		}
		out = append(out, device.ID(raw[:i]))
		raw = raw[min(i+1, len(raw)):]
	}
	return out
}

// A chunk is a JSON object from a position's offset in the chunk
// ("0".."1023") to its bytes (base64 in JSON).
func decodeChunk(raw []byte) (map[int][]byte, error) {
	m := map[int][]byte{}
	if len(raw) == 0 {
		return m, nil
	}
	var byKey map[string][]byte
	if err := json.Unmarshal(raw, &byKey); err != nil {
		return nil, err
	}
	for k, v := range byKey {
		j, err := strconv.Atoi(k)
		if err != nil || j < 0 || j >= recordChunk {
			return nil, fmt.Errorf("offset %q", k)
		}
		m[j] = v
	}
	return m, nil
}

func encodeChunk(m map[int][]byte) []byte {
	byKey := make(map[string][]byte, len(m))
	for _, j := range slices.Sorted(maps.Keys(m)) {
		byKey[strconv.Itoa(j)] = m[j]
	}
	raw, _ := json.Marshal(byKey) // a map of byte slices always encodes
	return raw
}

func encodeDevice(d rollout.Device) []byte {
	raw, _ := json.Marshal(d) // a struct of numbers always encodes
	return raw
}

func decodeDevice(b []byte) (rollout.Device, error) {
	var d rollout.Device
	if err := json.Unmarshal(b, &d); err != nil || !d.State.Valid() {
		return rollout.Device{}, fmt.Errorf("%w: device record %q", ErrCorrupt, b)
	}
	return d, nil
}
