package broker

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Errors returned by PublishTo.
var (
	// ErrNoSubscription is wrapped by PublishTo when the client is not
	// connected or has no subscription matching the topic: there is
	// nobody to deliver to.
	ErrNoSubscription = errors.New("broker: client not connected or not subscribed")
	// ErrNotDelivered is wrapped by PublishTo when the client is
	// subscribed but the message was not delivered: Authenticator.Allow
	// denies the client reading the topic, or the client's outbound queue
	// or inflight store is full (counted in Stats.MessagesDropped or
	// Stats.InflightDropped, as for Publish).
	ErrNotDelivered = errors.New("broker: message not delivered")
)

// PublishTo delivers one message from the broker itself to one connected
// client, and only if that client has a subscription matching topic
// (shared subscriptions do not count): no other client receives it, and
// in-process subscribers (Subscribe) do not see it. It is for answers
// that concern one subscriber only, such as the shadow engine's catch-up
// delta when a client subscribes.
//
// Delivery follows the rules of Publish for that one client: the client
// must be allowed to read topic (Authenticator.Allow, checked at delivery
// as mochi does), the QoS is min(qos, the subscription's QoS, 1) (the
// highest of its matching subscriptions), an MQTT 5 client gets the
// subscription identifiers of its matching subscriptions, the message is
// never retained, and it goes through the client's outbound queue, so
// PublishTo never blocks on a slow client: a full queue or inflight store
// drops the message. A QoS 1 message is held in the session's inflight
// store until acknowledged, and is held back while an MQTT 5 client has
// its Receive Maximum of unacknowledged messages (approximated by the
// QoS 1 messages in its inflight store). PublishTo copies payload.
//
// PublishTo returns ErrClosed after Close; errors wrapping ErrInvalidTopic,
// ErrInvalidQoS or ErrTooLarge for the arguments Publish refuses; an error
// wrapping ErrNoSubscription when the client is not connected or not
// subscribed to topic; and one wrapping ErrNotDelivered when the message
// was denied or dropped.
func (s *Server) PublishTo(clientID, topic string, payload []byte, qos byte) error {
	return s.publishTo(clientID, topic, payload, qos, true)
}

// SendTo delivers one message from the broker itself to one connected
// client, whether or not it has a subscription matching topic: it is for
// replies a protocol promises to the requester alone, such as AWS IoT
// Jobs replies, which reach the requesting device even when it never
// subscribed to them. No other client and no in-process subscriber sees
// the message. With a matching subscription the message is delivered as
// PublishTo delivers it; without one, at QoS min(qos, 1) and without
// subscription identifiers. The client must still be allowed to read
// topic (Authenticator.Allow).
//
// SendTo returns the errors of PublishTo, except that ErrNoSubscription
// means only that the client is not connected.
func (s *Server) SendTo(clientID, topic string, payload []byte, qos byte) error {
	return s.publishTo(clientID, topic, payload, qos, false)
}

