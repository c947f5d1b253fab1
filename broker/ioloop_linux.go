//go:build linux

package broker

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Read loops: how a plain TCP client's packets are read.
//
// With a goroutine per connection, each message costs a goroutine's wake-up
// (the runtime's poller readies it, the scheduler runs it on a stack that
// no other message touched lately), a read(2) that returns the packet and
// a second one that finds the socket empty before the goroutine parks
// again. Under many publishing devices that is most of the broker's CPU
// per message beyond the kernel's.
//
// So once a plain TCP client is connected (after CONNACK: the TLS handshake,
// WebSocket framing and CONNECT still run on the connection's goroutine),
// its socket leaves the runtime's poller: the broker keeps a duplicate of
// the file descriptor, closes the original (which removes it from the
// runtime's poller) and registers the duplicate, level-triggered, with one
// of the read loops (one per two processors). A loop waits for its epoll
// instance in the runtime's poller, then reads each ready socket once (a
// read that does not empty it is reported again by the next epoll_wait)
// and hands the packets to mochi on its own goroutine, which stays hot. The connection's
// goroutine waits until the loop reports the end of the connection, and
// then tears the client down as before.
//
// Handling a packet may block: a shadow request commits to disk, a QoS 1
// publish to a persistent session waits for the ledger's commit. Where the
// broker knows that (before a Subscribe handler runs, before the ledger
// waits), it hands the loop off at once (releaseLoop): other connections'
// requests go on, and commit together. Otherwise a monitor
// checks the loops every loopCheck; a loop still handling the packets of
// the same read at two checks is handed off: the monitor detaches that
// connection from the loop (its socket is no longer read) and starts a new
// goroutine that carries on as the loop, while the old one finishes the
// connection's packets already read, in order, and then gives the
// connection back to the loop. One slow handler therefore delays its own
// connection only, as with a goroutine per connection, and for at most a
// loopCheck or two the loop's other connections.
//
// Writes are unchanged (see outConn), made with write(2) on the
// duplicate; a backlog's writer waits for the socket to become writable
// through the loop (EPOLLOUT while it waits). The read deadline (keepalive)
// is the monitor's: every keepaliveSweep it ends the connections silent for
// longer than keepalive and a half.
//
// The socket's file descriptor is read, written and closed only under its
// outConn's mu, so no call can reach a later socket that reused the
// number.

// errStopped ends a connection's reading when its client was stopped while
// its packets were handled; ReadPackets then returns nil (see
// finishHandling).
var errStopped = errors.New("client stopped")

// loopsSupported reports whether read loops are available on this
// platform.
const loopsSupported = true

const (
	// loopCheck is how often the monitor looks for a loop stuck in one
	// packet's handler (see above).
	loopCheck = 2 * time.Millisecond
	// keepaliveSweep is how often the monitor ends connections silent for
	// longer than their keepalive allows.
	keepaliveSweep = 250 * time.Millisecond
	// loopReadBuffer is the size of a loop's read buffer: the most one
	// read(2) takes from a socket.
	loopReadBuffer = 64 << 10
	// loopEvents is the most events one epoll_wait returns.
	loopEvents = 256
)

// ioLoops are a Server's read loops (see above).
type ioLoops struct {
	log   *slog.Logger
	loops []*ioLoop
	next  atomic.Uint32

	base     time.Time    // the loops' clock: now is the monotonic time since base
	handoffs atomic.Int64 // handlers handed off (see above), since Open
	served   atomic.Int64 // connections served by a loop now

	done     chan struct{}
	stopOnce sync.Once
	wg       sync.WaitGroup // the monitor and every loop goroutine
}

// ioLoop is one read loop: an epoll instance and the connections
// registered with it.
type ioLoop struct {
	set  *ioLoops
	epfd int
	file *os.File        // epfd, waited for in the runtime's poller
	raw  syscall.RawConn // file's

	mu    sync.Mutex  // guards conns and free
	conns []loopEntry // by slot, the epoll event's Fd
	free  []int32     // unused slots

	lastSeen uint64 // the monitor's: seq at its last check

	// Deliveries made while the loop handled a read, written together at
	// the end of the loop's batch (see deferDelivery), guarded by dmu.
	dmu      sync.Mutex
	deferred []deferredPacket
	pending  map[*mqtt.Client]int // deferred packets per subscriber

	// seq is odd while the loop's goroutine handles the packets of one
	// read, cur is their connection. The monitor hands the loop off by
	// moving seq from odd to even under the goroutine (see above). Both
	// are written for every read: on a cache line of their own, so that
	// the loops do not slow each other down.
	_   [64]byte
	seq atomic.Uint64
	cur atomic.Pointer[outConn]
	_   [48]byte
}

