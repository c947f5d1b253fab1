//go:build !unix

package broker

import (
	"errors"
	"syscall"
)

// nonBlockingWrites reports whether rawWriter is available: not on this
// platform, where every write goes through the connection's writer
// goroutine.
const nonBlockingWrites = false

type rawWriter struct{}

func newRawWriter(syscall.RawConn) *rawWriter { return nil }

func (*rawWriter) write([]byte) (int, error) { return 0, errors.ErrUnsupported }
