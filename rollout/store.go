package rollout

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/umbra-iot/umbra/device"
)

// Layout of rollout.db:
//
//	rollouts/                  bucket, one sub-bucket per rollout ID
//	  <id>/meta                Rollout as JSON
//	  <id>/targets             target IDs joined by '\n', in rollout order
//	  <id>/dev/<u32 index>     Device record, 12 bytes (absent = pending)
//	  <id>/ev/<u64 seq>        Event as JSON
//	  <id>/intent/<u32 index>  undelivered firmware command (desired JSON)
//	  <id>/err/<u32 index>     last error of a failed device (a Jobs device's last word)
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

const deviceRecordLen = 12

// Event is one entry of a rollout's event log.
type Event struct {
	Seq    uint64    `json:"seq"`
	Time   time.Time `json:"time"`
	Kind   string    `json:"kind"` // EventCreated, EventState, …
	State  State     `json:"state,omitempty"`
	Batch  int       `json:"batch,omitempty"`
	Device device.ID `json:"device,omitempty"`
	Reason string    `json:"reason,omitempty"`
}

// Event kinds.
const (
	EventCreated      = "created"
	EventState        = "state"         // State is the new state
	EventBatchStarted = "batch_started" // Batch is its index
	// EventBatchFinished is recorded once when every device of batch Batch
	// is terminal; Reason sums it up, e.g. "48/50 succeeded, 2 failed".
	EventBatchFinished = "batch_finished"
	EventDeviceFailed  = "device_failed" // Device failed or timed out for good
	EventRetry         = "device_retry"  // Device will be notified again
	EventRollback      = "device_rollback"
	EventDevicesAdded  = "devices_added" // to a dynamic rollout
	// EventWaiting is recorded when a running rollout starts or stops
	// waiting for its start time or maintenance window; Reason says why
	// it waits, or "notifying again".
	EventWaiting = "waiting"
)

func encodeDevice(d Device) []byte {
	b := make([]byte, deviceRecordLen)
	b[0] = byte(d.State)
	b[1] = d.Attempt
	binary.BigEndian.PutUint16(b[2:], d.From)
	binary.BigEndian.PutUint64(b[4:], uint64(d.At))
	return b
}

func decodeDevice(b []byte) (Device, error) {
	if len(b) != deviceRecordLen || DeviceState(b[0]) >= numDeviceStates {
		return Device{}, fmt.Errorf("corrupt device record %x", b)
	}
	return Device{State: DeviceState(b[0]), Attempt: b[1], From: binary.BigEndian.Uint16(b[2:]),
		At: int64(binary.BigEndian.Uint64(b[4:]))}, nil
}

func indexKey(i int) []byte { return binary.BigEndian.AppendUint32(nil, uint32(i)) }

func rolloutBucket(tx *bolt.Tx, id string) (*bolt.Bucket, error) {
	b := tx.Bucket(bucketRollouts).Bucket([]byte(id))
	if b == nil {
		return nil, ErrNotFound
	}
	return b, nil
}

func initDB(db *bolt.DB) error {
	return db.Update(func(tx *bolt.Tx) error {
		for _, name := range [][]byte{bucketRollouts, bucketSeq, bucketJobs} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		return nil
	})
}

// nextID allocates the next rollout ID, "r1", "r2", …
func nextID(tx *bolt.Tx) (string, error) {
	b := tx.Bucket(bucketSeq)
	n := uint64(0)
	if v := b.Get(keyRolloutSeq); v != nil {
		n = binary.BigEndian.Uint64(v)
	}
	n++
	if err := b.Put(keyRolloutSeq, binary.BigEndian.AppendUint64(nil, n)); err != nil {
		return "", err
	}
	return "r" + strconv.FormatUint(n, 10), nil
}

// createRollout stores a new rollout with its targets.
func createRollout(tx *bolt.Tx, r *Rollout, targets []device.ID) error {
	b, err := tx.Bucket(bucketRollouts).CreateBucket([]byte(r.ID))
	if err != nil {
		return err
	}
	for _, name := range [][]byte{bucketDev, bucketEv, bucketIntent, bucketErr} {
		if _, err := b.CreateBucket(name); err != nil {
			return err
		}
	}
	if err := putTargets(b, targets); err != nil {
		return err
	}
	return putMeta(b, r)
}

func putTargets(b *bolt.Bucket, targets []device.ID) error {
	var buf bytes.Buffer
	for i, id := range targets {
		if i > 0 {
			buf.WriteByte('\n')
		}
		buf.WriteString(string(id))
	}
	return b.Put(keyTargets, buf.Bytes())
}

func putMeta(b *bolt.Bucket, r *Rollout) error {
	raw, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return b.Put(keyMeta, raw)
}

func getMeta(b *bolt.Bucket) (Rollout, error) {
	var r Rollout
	if err := json.Unmarshal(b.Get(keyMeta), &r); err != nil {
		return Rollout{}, fmt.Errorf("corrupt rollout meta: %w", err)
	}
	return r, nil
}

// appendEvent stores ev with the next sequence number and returns it.
func appendEvent(b *bolt.Bucket, ev Event) (Event, error) {
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

// loadTargets returns the target list and the device records (pending
// where none is stored).
func loadTargets(b *bolt.Bucket, n int) ([]device.ID, []Device, error) {
	raw := b.Get(keyTargets)
	targets := make([]device.ID, 0, n)
	for len(raw) > 0 {
		i := bytes.IndexByte(raw, '\n')
		if i < 0 {
			i = len(raw)
		}
		targets = append(targets, device.ID(raw[:i]))
		raw = raw[min(i+1, len(raw)):]
	}
	if len(targets) != n {
		return nil, nil, fmt.Errorf("corrupt target list: %d targets, want %d", len(targets), n)
	}
	devs := make([]Device, n)
	err := b.Bucket(bucketDev).ForEach(func(k, v []byte) error {
		if len(k) != 4 {
			return errors.New("corrupt device key")
		}
		i := int(binary.BigEndian.Uint32(k))
		if i >= n {
			return fmt.Errorf("device index %d out of range", i)
		}
		d, err := decodeDevice(v)
		devs[i] = d
		return err
	})
	return targets, devs, err
}