// loopEntry is a slot of a loop's table.
type loopEntry struct {
	o   *outConn
	gen int32 // the epoll event's Pad: tells a reused slot's connections apart
}

// loopState is an outConn's part in a read loop, guarded by the outConn's
// mu unless documented otherwise.
type loopState struct {
	lp         *ioLoop
	slot       int32 // in the loop's table; -1 before registration
	gen        int32 // the slot's generation when o was registered
	fd         int   // the duplicate file descriptor; valid while fdOpen
	fdOpen     bool
	events     uint32 // what epoll is to report: registered, or to register
	registered bool   // the socket is in the loop's epoll instance

	cl     *mqtt.Client
	handle mqtt.ReadFn

	handling  bool        // a goroutine handles packets of the connection now
	detached  atomic.Bool // handed off: the loop does not read the socket
	readEnded bool        // nothing more is read: end of stream, error or keepalive
	endErr    error       // what ReadPackets returns; set with readEnded or by Close
	reported  bool        // endErr was sent on ended
	ended     chan error  // ReadPackets waits on it

	partial  []byte        // the start of a packet not yet complete; the handling goroutine's
	lastRead atomic.Int64  // the loops' clock at the last read with data or the end of its handling (keepalive)
	idle     time.Duration // keepalive and a half; 0: none

	writable chan struct{} // the loop saw EPOLLOUT, or the socket closed
}

// newIOLoops starts n read loops and their monitor.
func newIOLoops(log *slog.Logger, n int) (*ioLoops, error) {
	s := &ioLoops{log: log, base: time.Now(), done: make(chan struct{})}
	for range n {
		l, err := newIOLoop(s)
		if err != nil {
			s.stop()
			return nil, err
		}
		s.loops = append(s.loops, l)
		s.wg.Add(1)
		go l.run()
	}
	s.wg.Add(1)
	go s.monitor()
	return s, nil
}

func newIOLoop(set *ioLoops) (*ioLoop, error) {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	if err := syscall.SetNonblock(epfd, true); err != nil {
		_ = syscall.Close(epfd)
		return nil, os.NewSyscallError("fcntl", err)
	}
	f := os.NewFile(uintptr(epfd), "epoll")
	raw, err := f.SyscallConn()
	if err != nil {
		_ = f.Close()
		return nil, err
	}
	return &ioLoop{set: set, epfd: epfd, file: f, raw: raw}, nil
}

// stop ends the loops and the monitor and waits for them. Every
// connection must have been closed.
func (s *ioLoops) stop() {
	s.stopOnce.Do(func() {
		close(s.done)
		for _, l := range s.loops {
			_ = l.file.Close() // a waiting loop returns
		}
	})
	s.wg.Wait()
}

// now is the loops' monotonic clock, in nanoseconds since s.base.
func (s *ioLoops) now() int64 { return int64(time.Since(s.base)) }

// servedNow is how many connections the loops serve now; 0 for nil.
func (s *ioLoops) servedNow() int64 {
	if s == nil {
		return 0
	}
	return s.served.Load()
}

// handoffsSoFar is how many handlers were handed off; 0 for nil.
func (s *ioLoops) handoffsSoFar() int64 {
	if s == nil {
		return 0
	}
	return s.handoffs.Load()
}

// pick returns the loop for a new connection.
func (s *ioLoops) pick() *ioLoop {
	return s.loops[s.next.Add(1)%uint32(len(s.loops))]
}

// epollWait is epoll_wait(2) without a timeout: it never blocks.
func epollWait(epfd int, events []syscall.EpollEvent) (int, syscall.Errno) {
	for {
		n, _, errno := syscall.RawSyscall6(syscall.SYS_EPOLL_PWAIT, uintptr(epfd), uintptr(unsafe.Pointer(unsafe.SliceData(events))), uintptr(len(events)), 0, 0, 0)
		if errno != syscall.EINTR {
			return int(n), errno
		}
	}
}

