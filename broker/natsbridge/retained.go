package natsbridge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/internal/natskv"
)

// Retained messages shared by every node (Config.JetStream set; see the
// package documentation, "Retained messages").
//
// The node where a retained message is published (a client's PUBLISH,
// a will or the broker's Publish) writes it to the retained bucket,
// r.<topic> (natskv.HashToken; an empty payload deletes the key), in the
// order of its publishes; every node watches the bucket and applies each
// change with broker.Server.Retain, in the bucket's order, so that every
// node holds the same retained messages. A message from another node is
// delivered with DeliverLive, which does not store it: its retained state
// comes from the bucket only, which a late bridge delivery could
// otherwise put out of order; its retain flag reaches Retain As Published
// as published.

// Defaults of the shared retained messages.
const (
	// DefaultRetainedBucket is Config.RetainedBucket's default.
	DefaultRetainedBucket = "umbra_retained"

	retainedSchema = 1
	prefixRetained = "r."
	prefixJoined   = "joined."              // joined.<node>: the node has joined the bucket (see seedRetained)
	retainedRetry  = 250 * time.Millisecond // between write attempts
	retainedTTLMax = 10 * time.Second       // bounds one write attempt
)

// retainedRecord is a retained message as the bucket holds it.
type retainedRecord struct {
	broker.Message
	Node string `json:"node"` // where it was published
}

// retained is the bridge's part for shared retained messages.
type retained struct {
	b      *natskv.Bucket
	writes chan broker.Message // retained publishes of this node, for the bucket
	hashed map[string]string   // key → topic of the keys that hash their topic; owned by the watch

	stored, failed, applied, corrupt atomic.Int64
}

// openRetained opens the retained bucket, makes the broker's retained
// messages those of the bucket (clearing the ones it holds that the bucket
// does not, except at the node's first join: see seedRetained), and
// returns the feed of its changes.
func (b *Bridge) openRetained(ctx context.Context) (*natskv.Feed, error) {
	bk, err := natskv.Open(ctx, b.cfg.JetStream, natskv.BucketConfig{Name: b.cfg.RetainedBucket, Replicas: b.cfg.Replicas,
		Schema: natskv.Schema{Kind: "retained", Version: retainedSchema}})
	if err != nil {
		return nil, fmt.Errorf("natsbridge: retained bucket: %w", err)
	}
	b.ret = &retained{b: bk, writes: make(chan broker.Message, b.cfg.OutboundBuffer), hashed: map[string]string{}}
	seen := map[string]bool{}
	feed, err := bk.StartFeed(ctx, prefixRetained+">", func(e jetstream.KeyValueEntry) {
		if t, ok := b.applyRetained(e); ok {
			seen[t] = true
		}
	})
	if err != nil {
		return nil, fmt.Errorf("natsbridge: retained bucket: %w", err)
	}
	if err := b.seedRetained(ctx, seen); err != nil {
		feed.Stop()
		return nil, fmt.Errorf("natsbridge: retained bucket: %w", err)
	}
	for _, t := range b.brk.RetainedTopics() {
		if !seen[t] {
			_ = b.brk.Retain(broker.Message{Topic: t}) // cleared in the cluster meanwhile
		}
	}
	return feed, nil
}

// seedRetained adds the broker's retained messages to the bucket when the
// node joins it for the first time: a node moved from one broker to a
// cluster keeps the retained messages its broker.db holds. The bucket
// records each node that joined (joined.<node>); a node that joined
// before holds copies of the bucket's messages only, and the bucket is
// the truth for it (what it lacks was cleared in the cluster). A message
// is added only to a key never written in the bucket, so the cluster's own
// messages, and topics cleared in it, win; seen, the topics the bucket
// holds, gains those added. A failure leaves the node unjoined: it tries
// again at its next start.
func (b *Bridge) seedRetained(ctx context.Context, seen map[string]bool) error {
	r := b.ret
	marker := prefixJoined + natskv.HashToken(b.cfg.NodeID)
	e, err := r.b.Read(ctx, marker)
	if err != nil {
		return fmt.Errorf("read %s: %w", marker, err)
	}
	if e.Last != 0 {
		return nil // joined before
	}
	var added int64
	for _, m := range b.brk.RetainedMessages() {
		if seen[m.Topic] || len(m.Payload) == 0 {
			continue
		}
		m.Properties.SubscriptionIDs = nil
		raw, err := json.Marshal(retainedRecord{Message: m, Node: b.cfg.NodeID})
		if err != nil {
			return fmt.Errorf("encode retained %s: %w", clip(m.Topic), err)
		}
		_, err = r.b.Apply(ctx, natskv.Op{Key: prefixRetained + natskv.HashToken(m.Topic), Value: raw, Check: true})
		switch {
		case errors.Is(err, natskv.ErrConflict):
			continue // written in the cluster meanwhile, or cleared there: the cluster's wins
		case err != nil:
			return fmt.Errorf("add retained %s: %w", clip(m.Topic), err)
		}
		seen[m.Topic] = true
		added++
	}
	raw, err := json.Marshal(struct {
		Node   string    `json:"node"`
		Joined time.Time `json:"joined"`
		Seeded int64     `json:"seeded"`
	}{b.cfg.NodeID, time.Now().UTC(), added})
	if err != nil {
		return err
	}
	if _, err := r.b.Apply(ctx, natskv.Op{Key: marker, Value: raw}); err != nil {
		return fmt.Errorf("write %s: %w", marker, err)
	}
	if added > 0 {
		b.log.Info("retained messages of this node added to the cluster at its first join", "messages", added)
	}
	return nil
}

