package broker

import (
	"context"
	"time"
)

// Store keeps the broker's durable state: retained messages and persistent
// sessions with their subscriptions and queued messages (see the package
// documentation, "Durability", for what is written when). The broker
// declares it; broker/boltstore is the single-node implementation on a
// bbolt file, and a cluster implementation provides the same contract.
//
// The broker calls Load once, from Open, before it serves, and Apply from
// one goroutine at a time. A Store is owned by whoever opened it: the
// broker never closes it, and stops calling it when Close returns.
type Store interface {
	// Load returns everything the store holds. An error (a file that
	// cannot be read, a record that cannot be decoded) makes Open fail:
	// the broker never starts with part of its state silently dropped.
	Load(ctx context.Context) (StoreState, error)
	// Apply makes ops durable, in order: when it returns nil, a later
	// Load reflects every op. The ops of one call must be applied
	// atomically (all or none survive a crash), or at least in order, so
	// that a crash leaves a prefix of them. Each op is applied as
	// documented on its OpKind; an op about a session's subscription or
	// queued message is only issued for a session put earlier. After an
	// error the broker assumes nothing of that call survived: its next
	// call starts with OpReset and rewrites the whole state.
	Apply(ctx context.Context, ops []StoreOp) error
}

// StoreState is what a Store holds.
type StoreState struct {
	Retained []Message      // retained messages, one per topic
	Sessions []SessionState // persistent sessions
}

// SessionState is a persistent session with its subscriptions and queued
// messages.
type SessionState struct {
	Session
	Subscriptions []Subscription
	Queued        []QueuedMessage // in Seq order
}

// Session describes a persistent session: a client that connected with
// clean session off (MQTT 3.1.1) or a session expiry (MQTT 5).
type Session struct {
	// ClientID is the MQTT client ID, the session's key.
	ClientID string
	// Identity is who created the session; a client that authenticates
	// as another Identity.Name starts a fresh session.
	Identity Identity
	// ProtocolVersion is the MQTT version the client last connected with
	// (4 for 3.1.1, 5).
	ProtocolVersion byte
	// Expiry is the MQTT 5 session expiry interval, valid if ExpirySet;
	// otherwise Config.SessionExpiry applies.
	Expiry    time.Duration
	ExpirySet bool
	// Disconnected is when the client last disconnected; zero while it
	// was connected (after a crash the session counts as disconnected at
	// the restart).
	Disconnected time.Time
}

// Subscription is a client's subscription with its options.
type Subscription struct {
	Filter            string // as subscribed, "$share/<group>/…" included
	QoS               byte   // requested maximum QoS
	NoLocal           bool   // MQTT 5: not sent the client's own messages
	RetainAsPublished bool   // MQTT 5: retain flag kept on delivery
	RetainHandling    byte   // MQTT 5: 0, 1 or 2
	Identifier        int    // MQTT 5 subscription identifier; 0 if none
}

// Message is a PUBLISH as the broker keeps it.
type Message struct {
	Topic   string
	Payload []byte
	QoS     byte
	Retain  bool
	// Origin is the client ID of the publisher; "inline" for the broker's
	// own Publish.
	Origin string
	// Created is when the broker received the message (second precision).
	Created time.Time
	// Expiry is when an MQTT 5 message expiry interval ends; zero if none.
	Expiry time.Time
	// Properties are the MQTT 5 properties that travel with a message.
	Properties MessageProperties
}

// MessageProperties are the MQTT 5 properties of a PUBLISH that the broker
// forwards.
type MessageProperties struct {
	PayloadFormat    byte
	PayloadFormatSet bool
	ContentType      string
	ResponseTopic    string
	CorrelationData  []byte
	User             []UserProperty
	MessageExpiry    uint32 // seconds, as published
	MessageExpirySet bool
	SubscriptionIDs  []int // subscription identifiers of a queued delivery
}

// UserProperty is an MQTT 5 user property.
type UserProperty struct {
	Key, Value string
}

// QueuedMessage is a QoS 1 or 2 message held for a persistent session:
// queued while it is offline, or sent and not yet acknowledged.
type QueuedMessage struct {
	// Seq orders a session's queued messages; unique in the store.
	Seq uint64
	// PacketID is the packet identifier the message was sent with; 0 if
	// it has not been sent (the broker assigns one when it restores it).
	PacketID uint16
	// Released is set for a QoS 2 message the client has acknowledged
	// with PUBREC: only PUBREL remains to be sent.
	Released bool
	Message  Message
}

// OpKind says what a StoreOp does.
type OpKind uint8

// The operations of StoreOp.
const (
	// OpReset deletes everything.
	OpReset OpKind = iota + 1
	// OpPutRetained stores Message as the retained message of its topic.
	OpPutRetained
	// OpDeleteRetained deletes the retained message of Topic, if any.
	OpDeleteRetained
	// OpPutSession stores Session, keeping the subscriptions and queued
	// messages stored under its client ID.
	OpPutSession
	// OpDeleteSession deletes the session of ClientID with all its
	// subscriptions and queued messages, if any.
	OpDeleteSession
	// OpPutSubscription stores Subscription for ClientID, replacing one
	// with the same filter.
	OpPutSubscription
	// OpDeleteSubscription deletes ClientID's subscription to Topic (the
	// filter), if any.
	OpDeleteSubscription
	// OpPutQueued stores Queued for ClientID, replacing one with the same
	// Seq.
	OpPutQueued
	// OpSetQueuedState sets the PacketID and Released of ClientID's
	// queued message Queued.Seq, if it is stored (Queued.Message is
	// empty).
	OpSetQueuedState
	// OpDeleteQueued deletes ClientID's queued message Queued.Seq, if any.
	OpDeleteQueued
)

var opNames = [...]string{OpReset: "reset", OpPutRetained: "put-retained", OpDeleteRetained: "delete-retained",
	OpPutSession: "put-session", OpDeleteSession: "delete-session", OpPutSubscription: "put-subscription",
	OpDeleteSubscription: "delete-subscription", OpPutQueued: "put-queued", OpSetQueuedState: "set-queued-state",
	OpDeleteQueued: "delete-queued"}

// String returns the kind's name, such as "put-retained".
func (k OpKind) String() string {
	if int(k) < len(opNames) && opNames[k] != "" {
		return opNames[k]
	}
	return "unknown"
}

// StoreOp is one change to a Store. Only the fields its Kind names are
// set.
type StoreOp struct {
	Kind         OpKind
	ClientID     string        // session, subscription and queued ops
	Topic        string        // OpDeleteRetained: the topic; OpDeleteSubscription: the filter
	Message      Message       // OpPutRetained
	Session      Session       // OpPutSession
	Subscription Subscription  // OpPutSubscription
	Queued       QueuedMessage // OpPutQueued, OpSetQueuedState, OpDeleteQueued (Seq)
}
