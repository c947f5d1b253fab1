package natsbridge_test

import (
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/broker/natsbridge"
	"github.com/umbra-iot/umbra/internal/brokertest"
	"github.com/umbra-iot/umbra/internal/natstest"
)

// stallProxy forwards TCP connections to a NATS server and, while
// stalled, stops reading what the client sends: the client's writes back
// up as on a link that carries nothing.
type stallProxy struct {
	ln      net.Listener
	mu      sync.Mutex
	resume  chan struct{} // closed when not stalled
	conns   []net.Conn
	stopped atomic.Bool
}

func startProxy(t *testing.T, target string) *stallProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &stallProxy{ln: ln, resume: make(chan struct{})}
	close(p.resume)
	var wg sync.WaitGroup
	t.Cleanup(func() {
		p.stopped.Store(true)
		_ = ln.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			_ = c.Close()
		}
		p.mu.Unlock()
		p.unstall()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			client, err := ln.Accept()
			if err != nil {
				return
			}
			server, err := net.Dial("tcp", target)
			if err != nil {
				_ = client.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, client, server)
			p.mu.Unlock()
			wg.Go(func() { _, _ = io.Copy(client, server); _ = client.Close() })
			wg.Go(func() {
				buf := make([]byte, 32<<10)
				for {
					p.mu.Lock()
					resume := p.resume
					p.mu.Unlock()
					<-resume
					if p.stopped.Load() {
						return
					}
					n, err := client.Read(buf)
					if n > 0 {
						if _, werr := server.Write(buf[:n]); werr != nil {
							return
						}
					}
					if err != nil {
						_ = server.Close()
						return
					}
				}
			})
		}
	})
	return p
}

func (p *stallProxy) url() string { return "nats://" + p.ln.Addr().String() }

func (p *stallProxy) stall() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.resume = make(chan struct{})
}

func (p *stallProxy) unstall() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.resume:
	default:
		close(p.resume)
	}
}

// TestStalledNATSLinkNeverStallsClients: while the node's link to NATS
// carries nothing, its clients go on publishing and receiving at local
// speed, the messages for other nodes are dropped and counted, and a
// client still connects (after at most TakeoverTimeout). When the link
// moves again, messages cross again.
func TestStalledNATSLinkNeverStallsClients(t *testing.T) {
	ns := natstest.Start(t)
	proxy := startProxy(t, ns.URL()[len("nats://"):])
	big := broker.Config{ClientWritesPending: 8192, MaxPendingBytes: 64 << 20, MaxMessageRate: -1}
	a := startNode(t, proxy.url(), "n1", big, func(c *natsbridge.Config) {
		c.OutboundBuffer = 64
		c.WriteTimeout = time.Minute // the test's stall must not end the link
		c.TakeoverTimeout = 300 * time.Millisecond
	})
	b := startNode(t, ns.URL(), "n2", broker.Config{})
	remote := brokertest.Subscribe(t, brokertest.Connect(t, b.url, "remote"), "big/#", 0)

	var got atomic.Int64
	all := make(chan struct{})
	const n = 1000
	local := brokertest.Connect(t, a.url, "local")
	if tok := local.Subscribe("big/#", 0, func(mqtt.Client, mqtt.Message) {
		if got.Add(1) == n {
			close(all)
		}
	}); !tok.WaitTimeout(wait) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	settle(t, a, b)

	proxy.stall()
	pub := brokertest.Connect(t, a.url, "pub")
	payload := make([]byte, 16<<10)
	start := time.Now()
	for i := range n {
		if tok := pub.Publish(fmt.Sprintf("big/%d", i%10), 0, false, payload); !tok.WaitTimeout(wait) {
			t.Fatalf("publish %d blocked for %v", i, wait)
		}
	}
	select {
	case <-all:
	case <-time.After(20 * time.Second):
		t.Fatalf("the local subscriber got %d of %d messages within 20s of a stalled NATS link", got.Load(), n)
	}
	t.Logf("%d local messages of 16 KiB in %v with the NATS link stalled", n, time.Since(start))
	if st := a.br.Stats(); st.OutDropped == 0 {
		t.Errorf("stats %+v: want messages for other nodes dropped while the link is stalled", st)
	}

	// A connect during the stall goes on once its takeover request is
	// unanswered for TakeoverTimeout (brokertest.Connect fails if it does
	// not complete), and is counted.
	before := a.br.Stats().TakeoverTimeouts
	brokertest.Connect(t, a.url, "newcomer")
	if st := a.br.Stats(); st.TakeoverTimeouts != before+1 {
		t.Errorf("stats %+v: want the newcomer's unanswered takeover request counted (%d before)", st, before)
	}

	proxy.unstall()
	deadline := time.Now().Add(20 * time.Second)
	for {
		brokertest.Publish(t, pub, "big/after", 0, []byte("after"))
		select {
		case m := <-remote:
			if string(m.Payload) == "after" {
				return
			}
			continue // what the link buffered before it stalled
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("no message crossed within 20s after the link moved again")
		}
	}
}
