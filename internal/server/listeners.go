package server

import (
	"context"
	"fmt"
	"net"
	"sync"
)

// listeners are the server's sockets. Open binds them before it opens any
// component, so the firmware store knows the HTTP address it puts in
// download URLs (net/http's Serve(ln) shape), and they accept nothing
// until Open closes serving: a client never reaches a component that is
// not open yet. A connection made before that waits in the kernel's
// backlog.
type listeners struct {
	mqtt, ws, tls, http net.Listener // nil: not configured (or handed to their server)
	// serving is closed when every component is open.
	serving chan struct{}
}

// listen binds the configured listeners. On error it closes those it
// bound.
func listen(ctx context.Context, cfg Config) (lns listeners, err error) {
	lns.serving = make(chan struct{})
	defer func() {
		if err != nil {
			lns.close()
		}
	}()
	var lc net.ListenConfig
	for _, l := range []struct {
		name, addr string
		ln         *net.Listener
	}{
		{"mqtt", cfg.MQTTAddr, &lns.mqtt},
		{"ws", cfg.WSAddr, &lns.ws},
		{"tls", cfg.TLSAddr, &lns.tls},
		{"http", cfg.HTTPAddr, &lns.http},
	} {
		if l.addr == "" {
			continue
		}
		ln, err := lc.Listen(ctx, "tcp", l.addr)
		if err != nil {
			return lns, fmt.Errorf("server: listen %s %s: %w", l.name, l.addr, err)
		}
		*l.ln = &gatedListener{Listener: ln, open: lns.serving, closed: make(chan struct{})}
	}
	return lns, nil
}

// close closes the listeners no server took over.
func (lns *listeners) close() {
	for _, ln := range []net.Listener{lns.mqtt, lns.ws, lns.tls, lns.http} {
		if ln != nil {
			_ = ln.Close()
		}
	}
}

// gatedListener is a bound socket whose Accept waits until open is
// closed (or the listener is).
type gatedListener struct {
	net.Listener
	open      <-chan struct{}
	closed    chan struct{}
	closeOnce sync.Once
}

func (l *gatedListener) Accept() (net.Conn, error) {
	select {
	case <-l.open:
	case <-l.closed:
		return nil, net.ErrClosed
	}
	return l.Listener.Accept()
}

// Close closes the socket; it is idempotent.
func (l *gatedListener) Close() error {
	err := net.ErrClosed
	l.closeOnce.Do(func() {
		close(l.closed)
		err = l.Listener.Close()
	})
	return err
}
