package identity

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/umbra-iot/umbra/device"
)

// Reasons a credential ends, in Revocation.Reason.
const (
	RevokeRemoved  = "removed"  // RemoveDevice
	RevokeRotated  = "rotated"  // RotateDevice
	RevokeRevoked  = "revoked"  // RevokeToken
	RevokeReplaced = "replaced" // EnsureAdminToken replaced the admin token
)

// Revocation tells Config.OnRevoke that a credential ended.
type Revocation struct {
	// Principal is the device or token whose credential ended.
	Principal Principal
	// Reason is RevokeRemoved, RevokeRotated, RevokeRevoked or
	// RevokeReplaced.
	Reason string
	// Match reports whether a session (one Authenticate returned) is a
	// session of Principal that did not log in with its current secret:
	// after a removal or revocation every session of the name, after a
	// rotation every session except those that already use the new
	// secret. Those are the sessions to disconnect. It takes no lock.
	Match func(Session) bool
}

// Credential kinds in Session.Credential: the secret generation a
// password login used, or the enrolment a certificate login is bound to.
const (
	credSecret = "s:"
	credCert   = "c:"
)

// credential is the current credential of a device or token, as Allow
// checks it. Entries of Store.current are replaced, never modified.
type credential struct {
	role      Role
	device    bool   // role == RoleDevice, for Allow
	secret    string // secret generation: changes with every new secret
	enrolment string // devices: changes only when the device is enrolled again
}

// genBytes is the entropy of a generation ID: random, so that a name
// enrolled again never repeats an earlier generation.
const genBytes = 12