// loopBuffer is what a loop's goroutine reads into; a handoff starts a
// new goroutine, which takes one from loopBuffers.
type loopBuffer struct {
	buf    []byte
	events []syscall.EpollEvent
}

var loopBuffers = sync.Pool{New: func() any {
	return &loopBuffer{buf: make([]byte, loopReadBuffer), events: make([]syscall.EpollEvent, loopEvents)}
}}

// waiter is a loop goroutine's wait for its epoll instance; its callback
// is bound once, so that a wait allocates nothing.
type waiter struct {
	l      *ioLoop
	events []syscall.EpollEvent
	n      int
	errno  syscall.Errno
	fn     func(fd uintptr) bool // w.poll
}

func newWaiter(l *ioLoop, events []syscall.EpollEvent) *waiter {
	w := &waiter{l: l, events: events}
	w.fn = w.poll
	return w
}

func (w *waiter) poll(fd uintptr) bool {
	w.n, w.errno = epollWait(int(fd), w.events)
	return w.n > 0 || w.errno != 0
}

// wait fills w.events with ready connections, waiting for at least one in
// the runtime's poller, and returns their number. It fails when the loop
// is stopped.
func (w *waiter) wait() (int, error) {
	// Read calls poll at once, and waits only if it finds nothing.
	if err := w.l.raw.Read(w.fn); err != nil {
		return 0, err
	}
	if w.errno != 0 {
		return 0, os.NewSyscallError("epoll_wait", w.errno)
	}
	return w.n, nil
}

// run is the loop's goroutine; a new one takes over when the monitor hands
// the loop off.
func (l *ioLoop) run() {
	defer l.set.wg.Done()
	lb := loopBuffers.Get().(*loopBuffer)
	defer loopBuffers.Put(lb) // nothing refers to it when the goroutine stops being the loop
	w := newWaiter(l, lb.events)
	events, buf := lb.events, lb.buf
	for {
		n, err := w.wait()
		if err != nil {
			select {
			case <-l.set.done:
			default:
				l.set.log.Error("read loop failed", "error", err)
			}
			return
		}
		now := l.set.now()
		for i := range events[:n] {
			ev := &events[i]
			o := l.lookup(ev.Fd, ev.Pad)
			if o == nil {
				continue
			}
			if ev.Events&syscall.EPOLLOUT != 0 {
				o.sawWritable()
			}
			if ev.Events&^uint32(syscall.EPOLLOUT) != 0 && l.serve(o, buf, now, ev.Events) {
				l.flushDeferred()
				return // handed off: another goroutine is the loop now
			}
		}
		l.flushDeferred()
	}
}

// Deferred deliveries: how a loop writes what its publishers sent.
//
// A message for a subscriber is normally queued for the subscriber's
// write-loop goroutine, which wakes, writes it (with whatever else was
// queued meanwhile) and parks again: a goroutine wake-up per batch per
// subscriber. A delivery made while a read loop handles the publisher's
// read is instead kept in the loop's deferred list and written at the end
// of the loop's batch, all of a subscriber's together in one write(2)
// (the subscriber's connection is corked meanwhile), with no goroutine
// woken.
//
// Each publisher's messages to a subscriber stay in order, as MQTT
// requires: a delivery is deferred only if the subscriber's write-loop
// queue is empty (nothing queued or being written, so nothing earlier can
// be written after it), or if the list already holds one for the
// subscriber (which the queue must not overtake); and a delivery that
// cannot be deferred any more, because the loop was handed off while the
// publisher's read was handled, first writes the loop's list.

// deferredPacket is a delivery kept in a loop's deferred list.
type deferredPacket struct {
	cl *mqtt.Client
	pk *packets.Packet
}

