package broker

import (
	"fmt"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Authentication at CONNECT: the client ID, Config.Auth, the will topic
// and the connection cap per identity.

// OnConnect validates the client ID. mochi assigns an ID to a client that
// sent none (with a clean session) before calling it. Which identity may
// use which ID is the Authenticator's business.
func (h *hook) OnConnect(cl *mqtt.Client, _ packets.Packet) error {
	err := validClientID(cl.ID, h.s.cfg.MaxClientIDLength)
	if err == nil {
		return nil
	}
	h.connectsRejected.Add(1)
	h.clientIDsRefused.Add(1)
	h.s.log.Info("connection refused", "client", clip(cl.ID), "remote", cl.Net.Remote, "error", err)
	if ackErr := h.s.mq.SendConnack(cl, packets.ErrClientIdentifierNotValid, false, nil); ackErr != nil {
		return fmt.Errorf("refuse connect: %w (send connack: %w)", err, ackErr)
	}
	return err
}

// validClientID reports whether id may be used as an MQTT client ID: any
// string mochi decoded (UTF-8 without NUL) of at most max bytes but the
// inline client's.
func validClientID(id string, max int) error {
	if id == mqtt.InlineClientId {
		return fmt.Errorf("%w: %q is reserved", ErrInvalidClientID, id)
	}
	if len(id) > max {
		return fmt.Errorf("%w: %d bytes, at most %d", ErrInvalidClientID, len(id), max)
	}
	return nil
}

// OnConnectAuthenticate runs Config.Auth and remembers the identity.
func (h *hook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	c := connOf(cl)
	auth := h.s.cfg.Auth
	if auth == nil {
		if c != nil {
			c.identity = Identity{ClientID: cl.ID}
			c.setOwner(h.s.cfg.MaxPendingBytes)
		}
		return true
	}
	creds := Credentials{
		ClientID:   cl.ID,
		Username:   string(pk.Connect.Username),
		Password:   pk.Connect.Password,
		RemoteAddr: cl.Net.Remote,
	}
	if c != nil {
		creds.TLS = c.tls
		if c.emptyPassword {
			creds.Password = []byte{}
		}
	}
	id, err := auth.Authenticate(h.s.ctx, creds)
	if err == nil && pk.Connect.WillFlag && !auth.Allow(withClientID(id, cl.ID), pk.Connect.WillTopic, true) {
		// mochi publishes wills without an ACL check.
		err = fmt.Errorf("will topic %q not allowed", pk.Connect.WillTopic)
		if c != nil {
			c.refusal = &packets.ErrNotAuthorized // see fixAck
		}
	}
	if err != nil {
		h.connectsRejected.Add(1)
		// The user name is named too: AWS IoT SDKs send their metrics in
		// it, and a refusal must say which of the two was wrong.
		h.s.log.Info("authentication failed", "client", cl.ID, "username", clip(string(pk.Connect.Username)),
			"remote", cl.Net.Remote, "error", err)
		return false
	}
	id = withClientID(id, cl.ID)
	h.mu.Lock()
	if max := h.s.cfg.MaxConnsPerIdentity; max > 0 && c != nil && h.perName[id.Name] >= max {
		h.mu.Unlock()
		h.connectsRejected.Add(1)
		h.identityConnsRefused.Add(1)
		c.refusal = &packets.ErrQuotaExceeded // see fixAck
		h.s.log.Info("connection refused: too many connections for identity", "client", cl.ID, "identity", id.Name, "max", max)
		return false
	}
	if !h.s.ledger.admitSession(cl, id) {
		h.mu.Unlock()
		h.connectsRejected.Add(1)
		h.s.ledger.refuseSession(cl)
		return false
	}
	if c != nil {
		h.perName[id.Name]++
		c.counted = id.Name
		c.identity = id
		c.service = id.Device == ""
	}
	if prev := h.sessions[cl.ID]; prev != nil && prev.cl != cl {
		if pc := connOf(prev.cl); pc != nil {
			pc.sess.Store(nil) // no longer registered: its checks are denied (see authAllows)
		}
	}
	sess := &session{cl: cl, id: id}
	h.sessions[cl.ID] = sess
	if c != nil {
		c.sess.Store(sess)
	}
	h.mu.Unlock()
	if c != nil {
		limit := h.s.cfg.MaxPendingBytes
		if c.service {
			limit = h.s.cfg.ServicePendingBytes
		}
		c.setOwner(limit)
	}
	return true
}

// connEnded releases c's place in its identity's connection count.
func (h *hook) connEnded(c *conn) {
	if c.counted == "" {
		return
	}
	h.mu.Lock()
	if h.perName[c.counted]--; h.perName[c.counted] <= 0 {
		delete(h.perName, c.counted)
	}
	h.mu.Unlock()
}

func withClientID(id Identity, clientID string) Identity {
	id.ClientID = clientID
	return id
}

// connOf returns the broker's record of cl's connection, or nil for a
// client without one (the inline client).
func connOf(cl *mqtt.Client) *conn {
	c, _ := cl.Net.Conn.(*conn)
	return c
}
