package broker

import (
	"context"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
)

// Per-client queue sizes.
//
// mochi sizes every client's outbound queue from the server-wide
// Capabilities.MaximumClientWritesPending when it makes the client, and
// starts the client's write loop, which receives from that queue, before
// it has even read CONNECT: the identity, which decides the size, is known
// only after authentication. OnSessionEstablish (after authentication,
// before mochi registers the client, so that no publisher can queue for it
// yet) therefore gives a service client the larger queue with
// Client.SetOutboundCapacity, which mochi patch 14 adds
// (third_party/mochi/PATCHES.md): the write loop itself replaces the
// queue, and the client's goroutine waits for it, for at most
// ConnectTimeout. If the write loop does not take the request in time (the
// connection is closing), the client keeps the device queue and a warning
// is logged.
//
// The inflight limit is a server-wide capability too, checked against
// each client's store before a QoS 1 message is queued. The broker sets it
// to the service clients' limit and enforces the devices' smaller limit in
// OnACLCheck, which mochi calls for every delivery just before that check
// (see hook.deliveryAllowed).

// enlargeQueue gives cl, a service client whose write loop is running but
// which mochi has not registered yet, an outbound queue of capacity
// packets, waiting at most wait. It reports whether the queue has that
// capacity; on false the client keeps its device-sized queue. It runs on
// the client's goroutine.
func (h *hook) enlargeQueue(cl *mqtt.Client, capacity int, wait time.Duration) bool {
	if cl.OutboundCapacity() >= capacity {
		return true
	}
	ctx, cancel := context.WithTimeout(h.s.ctx, wait)
	defer cancel()
	return cl.SetOutboundCapacity(ctx, capacity) == nil
}
