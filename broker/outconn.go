package broker

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Outbound bytes: why a write to a client never blocks.
//
// mochi writes to a client's connection while holding the client's lock
// (Client.WritePacket), and a publisher takes that same lock to give a
// QoS 1 or 2 message for the client a packet ID (publishToClient calls
// Client.NextPacketID) on the publisher's goroutine. A blocking write to a
// client that stopped reading its socket would therefore stall every
// publisher of a message for that client: the shadow engine, which
// publishes while it holds a device's lock, the rollout planner, other
// devices.
//
// So every accepted connection is an outConn, under TLS and WebSocket
// framing (those write their records and frames through it), and its Write
// never blocks: it writes what the socket takes at once (one non-blocking
// write(2), no goroutine) and appends the rest to the connection's pending
// bytes, which a writer goroutine writes in the background. The writer
// exists only while there is a backlog, so an idle connection costs no
// goroutine and no buffer. Pending bytes are capped per connection (the
// device or the service limit, set at authentication): a Write that would
// exceed the cap, or a backlog the socket accepts nothing of for
// WriteTimeout, closes the connection as a slow consumer. It is counted
// in Stats.SlowConsumers and logged once; its OnDisconnect cause matches
// ErrSlowConsumer.
//
// Deadlines: the writer owns the write deadline (SetWriteDeadline from
// above is ignored: no Write blocks), and SetDeadline sets only the read
// deadline (mochi's keepalive). Close lets the writer finish a backlog for
// up to closeLinger (the DISCONNECT or CONNACK mochi wrote just before),
// with the read side shut at once; abort closes the socket immediately.

// closeLinger bounds how long a closed connection's backlog may still be
// written.
const closeLinger = time.Second

// maxSpare is the largest write buffer a connection keeps for reuse while
// its writer runs; larger ones are left to the garbage collector.
const maxSpare = 64 << 10

// outShared is what every outConn of a Server shares: settings, counters
// and the logger.
type outShared struct {
	log          *slog.Logger
	writeTimeout time.Duration
	linger       time.Duration // how long Close lets a backlog be written: closeLinger, or a test's
	deviceLimit  int           // pending-bytes cap before authentication and for devices

	loops *ioLoops // the read loops of plain TCP connections; nil: a goroutine reads each

	pending atomic.Int64 // bytes accepted by Write and not yet written to sockets, now
	shed    atomic.Int64 // connections closed as slow consumers, since Open
}

// outConn is an accepted connection whose Write never blocks (see above).
type outConn struct {
	net.Conn            // the accepted TCP connection
	raw      *rawIO     // raw system calls (see rawIO); nil: writes go through the writer, reads through Conn
	lp       *loopState // set, under mu, when a read loop serves the connection (see ioLoops); its socket is then lp's, Conn is closed
	sh       *outShared

	mu          sync.Mutex // guards the fields below
	pending     []byte     // bytes accepted by Write and not yet taken by the writer
	spare       []byte     // an empty buffer for pending, kept while the writer runs
	queued      int        // bytes accepted by Write and not yet written: pending plus the writer's rest
	limit       int        // cap of queued
	owner       string     // client ID and identity, for the log line; "" before authentication
	writing     bool       // the writer goroutine runs
	corked      bool       // Write only collects: a read loop writes its deferred deliveries (see uncork)
	closed      bool       // Close or abort was called
	lingering   bool       // closed with a backlog: the writer closes the socket when done
	lingerUntil time.Time  // deadline of a lingering writer
	err         error      // sticky: every later Write fails with it
	slow        error      // why the connection was shed; nil if it was not

	writer sync.WaitGroup // the writer goroutine

	// The read deadline (see SetDeadline), guarded by mu: the last one
	// asked for, and the one armed.
	asked, armed time.Time
	deadlineSet  bool
}

// newOutConn wraps c, an accepted connection.
func newOutConn(c net.Conn, sh *outShared) *outConn {
	o := &outConn{Conn: c, sh: sh, limit: sh.deviceLimit}
	if sc, ok := c.(syscall.Conn); ok && nonBlockingIO {
		if raw, err := sc.SyscallConn(); err == nil {
			o.raw = newRawIO(raw)
		}
	}
	return o
}

// setOwner sets the connection's pending-bytes cap and names it for the
// slow-consumer log line; the hook calls it at authentication.
func (o *outConn) setOwner(limit int, owner string) {
	o.mu.Lock()
	o.limit, o.owner = limit, owner
	o.mu.Unlock()
}

// slowConsumer returns the reason the connection was shed as a slow
// consumer (matching ErrSlowConsumer), or nil.
func (o *outConn) slowConsumer() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.slow
}

