//go:build unix

package broker

import (
	"errors"
	"os"
	"syscall"
)

// nonBlockingWrites reports whether writeNonBlocking is available.
const nonBlockingWrites = true

// writeNonBlocking makes one write(2) of p on raw, a socket in the
// runtime's non-blocking mode, and returns how much the kernel took: 0,
// not an error, when the send buffer is full.
func writeNonBlocking(raw syscall.RawConn, p []byte) (int, error) {
	var n int
	var err error
	if cerr := raw.Write(func(fd uintptr) bool {
		for {
			n, err = syscall.Write(int(fd), p)
			if !errors.Is(err, syscall.EINTR) {
				return true // done: never wait for the socket to become writable
			}
		}
	}); cerr != nil {
		return 0, cerr
	}
	n = max(n, 0)
	if err == nil || errors.Is(err, syscall.EAGAIN) {
		return n, nil
	}
	return n, os.NewSyscallError("write", err)
}
