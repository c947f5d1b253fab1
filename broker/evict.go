package broker

import (
	"context"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Evict disconnects every client whose Identity match reports true, and
// drops its session, connected or offline (a persistent session), so that
// nothing queued for it remains. It returns the number of sessions
// evicted and logs one line for each. It is for credentials that ended:
// a device removed or its secret rotated, a token revoked.
//
// A connected client's connection is closed (without a DISCONNECT packet:
// MQTT 3.1.1 has none, and a write could block on a client that does not
// read), its will message is discarded, and Config.OnDisconnect reports
// ErrNotAuthorized. Evict waits, up to ConnectTimeout in all or until ctx
// is done, for each connection to end (a subscription handler still
// running for it finishes first), then removes the session's
// subscriptions and queued messages, so a later connection with the same
// client ID starts with a clean session.
//
// match should report only identities that Config.Auth refuses from now
// on (Allow false for every topic): a client that authenticated with such
// an identity after Evict looked (a race Evict cannot see) is then
// harmless, and the caller evicts it when OnConnect reports it. Evict
// must not be called from a Config callback or a subscription handler
// (it waits for connections those may belong to). After Close it returns
// 0.
func (s *Server) Evict(ctx context.Context, match func(Identity) bool) int {
	if s.closed.Load() || match == nil {
		return 0
	}
	type victim struct {
		cl        *mqtt.Client
		c         *conn
		connected bool
	}
	var victims []victim
	for _, cl := range s.mq.Clients.GetAll() {
		c := connOf(cl)
		// The identity was set before mochi registered the client, which
		// GetAll's lock orders before this read.
		if cl.Net.Inline || c == nil || !match(c.identity) {
			continue
		}
		victims = append(victims, victim{cl: cl, c: c, connected: !c.ended()})
	}
	for _, v := range victims {
		// mochi publishes a will without an ACL check when the connection
		// ends; an evicted client's will must not be. mochi clears the
		// will (not atomically) when a stopped client's read loop ends, so
		// only a client still open is touched: one that something else
		// stopped already decides its will on its own, as before.
		if !v.cl.Closed() {
			atomic.StoreUint32(&v.cl.Properties.Will.Flag, 0)
		}
		v.cl.Stop(packets.ErrNotAuthorized)
	}
	expired := time.NewTimer(s.cfg.ConnectTimeout)
	defer expired.Stop()
	waiting := true
	stored := doneWait // the commit that deletes the last evicted session from the Store
	for _, v := range victims {
		if waiting && !v.c.ended() {
			select {
			case <-v.c.done:
			case <-expired.C:
				waiting = false
			case <-ctx.Done():
				waiting = false
			case <-s.ctx.Done():
				waiting = false
			}
			if !waiting {
				s.log.Warn("evicting a client whose connection has not ended yet", "client", v.cl.ID,
					"identity", v.c.identity.Name, "waited", s.cfg.ConnectTimeout)
			}
		}
		stored = s.dropSession(v.cl)
		s.log.Info("session evicted", "client", v.cl.ID, "identity", v.c.identity.Name,
			"remote", v.cl.Net.Remote, "connected", v.connected)
	}
	if len(victims) > 0 {
		select { // bounded like the waits above; the commit completes anyway
		case <-stored.done:
		case <-ctx.Done():
		case <-s.ctx.Done():
		}
	}
	return len(victims)
}

// dropSession removes cl's subscriptions and queued messages and deletes
// it from mochi's registry and the Store, unless another connection has
// taken the client ID over. The client ID's gate keeps a new connection
// from registering meanwhile. It returns the commit that deletes the
// session from the Store.
func (s *Server) dropSession(cl *mqtt.Client) *commitWait {
	unlock := s.hook.gates.lock(cl.ID)
	defer unlock()
	stored := doneWait
	if cur, ok := s.mq.Clients.Get(cl.ID); ok && cur == cl {
		cl.ClearInflights()
		s.mq.UnsubscribeClient(cl)
		s.mq.Clients.Delete(cl.ID)
		stored = s.ledger.sessionEnded(cl.ID, true)
		s.relaySession(cl.ID, false)
	}
	s.hook.forget(cl)
	return stored
}
