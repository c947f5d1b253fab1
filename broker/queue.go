package broker

import (
	"reflect"
	"sync/atomic"
	"time"
	"unsafe"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Per-client queue sizes.
//
// mochi sizes every client's outbound queue (Client.State.outbound, an
// unexported channel) from the server-wide
// Capabilities.MaximumClientWritesPending in NewClient, and starts the
// client's write loop, which receives from that channel, before it has
// even read CONNECT. There is no hook between authentication and the write
// loop, and no exported way to resize the queue. The broker therefore
// replaces a service client's queue from the write loop itself:
//
//  1. OnSessionEstablish (after authentication, before mochi registers the
//     client, so no publisher can reach its queue yet) stores a
//     queueSwap in the connection and sends swapSentinel on the old queue,
//     which is empty: nothing is queued for a client that is not registered.
//  2. The write loop receives the sentinel and passes it to WritePacket,
//     which calls the OnPacketEncode hook on the write loop's goroutine.
//     The hook replaces the channel (the write loop reads the field again
//     only in its next iteration, on the same goroutine) and closes done.
//     WritePacket then fails to encode the reserved packet type, so
//     nothing reaches the wire; mochi logs "failed publishing packet" at
//     debug level.
//  3. OnSessionEstablish waits for done. Every later access to the field,
//     by the client's goroutine and (after registration) by publishers,
//     happens after the replacement.
//
// If the write loop does not take the sentinel in time (it has stopped:
// the connection is closing), OnSessionEstablish abandons the swap; the
// claim flag makes sure that exactly one side decides, so the field is
// never written while another goroutine may read it.
//
// The inflight limit is a server-wide capability too, checked against
// each client's store before a QoS 1 message is queued. The broker sets it
// to the service clients' limit and enforces the devices' smaller limit in
// OnACLCheck, which mochi calls for every delivery just before that check
// (see hook.deliveryAllowed).

// outboundOffset is the offset of mochi's Client.State.outbound within
// Client; outboundOK reports whether the field exists with the expected
// type (checked once, so a mochi upgrade that changes it disables service
// queues instead of corrupting memory).
var outboundOffset, outboundOK = clientStateField("outbound", reflect.TypeFor[chan *packets.Packet]())

// outboundOf returns a pointer to cl's outbound queue. It must only be
// used when outboundOK.
func outboundOf(cl *mqtt.Client) *chan *packets.Packet {
	return (*chan *packets.Packet)(unsafe.Add(unsafe.Pointer(cl), outboundOffset))
}

// swapSentinel is the packet that asks the write loop to replace its
// queue. mochi never writes the reserved packet type 0.
var swapSentinel = packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Reserved}}

// Claim states of a queueSwap.
const (
	swapPending   int32 = iota
	swapClaimed         // the write loop is replacing the queue
	swapAbandoned       // the client's goroutine gave up waiting
)

// queueSwap is a pending replacement of a client's outbound queue.
type queueSwap struct {
	capacity int32
	state    atomic.Int32  // swapPending, swapClaimed or swapAbandoned
	done     chan struct{} // closed by the write loop after the replacement
}

// enlargeQueue gives cl, a service client whose write loop is running but
// which mochi has not registered yet, an outbound queue of capacity
// packets. It reports whether the queue was replaced; on false the client
// keeps its device-sized queue. It runs on the client's goroutine.
func (h *hook) enlargeQueue(cl *mqtt.Client, c *conn, capacity int32, wait time.Duration) bool {
	if !outboundOK || cl.Closed() {
		return false
	}
	q := outboundOf(cl)
	if int32(cap(*q)) >= capacity {
		return true
	}
	sw := &queueSwap{capacity: capacity, done: make(chan struct{})}
	c.swap = sw
	sentinel := swapSentinel
	select {
	case *q <- &sentinel:
	default:
		return false // not empty: cannot happen before registration
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-sw.done:
		return true
	case <-h.s.ctx.Done():
	case <-t.C:
	}
	if sw.state.CompareAndSwap(swapPending, swapAbandoned) {
		return false
	}
	<-sw.done // claimed: the write loop is replacing the queue right now
	return true
}

// OnPacketEncode replaces the outbound queue when the write loop passes
// it swapSentinel (see enlargeQueue) and corrects CONNACKs to MQTT 3.1.1
// clients and PUBRECs (see connack.go); other packets pass unchanged. It runs on the
// goroutine writing the packet.
func (h *hook) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if pk.FixedHeader.Type != packets.Reserved {
		return fixAck(cl, pk)
	}
	c := connOf(cl)
	if c == nil || c.swap == nil {
		return pk
	}
	sw := c.swap
	if sw.state.CompareAndSwap(swapPending, swapClaimed) {
		*outboundOf(cl) = make(chan *packets.Packet, sw.capacity)
		close(sw.done)
	}
	return pk
}
