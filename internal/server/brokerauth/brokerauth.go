// Package brokerauth is the adapter between identity and broker: it makes
// an identity.Store the broker's Authenticator, and translates the
// broker's view of a connection (broker.Identity) to identity's
// (identity.Session) and back, so that neither package imports the other.
// umbra serve wires it (internal/server); tests that run a real broker
// with an identity store use it the same way.
//
// # Encoding
//
// The broker keeps a session's broker.Identity for the life of the
// connection and, for a persistent session, in broker.db, where its Name
// also owns the session; the encoding below is therefore stored and must
// not change:
//
//	device             Name = the device ID, Device = the device ID
//	token              Name = "<role>:<name>", e.g. "operator:admin"
//	anonymous client   Name = "*anonymous*" (no token name can hold '*')
//
// Credential is identity.Session.Credential, unchanged; ClientID is the
// connection's client ID. A broker.Identity that fits none of these forms
// becomes a session without a principal, which identity refuses
// everything (outside anonymous mode, where every session is an
// operator).
package brokerauth

import (
	"context"
	"strings"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/identity"
)

// AnonymousName is the broker.Identity name of every client in anonymous
// mode: one identity, whose persistent sessions survive restarts.
const AnonymousName = "*anonymous*"

// Auth is an identity.Store as a broker.Authenticator.
type Auth struct {
	ids *identity.Store
}

var _ broker.Authenticator = (*Auth)(nil)

// New returns ids as a broker.Authenticator.
func New(ids *identity.Store) *Auth { return &Auth{ids: ids} }

// Authenticate implements broker.Authenticator with
// identity.Store.Authenticate.
func (a *Auth) Authenticate(ctx context.Context, c broker.Credentials) (broker.Identity, error) {
	s, err := a.ids.Authenticate(ctx, identity.Credentials{ClientID: c.ClientID, Username: c.Username, Password: c.Password, TLS: c.TLS})
	if err != nil {
		return broker.Identity{}, err
	}
	return Identity(s), nil
}

// Allow implements broker.Authenticator with identity.Store.Allow. The
// broker calls it for every PUBLISH and every delivered message.
func (a *Auth) Allow(id broker.Identity, topic string, write bool) bool {
	if id.Device != "" { // Session, without a call
		return a.ids.Allow(deviceSession(id), topic, write)
	}
	return a.ids.Allow(tokenSession(id), topic, write)
}

// AllowEpoch returns identity.Store.AllowEpoch: the broker remembers an
// allowed publish topic per connection while it does not change.
func (a *Auth) AllowEpoch() uint64 { return a.ids.AllowEpoch() }

// Valid reports whether the session id still holds its rights
// (identity.Store.Valid).
func (a *Auth) Valid(id broker.Identity) bool { return a.ids.Valid(Session(id)) }

// Match returns r.Match for broker identities: the sessions to evict
// after a revocation (broker.Server.Evict).
func Match(r identity.Revocation) func(broker.Identity) bool {
	return func(id broker.Identity) bool { return r.Match(Session(id)) }
}

// Identity encodes s as the broker keeps it (see the package
// documentation).
func Identity(s identity.Session) broker.Identity {
	p := s.Principal
	switch {
	case p.Role == identity.RoleDevice:
		return broker.Identity{ClientID: s.ClientID, Name: p.Name, Device: p.Device, Credential: s.Credential}
	case p.Name == "":
		return broker.Identity{ClientID: s.ClientID, Name: AnonymousName, Credential: s.Credential}
	}
	return broker.Identity{ClientID: s.ClientID, Name: string(p.Role) + ":" + p.Name, Credential: s.Credential}
}

// Session decodes an identity Identity encoded.
func Session(id broker.Identity) identity.Session {
	if id.Device != "" {
		return deviceSession(id)
	}
	return tokenSession(id)
}

// deviceSession decodes a device's identity. It is inlined: Allow runs for
// every message.
func deviceSession(id broker.Identity) identity.Session {
	return identity.Session{ClientID: id.ClientID, Credential: id.Credential,
		Principal: identity.Principal{Role: identity.RoleDevice, Name: string(id.Device), Device: id.Device}}
}

// tokenSession decodes an identity of a token or the anonymous client.
func tokenSession(id broker.Identity) identity.Session {
	s := identity.Session{ClientID: id.ClientID, Credential: id.Credential}
	if role, name, ok := strings.Cut(id.Name, ":"); ok {
		s.Principal = identity.Principal{Role: identity.Role(role), Name: name}
	} else if id.Name == AnonymousName {
		s.Principal = identity.Principal{Role: identity.RoleOperator}
	}
	return s
}
