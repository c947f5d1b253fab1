// Package natskv is what Umbra's JetStream store adapters (the
// <pkg>/natsstore packages) share: opening a key-value bucket with its
// schema version check, the escaping of Umbra's identifiers into key
// tokens, and the classification of JetStream errors.
//
// # Buckets and their schema version
//
// Every bucket Umbra writes carries one meta key, "_umbra.schema", whose
// value names the bucket's kind and the version of its layout:
// {"kind":"shadow","schema":1}. OpenBucket creates the bucket and the key
// if they are missing, and otherwise compares them with what the caller
// speaks: a node whose version differs refuses to open the bucket with an
// error wrapping ErrSchemaMismatch that says both versions, so nodes of
// two incompatible releases never write one bucket. Data keys never start
// with "_", so the meta key is outside every listing.
//
// # Keys
//
// JetStream keys are NATS subjects: tokens of [-/_=a-zA-Z0-9] separated
// by ".". Device IDs may also hold "." and ":", and shadow names ":", so
// Token escapes every other byte as "=" and two upper-case hex digits
// (Token("a.b:c") is "a=2Eb=3Ac"); Untoken reverses it. The escaping does
// not keep byte order, so listings sort what they decode.
package natskv

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// MetaKey is the key of a bucket's schema record.
const MetaKey = "_umbra.schema"

// ErrSchemaMismatch is wrapped by OpenBucket when a bucket's schema record
// names another kind or version than the caller's.
var ErrSchemaMismatch = errors.New("natskv: bucket schema mismatch")

// Schema is the content of a bucket's meta key.
type Schema struct {
	// Kind names what the bucket holds ("shadow", "identity", …).
	Kind string `json:"kind"`
	// Version is the layout version of the bucket's keys and values.
	Version int `json:"schema"`
}

// BucketConfig configures OpenBucket.
type BucketConfig struct {
	// Name is the bucket's name. Required.
	Name string
	// Schema is what the caller writes and reads. Required (Kind and a
	// Version of at least 1).
	Schema Schema
	// Replicas is the number of copies (1, or 3 in a three-server
	// cluster). Default 1.
	Replicas int
	// History is how many revisions of a key are kept. Default 1.
	History int
	// TTL, when set, makes every revision expire that long after it was
	// written (a lease or a heartbeat).
	TTL time.Duration
	// LimitMarkerTTL, when set, makes the server write a delete marker
	// when a key expires (so watchers see it vanish) and keep the marker
	// that long. Needs nats-server 2.11 or later.
	LimitMarkerTTL time.Duration
	// MaxBatch is the most writes Bucket.Apply commits in one atomic
	// batch; it must not exceed the servers' jetstream.limits.max_batch_size.
	// Default DefaultMaxBatch.
	MaxBatch int
}

// OpenBucket returns bucket cfg.Name, creating it (file storage, as
// configured) and its schema record if missing. It fails with an error
// wrapping ErrSchemaMismatch if the bucket's schema record differs from
// cfg.Schema.
func OpenBucket(ctx context.Context, js jetstream.JetStream, cfg BucketConfig) (jetstream.KeyValue, error) {
	if cfg.Name == "" || cfg.Schema.Kind == "" || cfg.Schema.Version < 1 {
		return nil, fmt.Errorf("natskv: open bucket %q: Name, Schema.Kind and Schema.Version are required", cfg.Name)
	}
	if cfg.Replicas == 0 {
		cfg.Replicas = 1
	}
	if cfg.History == 0 {
		cfg.History = 1
	}
	kv, err := js.KeyValue(ctx, cfg.Name)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		err = WhilePlacing(ctx, func() error {
			kv, err = js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
				Bucket:         cfg.Name,
				Description:    "umbra " + cfg.Schema.Kind,
				History:        uint8(cfg.History),
				TTL:            cfg.TTL,
				LimitMarkerTTL: cfg.LimitMarkerTTL,
				Storage:        jetstream.FileStorage,
				Replicas:       cfg.Replicas,
			})
			return err
		})
		if errors.Is(err, jetstream.ErrBucketExists) { // another node created it meanwhile
			kv, err = js.KeyValue(ctx, cfg.Name)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("natskv: open bucket %s: %w", cfg.Name, err)
	}
	if err := checkSchema(ctx, kv, cfg.Schema); err != nil {
		return nil, fmt.Errorf("natskv: open bucket %s: %w", cfg.Name, err)
	}
	return kv, nil
}

// Codes of JetStream API errors that a cluster still forming (or
// recovering a peer, or electing a stream's leader) answers: worth
// another try.
var transientCodes = []jetstream.ErrorCode{
	10005, // no suitable peers for placement
	10008, // JetStream system temporarily unavailable
	10023, // insufficient resources
}

// Transient reports whether err is what a JetStream cluster answers while
// it forms, recovers a peer or elects a leader: a placement error, no
// responders, or a request timeout while ctx itself is still live.
func Transient(ctx context.Context, err error) bool {
	var apiErr *jetstream.APIError
	switch {
	case err == nil || ctx.Err() != nil:
		return false
	case errors.As(err, &apiErr):
		return slices.Contains(transientCodes, apiErr.ErrorCode)
	}
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrNoStreamResponse)
}