// deferDelivery is mochi's Options.DeferDelivery (patch 22): it keeps pk
// for cl in the deferred list of the loop handling pk's publisher now, or
// reports false (mochi then queues pk for cl's write loop).
func (s *Server) deferDelivery(cl *mqtt.Client, pk *packets.Packet) bool {
	if pk.Origin == "" {
		return false
	}
	pub, ok := s.mq.Clients.Get(pk.Origin)
	if !ok {
		return false
	}
	c := connOf(pub)
	if c == nil || c.out == nil {
		return false
	}
	c.out.mu.Lock()
	ls := c.out.lp
	c.out.mu.Unlock()
	if ls == nil {
		return false
	}
	l := ls.lp
	l.dmu.Lock()
	defer l.dmu.Unlock()
	if l.seq.Load()&1 == 0 || l.cur.Load() != c.out {
		// Not (or no longer) the loop's read: what the publisher deferred
		// before must be written before this goes to the queue.
		l.flushDeferredLocked()
		return false
	}
	if l.pending[cl] == 0 && !cl.OutboundEmpty() {
		return false
	}
	if l.pending == nil {
		l.pending = map[*mqtt.Client]int{}
	}
	l.pending[cl]++
	l.deferred = append(l.deferred, deferredPacket{cl, pk})
	return true
}

// flushDeferred writes the loop's deferred deliveries.
func (l *ioLoop) flushDeferred() {
	l.dmu.Lock()
	l.flushDeferredLocked()
	l.dmu.Unlock()
}

// flushDeferredLocked writes the loop's deferred deliveries, each
// subscriber's in one write where its connection allows; l.dmu is held.
func (l *ioLoop) flushDeferredLocked() {
	if len(l.deferred) == 0 {
		return
	}
	var corked []*outConn
	for i := range l.deferred {
		d := &l.deferred[i]
		if c := connOf(d.cl); c != nil && c.out != nil && c.out.cork() {
			corked = append(corked, c.out)
		}
		if err := d.cl.WritePacket(*d.pk); err != nil {
			l.set.log.Debug("deferred delivery not written", "client", d.cl.ID, "error", err)
		}
		d.cl, d.pk = nil, nil
	}
	for _, o := range corked {
		o.uncork()
	}
	l.deferred = l.deferred[:0]
	clear(l.pending)
}

// lookup returns the connection of an event, or nil if it has gone.
func (l *ioLoop) lookup(slot, gen int32) *outConn {
	l.mu.Lock()
	defer l.mu.Unlock()
	if slot < 0 || int(slot) >= len(l.conns) || l.conns[slot].gen != gen {
		return nil
	}
	return l.conns[slot].o
}

// add registers o with the loop, reading. It fails if o's socket was
// closed meanwhile.
func (l *ioLoop) add(o *outConn) error {
	l.mu.Lock()
	var slot int32
	if n := len(l.free); n > 0 {
		slot = l.free[n-1]
		l.free = l.free[:n-1]
	} else {
		slot = int32(len(l.conns))
		l.conns = append(l.conns, loopEntry{})
	}
	gen := l.conns[slot].gen + 1
	l.conns[slot] = loopEntry{o: o, gen: gen}
	l.mu.Unlock()
	o.mu.Lock()
	defer o.mu.Unlock()
	ls := o.lp
	err := net.ErrClosed
	if ls.fdOpen && !o.closed {
		ls.slot, ls.gen = slot, gen
		// A writer may already wait for EPOLLOUT (see setEventsLocked).
		ev := syscall.EpollEvent{Events: ls.events | syscall.EPOLLIN | syscall.EPOLLRDHUP, Fd: slot, Pad: gen}
		if err = syscall.EpollCtl(l.epfd, syscall.EPOLL_CTL_ADD, ls.fd, &ev); err == nil {
			ls.events, ls.registered = ev.Events, true
			return nil
		}
		err = os.NewSyscallError("epoll_ctl", err)
	}
	ls.slot = -1
	l.remove(slot, o)
	return err
}

// remove drops slot from the loop's table.
func (l *ioLoop) remove(slot int32, o *outConn) {
	l.mu.Lock()
	if slot >= 0 && int(slot) < len(l.conns) && l.conns[slot].o == o {
		l.conns[slot].o = nil
		l.free = append(l.free, slot)
	}
	l.mu.Unlock()
}

// setEventsLocked changes what epoll reports for o: at once if o is
// registered, else when it is (add, rearmLocked); o.mu is held.
func (o *outConn) setEventsLocked(events uint32) {
	ls := o.lp
	if events == ls.events {
		return
	}
	ls.events = events
	if ls.registered {
		ev := syscall.EpollEvent{Events: events, Fd: ls.slot, Pad: ls.gen}
		_ = syscall.EpollCtl(ls.lp.epfd, syscall.EPOLL_CTL_MOD, ls.fd, &ev)
	}
}

