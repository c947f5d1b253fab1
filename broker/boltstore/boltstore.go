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

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/device"
)

// DefaultTimeout is how long Open waits for the file lock when
// Config.Timeout is zero.
const DefaultTimeout = time.Second

// format is the layout version written to the meta bucket; Open refuses a
// file with another one.
const format = 1

// Bucket and key names.
var (
	bucketMeta     = []byte("meta")
	bucketRetained = []byte("retained")
	bucketSessions = []byte("sessions")
	keyFormat      = []byte("format")
	keySession     = []byte("session") // a session bucket's description
	bucketSubs     = []byte("subscriptions")
	bucketQueued   = []byte("queued") // seq → message
	bucketState    = []byte("state")  // seq → packet ID and released flag
)

// Errors returned by Open, Load and Apply.
var (
	// ErrClosed is returned by Load and Apply after Close.
	ErrClosed = errors.New("boltstore: closed")
	// ErrCorrupt is wrapped by Open and Load when the file is not a
	// readable broker database: damaged, of another format, or holding a
	// record that cannot be decoded.
	ErrCorrupt = errors.New("boltstore: broker database unreadable")
	// ErrLocked is wrapped by Open when another process holds the file.
	ErrLocked = errors.New("boltstore: database locked by another process")
)

// Config configures Open.
type Config struct {
	// Path is the bbolt file; it is created (mode 0600) if missing.
	Path string
	// Timeout bounds the wait for the file lock. Default DefaultTimeout.
	Timeout time.Duration
}

// Store is a broker.Store in one bbolt file. It is safe for concurrent
// use, though the broker calls Apply from one goroutine.
type Store struct {
	db   *bolt.DB
	path string

	closeOnce sync.Once
	closeErr  error
}

// Open opens (or creates) the file at cfg.Path. It fails with an error
// wrapping ErrLocked when another process has the file open, and
// ErrCorrupt when the file is not a broker database this version can
// read.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("boltstore: open: %w", err)
	}
	if cfg.Path == "" {
		return nil, errors.New("boltstore: open: empty Path")
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	db, err := openDB(cfg.Path, cfg.Timeout)
	if err != nil {
		return nil, err
	}
	s := &Store{db: db, path: cfg.Path}
	if err := s.init(); err != nil {
		_ = db.Close()
		return nil, err
	}
	return s, nil
}

// openDB opens the bbolt file, turning a panic of bbolt on a damaged file
// into ErrCorrupt.
func openDB(path string, timeout time.Duration) (*bolt.DB, error) {
	return boltdb.Open(path, boltdb.Options{Timeout: timeout, Locked: ErrLocked, Corrupt: ErrCorrupt})
}

// init creates the buckets of a new file and checks the format of an
// existing one.
func (s *Store) init() (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("boltstore: init %s: %w: %v", s.path, ErrCorrupt, r)
		}
	}()
	err = s.db.Update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if meta == nil {
			if tx.Bucket(bucketRetained) != nil || tx.Bucket(bucketSessions) != nil {
				return fmt.Errorf("%w: no format record", ErrCorrupt)
			}
			var err error
			if meta, err = tx.CreateBucket(bucketMeta); err != nil {
				return err
			}
			if err := meta.Put(keyFormat, []byte(strconv.Itoa(format))); err != nil {
				return err
			}
		} else if v := string(meta.Get(keyFormat)); v != strconv.Itoa(format) {
			return fmt.Errorf("%w: format %q, this version reads format %d", ErrCorrupt, v, format)
		}
		for _, b := range [][]byte{bucketRetained, bucketSessions} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("boltstore: init %s: %w", s.path, err)
	}
	return nil
}

// Close closes the file. It is idempotent; Load and Apply return ErrClosed
// afterwards.
func (s *Store) Close(context.Context) error {
	s.closeOnce.Do(func() {
		if err := s.db.Close(); err != nil {
			s.closeErr = fmt.Errorf("boltstore: close %s: %w", s.path, err)
		}
	})
	return s.closeErr
}

// Path returns the file's path.
func (s *Store) Path() string { return s.path }

