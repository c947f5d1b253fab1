//go:build linux

package main

import (
	"os"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/umbra-iot/umbra/internal/rolloutview"
)

// openPTY opens a pseudo-terminal pair and returns its terminal side,
// cols wide.
func openPTY(t *testing.T, cols uint16) *os.File {
	t.Helper()
	ptmx, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("open /dev/ptmx: %v (the test needs a Linux pty)", err)
	}
	t.Cleanup(func() { ptmx.Close() })
	if err := unix.IoctlSetPointerInt(int(ptmx.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(ptmx.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	pts, err := os.OpenFile("/dev/pts/"+strconv.Itoa(n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pts.Close() })
	if err := unix.IoctlSetWinsize(int(pts.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: 24, Col: cols}); err != nil {
		t.Fatal(err)
	}
	return pts
}

// TestTermWidth: the live view's width is the terminal's own (bash does
// not export $COLUMNS), one column short so a full line never wraps;
// $COLUMNS and then the default apply only when the output is no
// terminal.
func TestTermWidth(t *testing.T) {
	t.Setenv("COLUMNS", "") // as bash leaves it
	if got := termWidth(openPTY(t, 57)); got != 56 {
		t.Errorf("width on a 57-column terminal = %d, want 56", got)
	}
	if got := termWidth(openPTY(t, 5)); got != rolloutview.MinWidth {
		t.Errorf("width on a 5-column terminal = %d, want the minimum %d", got, rolloutview.MinWidth)
	}
	f, err := os.Create(t.TempDir() + "/out")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if got := termWidth(f); got != rolloutview.DefaultWidth {
		t.Errorf("width of a file = %d, want the default %d", got, rolloutview.DefaultWidth)
	}
	t.Setenv("COLUMNS", "132")
	if got := termWidth(f); got != 132 {
		t.Errorf("width of a file with COLUMNS=132 = %d, want 132", got)
	}
}
