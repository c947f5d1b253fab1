//go:build unix

package brokertest

import "syscall"

// smallReceiveBuffer shrinks a socket's receive buffer before it connects,
// so that a client that stops reading fills it quickly.
func smallReceiveBuffer(fd uintptr) error {
	return syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 1024)
}