// Load implements broker.Store. Every record is decoded; the first that
// cannot be is reported as an error wrapping ErrCorrupt, naming it.
func (s *Store) Load(ctx context.Context) (st broker.StoreState, err error) {
	if err := ctx.Err(); err != nil {
		return broker.StoreState{}, fmt.Errorf("boltstore: load: %w", err)
	}
	defer func() {
		if r := recover(); r != nil {
			st, err = broker.StoreState{}, fmt.Errorf("boltstore: load %s: %w: %v", s.path, ErrCorrupt, r)
		}
	}()
	err = s.db.View(func(tx *bolt.Tx) error {
		if err := tx.Bucket(bucketRetained).ForEach(func(k, v []byte) error {
			m, err := decodeMessage(v)
			if err != nil {
				return fmt.Errorf("retained %q: %w", k, err)
			}
			st.Retained = append(st.Retained, m)
			return nil
		}); err != nil {
			return err
		}
		return tx.Bucket(bucketSessions).ForEachBucket(func(k []byte) error {
			ss, err := loadSession(tx.Bucket(bucketSessions).Bucket(k))
			if err != nil {
				return fmt.Errorf("session %q: %w", k, err)
			}
			if ss.ClientID != string(k) {
				return fmt.Errorf("session %q: %w: holds client ID %q", k, ErrCorrupt, ss.ClientID)
			}
			st.Sessions = append(st.Sessions, ss)
			return nil
		})
	})
	if errors.Is(err, bolt.ErrDatabaseNotOpen) {
		return broker.StoreState{}, ErrClosed
	}
	if err != nil {
		return broker.StoreState{}, fmt.Errorf("boltstore: load %s: %w", s.path, err)
	}
	return st, nil
}

// loadSession decodes one session bucket.
func loadSession(b *bolt.Bucket) (broker.SessionState, error) {
	var ss broker.SessionState
	v := b.Get(keySession)
	if v == nil {
		return ss, fmt.Errorf("%w: no session record", ErrCorrupt)
	}
	sess, err := decodeSession(v)
	if err != nil {
		return ss, err
	}
	ss.Session = sess
	if subs := b.Bucket(bucketSubs); subs != nil {
		if err := subs.ForEach(func(k, v []byte) error {
			sub, err := decodeSubscription(v)
			if err != nil || sub.Filter != string(k) {
				return fmt.Errorf("subscription %q: %w: %v", k, ErrCorrupt, err)
			}
			ss.Subscriptions = append(ss.Subscriptions, sub)
			return nil
		}); err != nil {
			return ss, err
		}
	}
	q, state := b.Bucket(bucketQueued), b.Bucket(bucketState)
	if q == nil {
		return ss, nil
	}
	err = q.ForEach(func(k, v []byte) error {
		if len(k) != 8 {
			return fmt.Errorf("queued key %x: %w", k, ErrCorrupt)
		}
		m, err := decodeMessage(v)
		if err != nil {
			return fmt.Errorf("queued %d: %w", binary.BigEndian.Uint64(k), err)
		}
		qm := broker.QueuedMessage{Seq: binary.BigEndian.Uint64(k), Message: m}
		if state != nil {
			if sv := state.Get(k); sv != nil {
				if len(sv) != 3 {
					return fmt.Errorf("queued %d state: %w", qm.Seq, ErrCorrupt)
				}
				qm.PacketID = binary.BigEndian.Uint16(sv)
				qm.Released = sv[2] == 1
			}
		}
		ss.Queued = append(ss.Queued, qm) // keys are in Seq order
		return nil
	})
	return ss, err
}