// newGeneration returns a fresh random generation ID (16 characters of
// base64url).
func newGeneration() string {
	b := make([]byte, genBytes)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// learn records rec's credential as its name's current one when the Store
// holds none for the name: a record another server created that the
// change feed (NameWatcher) has not delivered yet, which Authenticate has
// just read from the storage. Without it Allow would refuse, and the
// server evict as stale, a device enrolled on another server that
// connects here at once. A name the Store holds already is left to the
// feed, which tells OnRevoke what changed. Callers hold credMu (read):
// refresh, which holds it exclusively, cannot run meanwhile.
func (s *Store) learn(rec Record) {
	if s.currentOf(rec.Name) == nil {
		s.current.LoadOrStore(rec.Name, rec.credential())
	}
}

// setCurrent records name's current credential (nil: none).
func (s *Store) setCurrent(name string, c *credential) {
	if c == nil {
		s.current.Delete(name)
	} else {
		s.current.Store(name, c)
	}
	s.epoch.Add(1) // after the change: see AllowEpoch
}

func (s *Store) currentOf(name string) *credential {
	v, ok := s.current.Load(name)
	if !ok {
		return nil
	}
	return v.(*credential)
}

// Valid reports whether sess, a session Authenticate returned, still
// holds its rights: the device or token still exists with the same role,
// and the connection logged in with its current secret, or with a
// certificate while the device's enrolment is the one the connection was
// authenticated under. A device removed and enrolled again, a token
// revoked and created again, or a rotated secret therefore leaves earlier
// sessions invalid even though the name is valid again. In anonymous mode
// every session is valid. Valid takes no lock.
func (s *Store) Valid(sess Session) bool {
	return s.cfg.Anonymous || s.validFor(&sess.Principal, sess.Credential)
}

// validFor reports whether p is a principal Authenticate can have
// returned (see wellFormed), and cred its current credential. It is on
// the broker's hot path: it checks the shape after the lookup, which
// already rules out every role Authenticate does not give.
func (s *Store) validFor(p *Principal, cred string) bool {
	c := s.currentOf(p.Name)
	if c == nil || c.role != p.Role {
		return false // c.role is a role Authenticate gives
	}
	if c.device {
		if string(p.Device) != p.Name {
			return false
		}
	} else if p.Device != "" {
		return false
	}
	switch {
	case strings.HasPrefix(cred, credSecret):
		return cred[len(credSecret):] == c.secret
	case strings.HasPrefix(cred, credCert):
		return c.device && cred[len(credCert):] == c.enrolment
	}
	return false
}

// wellFormed reports whether p has the shape of a principal Authenticate
// returns outside anonymous mode: a named device whose Device is its
// name, or a named token of a token role.
func (p Principal) wellFormed() bool {
	switch p.Role {
	case RoleDevice:
		return p.Name != "" && string(p.Device) == p.Name
	case RoleOperator, RoleIntegrator:
		return p.Name != "" && p.Device == ""
	}
	return false
}

// Enrolment returns the current enrolment generation of device id, an
// opaque string that changes when the device is removed and enrolled
// again (not when its secret is rotated), or "" if id is not enrolled.
// Firmware download URLs carry it (firmware.Config.Enrolment), so that
// removing a device revokes its URLs. It takes no lock.
func (s *Store) Enrolment(id device.ID) string {
	c := s.currentOf(string(id))
	if c == nil || c.role != RoleDevice {
		return ""
	}
	return c.enrolment
}

// revoked tells Config.OnRevoke that p's credential ended. It runs after
// the change is committed and current updated, outside every lock.
func (s *Store) revoked(ctx context.Context, p Principal, reason string) {
	if s.cfg.OnRevoke == nil {
		return
	}
	s.cfg.OnRevoke(ctx, Revocation{
		Principal: p,
		Reason:    reason,
		Match: func(sess Session) bool {
			q := sess.Principal
			if !q.wellFormed() || q.Name != p.Name || s.cfg.Anonymous {
				return false
			}
			c := s.currentOf(p.Name)
			return c == nil || c.role != q.Role || sess.Credential != credSecret+c.secret
		},
	})
}

// loadCredentials fills current from the storage, first giving every
// device and token stored by an earlier version (without generations)
// fresh ones. It reads the records a page at a time and checks ctx
// between pages.
func (s *Store) loadCredentials(ctx context.Context) error {
	var migrated []Record
	load := func(r Record) {
		if r.SecretGen == "" || r.IsDevice() && r.Enrolment == "" {
			migrated = append(migrated, r)
		}
		s.setCurrent(r.Name, r.credential())
	}
	if err := s.scanDevices(ctx, load); err != nil {
		return fmt.Errorf("identity: load devices: %w", err)
	}
	if err := s.scan(ctx, s.st.Tokens, load); err != nil {
		return fmt.Errorf("identity: load tokens: %w", err)
	}
	for _, prev := range migrated {
		next := prev
		next.Labels = cloneLabels(prev.Labels)
		if next.IsDevice() && next.Enrolment == "" {
			next.Enrolment = newGeneration()
		}
		if next.SecretGen == "" {
			next.SecretGen = newGeneration()
		}
		if err := s.st.Replace(ctx, prev, next); err != nil {
			return fmt.Errorf("identity: add generations to %q: %w", prev.Name, err)
		}
		s.setCurrent(next.Name, next.credential())
	}
	return nil
}

// credential is r's credential as Allow checks it.
func (r Record) credential() *credential {
	c := &credential{role: r.Role, secret: r.SecretGen}
	if r.IsDevice() {
		c.device = true
		c.enrolment = r.Enrolment
	}
	return c
}

// IssuedURIPrefix starts the URI subject alternative name in which
// CA.IssueDeviceCert records when it issued a certificate, as
// "urn:umbra:issued:<unix nanoseconds>". Authenticate refuses a
// certificate issued before its device was last removed (see
// Store.Authenticate); for a certificate without this name (one issued by
// another CA) it takes NotBefore as the issue time.
const IssuedURIPrefix = "urn:umbra:issued:"

// certIssued returns when cert was issued: the time CA.IssueDeviceCert
// recorded, else NotBefore.
func certIssued(cert *x509.Certificate) time.Time {
	for _, u := range cert.URIs {
		if u.Scheme != "urn" {
			continue
		}
		v, ok := strings.CutPrefix(u.String(), IssuedURIPrefix)
		if !ok {
			continue
		}
		if ns, err := strconv.ParseInt(v, 10, 64); err == nil {
			return time.Unix(0, ns)
		}
	}
	return cert.NotBefore
}
