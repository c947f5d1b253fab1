package identity

import (
	"context"
	"errors"
	"time"

	"github.com/umbra-iot/umbra/device"
)

// NameWatcher is implemented by a Storage that other servers change too
// (cluster mode: identity/natsstore). WatchNames reports, from the call on,
// the name of every device or token whose record any server changed
// (created, replaced or deleted), until ctx ends or the feed fails; then
// it closes the channel. A name may be reported more than once.
//
// A Store whose Storage implements it keeps what Allow and Authenticate
// check in step with the other servers: it re-reads each reported name's
// record, and tells Config.OnRevoke when another server ended a
// credential (a device removed or its secret rotated, a token revoked),
// so the sessions of this server that used it are disconnected too. When
// the feed fails it starts it again and re-reads every record.
type NameWatcher interface {
	WatchNames(ctx context.Context) (<-chan string, error)
}

// watchRetry is how long the Store waits before starting a failed feed
// again.
const watchRetry = time.Second

// watchLoop refreshes the names ch reports until ctx ends, starting the
// feed again (and resynchronising every name) when it fails.
func (s *Store) watchLoop(ctx context.Context, w NameWatcher, ch <-chan string) {
	for {
		for name := range ch {
			s.refresh(ctx, name)
		}
		for {
			select {
			case <-ctx.Done():
				return
			case <-time.After(watchRetry):
			}
			var err error
			if ch, err = w.WatchNames(ctx); err == nil {
				break
			}
			s.log.Warn("identity change feed", "err", err)
		}
		if err := s.resync(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("identity resync after the change feed failed", "err", err)
		}
	}
}

// refresh re-reads name's record into current and tells OnRevoke if the
// credential it held ended.
func (s *Store) refresh(ctx context.Context, name string) {
	s.credMu.Lock()
	old := s.currentOf(name)
	r, err := s.st.Get(ctx, name)
	var next *credential
	switch {
	case err == nil:
		next = r.credential()
	case !errors.Is(err, ErrNotFound):
		s.credMu.Unlock()
		if ctx.Err() == nil {
			s.log.Warn("identity refresh", "name", name, "err", err)
		}
		return
	}
	s.setCurrent(name, next)
	s.credMu.Unlock()
	if old == nil || next != nil && next.role == old.role && next.secret == old.secret && next.enrolment == old.enrolment {
		return
	}
	p := Principal{Role: old.role, Name: name}
	if old.device {
		p.Device = device.ID(name)
	}
	reason := RevokeRotated
	switch {
	case next == nil && old.device:
		reason = RevokeRemoved
		s.presenceMu.Lock()
		delete(s.presence, p.Device)
		delete(s.dirty, p.Device)
		s.presenceMu.Unlock()
	case next == nil:
		reason = RevokeRevoked
	case next.enrolment != old.enrolment || next.role != old.role:
		reason = RevokeRemoved // removed and enrolled (or created) again
	}
	s.log.Info("credential ended on another server", "name", name, "reason", reason)
	s.revoked(ctx, p, reason)
}

// resync refreshes every name the storage holds and every name current
// holds: what a failed feed may have missed.
func (s *Store) resync(ctx context.Context) error {
	names := map[string]bool{}
	s.current.Range(func(k, _ any) bool {
		names[k.(string)] = true
		return true
	})
	collect := func(r Record) { names[r.Name] = true }
	if err := s.scanDevices(ctx, collect); err != nil {
		return err
	}
	if err := s.scan(ctx, s.st.Tokens, collect); err != nil {
		return err
	}
	for name := range names {
		s.refresh(ctx, name)
	}
	return nil
}
