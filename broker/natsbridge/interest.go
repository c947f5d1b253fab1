package natsbridge

import (
	"sync"
	"sync/atomic"

	"github.com/nats-io/nats.go"
)

// changes records, without blocking, the state wanted for each key (a
// filter, a client ID); a loop takes and applies them. A key changed
// twice before the loop looks counts once, with its last state.
type changes struct {
	wake chan struct{} // signalled when pending changed

	mu      sync.Mutex      // guards pending and asked
	pending map[string]bool // key → wanted, not yet taken
	asked   uint64          // changes recorded by want
	applied atomic.Uint64   // changes applied (a value of asked)
}

func (c *changes) init() {
	c.wake = make(chan struct{}, 1)
	c.pending = make(map[string]bool)
}

// want records that key should be on or off. It never blocks.
func (c *changes) want(key string, on bool) {
	c.mu.Lock()
	c.pending[key] = on
	c.asked++
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// take returns the changes recorded since the last take, and the count to
// pass to done once they are applied.
func (c *changes) take() (map[string]bool, uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p, asked := c.pending, c.asked
	c.pending = make(map[string]bool)
	return p, asked
}

// done records that the changes up to asked are applied.
func (c *changes) done(asked uint64) { c.applied.Store(asked) }

// settled reports whether every change recorded so far is applied.
func (c *changes) settled() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.applied.Load() == c.asked
}

// interest keeps one NATS subscription for each subject (plain) or
// shared subscription (queue) that the node's clients' filters need, and
// none other. The broker reports filters with the topic index locked, so
// Interest only records the change; loop makes the subscriptions.
type interest struct {
	changes
	b *Bridge

	// Owned by loop (and unsubscribeAll after it ended):
	active  map[string]bool              // filters applied
	subs    map[subscription]*subscribed // the NATS subscriptions
	waiting map[subscription]struct{}    // subs refused for MaxSubscriptions, waiting for room
	shares  sync.Map                     // *nats.Subscription → shared filter (read by the inbound loop)
	held    atomic.Int64                 // len of subs that hold a NATS subscription
	full    bool                         // a refusal episode was logged
}

// subscribed is one NATS subscription and the filters that need it.
type subscribed struct {
	sub    *nats.Subscription // nil when refused for MaxSubscriptions or failed
	refs   int
	filter string // the first filter that needed it, for logs and shares
}

func (x *interest) init(b *Bridge) {
	x.changes.init()
	x.b = b
	x.active = make(map[string]bool)
	x.subs = make(map[subscription]*subscribed)
	x.waiting = make(map[subscription]struct{})
}

// loop applies the recorded changes until the bridge closes.
func (x *interest) loop() {
	for {
		select {
		case <-x.b.ctx.Done():
			return
		case <-x.wake:
		}
		changes, asked := x.take()
		for filter, on := range changes {
			if on == x.active[filter] {
				continue
			}
			if on {
				x.active[filter] = true
			} else {
				delete(x.active, filter)
			}
			for _, s := range subscriptionsOf(x.b.msgPfx, filter) {
				if on {
					x.add(s, filter)
				} else {
					x.remove(s)
				}
			}
		}
		x.done(asked)
	}
}

// add takes a reference to s for filter, subscribing on the first.
func (x *interest) add(s subscription, filter string) {
	e := x.subs[s]
	if e == nil {
		e = &subscribed{filter: filter}
		x.subs[s] = e
	}
	e.refs++
	if e.refs == 1 {
		x.subscribe(s, e)
	}
}

// subscribe makes e's NATS subscription, unless MaxSubscriptions are
// held: e then waits for room (a refusal).
func (x *interest) subscribe(s subscription, e *subscribed) {
	if int(x.held.Load()) >= x.b.cfg.MaxSubscriptions {
		x.b.refused.Add(1)
		x.waiting[s] = struct{}{}
		if !x.full {
			x.full = true
			x.b.log.Warn("NATS subscription cap reached: further filters get no messages from other nodes",
				"max", x.b.cfg.MaxSubscriptions, "filter", clip(e.filter))
		}
		return
	}
	var err error
	if s.queue == "" {
		e.sub, err = x.b.nc.ChanSubscribe(s.subject, x.b.in)
	} else {
		e.sub, err = x.b.nc.ChanQueueSubscribe(s.subject, s.queue, x.b.share)
	}
	if err != nil {
		x.b.refused.Add(1)
		x.b.log.Warn("NATS subscription failed: the filter gets no messages from other nodes", "subject", s.subject, "error", err)
		return
	}
	if s.queue != "" {
		x.shares.Store(e.sub, e.filter)
	}
	x.held.Add(1)
}

