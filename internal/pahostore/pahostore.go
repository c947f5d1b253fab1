package pahostore

import (
	"bytes"
	"sync"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"
)

// Store is a paho.Store that keeps packets encoded and hands out a
// fresh copy on every Get (see the package doc).
type Store struct {
	mu   sync.Mutex // guards msgs
	msgs map[string][]byte
}

var _ paho.Store = (*Store)(nil)

// New returns an empty Store.
func New() *Store { return &Store{msgs: map[string][]byte{}} }

// Open is paho's; the Store needs no opening.
func (s *Store) Open() {}

// Put encodes message; paho calls it before the packet is queued for
// writing, so reading it here races with nothing.
func (s *Store) Put(key string, message packets.ControlPacket) {
	var b bytes.Buffer
	if err := message.Write(&b); err != nil {
		return // cannot happen for packets paho built; a lost entry only costs a resend
	}
	s.mu.Lock()
	s.msgs[key] = b.Bytes()
	s.mu.Unlock()
}

// Get decodes a new packet, or returns nil when key is unknown (as
// MemoryStore does).
func (s *Store) Get(key string) packets.ControlPacket {
	s.mu.Lock()
	b, ok := s.msgs[key]
	s.mu.Unlock()
	if !ok {
		return nil
	}
	p, err := packets.ReadPacket(bytes.NewReader(b))
	if err != nil {
		return nil
	}
	return p
}

// All returns the keys held.
func (s *Store) All() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	keys := make([]string, 0, len(s.msgs))
	for k := range s.msgs {
		keys = append(keys, k)
	}
	return keys
}

// Del removes key.
func (s *Store) Del(key string) {
	s.mu.Lock()
	delete(s.msgs, key)
	s.mu.Unlock()
}

// Close empties the Store.
func (s *Store) Close() { s.Reset() }

// Reset empties the Store.
func (s *Store) Reset() {
	s.mu.Lock()
	clear(s.msgs)
	s.mu.Unlock()
}
