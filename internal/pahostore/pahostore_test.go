package pahostore

import (
	"testing"

	"github.com/eclipse/paho.mqtt.golang/packets"
)

func TestStoreHandsOutCopies(t *testing.T) {
	s := New()
	p := packets.NewControlPacket(packets.Publish).(*packets.PublishPacket)
	p.TopicName = "state/d1/update"
	p.Qos = 1
	p.MessageID = 7
	p.Payload = []byte(`{"state":{}}`)
	s.Put("o.7", p)

	a, ok := s.Get("o.7").(*packets.PublishPacket)
	if !ok {
		t.Fatalf("Get: got %T, want *packets.PublishPacket", s.Get("o.7"))
	}
	if a == p {
		t.Fatal("Get returned the packet given to Put, want a copy")
	}
	if a.TopicName != p.TopicName || a.MessageID != 7 || a.Qos != 1 || string(a.Payload) != string(p.Payload) {
		t.Fatalf("Get: got %v, want %v", a, p)
	}
	a.Dup = true // what paho's resume does
	if b := s.Get("o.7").(*packets.PublishPacket); b.Dup || p.Dup {
		t.Fatalf("Dup set on one copy leaked: stored %v, original %v; want false", b.Dup, p.Dup)
	}
	if got := s.All(); len(got) != 1 || got[0] != "o.7" {
		t.Fatalf("All: got %v, want [o.7]", got)
	}
	s.Del("o.7")
	if s.Get("o.7") != nil || len(s.All()) != 0 {
		t.Fatal("after Del: entry still there")
	}
	s.Put("o.8", p)
	s.Reset()
	if len(s.All()) != 0 {
		t.Fatal("after Reset: entries left")
	}
}