// applyRetained applies one change of the bucket to the broker and
// returns the topic of a stored message.
func (b *Bridge) applyRetained(e jetstream.KeyValueEntry) (string, bool) {
	r := b.ret
	if e.Operation() != jetstream.KeyValuePut {
		// A cleared topic: the key's, or, for a key hashing a long
		// topic, the one its last put held.
		t, err := natskv.Untoken(strings.TrimPrefix(e.Key(), prefixRetained))
		if err != nil {
			if t, err = r.hashed[e.Key()], nil; t == "" {
				return "", false // never held here
			}
			delete(r.hashed, e.Key())
		}
		if b.brk.Retain(broker.Message{Topic: t}) == nil {
			r.applied.Add(1)
		}
		return "", false
	}
	var rec retainedRecord
	if err := json.Unmarshal(e.Value(), &rec); err != nil || rec.Topic == "" {
		b.retainedCorrupt(e.Key(), err)
		return "", false
	}
	rec.Retain = true
	if strings.HasPrefix(e.Key(), prefixRetained+"=H") {
		r.hashed[e.Key()] = rec.Topic
	}
	if err := b.brk.Retain(rec.Message); err != nil {
		b.retainedCorrupt(e.Key(), err)
		return "", false
	}
	r.applied.Add(1)
	return rec.Topic, true
}

// retainedCorrupt counts a record that cannot be applied and logs the
// first one; it is skipped, and nothing else changes.
func (b *Bridge) retainedCorrupt(key string, err error) {
	if b.ret.corrupt.Add(1) == 1 {
		b.log.Error("retained message in the bucket skipped: cannot be decoded or applied", "key", key, "error", err)
	}
}

// queueRetained queues m, a retained publish of this node, for the
// bucket; a full queue drops it (Stats.RetainedFailed).
func (b *Bridge) queueRetained(m broker.Message) {
	select {
	case b.ret.writes <- m:
	default:
		if b.ret.failed.Add(1) == 1 {
			b.log.Warn("retained message not stored in the cluster: the retained bucket is behind", "topic", clip(m.Topic))
		}
	}
}

// retainedWriteLoop writes this node's retained publishes to the bucket
// in order, retrying each until it is stored or the bridge closes.
func (b *Bridge) retainedWriteLoop() {
	r := b.ret
	for {
		var m broker.Message
		select {
		case <-b.ctx.Done():
			return
		case m = <-r.writes:
		}
		key := prefixRetained + natskv.HashToken(m.Topic)
		var op natskv.Op
		if len(m.Payload) == 0 {
			op = natskv.Op{Key: key, Delete: true}
		} else {
			m.Properties.SubscriptionIDs = nil
			raw, err := json.Marshal(retainedRecord{Message: m, Node: b.cfg.NodeID})
			if err != nil {
				r.failed.Add(1)
				continue
			}
			op = natskv.Op{Key: key, Value: raw}
		}
		for {
			ctx, cancel := context.WithTimeout(b.ctx, retainedTTLMax)
			_, err := r.b.Apply(ctx, op)
			cancel()
			if err == nil {
				r.stored.Add(1)
				break
			}
			if b.ctx.Err() != nil {
				return
			}
			select {
			case <-b.ctx.Done():
				return
			case <-time.After(retainedRetry):
			}
		}
	}
}
