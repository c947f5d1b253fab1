package natskv

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
)

// ErrConflict is wrapped by Bucket.Apply when a checked key's revision was
// not the one expected: nothing of the call was written.
var ErrConflict = errors.New("natskv: key changed concurrently")

// ErrInFlight is wrapped, with ErrConflict, when the server refused a
// checked write because another write of the same key was still being
// replicated: the key is changing, and a read right away may not see it
// yet.
var ErrInFlight = errors.New("natskv: another write of the key is in flight")

// DefaultMaxBatch is the default of BucketConfig.MaxBatch: nats-server's
// default limit of messages in one atomic batch.
const DefaultMaxBatch = 1000

// ErrBatchTooLarge is wrapped by Bucket.Apply when a call has more ops
// than BucketConfig.MaxBatch: nothing was written.
var ErrBatchTooLarge = errors.New("natskv: too many writes for one atomic batch")

// Headers of JetStream's publish protocol (nats-server's names).
const (
	hdrKVOperation          = "KV-Operation"
	hdrExpectedLastSubj     = "Nats-Expected-Last-Subject-Sequence"
	hdrExpectedLastSubjSubj = "Nats-Expected-Last-Subject-Sequence-Subject"
	hdrBatchID              = "Nats-Batch-Id"
	hdrBatchSeq             = "Nats-Batch-Sequence"
	hdrBatchCommit          = "Nats-Batch-Commit"
	hdrMarkerReason         = "Nats-Marker-Reason"
	kvOpDelete              = "DEL"
	kvOpPurge               = "PURGE"
	errCodeWrongLastSeq     = 10071 // JSStreamWrongLastSequenceErr
	errCodeWrongLastSeqC    = 10164 // JSStreamWrongLastSequenceConstantErr (replicated streams)
)

// Bucket is an open key-value bucket with what the adapters need beyond
// jetstream.KeyValue: reads that return the revision a compare-and-set
// expects (also for a deleted key), and atomic multi-key writes (atomic
// batch publish, nats-server 2.12 and later).
type Bucket struct {
	// KV is the bucket through the client library's API.
	KV jetstream.KeyValue

	nc       *nats.Conn
	stream   jetstream.Stream
	subject  string // "$KV.<name>.": a key's subject is subject+key
	maxBatch int
}

// Entry is a key's state as Bucket.Read returns it.
type Entry struct {
	// Value is the key's value (nil if it has none).
	Value []byte
	// Rev is the key's revision; 0 if the key has no value (never
	// written, deleted or expired).
	Rev uint64
	// Last is the sequence of the key's last message, a delete marker
	// included: what Op.Expect must be for a write that requires the key
	// unchanged since this read. 0 if the key was never written (or its
	// marker is gone).
	Last uint64
}

// Op is one write of Bucket.Apply.
type Op struct {
	Key string
	// Value is stored, unless Delete is set.
	Value  []byte
	Delete bool
	// Check makes the write conditional: it is applied only if the key's
	// last message is still Expect (Entry.Last of a read; 0: never
	// written).
	Check  bool
	Expect uint64
	// CheckKey, when set, is the key Check applies to instead of Key: the
	// write is applied only if CheckKey's last message is still Expect
	// (a write conditioned on another key, which it leaves unchanged).
	CheckKey string
}

// Read returns key's state. A missing key is the zero Entry, not an error.
func (b *Bucket) Read(ctx context.Context, key string) (Entry, error) {
	m, err := b.stream.GetLastMsgForSubject(ctx, b.subject+key)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return Entry{}, nil
	}
	if err != nil {
		return Entry{}, fmt.Errorf("natskv: read %s: %w", key, err)
	}
	if isMarker(m.Header) {
		return Entry{Last: m.Sequence}, nil
	}
	return Entry{Value: m.Data, Rev: m.Sequence, Last: m.Sequence}, nil
}

// isMarker reports whether a message with header h marks its key deleted
// (a delete, a purge, or an expiry marker).
func isMarker(h nats.Header) bool {
	if len(h) == 0 {
		return false
	}
	switch h.Get(hdrKVOperation) {
	case kvOpDelete, kvOpPurge:
		return true
	}
	return h.Get(hdrMarkerReason) != ""
}

