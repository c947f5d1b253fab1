//go:build unix

package main

import (
	"os"

	"golang.org/x/sys/unix"
)

// ttyColumns is the width in columns of the terminal f is, 0 when f is
// not a terminal or does not say.
func ttyColumns(f *os.File) int {
	ws, err := unix.IoctlGetWinsize(int(f.Fd()), unix.TIOCGWINSZ)
	if err != nil {
		return 0
	}
	return int(ws.Col)
}
