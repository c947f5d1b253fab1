//go:build unix

package broker

import (
	"io"
	"os"
	"syscall"
	"unsafe"
)

// nonBlockingIO reports whether rawIO is available.
const nonBlockingIO = true

// rawIO reads and writes a socket with raw system calls. The socket is in
// the runtime's non-blocking mode, so read(2) and write(2) return at once
// (EAGAIN when there is nothing to read or no room to write) and need
// neither the runtime's bookkeeping for blocking calls (entersyscall and
// exitsyscall) nor its monitor thread, which otherwise wakes every 20 µs
// while many such calls run and hands their processor to another thread
// when one is slow (a busy machine descheduled it). A read that finds
// nothing waits for the socket in the runtime's network poller, as
// net.Conn's does, with the read deadline.
//
// Each direction's callback is bound once, when the connection is
// accepted, so that a call allocates nothing. Writes are made under their
// outConn's mu; reads by the connection's one reading goroutine.
type rawIO struct {
	raw syscall.RawConn

	wfn  func(fd uintptr) bool // w.doWrite
	wp   []byte                // the bytes of the write in progress
	wn   int                   // what write(2) returned for them
	werr syscall.Errno

	rfn  func(fd uintptr) bool // w.doRead
	rp   []byte                // the buffer of the read in progress
	rn   int                   // what read(2) returned into it
	rerr syscall.Errno
}

func newRawIO(raw syscall.RawConn) *rawIO {
	w := &rawIO{raw: raw}
	w.wfn, w.rfn = w.doWrite, w.doRead
	return w
}

// doWrite is the callback of raw.Write: one write(2), retried on EINTR
// only; it never waits for the socket to become writable.
func (w *rawIO) doWrite(fd uintptr) bool {
	for {
		n, _, errno := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(unsafe.SliceData(w.wp))), uintptr(len(w.wp)))
		if errno != syscall.EINTR {
			w.wn, w.werr = int(n), errno
			return true
		}
	}
}

// write makes one write(2) of p and returns how much the kernel took: 0,
// not an error, when the send buffer is full.
func (w *rawIO) write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	w.wp = p
	cerr := w.raw.Write(w.wfn)
	n, errno := w.wn, w.werr
	w.wp, w.wn, w.werr = nil, 0, 0
	switch {
	case cerr != nil:
		return 0, cerr
	case errno == 0:
		return n, nil
	case errno == syscall.EAGAIN:
		return 0, nil
	}
	return 0, os.NewSyscallError("write", errno)
}

// doRead is the callback of raw.Read: one read(2), retried on EINTR; it
// reports false on EAGAIN, and raw.Read then waits until the socket is
// readable (or the read deadline passes) and calls it again.
func (w *rawIO) doRead(fd uintptr) bool {
	for {
		n, _, errno := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(unsafe.SliceData(w.rp))), uintptr(len(w.rp)))
		switch errno {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		}
		w.rn, w.rerr = int(n), errno
		return true
	}
}

// read reads into p what the socket has, waiting for at least one byte:
// net.Conn's Read, with io.EOF at the end of the stream.
func (w *rawIO) read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	w.rp = p
	cerr := w.raw.Read(w.rfn)
	n, errno := w.rn, w.rerr
	w.rp, w.rn, w.rerr = nil, 0, 0
	switch {
	case cerr != nil:
		return 0, cerr // a closed connection or the read deadline, as net.Conn reports them
	case errno != 0:
		return 0, os.NewSyscallError("read", errno)
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}
