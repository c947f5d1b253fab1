package broker

import (
	"net"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// TestEnlargeQueue drives the queue replacement directly, including the
// cases no black-box test can reach: a write loop that has not started
// (the request times out, and the late write loop must not find it) and a
// closed client.
func TestEnlargeQueue(t *testing.T) {
	tests := []struct {
		name      string
		writeLoop bool // start the write loop before enlargeQueue
		closed    bool
		want      bool
		wantCap   int
	}{
		{"write loop running", true, false, true, 1000},
		{"write loop not running", false, false, false, int(DefaultClientWritesPending)},
		{"client closed", true, true, false, int(DefaultClientWritesPending)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Open(t.Context(), Config{Auth: stubAuth{}})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close(t.Context())
			server, client := net.Pipe()
			defer client.Close()
			c := &conn{Conn: server, service: true}
			cl := s.mq.NewClient(c, "test", "svc-1", false)
			loopDone := make(chan struct{})
			startLoop := func() {
				go func() {
					defer close(loopDone)
					cl.WriteLoop()
				}()
			}
			defer func() {
				cl.Stop(nil)
				<-loopDone
			}()
			if tc.writeLoop {
				startLoop()
			}
			if tc.closed {
				cl.Stop(nil)
			}
			got := s.hook.enlargeQueue(cl, 1000, 50*time.Millisecond)
			if got != tc.want {
				t.Errorf("enlargeQueue: got %t, want %t", got, tc.want)
			}
			if !tc.writeLoop {
				// A late write loop must find no request left over: the
				// queue it serves keeps its size.
				startLoop()
				pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingresp}}
				if !cl.QueueOutbound(&pk) {
					t.Fatal("QueueOutbound: queue full")
				}
				readPacket(t, client) // the write loop runs
			}
			if got := cl.OutboundCapacity(); got != tc.wantCap {
				t.Errorf("queue capacity: got %d, want %d", got, tc.wantCap)
			}
		})
	}
}

// readPacket reads one packet's bytes from c, with a deadline.
func readPacket(t *testing.T, c net.Conn) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 2)
	if _, err := c.Read(buf); err != nil {
		t.Fatalf("read the queued packet: %v", err)
	}
}

var _ mqtt.Hook = (*hook)(nil)