// Apply implements broker.Store: every op in one transaction, one fsync.
func (s *Store) Apply(ctx context.Context, ops []broker.StoreOp) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("boltstore: apply: %w", err)
	}
	// Encode outside the transaction: bbolt allows one writer at a time.
	vals := make([][]byte, len(ops))
	for i, op := range ops {
		var err error
		switch op.Kind {
		case broker.OpPutRetained:
			vals[i], err = encodeMessage(op.Message)
		case broker.OpPutSession:
			vals[i], err = encodeSession(op.Session)
		case broker.OpPutSubscription:
			vals[i], err = json.Marshal(subscriptionRecord(op.Subscription))
		case broker.OpPutQueued:
			vals[i], err = encodeMessage(op.Queued.Message)
		}
		if err != nil {
			return fmt.Errorf("boltstore: apply: encode %s: %w", op.Kind, err)
		}
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		for i, op := range ops {
			if err := apply(tx, op, vals[i]); err != nil {
				return fmt.Errorf("%s %q: %w", op.Kind, op.ClientID+op.Topic+op.Message.Topic, err)
			}
		}
		return nil
	})
	if errors.Is(err, bolt.ErrDatabaseNotOpen) {
		return ErrClosed
	}
	if err != nil {
		return fmt.Errorf("boltstore: apply: %w", err)
	}
	return nil
}

// apply applies one op; val is its encoded record, if it has one.
func apply(tx *bolt.Tx, op broker.StoreOp, val []byte) error {
	switch op.Kind {
	case broker.OpReset:
		for _, name := range [][]byte{bucketRetained, bucketSessions} {
			if err := tx.DeleteBucket(name); err != nil {
				return err
			}
			if _, err := tx.CreateBucket(name); err != nil {
				return err
			}
		}
		return nil
	case broker.OpPutRetained:
		return tx.Bucket(bucketRetained).Put([]byte(op.Message.Topic), val)
	case broker.OpDeleteRetained:
		return tx.Bucket(bucketRetained).Delete([]byte(op.Topic))
	case broker.OpPutSession:
		b, err := tx.Bucket(bucketSessions).CreateBucketIfNotExists([]byte(op.Session.ClientID))
		if err != nil {
			return err
		}
		return b.Put(keySession, val)
	case broker.OpDeleteSession:
		err := tx.Bucket(bucketSessions).DeleteBucket([]byte(op.ClientID))
		if errors.Is(err, bolt.ErrBucketNotFound) {
			return nil
		}
		return err
	case broker.OpPutSubscription:
		b, err := sessionBucket(tx, op.ClientID, bucketSubs)
		if err != nil || b == nil {
			return err
		}
		return b.Put([]byte(op.Subscription.Filter), val)
	case broker.OpDeleteSubscription:
		if b := existingBucket(tx, op.ClientID, bucketSubs); b != nil {
			return b.Delete([]byte(op.Topic))
		}
		return nil
	case broker.OpPutQueued:
		b, err := sessionBucket(tx, op.ClientID, bucketQueued)
		if err != nil || b == nil {
			return err
		}
		if err := b.Put(seqKey(op.Queued.Seq), val); err != nil {
			return err
		}
		return putState(tx, op)
	case broker.OpSetQueuedState:
		if b := existingBucket(tx, op.ClientID, bucketQueued); b == nil || b.Get(seqKey(op.Queued.Seq)) == nil {
			return nil // acknowledged meanwhile
		}
		return putState(tx, op)
	case broker.OpDeleteQueued:
		if b := existingBucket(tx, op.ClientID, bucketQueued); b != nil {
			if err := b.Delete(seqKey(op.Queued.Seq)); err != nil {
				return err
			}
		}
		if b := existingBucket(tx, op.ClientID, bucketState); b != nil {
			return b.Delete(seqKey(op.Queued.Seq))
		}
		return nil
	}
	return fmt.Errorf("unknown op kind %d", op.Kind)
}

// putState records the packet ID and released flag of op's queued
// message (deleting the record when there is nothing to remember).
func putState(tx *bolt.Tx, op broker.StoreOp) error {
	if op.Queued.PacketID == 0 && !op.Queued.Released {
		if b := existingBucket(tx, op.ClientID, bucketState); b != nil {
			return b.Delete(seqKey(op.Queued.Seq))
		}
		return nil
	}
	b, err := sessionBucket(tx, op.ClientID, bucketState)
	if err != nil || b == nil {
		return err
	}
	v := make([]byte, 3)
	binary.BigEndian.PutUint16(v, op.Queued.PacketID)
	if op.Queued.Released {
		v[2] = 1
	}
	return b.Put(seqKey(op.Queued.Seq), v)
}

