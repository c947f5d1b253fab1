//go:build !unix

package broker

import (
	"errors"
	"syscall"
)

// nonBlockingIO reports whether rawIO is available: not on this platform,
// where every write goes through the connection's writer goroutine and
// reads through net.Conn.
const nonBlockingIO = false

type rawIO struct{}

func newRawIO(syscall.RawConn) *rawIO { return nil }

func (*rawIO) write([]byte) (int, error) { return 0, errors.ErrUnsupported }

func (*rawIO) read([]byte) (int, error) { return 0, errors.ErrUnsupported }
