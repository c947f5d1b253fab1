package rollout

import (
	"errors"
	"fmt"
	"sync"
	"time"
	_ "time/tzdata" // window zones do not depend on the host's zone database
)

// window is a parsed Policy.Window: minutes after midnight in loc.
type window struct {
	from, to int // [from, to), to < from crosses midnight
	loc      *time.Location
}

// zones caches time.LoadLocation, which reads the zone database each call.
var zones sync.Map // string → *time.Location

func loadZone(name string) (*time.Location, error) {
	if name == "" || name == "UTC" {
		return time.UTC, nil
	}
	if l, ok := zones.Load(name); ok {
		return l.(*time.Location), nil
	}
	l, err := time.LoadLocation(name)
	if err != nil {
		return nil, err
	}
	zones.Store(name, l)
	return l, nil
}

// window parses p.Window and p.WindowTZ; errors wrap ErrInvalid.
func (p Policy) window() (window, error) {
	fh, fm, th, tm, ok := parseWindow(p.Window)
	if !ok || fh > 23 || th > 24 || fm > 59 || tm > 59 || th == 24 && tm != 0 {
		return window{}, fmt.Errorf("%w: window %q: want HH:MM-HH:MM, e.g. 02:00-05:00", ErrInvalid, p.Window)
	}
	w := window{from: fh*60 + fm, to: th*60 + tm}
	if w.from == w.to%(24*60) {
		return window{}, fmt.Errorf("%w: window %q is empty or the whole day", ErrInvalid, p.Window)
	}
	loc, err := loadZone(p.WindowTZ)
	if err == nil && loc == time.Local {
		err = errors.New("the host's zone is not allowed: name one")
	}
	if err != nil {
		return window{}, fmt.Errorf("%w: window tz %q: %v", ErrInvalid, p.WindowTZ, err)
	}
	w.loc = loc
	return w, nil
}

// CheckWindow validates a maintenance window and its zone as Policy.Window
// and Policy.WindowTZ; the error wraps ErrInvalid.
func CheckWindow(win, tz string) error {
	_, err := Policy{Window: win, WindowTZ: tz}.window()
	return err
}

// parseWindow splits "HH:MM-HH:MM" into its four numbers, digits only.
func parseWindow(s string) (fh, fm, th, tm int, ok bool) {
	if len(s) != len("00:00-00:00") || s[2] != ':' || s[5] != '-' || s[8] != ':' {
		return 0, 0, 0, 0, false
	}
	var n [4]int
	for k, at := range []int{0, 3, 6, 9} {
		hi, lo := s[at], s[at+1]
		if hi < '0' || hi > '9' || lo < '0' || lo > '9' {
			return 0, 0, 0, 0, false
		}
		n[k] = int(hi-'0')*10 + int(lo-'0')
	}
	return n[0], n[1], n[2], n[3], true
}

// contains reports whether t falls inside w.
func (w window) contains(t time.Time) bool {
	lt := t.In(w.loc)
	m := lt.Hour()*60 + lt.Minute()
	if w.from < w.to {
		return m >= w.from && m < w.to
	}
	return m >= w.from || m < w.to
}

// Waiting reports why p lets no device be notified at now ("" when it
// does): a start time not reached, or a maintenance window that is closed.
// A policy that does not validate never waits.
func (p Policy) Waiting(now time.Time) string {
	if !p.StartAt.IsZero() && now.Before(p.StartAt) {
		return "scheduled to start at " + p.StartAt.UTC().Format(time.RFC3339)
	}
	if p.Window == "" {
		return ""
	}
	w, err := p.window()
	if err != nil || w.contains(now) {
		return ""
	}
	return fmt.Sprintf("outside the maintenance window %s %s", p.Window, w.loc)
}