// Write accepts all of p or fails; it never waits for the peer.
func (o *outConn) Write(p []byte) (int, error) {
	o.mu.Lock()
	if o.err != nil || o.closed {
		err := o.err
		if err == nil {
			err = net.ErrClosed // but a lingering writer goes on
		}
		o.mu.Unlock()
		return 0, err
	}
	n := 0
	if !o.writing && !o.corked && (o.raw != nil || o.lp != nil) && len(p) > 0 {
		var err error
		if o.lp != nil {
			n, err = o.writeLoopFD(p)
		} else {
			n, err = o.raw.write(p)
		}
		if err != nil {
			o.err = err
			o.mu.Unlock()
			return n, err
		}
		if n == len(p) {
			o.mu.Unlock()
			return n, nil
		}
	}
	rest := p[n:]
	if o.queued+len(rest) > o.limit {
		err := o.shedLocked(fmt.Errorf("%w: %d bytes pending, cap %d", ErrSlowConsumer, o.queued+len(rest), o.limit))
		return n, err // shedLocked unlocked o.mu
	}
	o.pending = append(o.pending, rest...)
	o.queued += len(rest)
	o.sh.pending.Add(int64(len(rest)))
	if !o.writing && !o.corked {
		o.writing = true
		o.writer.Go(o.writeLoop)
	}
	o.mu.Unlock()
	return len(p), nil
}

// cork makes Write collect what it is given, for uncork to write at once.
// It reports false if o was corked already (by another read loop, which
// uncorks it) or cannot be: it is closed, or not in a read loop.
func (o *outConn) cork() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.corked || o.closed || o.err != nil || o.lp == nil {
		return false
	}
	o.corked = true
	return true
}

// uncork writes what Write collected since cork: one write(2), the rest
// by the writer.
func (o *outConn) uncork() {
	o.mu.Lock()
	o.corked = false
	if o.writing || len(o.pending) == 0 || o.err != nil {
		o.mu.Unlock()
		return
	}
	buf := o.pending
	n, err := o.writeLoopFD(buf)
	if err != nil {
		o.err = err
		o.mu.Unlock()
		return
	}
	o.queued -= n
	o.sh.pending.Add(-int64(n))
	if n == len(buf) {
		o.pending = buf[:0]
		if cap(buf) > maxSpare {
			o.pending = nil
		}
		o.mu.Unlock()
		return
	}
	o.pending = append(buf[:0], buf[n:]...)
	o.writing = true
	o.writer.Go(o.writeLoop)
	o.mu.Unlock()
}

// shedLocked closes the connection as a slow consumer for reason, counts
// and logs it, and returns the error later Writes get. It is called with
// o.mu held and releases it. The count and the log line come before mu is
// released, under which slowConsumer reads the reason: whoever learns
// that the connection was shed (OnDisconnect's cause) also sees them.
func (o *outConn) shedLocked(reason error) error {
	o.err, o.slow = reason, reason
	o.closed, o.lingering = true, false
	o.sh.shed.Add(1)
	owner := o.owner
	if owner == "" {
		owner = "(not authenticated)"
	}
	o.sh.log.Warn("slow consumer disconnected: the client does not read what it is sent",
		"client", owner, "remote", o.RemoteAddr().String(), "pending_bytes", o.queued, "reason", reason)
	o.mu.Unlock()
	o.closeSocket() // the writer's write fails at once; mochi's read loop ends
	return reason
}

// closeSocket closes the socket now: the connection's, or its read loop's
// duplicate.
func (o *outConn) closeSocket() {
	o.mu.Lock()
	if o.lp != nil {
		o.closeLoopFDLocked()
		o.mu.Unlock()
		return
	}
	o.mu.Unlock()
	_ = o.Conn.Close()
}

// writeLoop writes the backlog until it is empty or the connection fails.
func (o *outConn) writeLoop() {
	o.mu.Lock()
	for len(o.pending) > 0 && o.err == nil {
		buf := o.pending
		o.pending, o.spare = o.spare, nil
		o.mu.Unlock()
		err := o.flush(buf)
		o.mu.Lock()
		if err != nil {
			if o.err == nil && !o.lingering && !o.closed {
				o.shedLocked(fmt.Errorf("%w: %w", ErrSlowConsumer, err))
				o.mu.Lock()
			} else if o.err == nil {
				o.err = err
			}
			break
		}
		if cap(buf) <= maxSpare {
			o.spare = buf[:0]
		}
	}
	o.writing = false
	left := o.queued
	o.queued, o.pending, o.spare = 0, nil, nil
	closeNow := o.lingering
	o.lingering = false
	o.mu.Unlock()
	o.sh.pending.Add(-int64(left))
	if closeNow {
		o.closeSocket()
	}
}

