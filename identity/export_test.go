package identity

import (
	"context"
	"time"
)

// SetCANow replaces the clock ca issues certificates with.
func SetCANow(ca *CA, now func() time.Time) { ca.now = now }

// DirtyPresence returns how many devices' presence awaits a flush.
func DirtyPresence(s *Store) int {
	s.presenceMu.Lock()
	defer s.presenceMu.Unlock()
	return len(s.dirty)
}

// FlushPresence writes changed presence now.
func FlushPresence(ctx context.Context, s *Store) error { return s.flushPresence(ctx) }