// rearmLocked puts o's socket back into the loop's epoll instance after
// dropLocked took it out; o.mu is held.
func (o *outConn) rearmLocked() {
	ls := o.lp
	if ls.registered || !ls.fdOpen || ls.slot < 0 {
		return
	}
	ev := syscall.EpollEvent{Events: ls.events, Fd: ls.slot, Pad: ls.gen}
	if syscall.EpollCtl(ls.lp.epfd, syscall.EPOLL_CTL_ADD, ls.fd, &ev) == nil {
		ls.registered = true
	}
}

// dropLocked takes o's socket out of the loop's epoll instance after a
// hang-up or an error that the loop cannot act on now (reading has ended,
// or another goroutine handles o's packets: rearmLocked puts it back), as
// epoll reports those whatever is asked; it wakes a waiting writer, whose
// next write fails. o.mu is held.
func (o *outConn) dropLocked() {
	ls := o.lp
	if ls.registered {
		_ = syscall.EpollCtl(ls.lp.epfd, syscall.EPOLL_CTL_DEL, ls.fd, nil)
		ls.registered = false
	}
	select {
	case ls.writable <- struct{}{}:
	default:
	}
}

// sawWritable is the loop's part of a backlog's wait: it wakes the writer.
func (o *outConn) sawWritable() {
	o.mu.Lock()
	o.setEventsLocked(o.lp.events &^ syscall.EPOLLOUT)
	o.mu.Unlock()
	select {
	case o.lp.writable <- struct{}{}:
	default:
	}
}

// serve reads o's socket once and handles the complete packets read. It
// reports true when the loop was handed off while handling one: the
// calling goroutine has then served the rest of o and must stop being the
// loop.
func (l *ioLoop) serve(o *outConn, buf []byte, now int64, events uint32) bool {
	ls := o.lp
	o.mu.Lock()
	if ls.handling || ls.readEnded || o.closed || !ls.fdOpen || ls.detached.Load() {
		// Not to be read now: make sure epoll stops reporting it.
		if ls.readEnded || o.closed {
			o.setEventsLocked(ls.events &^ (syscall.EPOLLIN | syscall.EPOLLRDHUP))
		}
		if events&(syscall.EPOLLHUP|syscall.EPOLLERR) != 0 {
			o.dropLocked() // reported whatever is asked
		}
		o.mu.Unlock()
		return false
	}
	n, errno := readFD(ls.fd, buf)
	if errno == syscall.EAGAIN {
		o.mu.Unlock()
		return false
	}
	ls.handling = true
	o.mu.Unlock()
	switch {
	case errno != 0:
		o.finishHandling(os.NewSyscallError("read", errno))
		return false
	case n == 0:
		o.finishHandling(io.EOF)
		return false
	}
	ls.lastRead.Store(now)
	data := buf[:n]
	if len(ls.partial) > 0 {
		ls.partial = append(ls.partial, data...)
		data = ls.partial
	}
	l.cur.Store(o)
	seq := l.seq.Add(1)
	err := o.handleRest(data)
	// If the monitor handed the loop off meanwhile (and detached o), this
	// goroutine has served o's packets all the same; it gives o back and
	// stops being the loop.
	handedOff := !l.seq.CompareAndSwap(seq, seq+1)
	o.finishHandling(err)
	return handedOff
}

// handleRest handles the complete packets in data, in order, and keeps the
// rest as the partial packet. It returns errStopped if the client was
// stopped (see finishHandling).
func (o *outConn) handleRest(data []byte) error {
	ls := o.lp
	for {
		if ls.cl.Closed() {
			return errStopped
		}
		pk, used, err := ls.cl.ParsePacket(data)
		if err != nil {
			return err
		}
		if used == 0 {
			o.keepPartial(data)
			return nil
		}
		data = data[used:]
		if err := ls.handle(ls.cl, pk); err != nil {
			return err
		}
	}
}

// keepPartial keeps data, the start of a packet, for the next read.
func (o *outConn) keepPartial(data []byte) {
	ls := o.lp
	if len(data) == 0 {
		if cap(ls.partial) > loopReadBuffer {
			ls.partial = nil
		} else {
			ls.partial = ls.partial[:0]
		}
		return
	}
	if len(ls.partial) > 0 && &data[0] == &ls.partial[0] {
		return // the whole partial packet, still incomplete
	}
	ls.partial = append(ls.partial[:0], data...) // data may be within partial: append copies forward
}

