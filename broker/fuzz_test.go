package broker_test

import (
	"net"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/internal/brokertest"
)

// FuzzConnection sends arbitrary bytes to a live broker on one connection
// and checks that the broker cleans the connection up and keeps serving.
func FuzzConnection(f *testing.F) {
	connect := connectPacket(v311, "fuzz", true, 30)
	f.Add([]byte{})
	f.Add(connect)
	f.Add(append(connect, publishPacket(v311, "a/b", 1, 1, []byte("x"))...))
	f.Add(append(connect, subscribePacket(v311, 1, "a/#", 1)...))
	f.Add(append(connectPacket(v5, "fuzz5", false, 0), publishPacket(v5, "a", 0, 0, nil)...))
	f.Add(fullConnectPacket(v311, "fuzz", "will/t", "u", "p"))
	f.Add([]byte{0x10, 0xff, 0xff, 0xff, 0x7f})
	f.Add([]byte("GET /mqtt HTTP/1.1\r\n\r\n"))
	f.Add(append(connect, 0xe0, 0x00)) // DISCONNECT

	b := brokertest.New(f, broker.Config{MaxPacketSize: 4096, ConnectTimeout: time.Second})
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := net.DialTimeout("tcp", b.Addr().String(), wait)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(wait))
		_, _ = c.Write(data) // the broker may close first
		c.Close()
		// No event reports that the broker has let go of a connection.
		if !eventually(func() bool { return b.Stats().ClientsConnected == 0 }) {
			t.Fatalf("ClientsConnected: got %d after the connection closed, want 0", b.Stats().ClientsConnected)
		}
		rc := dialRaw(t, b.Addr())
		if code := rc.connect(v311, "prober", true); code != 0 {
			t.Fatalf("CONNACK after fuzz input: got %#x, want 0", code)
		}
		rc.write(frame(typeDisconn<<4, nil))
		rc.expectClosed()
	})
}
