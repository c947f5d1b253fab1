package natstest

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// Usage is a process's CPU time and memory, from /proc (zero where /proc
// is missing), for benchmarks that measure the servers beside them.
type Usage struct {
	CPU          time.Duration // user + system, since the process started
	RSS, PeakRSS int64         // bytes: VmRSS and VmHWM
}

// ProcUsage reads pid's Usage. CPU times are in clock ticks of 10 ms
// (Linux's USER_HZ).
func ProcUsage(pid int) Usage {
	var u Usage
	if stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
		if i := bytes.LastIndexByte(stat, ')'); i > 0 {
			if f := strings.Fields(string(stat[i+1:])); len(f) > 12 { // f[11], f[12]: utime, stime
				ut, _ := strconv.ParseInt(f[11], 10, 64)
				st, _ := strconv.ParseInt(f[12], 10, 64)
				u.CPU = time.Duration(ut+st) * 10 * time.Millisecond
			}
		}
	}
	if status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid)); err == nil {
		for line := range strings.SplitSeq(string(status), "\n") {
			for field, dst := range map[string]*int64{"VmRSS:": &u.RSS, "VmHWM:": &u.PeakRSS} {
				if rest, ok := strings.CutPrefix(line, field); ok {
					kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
					*dst = kb << 10
				}
			}
		}
	}
	return u
}

// ResetPeakRSS resets pid's VmHWM to its current RSS (Linux clear_refs 5);
// it reports whether that worked.
func ResetPeakRSS(pid int) bool {
	return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0) == nil
}
