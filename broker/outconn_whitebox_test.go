package broker

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"net"
	"slices"
	"syscall"
	"testing"
	"time"
)

// tcpPair returns the two ends of a loopback TCP connection: the server
// end wrapped in an outConn sharing sh, and the client end, whose receive
// buffer is as small as the kernel allows. Both are closed on cleanup.
func tcpPair(t *testing.T, sh *outShared) (*outConn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) {
			_ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 1024)
		})
	}}
	client, err := d.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	o := newOutConn(server, sh)
	t.Cleanup(func() {
		o.abort()
		client.Close()
	})
	return o, client
}

func testShared(limit int, writeTimeout time.Duration) *outShared {
	return &outShared{log: slog.New(slog.DiscardHandler), writeTimeout: writeTimeout, linger: closeLinger, deviceLimit: limit}
}

// pattern returns n bytes that differ at every offset modulo 251, so a
// reordered, lost or duplicated chunk is noticed.
func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i % 251)
	}
	return b
}

// TestOutConnNeverBlocks writes far more than the socket buffers hold to
// a peer that is not reading: every Write returns at once, the backlog is
// counted, and once the peer reads it gets every byte in order, after
// which the writer goroutine is gone.
func TestOutConnNeverBlocks(t *testing.T) {
	sh := testShared(64<<20, time.Minute)
	o, client := tcpPair(t, sh)
	want := pattern(8 << 20) // more than the kernel's socket buffers (at most 4 MiB each way)
	for chunk := range slices.Chunk(want, 1000) {
		n, err := o.Write(chunk)
		if n != len(chunk) || err != nil {
			t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(chunk))
		}
	}
	if got := sh.pending.Load(); got == 0 {
		t.Fatalf("pending bytes 0 after writing %d bytes to a peer that reads nothing", len(want))
	}
	// Now read, with a receive buffer that no longer makes the transfer
	// crawl.
	if err := client.(*net.TCPConn).SetReadBuffer(4 << 20); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(want))
	_ = client.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.ReadFull(client, got); err != nil {
		t.Fatalf("read: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("bytes read differ from bytes written")
	}
	o.writer.Wait() // the writer ends once the backlog is written
	if p := sh.pending.Load(); p != 0 {
		t.Errorf("pending bytes %d after the peer read everything, want 0", p)
	}
	o.mu.Lock()
	writing, pending, spare := o.writing, o.pending, o.spare
	o.mu.Unlock()
	if writing || pending != nil || spare != nil {
		t.Errorf("idle connection keeps writing=%t, %d pending and %d spare bytes of capacity", writing, cap(pending), cap(spare))
	}
}

// TestOutConnShed covers the two ways a connection is shed as a slow
// consumer: its backlog would exceed the cap, or its socket takes nothing
// for the write timeout.
func TestOutConnShed(t *testing.T) {
	tests := []struct {
		name         string
		limit        int
		writeTimeout time.Duration
	}{
		{"over the cap", 256 << 10, time.Minute},
		{"write timeout", 64 << 20, 50 * time.Millisecond},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sh := testShared(tc.limit, tc.writeTimeout)
			o, _ := tcpPair(t, sh)
			chunk := pattern(64 << 10)
			deadline := time.Now().Add(30 * time.Second)
			var err error
			for err == nil && time.Now().Before(deadline) {
				if _, err = o.Write(chunk); err == nil && tc.writeTimeout < time.Minute {
					// Keep the backlog small: only the timeout may shed it.
					for o.queuedBytes() > 0 && o.slowConsumer() == nil && time.Now().Before(deadline) {
						time.Sleep(time.Millisecond) // polling: the writer raises no event
					}
					err = o.slowConsumer()
				}
			}
			if !errors.Is(err, ErrSlowConsumer) {
				t.Fatalf("Write error %v, want ErrSlowConsumer", err)
			}
			if !errors.Is(o.slowConsumer(), ErrSlowConsumer) {
				t.Errorf("slowConsumer() = %v, want ErrSlowConsumer", o.slowConsumer())
			}
			if _, err := o.Write(chunk); !errors.Is(err, ErrSlowConsumer) {
				t.Errorf("Write after shedding: %v, want ErrSlowConsumer", err)
			}
			if n := sh.shed.Load(); n != 1 {
				t.Errorf("shed count %d, want 1", n)
			}
			o.writer.Wait()
			if p := sh.pending.Load(); p != 0 {
				t.Errorf("pending bytes %d after shedding, want 0", p)
			}
		})
	}
}

// TestOutConnCloseLingers checks that Close lets the backlog reach a peer
// that reads it, then closes the connection; and that the backlog of a
// peer that does not read is dropped after the linger time.
func TestOutConnCloseLingers(t *testing.T) {
	t.Run("peer reads", testCloseLingers)
	t.Run("peer does not read", func(t *testing.T) {
		sh := testShared(64<<20, time.Minute)
		sh.linger = 50 * time.Millisecond
		o, _ := tcpPair(t, sh)
		if _, err := o.Write(pattern(16 << 20)); err != nil {
			t.Fatal(err)
		}
		if err := o.Close(); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() {
			o.writer.Wait()
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("the writer of a closed connection still runs after 5s")
		}
		if p, n := sh.pending.Load(), sh.shed.Load(); p != 0 || n != 0 {
			t.Errorf("pending bytes %d, shed %d after the linger time; want 0, 0", p, n)
		}
	})
}

func testCloseLingers(t *testing.T) {
	sh := testShared(64<<20, time.Minute)
	sh.linger = time.Minute // the peer's reading speed must not matter
	o, client := tcpPair(t, sh)
	want := pattern(2 << 20)
	if _, err := o.Write(want); err != nil {
		t.Fatal(err)
	}
	if err := o.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := o.Write([]byte("late")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Write after Close: %v, want net.ErrClosed", err)
	}
	_ = client.SetReadDeadline(time.Now().Add(30 * time.Second))
	got, err := io.ReadAll(client)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("read %d bytes, want the %d written, then EOF", len(got), len(want))
	}
	if n := sh.shed.Load(); n != 0 {
		t.Errorf("shed count %d, want 0", n)
	}
}

// TestOutConnAbort checks that abort drops the backlog at once.
func TestOutConnAbort(t *testing.T) {
	sh := testShared(64<<20, time.Minute)
	o, _ := tcpPair(t, sh)
	if _, err := o.Write(pattern(16 << 20)); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		o.abort()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("abort did not return within 5s")
	}
	if p := sh.pending.Load(); p != 0 {
		t.Errorf("pending bytes %d after abort, want 0", p)
	}
}

// queuedBytes returns the connection's backlog.
func (o *outConn) queuedBytes() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.queued
}
