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

// deadlineConn records the read deadlines set on it.
type deadlineConn struct {
	net.Conn
	set []time.Time
}

func (c *deadlineConn) SetReadDeadline(t time.Time) error {
	c.set = append(c.set, t)
	return nil
}

// TestOutConnDeadlineSlack sets read deadlines as mochi does before every
// packet: a deadline between the one asked before and the one armed is
// not set again; an earlier one, none (zero) and one past the armed
// deadline are; the armed deadline is never earlier than the one asked
// and at most deadlineSlack (and an eighth of the time left) later.
func TestOutConnDeadlineSlack(t *testing.T) {
	fake := &deadlineConn{}
	o := newOutConn(fake, testShared(1024, time.Minute))
	if o.raw != nil {
		t.Fatal("a connection without a socket got raw I/O")
	}
	base := time.Now().Add(90 * time.Second) // keepalive 60 s
	steps := []struct {
		name string
		t    time.Time
		set  bool // a deadline is set on the connection
	}{
		{"first", base, true},
		{"100 ms later", base.Add(100 * time.Millisecond), false},
		{"900 ms later", base.Add(900 * time.Millisecond), false},
		{"past the armed deadline", base.Add(1500 * time.Millisecond), true},
		{"earlier", base.Add(-time.Minute), true},
		{"same again", base.Add(-time.Minute), false},
		{"none", time.Time{}, true},
		{"none again", time.Time{}, false},
		{"short, after none", time.Now().Add(80 * time.Millisecond), true},
	}
	for _, st := range steps {
		before := len(fake.set)
		if err := o.SetDeadline(st.t); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if got := len(fake.set) > before; got != st.set {
			t.Fatalf("%s: deadline set %v, want %v", st.name, got, st.set)
		}
		armed := fake.set[len(fake.set)-1]
		switch {
		case st.t.IsZero() != armed.IsZero():
			t.Fatalf("%s: asked %v, armed %v", st.name, st.t, armed)
		case armed.Before(st.t):
			t.Fatalf("%s: armed %v before the asked %v", st.name, armed, st.t)
		case !st.t.IsZero() && armed.Sub(st.t) > deadlineSlack:
			t.Fatalf("%s: armed %v more than %v after the asked %v", st.name, armed, deadlineSlack, st.t)
		}
	}
	if last := fake.set[len(fake.set)-1]; last.Sub(steps[len(steps)-1].t) > 10*time.Millisecond+time.Millisecond {
		t.Errorf("an 80 ms deadline armed %v later, want at most an eighth", last.Sub(steps[len(steps)-1].t))
	}
	if err := o.setExactDeadline(base); err != nil || !fake.set[len(fake.set)-1].Equal(base) {
		t.Errorf("setExactDeadline: %v, armed %v, want %v", err, fake.set[len(fake.set)-1], base)
	}
}

// TestOutConnRead reads through the raw socket: the bytes in order, a
// timeout at the read deadline (never before it), io.EOF when the peer
// closes, and the errors the broker classifies as a lost connection.
func TestOutConnRead(t *testing.T) {
	o, client := tcpPair(t, testShared(1024, time.Minute))
	if o.raw == nil && nonBlockingIO {
		t.Fatal("a TCP connection without raw I/O")
	}
	if n, err := o.Read(nil); n != 0 || err != nil {
		t.Errorf("Read(nil) = %d, %v; want 0, nil", n, err)
	}
	want := pattern(100 << 10)
	go func() { _, _ = client.Write(want) }()
	got := make([]byte, len(want))
	if _, err := io.ReadFull(o, got); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read %d bytes: %v, equal %v", len(got), err, bytes.Equal(got, want))
	}

	asked := time.Now().Add(50 * time.Millisecond)
	if err := o.SetDeadline(asked); err != nil {
		t.Fatal(err)
	}
	_, err := o.Read(got)
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("Read past the deadline: %v, want a timeout", err)
	}
	if now := time.Now(); now.Before(asked) {
		t.Errorf("Read timed out %v before the deadline", asked.Sub(now))
	}
	if !errors.Is(readFailure(err), ErrConnectionLost) {
		t.Errorf("readFailure(%v) does not match ErrConnectionLost", err)
	}

	if err := o.SetDeadline(time.Time{}); err != nil {
		t.Fatal(err)
	}
	_ = client.Close()
	if n, err := o.Read(got); n != 0 || !errors.Is(err, io.EOF) {
		t.Errorf("Read after the peer closed = %d, %v; want 0, EOF", n, err)
	}
	o.abort()
	if _, err := o.Read(got); !errors.Is(err, net.ErrClosed) || !errors.Is(readFailure(err), ErrConnectionLost) {
		t.Errorf("Read after abort: %v, want net.ErrClosed (a lost connection)", err)
	}
}