// WhilePlacing calls create until it succeeds, fails with an error that
// is not Transient, or ctx ends (then it returns the last error). It waits
// 100 ms between tries. A node that opens its buckets while its NATS
// cluster forms or restarts thus waits, as long as its ctx allows.
func WhilePlacing(ctx context.Context, create func() error) error {
	for {
		err := create()
		if !Transient(ctx, err) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// checkSchema creates kv's schema record with want, or compares it with
// want.
func checkSchema(ctx context.Context, kv jetstream.KeyValue, want Schema) error {
	b, err := json.Marshal(want)
	if err != nil {
		return err
	}
	if _, err := kv.Create(ctx, MetaKey, b); err == nil {
		return nil
	} else if !errors.Is(err, jetstream.ErrKeyExists) {
		return fmt.Errorf("write schema record: %w", err)
	}
	e, err := kv.Get(ctx, MetaKey)
	if err != nil {
		return fmt.Errorf("read schema record: %w", err)
	}
	var got Schema
	if err := json.Unmarshal(e.Value(), &got); err != nil {
		return fmt.Errorf("%w: schema record %q is not Umbra's: %w", ErrSchemaMismatch, e.Value(), err)
	}
	if got != want {
		return fmt.Errorf("%w: the bucket holds %s schema version %d, this node uses %s schema version %d "+
			"(run nodes of one Umbra release on one bucket, or migrate it first)",
			ErrSchemaMismatch, got.Kind, got.Version, want.Kind, want.Version)
	}
	return nil
}

// ReadSchema returns the schema record of kv.
func ReadSchema(ctx context.Context, kv jetstream.KeyValue) (Schema, error) {
	e, err := kv.Get(ctx, MetaKey)
	if err != nil {
		return Schema{}, fmt.Errorf("natskv: read schema record of %s: %w", kv.Bucket(), err)
	}
	var s Schema
	if err := json.Unmarshal(e.Value(), &s); err != nil {
		return Schema{}, fmt.Errorf("natskv: schema record of %s: %w", kv.Bucket(), err)
	}
	return s, nil
}

// Token escapes s into one key token: bytes of [-_a-zA-Z0-9] stay, every
// other byte becomes "=" and two upper-case hex digits. The empty string
// stays empty (callers never pass one).
func Token(s string) string {
	clean := true
	for i := 0; i < len(s); i++ {
		if !tokenByte(s[i]) {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	b.Grow(len(s) + 8)
	for i := 0; i < len(s); i++ {
		c := s[i]
		if tokenByte(c) {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('=')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&0xF])
	}
	return b.String()
}

// maxToken is the longest token HashToken leaves readable.
const maxToken = 160

// HashToken is Token for strings that may be long (MQTT topics and client
// IDs, up to 65535 bytes): an escaped string longer than 160 bytes is
// replaced by "=H" and the hex SHA-256 of s, which Untoken refuses (its
// holder keeps s in the value).
func HashToken(s string) string {
	t := Token(s)
	if len(t) <= maxToken {
		return t
	}
	sum := sha256.Sum256([]byte(s))
	return "=H" + hex.EncodeToString(sum[:])
}

// Untoken reverses Token. It fails on a malformed escape.
func Untoken(t string) (string, error) {
	if !strings.Contains(t, "=") {
		return t, nil
	}
	var b strings.Builder
	b.Grow(len(t))
	for i := 0; i < len(t); i++ {
		if t[i] != '=' {
			b.WriteByte(t[i])
			continue
		}
		if i+2 >= len(t) {
			return "", fmt.Errorf("natskv: key token %q: truncated escape", t)
		}
		hi, ok1 := unhex(t[i+1])
		lo, ok2 := unhex(t[i+2])
		if !ok1 || !ok2 {
			return "", fmt.Errorf("natskv: key token %q: bad escape at byte %d", t, i)
		}
		b.WriteByte(hi<<4 | lo)
		i += 2
	}
	return b.String(), nil
}

func tokenByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_'
}

func unhex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// IsConflict reports whether err is a failed compare-and-set: the key's
// revision was not the one expected (an update or delete), or the key
// exists (a create).
func IsConflict(err error) bool {
	return errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch)
}

// IsUnavailable reports whether err means the JetStream cluster did not
// answer (no connection, no responders, a timeout): the store is
// unavailable for now, and a write's outcome may be unknown.
func IsUnavailable(err error) bool {
	return errors.Is(err, nats.ErrConnectionClosed) || errors.Is(err, nats.ErrNoResponders) ||
		errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrConnectionDraining) ||
		errors.Is(err, nats.ErrConnectionReconnecting) || errors.Is(err, jetstream.ErrJetStreamNotEnabled) ||
		errors.Is(err, nats.ErrReconnectBufExceeded)
}
