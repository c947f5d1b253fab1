//go:build unix

package broker

import (
	"errors"
	"os"
	"syscall"
)

// nonBlockingWrites reports whether rawWriter is available.
const nonBlockingWrites = true

// rawWriter makes non-blocking writes on a socket. Its callback is bound
// once, when the connection is accepted, so that a write allocates
// nothing; it is used under its outConn's mu only.
type rawWriter struct {
	raw syscall.RawConn
	fn  func(fd uintptr) bool // w.do
	p   []byte                // the bytes of the write in progress
	n   int                   // what write(2) returned for them
	err error
}

func newRawWriter(raw syscall.RawConn) *rawWriter {
	w := &rawWriter{raw: raw}
	w.fn = w.do
	return w
}

// do is the callback of raw.Write: one write(2), retried on EINTR only.
func (w *rawWriter) do(fd uintptr) bool {
	for {
		w.n, w.err = syscall.Write(int(fd), w.p)
		if !errors.Is(w.err, syscall.EINTR) {
			return true // done: never wait for the socket to become writable
		}
	}
}

// write makes one write(2) of p on the socket, which is in the runtime's
// non-blocking mode, and returns how much the kernel took: 0, not an
// error, when the send buffer is full.
func (w *rawWriter) write(p []byte) (int, error) {
	w.p = p
	cerr := w.raw.Write(w.fn)
	n, err := max(w.n, 0), w.err
	w.p, w.n, w.err = nil, 0, nil
	if cerr != nil {
		return 0, cerr
	}
	if err == nil || errors.Is(err, syscall.EAGAIN) {
		return n, nil
	}
	return n, os.NewSyscallError("write", err)
}