// remove drops a reference to s, unsubscribing with the last; the room
// goes to a subscription waiting for it.
func (x *interest) remove(s subscription) {
	e := x.subs[s]
	if e == nil {
		return
	}
	if e.refs--; e.refs > 0 {
		return
	}
	delete(x.subs, s)
	delete(x.waiting, s)
	if e.sub == nil {
		return
	}
	x.b.unsubscribe(e.sub)
	x.shares.Delete(e.sub)
	x.held.Add(-1)
	for w := range x.waiting {
		delete(x.waiting, w)
		x.subscribe(w, x.subs[w])
		break
	}
	if len(x.waiting) == 0 {
		x.full = false
	}
}

// shareOf returns the shared subscription filter a queue subscription
// serves, "" if it is gone.
func (x *interest) shareOf(sub *nats.Subscription) string {
	f, _ := x.shares.Load(sub)
	s, _ := f.(string)
	return s
}

// unsubscribeAll removes every subscription; for Close, after loop ended.
func (x *interest) unsubscribeAll() {
	for s, e := range x.subs {
		if e.sub != nil {
			x.b.unsubscribe(e.sub)
			x.shares.Delete(e.sub)
		}
		delete(x.subs, s)
	}
	clear(x.waiting)
	clear(x.active)
	x.held.Store(0)
}

// unsubscribe removes sub, keeping the count of what NATS dropped for it.
func (b *Bridge) unsubscribe(sub *nats.Subscription) {
	b.slowMu.Lock()
	if _, ok := b.slow[sub]; ok {
		if d, err := sub.Dropped(); err == nil {
			b.slowGone += int64(d)
		}
		delete(b.slow, sub)
	}
	b.slowMu.Unlock()
	_ = sub.Unsubscribe() // fails only if already gone (the connection closed)
}

// sessions holds a takeover subscription for each client session on this
// node: a node where the client connects next asks on it, and this node
// releases the session. The broker reports sessions on its connection
// goroutines, so Session only records the change; loop subscribes, and a
// slow NATS link never delays a connect.
type sessions struct {
	changes
	m map[string]*nats.Subscription // by client ID; owned by loop (and unsubscribeAll after it)
	n atomic.Int64                  // len(m)
}

// loop applies the recorded changes until the bridge closes.
func (s *sessions) loop(b *Bridge) {
	for {
		select {
		case <-b.ctx.Done():
			return
		case <-s.wake:
		}
		changes, asked := s.take()
		for clientID, present := range changes {
			sub, had := s.m[clientID]
			switch {
			case present == had:
			case present:
				sub, err := b.ctl.ChanSubscribe(b.sesPfx+token(clientID), b.takes)
				if err != nil {
					b.log.Warn("takeover subscription failed: another node cannot take this client's session over",
						"client", clip(clientID), "error", err)
					continue
				}
				s.m[clientID] = sub
			default:
				delete(s.m, clientID)
				// Drain, not Unsubscribe: a takeover request the server
				// routed here before it processed the unsubscription is
				// still delivered and answered. Unsubscribe dropped it, and
				// its requester, typically this node for a client that
				// reconnected at once, waited TakeoverTimeout for a reply.
				_ = sub.Drain()
			}
		}
		s.n.Store(int64(len(s.m)))
		s.done(asked)
	}
}

// unsubscribeAll removes every takeover subscription; for Close, after
// loop ended.
func (s *sessions) unsubscribeAll() {
	for id, sub := range s.m {
		_ = sub.Unsubscribe()
		delete(s.m, id)
	}
	s.n.Store(0)
}

// takeoverLoop answers takeover requests: the client connected to another
// node, so this node releases its session (broker.Server.Release) and
// then replies, so that the other node completes the connection after
// this one ended. Up to maxTakeovers run at once.
func (b *Bridge) takeoverLoop() {
	var wg sync.WaitGroup
	defer wg.Wait()
	sem := make(chan struct{}, maxTakeovers)
	for {
		var msg *nats.Msg
		select {
		case <-b.ctx.Done():
			return
		case msg = <-b.takes:
		}
		id, err := topicOf(b.cfg.Prefix+".s", msg.Subject)
		if err != nil || string(msg.Data) == b.origin {
			_ = msg.Respond([]byte(b.origin)) // our own connect: the broker takes its session over itself
			continue
		}
		select {
		case sem <- struct{}{}:
		case <-b.ctx.Done():
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			st, ok := b.brk.Handoff(b.ctx, id)
			if ok {
				b.released.Add(1)
				b.log.Info("session released to another node", "client", clip(id), "to", clip(string(msg.Data)))
			}
			_ = msg.RespondMsg(b.handoffReply(msg.Reply, st))
		}()
	}
}