// sessionBucket returns (creating it) the named bucket of clientID's
// session; nil, without error, if the session is not stored: the broker
// writes a session's parts only after the session, and a part of a
// session deleted meanwhile is dropped.
func sessionBucket(tx *bolt.Tx, clientID string, name []byte) (*bolt.Bucket, error) {
	sess := tx.Bucket(bucketSessions).Bucket([]byte(clientID))
	if sess == nil {
		return nil, nil
	}
	return sess.CreateBucketIfNotExists(name)
}

// existingBucket returns the named bucket of clientID's session, or nil.
func existingBucket(tx *bolt.Tx, clientID string, name []byte) *bolt.Bucket {
	sess := tx.Bucket(bucketSessions).Bucket([]byte(clientID))
	if sess == nil {
		return nil
	}
	return sess.Bucket(name)
}

func seqKey(seq uint64) []byte {
	return binary.BigEndian.AppendUint64(nil, seq)
}

// Stored records. They are the file format (format 1): fields may be
// added, never renamed or reinterpreted.

type messageRecord struct {
	Topic           string         `json:"topic"`
	Payload         []byte         `json:"payload,omitempty"`
	QoS             byte           `json:"qos,omitempty"`
	Retain          bool           `json:"retain,omitempty"`
	Origin          string         `json:"origin,omitempty"`
	Created         int64          `json:"created,omitempty"` // unix seconds
	Expiry          int64          `json:"expiry,omitempty"`  // unix seconds
	PayloadFormat   *byte          `json:"payloadFormat,omitempty"`
	ContentType     string         `json:"contentType,omitempty"`
	ResponseTopic   string         `json:"responseTopic,omitempty"`
	CorrelationData []byte         `json:"correlationData,omitempty"`
	User            []userProperty `json:"user,omitempty"`
	MessageExpiry   *uint32        `json:"messageExpiry,omitempty"`
	SubscriptionIDs []int          `json:"subscriptionIds,omitempty"`
}

type userProperty struct {
	Key   string `json:"k"`
	Value string `json:"v"`
}

func encodeMessage(m broker.Message) ([]byte, error) {
	r := messageRecord{
		Topic: m.Topic, Payload: m.Payload, QoS: m.QoS, Retain: m.Retain, Origin: m.Origin,
		Created: unix(m.Created), Expiry: unix(m.Expiry),
		ContentType: m.Properties.ContentType, ResponseTopic: m.Properties.ResponseTopic,
		CorrelationData: m.Properties.CorrelationData, SubscriptionIDs: m.Properties.SubscriptionIDs,
	}
	if m.Properties.PayloadFormatSet {
		r.PayloadFormat = &m.Properties.PayloadFormat
	}
	if m.Properties.MessageExpirySet {
		r.MessageExpiry = &m.Properties.MessageExpiry
	}
	for _, u := range m.Properties.User {
		r.User = append(r.User, userProperty(u))
	}
	return json.Marshal(r)
}

func decodeMessage(v []byte) (broker.Message, error) {
	var r messageRecord
	if err := strictUnmarshal(v, &r); err != nil {
		return broker.Message{}, err
	}
	if r.Topic == "" || r.QoS > 2 {
		return broker.Message{}, fmt.Errorf("%w: message without topic or with QoS %d", ErrCorrupt, r.QoS)
	}
	m := broker.Message{
		Topic: r.Topic, Payload: r.Payload, QoS: r.QoS, Retain: r.Retain, Origin: r.Origin,
		Created: fromUnix(r.Created), Expiry: fromUnix(r.Expiry),
		Properties: broker.MessageProperties{
			ContentType: r.ContentType, ResponseTopic: r.ResponseTopic,
			CorrelationData: r.CorrelationData, SubscriptionIDs: r.SubscriptionIDs,
		},
	}
	if r.PayloadFormat != nil {
		m.Properties.PayloadFormat, m.Properties.PayloadFormatSet = *r.PayloadFormat, true
	}
	if r.MessageExpiry != nil {
		m.Properties.MessageExpiry, m.Properties.MessageExpirySet = *r.MessageExpiry, true
	}
	for _, u := range r.User {
		m.Properties.User = append(m.Properties.User, broker.UserProperty(u))
	}
	return m, nil
}