// Apply writes ops atomically, in order: all of them or, when a checked
// key changed (ErrConflict) or any other error, none. One op is one
// conditional publish; several are one atomic batch. It returns the
// revision of the last op. A key appears at most once among checked ops.
//
// When the server does not answer (the error satisfies IsUnavailable) the
// outcome is unknown to Apply; its caller may read back to learn it.
func (b *Bucket) Apply(ctx context.Context, ops ...Op) (uint64, error) {
	switch {
	case len(ops) == 0:
		return 0, nil
	case len(ops) > b.maxBatch:
		return 0, fmt.Errorf("%w: %d writes, at most %d (nats-server's jetstream.limits.max_batch_size and the store's MaxBatch)",
			ErrBatchTooLarge, len(ops), b.maxBatch)
	}
	id := ""
	if len(ops) > 1 {
		id = nuid.Next()
	}
	for i, op := range ops {
		m := nats.NewMsg(b.subject + op.Key)
		if op.Delete {
			m.Header.Set(hdrKVOperation, kvOpDelete)
		} else {
			m.Data = op.Value
		}
		if op.Check {
			m.Header.Set(hdrExpectedLastSubj, strconv.FormatUint(op.Expect, 10))
			if op.CheckKey != "" {
				m.Header.Set(hdrExpectedLastSubjSubj, b.subject+op.CheckKey)
			}
		}
		if id != "" {
			m.Header.Set(hdrBatchID, id)
			m.Header.Set(hdrBatchSeq, strconv.Itoa(i+1))
		}
		if i < len(ops)-1 {
			// The server answers a batch once, at its commit; a message
			// it refuses before then makes the commit fail.
			if err := b.nc.PublishMsg(m); err != nil {
				return 0, fmt.Errorf("natskv: publish %s: %w", op.Key, err)
			}
			continue
		}
		if id != "" {
			m.Header.Set(hdrBatchCommit, "1")
		}
		resp, err := b.nc.RequestMsgWithContext(ctx, m)
		if err != nil {
			return 0, fmt.Errorf("natskv: write %s: %w", op.Key, err)
		}
		return parseAck(resp.Data)
	}
	return 0, nil
}

// pubAck is the server's answer to a publish (or a batch's commit).
type pubAck struct {
	Seq   uint64 `json:"seq"`
	Error *struct {
		Code        int    `json:"code"`
		ErrCode     int    `json:"err_code"`
		Description string `json:"description"`
	} `json:"error"`
}

func parseAck(data []byte) (uint64, error) {
	var ack pubAck
	if err := json.Unmarshal(data, &ack); err != nil {
		return 0, fmt.Errorf("natskv: answer %q: %w", data, err)
	}
	if ack.Error != nil {
		switch ack.Error.ErrCode {
		case errCodeWrongLastSeq:
			return 0, fmt.Errorf("%w: %s", ErrConflict, ack.Error.Description)
		case errCodeWrongLastSeqC:
			return 0, fmt.Errorf("%w (%w): %s", ErrConflict, ErrInFlight, ack.Error.Description)
		}
		return 0, fmt.Errorf("natskv: write refused: %s (code %d)", ack.Error.Description, ack.Error.ErrCode)
	}
	if ack.Seq == 0 {
		return 0, fmt.Errorf("natskv: answer %q: no sequence", data)
	}
	return ack.Seq, nil
}