// publishTo is PublishTo (needSub) and SendTo.
func (s *Server) publishTo(clientID, topic string, payload []byte, qos byte, needSub bool) error {
	if s.closed.Load() {
		return ErrClosed
	}
	if err := validTopic(topic, true); err != nil {
		return fmt.Errorf("publish to %s: %w", clip(clientID), err)
	}
	if qos > 2 {
		return fmt.Errorf("publish to %s: %s: qos %d: %w", clip(clientID), topic, qos, ErrInvalidQoS)
	}
	if uint64(len(payload)) > uint64(s.cfg.MaxPacketSize) {
		return fmt.Errorf("publish to %s: %s: %d-byte payload over %d: %w", clip(clientID), topic, len(payload), s.cfg.MaxPacketSize, ErrTooLarge)
	}
	cl, ok := s.mq.Clients.Get(clientID)
	if !ok || cl.Net.Inline || cl.Net.Conn == nil || cl.Closed() {
		return fmt.Errorf("publish to %s: %s: not connected: %w", clip(clientID), topic, ErrNoSubscription)
	}
	sub, ok := s.mq.Topics.Subscribers(topic).Subscriptions[clientID]
	switch {
	case ok:
		qos = min(qos, sub.Qos)
	case needSub:
		return fmt.Errorf("publish to %s: %s: no matching subscription: %w", clip(clientID), topic, ErrNoSubscription)
	}
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: min(qos, 1)},
		TopicName:   topic,
		Payload:     bytes.Clone(payload),
		Origin:      mqtt.InlineClientId,
		Created:     time.Now().Unix(),
	}
	// As mochi's delivery: the read check also enforces the device
	// inflight cap (see hook.deliveryAllowed).
	if !s.hook.OnACLCheck(cl, topic, false) {
		return fmt.Errorf("publish to %s: %s: read denied or inflight store full: %w", clip(clientID), topic, ErrNotDelivered)
	}
	for _, id := range sub.Identifiers { // [MQTT-3.3.4-3]; mochi's encoder skips 0
		pk.Properties.SubscriptionIdentifier = append(pk.Properties.SubscriptionIdentifier, id)
	}
	slices.Sort(pk.Properties.SubscriptionIdentifier)
	return s.deliver(cl, pk)
}

// deliver queues pk, addressed to cl, on cl's outbound queue, as mochi's
// publishToClient does for each subscriber of a published message.
func (s *Server) deliver(cl *mqtt.Client, pk packets.Packet) error {
	inflight := false
	if pk.FixedHeader.Qos > 0 {
		if cl.State.Inflight.Len() >= int(s.cfg.serverInflight()) {
			atomic.AddInt64(&s.mq.Info.InflightDropped, 1)
			return fmt.Errorf("publish to %s: %s: inflight store full: %w", cl.ID, pk.TopicName, ErrNotDelivered)
		}
		id, err := cl.NextPacketID()
		if err != nil {
			atomic.AddInt64(&s.mq.Info.InflightDropped, 1)
			return fmt.Errorf("publish to %s: %s: no packet identifier free: %w", cl.ID, pk.TopicName, ErrNotDelivered)
		}
		pk.PacketID = uint16(id)
		held := sendQuotaUsed(cl)
		if cl.State.Inflight.Set(pk) {
			atomic.AddInt64(&s.mq.Info.Inflight, 1)
			cl.State.Inflight.DecreaseSendQuota()
			inflight = true
		}
		if held {
			// mochi sends it when an acknowledgement frees the quota.
			pk.Expiry = -1
			cl.State.Inflight.Set(pk)
			return nil
		}
	}
	if cl.QueueOutbound(&pk) { // mochi patch 14
		return nil
	}
	atomic.AddInt64(&s.mq.Info.MessagesDropped, 1)
	s.hook.OnPublishDropped(cl, pk)
	if inflight && cl.State.Inflight.Delete(pk.PacketID) {
		atomic.AddInt64(&s.mq.Info.Inflight, -1)
		cl.State.Inflight.IncreaseSendQuota()
	}
	return fmt.Errorf("publish to %s: %s: outbound queue full: %w", cl.ID, pk.TopicName, ErrNotDelivered)
}

// sendQuotaUsed reports whether cl, an MQTT 5 client, already has its
// Receive Maximum of unacknowledged QoS 1 messages. mochi keeps the exact
// quota unexported; the QoS 1 PUBLISHes in the inflight store are what it
// counts.
func sendQuotaUsed(cl *mqtt.Client) bool {
	rm := int(cl.Properties.Props.ReceiveMaximum)
	if cl.Properties.ProtocolVersion < 5 || rm == 0 || cl.State.Inflight.Len() < rm {
		return false
	}
	n := 0
	for _, p := range cl.State.Inflight.GetAll(false) {
		if p.FixedHeader.Type == packets.Publish {
			n++
		}
	}
	return n >= rm
}
