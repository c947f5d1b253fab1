package broker

import (
	"net"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
)

// TestEnlargeQueue drives the queue replacement directly, including the
// cases no black-box test can reach: a write loop that has not started
// (the swap is abandoned, and the late write loop must not perform it) and
// a closed client.
func TestEnlargeQueue(t *testing.T) {
	if !outboundOK {
		t.Fatal("mochi's Client.State.outbound not found: service queues are disabled")
	}
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
			sent := atomic.LoadInt64(&s.mq.Info.PacketsSent)

			got := s.hook.enlargeQueue(cl, c, 1000, 50*time.Millisecond)
			if got != tc.want {
				t.Errorf("enlargeQueue: got %t, want %t", got, tc.want)
			}
			if !tc.writeLoop {
				// A late write loop takes the abandoned sentinel and must
				// leave the queue alone.
				startLoop()
				q := outboundOf(cl)
				deadline := time.Now().Add(5 * time.Second)
				for len(*q) > 0 && time.Now().Before(deadline) {
					time.Sleep(time.Millisecond)
				}
				if n := len(*q); n != 0 {
					t.Fatalf("queue length: got %d, want 0 (sentinel consumed)", n)
				}
			}
			if got := cap(*outboundOf(cl)); got != tc.wantCap {
				t.Errorf("queue capacity: got %d, want %d", got, tc.wantCap)
			}
			if got := atomic.LoadInt64(&s.mq.Info.PacketsSent); got != sent {
				t.Errorf("PacketsSent: got %d, want %d (the sentinel never reaches the wire)", got, sent)
			}
		})
	}
}

var _ mqtt.Hook = (*hook)(nil)