// flush writes buf to the socket. It fails when the socket accepts
// nothing until the write deadline: WriteTimeout, or closeLinger after
// Close.
func (o *outConn) flush(buf []byte) error {
	o.mu.Lock()
	inLoop := o.lp != nil
	o.mu.Unlock()
	if inLoop {
		return o.flushLoopFD(buf)
	}
	for len(buf) > 0 {
		o.mu.Lock()
		deadline := time.Now().Add(o.sh.writeTimeout)
		if o.lingering && o.lingerUntil.Before(deadline) {
			deadline = o.lingerUntil
		}
		_ = o.Conn.SetWriteDeadline(deadline) // under mu: Close may shorten it
		o.mu.Unlock()
		n, err := o.Conn.Write(buf)
		buf = buf[n:]
		o.mu.Lock()
		o.queued -= n
		o.mu.Unlock()
		o.sh.pending.Add(-int64(n))
		var ne net.Error
		switch {
		case err == nil:
		case n > 0 && errors.As(err, &ne) && ne.Timeout():
			// Slow but moving: the peer reads. Try again with a new deadline.
		case errors.As(err, &ne) && ne.Timeout():
			return fmt.Errorf("no byte accepted by the socket for %v", o.sh.writeTimeout)
		default:
			return err
		}
	}
	return nil
}

// Close closes the connection. A backlog is still written for up to
// closeLinger (the read side is shut at once, so readers return); the
// socket is closed when it is done.
func (o *outConn) Close() error {
	o.mu.Lock()
	if o.closed {
		o.mu.Unlock()
		return nil
	}
	o.closed = true
	if o.lp != nil {
		if o.writing && o.err == nil {
			o.lingering = true
			o.lingerUntil = time.Now().Add(o.sh.linger)
			o.shutReadLoopFDLocked()
		} else {
			o.closeLoopFDLocked()
		}
		o.mu.Unlock()
		return nil
	}
	if o.writing && o.err == nil {
		o.lingering = true
		o.lingerUntil = time.Now().Add(o.sh.linger)
		_ = o.Conn.SetWriteDeadline(o.lingerUntil)
		o.mu.Unlock()
		if cr, ok := o.Conn.(interface{ CloseRead() error }); ok {
			_ = cr.CloseRead()
		} else {
			_ = o.Conn.SetReadDeadline(time.Now()) // readers return a timeout
		}
		return nil
	}
	o.mu.Unlock()
	return o.Conn.Close()
}

// abort closes the socket now, dropping any backlog, and waits for the
// writer. It is idempotent.
func (o *outConn) abort() {
	o.mu.Lock()
	o.closed, o.lingering = true, false
	if o.err == nil {
		o.err = net.ErrClosed
	}
	o.mu.Unlock()
	o.closeSocket()
	o.writer.Wait()
}

// finish closes the connection (letting a backlog linger), waits for the
// writer and then closes the socket if it is still open.
func (o *outConn) finish() {
	_ = o.Close()
	o.writer.Wait()
	o.abort()
}

// Read reads from the socket (see rawIO), or through the connection
// without raw system calls.
func (o *outConn) Read(p []byte) (int, error) {
	if o.raw != nil {
		return o.raw.read(p)
	}
	return o.Conn.Read(p)
}

// SetDeadline sets the read deadline only: the writer owns the write
// deadline. mochi sets a connection's deadline (keepalive and a half)
// before it reads each packet; resetting the runtime's timer that often
// costs a few percent of the broker's CPU under load, so a deadline is
// armed up to deadlineSlack later than asked, and a request that falls
// between the asked and the armed deadline changes nothing. A client is
// therefore disconnected for silence at most deadlineSlack (and an
// eighth of its keepalive interval) later than MQTT's keepalive and a
// half, never earlier; an earlier deadline, or none, is set at once.
func (o *outConn) SetDeadline(t time.Time) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.lp != nil {
		return nil // the read loop's monitor applies the keepalive
	}
	if o.deadlineSet && (t.Equal(o.asked) || (!t.IsZero() && !o.armed.IsZero() && !t.Before(o.asked) && !t.After(o.armed))) {
		o.asked = t
		return nil
	}
	armed := t
	if !t.IsZero() {
		armed = t.Add(min(deadlineSlack, time.Until(t)/8))
	}
	if err := o.Conn.SetReadDeadline(armed); err != nil {
		o.deadlineSet = false
		return err
	}
	o.asked, o.armed, o.deadlineSet = t, armed, true
	return nil
}

// deadlineSlack is the most a read deadline is armed later than asked
// (see SetDeadline).
const deadlineSlack = time.Second

// setExactDeadline sets the read deadline to t, without SetDeadline's
// slack: for the deadline of the TLS handshake and CONNECT.
func (o *outConn) setExactDeadline(t time.Time) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.deadlineSet = false
	return o.Conn.SetReadDeadline(t)
}

// SetWriteDeadline does nothing: Write never blocks, and the writer sets
// its own deadline (WriteTimeout).
func (o *outConn) SetWriteDeadline(time.Time) error { return nil }

// outListener wraps the connections a net.Listener accepts in outConns
// (for the WebSocket listener's HTTP server, whose hijacked connections
// reach mochi).
type outListener struct {
	net.Listener
	sh *outShared
}

// Accept implements net.Listener.
func (l outListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return newOutConn(c, l.sh), nil
}
