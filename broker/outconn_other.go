//go:build !unix

package broker

import (
	"errors"
	"syscall"
)

// nonBlockingWrites reports whether writeNonBlocking is available: not on
// this platform, where every write goes through the connection's writer
// goroutine.
const nonBlockingWrites = false

func writeNonBlocking(syscall.RawConn, []byte) (int, error) {
	return 0, errors.ErrUnsupported
}
