package identity

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/umbra-iot/umbra/device"
)

// ReasonServerRestart is the disconnect reason Open records for a device
// the database still showed as connected: the server stopped (or crashed)
// while it was connected.
const ReasonServerRestart = "server restart"

// maxReasonLen bounds a stored disconnect reason and remote address.
const maxReasonLen = 256

// Presence is a device's connection state.
type Presence struct {
	// Connected reports whether the device has a live connection.
	Connected bool `json:"connected"`
	// ConnectedAt is when the latest connection was established; zero if
	// the device never connected.
	ConnectedAt time.Time `json:"connectedAt,omitzero"`
	// DisconnectedAt is when the latest connection ended; it may predate
	// ConnectedAt while connected. Zero if never disconnected.
	DisconnectedAt time.Time `json:"disconnectedAt,omitzero"`
	// DisconnectReason says why the latest connection ended, "" after a
	// clean DISCONNECT.
	DisconnectReason string `json:"disconnectReason,omitempty"`
	// RemoteAddr is the peer address of the latest connection.
	RemoteAddr string `json:"remoteAddr,omitempty"`
	// Node is the cluster node that holds (or last held) the connection;
	// empty in single-node mode.
	Node string `json:"node,omitempty"`
}

// presenceEntry is a device's presence with the sequence number of the
// connection it describes.
type presenceEntry struct {
	Presence
	seq uint64 // broker's connection sequence number; 0 after Open
}

// Connected records that device id connected at at from remote, with the
// broker's connection sequence number seq (increasing per connection). An
// event older than the latest connect recorded (seq lower) is ignored.
// applied reports whether presence changed, i.e. whether to publish
// PresenceJSON. Presence is kept in memory and written to the database
// every Config.PresenceFlushInterval and at Close.
func (s *Store) Connected(id device.ID, seq uint64, at time.Time, remote string) (applied bool) {
	return s.record(id, seq, func(e *presenceEntry) bool {
		if seq < e.seq {
			return false
		}
		e.Connected = true
		e.ConnectedAt = at.UTC()
		e.RemoteAddr = truncate(remote, maxReasonLen)
		return true
	})
}

// Disconnected records that the connection seq of device id ended at at
// for reason ("" for a clean DISCONNECT). It is ignored when a newer
// connection (higher seq) has been recorded, so the late disconnect of a
// replaced session never marks a reconnected device offline, and when that
// connection's end is already recorded. applied reports whether presence
// changed.
func (s *Store) Disconnected(id device.ID, seq uint64, at time.Time, reason string) (applied bool) {
	return s.record(id, seq, func(e *presenceEntry) bool {
		if seq < e.seq || seq == e.seq && !e.Connected {
			return false
		}
		e.Connected = false
		e.DisconnectedAt = at.UTC()
		e.DisconnectReason = truncate(reason, maxReasonLen)
		return true
	})
}

// record applies an event of connection seq to id's presence (a new,
// zero entry if there is none) with apply, which reports whether it
// changed anything; if so, the entry takes seq and awaits the next flush.
func (s *Store) record(id device.ID, seq uint64, apply func(*presenceEntry) bool) bool {
	if s.closed.Load() {
		return false
	}
	s.presenceMu.Lock()
	defer s.presenceMu.Unlock()
	e := s.presence[id]
	if e == nil {
		e = &presenceEntry{}
	}
	if !apply(e) {
		return false
	}
	e.seq = seq
	s.presence[id] = e
	s.dirty[id] = struct{}{}
	return true
}

// ApplyPresence sets device id's presence to p, as a shared presence
// store reports it (cluster mode, where every node reads the cluster's
// presence instead of recording its own connections): it replaces what
// is known, is not written to the Storage, and orders later Connected and
// Disconnected calls after it (it resets the connection sequence).
func (s *Store) ApplyPresence(id device.ID, p Presence) {
	if s.closed.Load() {
		return
	}
	s.presenceMu.Lock()
	defer s.presenceMu.Unlock()
	s.presence[id] = &presenceEntry{Presence: p}
	delete(s.dirty, id)
}

// Presence returns device id's presence; ok is false if nothing is known.
func (s *Store) Presence(id device.ID) (p Presence, ok bool) {
	s.presenceMu.Lock()
	defer s.presenceMu.Unlock()
	if e := s.presence[id]; e != nil {
		return e.Presence, true
	}
	return Presence{}, false
}

// PresenceJSON returns the payload for state/<id>/presence:
// {"connected":true,"connectedAt":"…","disconnectedAt":"…","disconnectReason":"…"}
// with RFC 3339 UTC times and zero fields left out. It returns
// {"connected":false} for a device never seen.
func (s *Store) PresenceJSON(id device.ID) []byte {
	p, _ := s.Presence(id)
	p.RemoteAddr = "" // integrators read this topic; peer addresses stay private
	b, err := json.Marshal(p)
	if err != nil {
		// Presence holds only strings, bools and times in range.
		panic(fmt.Sprintf("identity: marshal presence: %v", err))
	}
	return b
}

// loadPresence reads persisted presence at Open. Devices the storage
// shows as connected lost their connection when the server stopped.
func (s *Store) loadPresence(ctx context.Context) error {
	all, err := s.st.Presence(ctx)
	if err != nil {
		return fmt.Errorf("identity: load presence: %w", err)
	}
	now := s.cfg.Now().UTC()
	for id, p := range all {
		if p.Connected {
			p.Connected = false
			p.DisconnectedAt = now
			p.DisconnectReason = ReasonServerRestart
			s.dirty[id] = struct{}{}
		}
		s.presence[id] = &presenceEntry{Presence: p}
	}
	return nil
}

// flushLoop writes changed presence every PresenceFlushInterval until ctx
// is cancelled.
func (s *Store) flushLoop(ctx context.Context) {
	t := time.NewTicker(s.cfg.PresenceFlushInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := s.flushPresence(ctx); err != nil && ctx.Err() == nil {
				s.log.Error("flush presence", "error", err)
			}
		}
	}
}

// flushPresence writes the presence of every device changed since the last
// flush in one change. Unless the store is anonymous, presence of devices
// that are not enrolled is not written. On failure the changes are kept
// for the next flush.
func (s *Store) flushPresence(ctx context.Context) error {
	s.flushMu.Lock()
	defer s.flushMu.Unlock()
	s.presenceMu.Lock()
	if len(s.dirty) == 0 {
		s.presenceMu.Unlock()
		return nil
	}
	batch := make(map[device.ID]Presence, len(s.dirty))
	for id := range s.dirty {
		if e := s.presence[id]; e != nil {
			batch[id] = e.Presence
		}
	}
	clear(s.dirty)
	s.presenceMu.Unlock()

	if err := s.st.SavePresence(ctx, batch, !s.cfg.Anonymous); err != nil {
		s.presenceMu.Lock()
		for id := range batch {
			s.dirty[id] = struct{}{}
		}
		s.presenceMu.Unlock()
		return fmt.Errorf("identity: flush presence: %w", closedErr(err))
	}
	return nil
}

// truncate cuts s to at most n bytes of valid UTF-8.
func truncate(s string, n int) string {
	if len(s) > n {
		s = s[:n]
	}
	return strings.ToValidUTF8(s, "")
}