// finishHandling ends the handling goroutine's turn on o: with err (or
// io.EOF) the connection's reading ends and ReadPackets returns it; with
// nil the socket is read again, unless the connection was closed
// meanwhile.
func (o *outConn) finishHandling(err error) {
	ls := o.lp
	if err == nil && ls.cl.Closed() {
		// Stopped while its packets were handled (a DISCONNECT): mochi's
		// own loop returns nil then, and the client's will is not sent.
		err = errStopped
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	ls.handling = false
	if err != nil && !ls.readEnded {
		ls.readEnded, ls.endErr = true, err
	}
	if ls.readEnded || o.closed {
		o.setEventsLocked(ls.events &^ (syscall.EPOLLIN | syscall.EPOLLRDHUP))
		o.reportEndLocked()
		return
	}
	ls.lastRead.Store(ls.lp.set.now()) // the keepalive counts from the end of the handling, as mochi's deadline does
	if ls.detached.Load() {
		o.setEventsLocked(ls.events | syscall.EPOLLIN | syscall.EPOLLRDHUP)
		o.rearmLocked()
		ls.detached.Store(false)
	}
}

// reportEndLocked hands ReadPackets its result, once, when no goroutine
// handles o's packets; o.mu is held.
func (o *outConn) reportEndLocked() {
	ls := o.lp
	if ls.reported || ls.handling || ls.ended == nil {
		return
	}
	err := ls.endErr
	switch {
	case err == nil:
		err = net.ErrClosed // closed while no packet was handled, as a read fails then
	case err == errStopped:
		err = nil
	case errors.Is(err, io.EOF):
		err = io.EOF // as mochi's reader reports the end of the stream
	}
	ls.reported = true
	ls.ended <- err // buffered
}

// readPackets is o's PacketReader (see conn.ReadPackets): it moves the
// socket to a read loop and waits for the end of the connection. It
// declines (ok false) when o cannot leave the runtime's poller now: a
// backlog is being written through the connection.
func (o *outConn) readPackets(loops *ioLoops, cl *mqtt.Client, buffered []byte, handle mqtt.ReadFn) (bool, error) {
	if o.raw == nil {
		return false, nil
	}
	o.mu.Lock()
	if o.writing || o.closed || o.err != nil {
		o.mu.Unlock()
		return false, nil
	}
	fd, err := dupFD(o.raw.raw)
	if err != nil {
		o.mu.Unlock()
		o.sh.log.Debug("read loop: keeping the connection's goroutine", "error", err)
		return false, nil
	}
	ls := &loopState{lp: loops.pick(), slot: -1, fd: fd, fdOpen: true, cl: cl, handle: handle,
		ended: make(chan error, 1), writable: make(chan struct{}, 1), partial: buffered}
	if ka := cl.State.Keepalive; ka > 0 {
		ls.idle = time.Duration(ka)*time.Second + time.Duration(ka)*time.Second/2 // [MQTT-3.1.2-22]
	}
	ls.lastRead.Store(loops.now())
	o.lp = ls
	o.mu.Unlock()
	// The original descriptor leaves the runtime's poller; the duplicate
	// keeps the socket open.
	_ = o.Conn.Close()
	loops.served.Add(1)
	defer loops.served.Add(-1)

	// Packets read with CONNECT are handled first, here.
	o.mu.Lock()
	ls.handling = true
	o.mu.Unlock()
	if err := o.handleRest(ls.partial); err != nil {
		o.finishHandling(err)
		return true, <-ls.ended
	}
	o.mu.Lock()
	ls.handling = false
	end := ls.readEnded || o.closed
	if end {
		o.reportEndLocked()
	}
	o.mu.Unlock()
	if !end {
		if err := ls.lp.add(o); err != nil {
			o.mu.Lock()
			if !ls.readEnded {
				ls.readEnded, ls.endErr = true, err
			}
			o.reportEndLocked()
			o.mu.Unlock()
		}
	}
	return true, <-ls.ended
}

// dupFD duplicates the socket's file descriptor, close-on-exec.
func dupFD(raw syscall.RawConn) (int, error) {
	var nfd int
	var errno syscall.Errno
	if err := raw.Control(func(fd uintptr) {
		r, _, e := syscall.Syscall(syscall.SYS_FCNTL, fd, syscall.F_DUPFD_CLOEXEC, 0)
		nfd, errno = int(r), e
	}); err != nil {
		return 0, err
	}
	if errno != 0 {
		return 0, os.NewSyscallError("fcntl", errno)
	}
	return nfd, nil
}

// readFD is one read(2) of a non-blocking socket.
func readFD(fd int, p []byte) (int, syscall.Errno) {
	for {
		n, _, errno := syscall.RawSyscall(syscall.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
		if errno != syscall.EINTR {
			return int(n), errno
		}
	}
}

// writeFD is one write(2) of a non-blocking socket: 0 and EAGAIN when its
// send buffer is full.
func writeFD(fd int, p []byte) (int, syscall.Errno) {
	for {
		n, _, errno := syscall.RawSyscall(syscall.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
		if errno != syscall.EINTR {
			if errno != 0 {
				n = 0
			}
			return int(n), errno
		}
	}
}

// writeLoopFD is Write's first attempt for a connection in a read loop;
// o.mu is held.
func (o *outConn) writeLoopFD(p []byte) (int, error) {
	if !o.lp.fdOpen {
		return 0, net.ErrClosed
	}
	n, errno := writeFD(o.lp.fd, p)
	switch errno {
	case 0, syscall.EAGAIN:
		return n, nil
	}
	return 0, os.NewSyscallError("write", errno)
}

// flushLoopFD is flush for a connection in a read loop: it writes buf,
// waiting for the socket to become writable through the loop, and fails
// when the socket accepts nothing until the write deadline.
func (o *outConn) flushLoopFD(buf []byte) error {
	ls := o.lp
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for len(buf) > 0 {
		o.mu.Lock()
		if !ls.fdOpen {
			o.mu.Unlock()
			return net.ErrClosed
		}
		n, errno := writeFD(ls.fd, buf)
		if errno == syscall.EAGAIN {
			o.setEventsLocked(ls.events | syscall.EPOLLOUT)
		}
		deadline := time.Now().Add(o.sh.writeTimeout)
		if o.lingering && o.lingerUntil.Before(deadline) {
			deadline = o.lingerUntil
		}
		o.queued -= n
		o.mu.Unlock()
		o.sh.pending.Add(-int64(n))
		buf = buf[n:]
		switch {
		case errno == 0:
			continue
		case errno != syscall.EAGAIN:
			return os.NewSyscallError("write", errno)
		}
		// Wait until the loop sees the socket writable, or the deadline.
		if timer == nil {
			timer = time.NewTimer(time.Until(deadline))
		} else {
			timer.Reset(time.Until(deadline))
		}
		select {
		case <-ls.writable:
		case <-timer.C:
			o.mu.Lock()
			lingering := o.lingering
			o.mu.Unlock()
			if lingering {
				return fmt.Errorf("backlog not written within %v of close", o.sh.linger)
			}
			return fmt.Errorf("no byte accepted by the socket for %v", o.sh.writeTimeout)
		}
	}
	return nil
}

// closeLoopFDLocked closes the socket of a connection in a read loop:
// o.mu is held.
func (o *outConn) closeLoopFDLocked() {
	ls := o.lp
	if ls.fdOpen {
		if ls.registered {
			_ = syscall.EpollCtl(ls.lp.epfd, syscall.EPOLL_CTL_DEL, ls.fd, nil)
		}
		_ = syscall.Close(ls.fd)
		ls.fdOpen, ls.registered, ls.events = false, false, 0
		ls.lp.remove(ls.slot, o)
	}
	o.reportEndLocked()
	select {
	case ls.writable <- struct{}{}: // a waiting writer sees the socket closed
	default:
	}
}

// shutReadLoopFDLocked shuts the read side of a lingering connection's
// socket; o.mu is held.
func (o *outConn) shutReadLoopFDLocked() {
	if o.lp.fdOpen {
		_ = syscall.Shutdown(o.lp.fd, syscall.SHUT_RD)
	}
	// A socket whose read side is shut is always readable.
	o.setEventsLocked(o.lp.events &^ (syscall.EPOLLIN | syscall.EPOLLRDHUP))
	o.reportEndLocked()
	select {
	case o.lp.writable <- struct{}{}: // the writer takes the linger deadline
	default:
	}
}

// monitor hands off loops stuck in a handler and ends silent connections
// (see above).
func (s *ioLoops) monitor() {
	defer s.wg.Done()
	t := time.NewTimer(loopCheck)
	defer t.Stop()
	var lastSweep time.Time
	for {
		select {
		case <-s.done:
			return
		case now := <-t.C:
			for _, l := range s.loops {
				l.check()
			}
			if now.Sub(lastSweep) >= keepaliveSweep {
				lastSweep = now
				for _, l := range s.loops {
					l.sweep(s.now())
				}
			}
			// With no connection in a loop, nothing can hold one: an idle
			// server is not woken every loopCheck.
			next := loopCheck
			if s.served.Load() == 0 {
				next = keepaliveSweep
			}
			t.Reset(next)
		}
	}
}

// check hands the loop off if its goroutine has been inside the same
// handler since the last check.
func (l *ioLoop) check() {
	seq := l.seq.Load()
	last := l.lastSeen
	l.lastSeen = seq
	if seq&1 == 0 || seq != last {
		return
	}
	l.handOff(seq, l.cur.Load())
}

// handOff hands the loop to a new goroutine if its goroutine is still
// handling the read of seq, o's: that goroutine keeps o, whose socket is
// not read until it gives o back, and stops being the loop.
func (l *ioLoop) handOff(seq uint64, o *outConn) {
	o.mu.Lock()
	if !l.seq.CompareAndSwap(seq, seq+1) {
		o.mu.Unlock()
		return
	}
	o.lp.detached.Store(true)
	o.setEventsLocked(o.lp.events &^ (syscall.EPOLLIN | syscall.EPOLLRDHUP))
	o.mu.Unlock()
	l.set.handoffs.Add(1)
	l.set.wg.Add(1) // the goroutine handing off is counted: wg is not at zero
	go l.run()
}

// releaseLoop hands off the read loop that is handling o's packets now, if
// any, at once rather than at the monitor's next checks: for a packet
// whose handling is about to wait (a commit to disk). Other connections'
// packets then go on, and their handling can share that commit.
func (o *outConn) releaseLoop() {
	o.mu.Lock()
	ls := o.lp
	o.mu.Unlock()
	if ls == nil {
		return
	}
	l := ls.lp
	seq := l.seq.Load()
	if seq&1 == 1 && l.cur.Load() == o {
		l.handOff(seq, o)
		// The new loop goroutine is this processor's next to run, which
		// it would be only once this one blocks: yield, so that the loop
		// reads on at once and this handler carries on when a processor
		// is free. Measured in BenchmarkShadowUpdate with one loop: p99
		// 515 ms without, 281 ms with (docs/benchmarks.md §10).
		runtime.Gosched()
	}
}

// releaseLoopOf is releaseLoop for cl's connection.
func releaseLoopOf(cl *mqtt.Client) {
	if cl == nil {
		return
	}
	if c := connOf(cl); c != nil && c.out != nil {
		c.out.releaseLoop()
	}
}

// sweep ends the loop's connections that have been silent for longer than
// their keepalive and a half.
func (l *ioLoop) sweep(now int64) {
	var silent []*outConn
	l.mu.Lock()
	for _, e := range l.conns {
		if e.o != nil && e.o.lp.idle > 0 && time.Duration(now-e.o.lp.lastRead.Load()) > e.o.lp.idle {
			silent = append(silent, e.o)
		}
	}
	l.mu.Unlock()
	for _, o := range silent {
		ls := o.lp
		o.mu.Lock()
		if !ls.handling && !ls.readEnded {
			ls.readEnded, ls.endErr = true, os.ErrDeadlineExceeded
			o.setEventsLocked(ls.events &^ (syscall.EPOLLIN | syscall.EPOLLRDHUP))
			o.reportEndLocked()
		}
		o.mu.Unlock()
	}
}

// maxReadLoops bounds Config.ReadLoops.
const maxReadLoops = 1024

// defaultLoops is how many read loops a Server runs: one per two
// processors (at least one). The processors a loop does not take run the
// handlers a loop hands off, the write loops and the kernel's side of
// the sockets; and deliveries are written per loop batch, so fewer loops
// write larger batches. On 2 cores one loop took 8 % less broker CPU per
// message than two in BenchmarkTelemetryFanIn (docs/benchmarks.md §10).
func defaultLoops() int {
	return max(1, runtime.GOMAXPROCS(0)/2)
}
