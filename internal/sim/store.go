package sim

import (
	"bytes"
	"sync"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"
)

// copyStore is a paho.Store that keeps packets encoded and hands out a
// fresh copy on every Get.
//
// paho v1.5.1's MemoryStore returns the very packet it was given. On a
// reconnect, paho's resume sets Dup on the stored PUBLISH while the new
// connection's writer may be encoding the same packet (it was still queued
// from before the reconnect): a data race the race detector reports in
// every test whose devices reboot with a report in flight. With copies,
// resume marks its own packet.
type copyStore struct {
	mu   sync.Mutex // guards msgs
	msgs map[string][]byte
}

var _ paho.Store = (*copyStore)(nil)

func newCopyStore() *copyStore { return &copyStore{msgs: map[string][]byte{}} }

func (s *copyStore) Open() {}

// Put encodes message; paho calls it before the packet is queued for
// writing, so reading it here races with nothing.
func (s *copyStore) Put(key string, message packets.ControlPacket) {
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
func (s *copyStore) Get(key string) packets.ControlPacket {
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

func (s *copyStore) All() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	keys := make([]string, 0, len(s.msgs))
	for k := range s.msgs {
		keys = append(keys, k)
	}
	return keys
}

func (s *copyStore) Del(key string) {
	s.mu.Lock()
	delete(s.msgs, key)
	s.mu.Unlock()
}

func (s *copyStore) Close() { s.Reset() }

func (s *copyStore) Reset() {
	s.mu.Lock()
	clear(s.msgs)
	s.mu.Unlock()
}