type sessionRecord struct {
	ClientID        string `json:"clientId"`
	IdentityName    string `json:"identity,omitempty"`
	Device          string `json:"device,omitempty"`
	Credential      string `json:"credential,omitempty"`
	ProtocolVersion byte   `json:"protocolVersion"`
	Expiry          *int64 `json:"expirySeconds,omitempty"`
	Disconnected    int64  `json:"disconnected,omitempty"` // unix seconds
}

func encodeSession(s broker.Session) ([]byte, error) {
	r := sessionRecord{
		ClientID: s.ClientID, IdentityName: s.Identity.Name, Device: string(s.Identity.Device),
		Credential: s.Identity.Credential, ProtocolVersion: s.ProtocolVersion, Disconnected: unix(s.Disconnected),
	}
	if s.ExpirySet {
		sec := int64(s.Expiry / time.Second)
		r.Expiry = &sec
	}
	return json.Marshal(r)
}

func decodeSession(v []byte) (broker.Session, error) {
	var r sessionRecord
	if err := strictUnmarshal(v, &r); err != nil {
		return broker.Session{}, err
	}
	if r.ClientID == "" || r.ProtocolVersion < 3 || r.ProtocolVersion > 5 {
		return broker.Session{}, fmt.Errorf("%w: session without client ID or with protocol version %d", ErrCorrupt, r.ProtocolVersion)
	}
	s := broker.Session{
		ClientID: r.ClientID, ProtocolVersion: r.ProtocolVersion, Disconnected: fromUnix(r.Disconnected),
		Identity: broker.Identity{ClientID: r.ClientID, Name: r.IdentityName, Credential: r.Credential},
	}
	if r.Device != "" {
		d, err := device.ParseID(r.Device)
		if err != nil {
			return broker.Session{}, fmt.Errorf("%w: session device: %w", ErrCorrupt, err)
		}
		s.Identity.Device = d
	}
	if r.Expiry != nil {
		if *r.Expiry < 0 {
			return broker.Session{}, fmt.Errorf("%w: negative session expiry", ErrCorrupt)
		}
		s.Expiry, s.ExpirySet = time.Duration(*r.Expiry)*time.Second, true
	}
	return s, nil
}

type subscriptionRecord struct {
	Filter            string `json:"filter"`
	QoS               byte   `json:"qos,omitempty"`
	NoLocal           bool   `json:"noLocal,omitempty"`
	RetainAsPublished bool   `json:"retainAsPublished,omitempty"`
	RetainHandling    byte   `json:"retainHandling,omitempty"`
	Identifier        int    `json:"identifier,omitempty"`
}

func decodeSubscription(v []byte) (broker.Subscription, error) {
	var r subscriptionRecord
	if err := strictUnmarshal(v, &r); err != nil {
		return broker.Subscription{}, err
	}
	if r.Filter == "" || r.QoS > 2 || r.RetainHandling > 2 {
		return broker.Subscription{}, fmt.Errorf("%w: subscription without filter or with QoS %d", ErrCorrupt, r.QoS)
	}
	return broker.Subscription(r), nil
}

// strictUnmarshal decodes one JSON record; anything else is ErrCorrupt.
func strictUnmarshal(v []byte, into any) error {
	dec := json.NewDecoder(bytes.NewReader(v))
	if err := dec.Decode(into); err != nil {
		return fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	if dec.More() {
		return fmt.Errorf("%w: trailing data", ErrCorrupt)
	}
	return nil
}

func unix(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.Unix()
}

func fromUnix(sec int64) time.Time {
	if sec == 0 {
		return time.Time{}
	}
	return time.Unix(sec, 0)
}