// Keys returns the keys matching filter (a key with wildcards: "*" one
// token, ">" the rest) that have a value, in no particular order.
//
// The client library's key listing (a watcher that stops once it has the
// current values) can end early on a replicated bucket under load: it
// trusts the pending count of a consumer just created, which may read 0.
// So Keys also asks the stream which subjects it holds (one request,
// paged) and reads each key the listing left out: a key listed by the
// stream but deleted (its last message a marker) is left out, one the
// listing missed is put back.
func (b *Bucket) Keys(ctx context.Context, filter string) ([]string, error) {
	subjects, err := b.subjects(ctx, filter)
	if err != nil {
		return nil, err
	}
	kl, err := b.KV.ListKeysFiltered(ctx, filter)
	if err != nil {
		return nil, fmt.Errorf("natskv: list %s: %w", filter, err)
	}
	defer kl.Stop()
	seen := map[string]bool{}
	var keys []string
	for k := range kl.Keys() { // read to the end: the lister's goroutine blocks until its keys are taken
		if !seen[k] {
			seen[k] = true
			keys = append(keys, k)
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("natskv: list %s: %w", filter, err)
	}
	for _, k := range subjects {
		if seen[k] {
			continue
		}
		e, err := b.Read(ctx, k)
		if err != nil {
			return nil, err
		}
		if e.Rev != 0 {
			keys = append(keys, k)
		}
	}
	return keys, nil
}

// subjects returns the keys matching filter that the bucket's stream holds
// a message of (a value or a delete marker), from the stream's state.
func (b *Bucket) subjects(ctx context.Context, filter string) ([]string, error) {
	info, err := b.stream.Info(ctx, jetstream.WithSubjectFilter(b.subject+filter))
	if err != nil {
		return nil, fmt.Errorf("natskv: list %s: %w", filter, err)
	}
	keys := make([]string, 0, len(info.State.Subjects))
	for subj := range info.State.Subjects {
		keys = append(keys, strings.TrimPrefix(subj, b.subject))
	}
	return keys, nil
}

// Purge deletes every key matching filter (a key, or a key with
// wildcards), with no marker left: the bucket's stream is purged of their
// subjects. It is not atomic with other writes.
func (b *Bucket) Purge(ctx context.Context, filter string) error {
	if err := b.stream.Purge(ctx, jetstream.WithPurgeSubject(b.subject+filter)); err != nil {
		return fmt.Errorf("natskv: purge %s: %w", filter, err)
	}
	return nil
}

// Open opens bucket cfg.Name as OpenBucket does, configures its stream for
// atomic batches and for reads through the stream's leader (no direct
// reads from replicas that may lag), and returns it as a Bucket. While
// the cluster forms or elects the stream's leader (Transient errors) it
// tries again until ctx ends: give it a ctx with a deadline.
func Open(ctx context.Context, js jetstream.JetStream, cfg BucketConfig) (*Bucket, error) {
	var b *Bucket
	err := WhilePlacing(ctx, func() error {
		// Each try has its own deadline: a request lost while the client
		// reconnects must not use up the caller's whole ctx.
		actx, cancel := context.WithTimeout(ctx, openAttempt)
		defer cancel()
		var err error
		b, err = open(actx, js, cfg)
		return err
	})
	return b, err
}

// openAttempt bounds one try of Open.
const openAttempt = 5 * time.Second

func open(ctx context.Context, js jetstream.JetStream, cfg BucketConfig) (*Bucket, error) {
	if _, err := OpenBucket(ctx, js, cfg); err != nil {
		return nil, err
	}
	name := "KV_" + cfg.Name
	st, err := js.Stream(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("natskv: open bucket %s: %w", cfg.Name, err)
	}
	sc := st.CachedInfo().Config
	if !sc.AllowAtomicPublish || sc.AllowDirect {
		sc.AllowAtomicPublish, sc.AllowDirect = true, false
		if _, err := js.UpdateStream(ctx, sc); err != nil {
			return nil, fmt.Errorf("natskv: open bucket %s: allow atomic batches: %w", cfg.Name, err)
		}
		if st, err = js.Stream(ctx, name); err != nil {
			return nil, fmt.Errorf("natskv: open bucket %s: %w", cfg.Name, err)
		}
	}
	kv, err := js.KeyValue(ctx, cfg.Name) // bound after the update: reads go through the leader
	if err != nil {
		return nil, fmt.Errorf("natskv: open bucket %s: %w", cfg.Name, err)
	}
	return &Bucket{
		KV: kv, nc: js.Conn(), stream: st, subject: "$KV." + cfg.Name + ".",
		maxBatch: cmp.Or(cfg.MaxBatch, DefaultMaxBatch),
	}, nil
}

// Values returns the value of every key matching filter that has one,
// keyed by key: read in one pass over the bucket (a watcher that stops
// after the current values), then, as Keys does, completed by reading
// each key the stream holds that the pass left out.
func (b *Bucket) Values(ctx context.Context, filter string) (map[string][]byte, error) {
	subjects, err := b.subjects(ctx, filter)
	if err != nil {
		return nil, err
	}
	out, err := b.watchValues(ctx, filter)
	if err != nil {
		return nil, err
	}
	for _, k := range subjects {
		if _, ok := out[k]; ok {
			continue
		}
		e, err := b.Read(ctx, k)
		if err != nil {
			return nil, err
		}
		if e.Rev != 0 {
			out[k] = e.Value
		}
	}
	return out, nil
}

// watchValues is the watcher's pass of Values.
func (b *Bucket) watchValues(ctx context.Context, filter string) (map[string][]byte, error) {
	w, err := b.KV.Watch(ctx, filter, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("natskv: read %s: %w", filter, err)
	}
	defer StopWatch(w)
	out := map[string][]byte{}
	for {
		select {
		case e, ok := <-w.Updates():
			if !ok {
				return nil, fmt.Errorf("natskv: read %s: watcher closed", filter)
			}
			if e == nil { // the current values are all delivered
				return out, nil
			}
			out[e.Key()] = e.Value()
		case <-ctx.Done():
			return nil, fmt.Errorf("natskv: read %s: %w", filter, ctx.Err())
		}
	}
}

// StopWatch stops w and takes what it still delivers until it closes its
// channel: the client library's watch callback blocks until its entry is
// taken, so a watcher stopped while entries are pending must be drained.
func StopWatch(w jetstream.KeyWatcher) {
	_ = w.Stop()
	go func() { // ends when the watch's subscription has closed the channel
		for range w.Updates() {
		}
	}()
}

// WatchKeys watches the keys of b matching filter (a NATS subject filter,
// such as "c.>") from now on, metadata only, and sends parse's result for
// each changed key (its write, delete or expiry) that parse accepts, on a
// channel of the given buffer, until ctx ends or the watch fails; then it
// closes the channel. Its sends wait on the consumer, whose slowness holds
// the watch back (a revision superseded meanwhile may be skipped: the
// bucket keeps one per key).
func WatchKeys[T any](ctx context.Context, b *Bucket, filter string, buffer int, parse func(key string) (T, bool)) (<-chan T, error) {
	w, err := b.KV.Watch(ctx, filter, jetstream.UpdatesOnly(), jetstream.MetaOnly())
	if err != nil {
		return nil, err
	}
	out := make(chan T, buffer)
	go func() { // ends with ctx or the watch
		defer close(out)
		defer StopWatch(w)
		for {
			select {
			case <-ctx.Done():
				return
			case e, ok := <-w.Updates():
				if !ok {
					return
				}
				if e == nil {
					continue
				}
				v, ok := parse(e.Key())
				if !ok {
					continue
				}
				select {
				case out <- v:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return out, nil
}
