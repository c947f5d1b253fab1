package identity

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/umbra-iot/umbra/broker"
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
	// Match reports whether a broker identity (one Authenticate returned)
	// is a session of Principal that did not log in with its current
	// secret: after a removal or revocation every session of the name,
	// after a rotation every session except those that already use the
	// new secret. Those are the sessions to disconnect.
	Match func(broker.Identity) bool
}

// Credential kinds in broker.Identity.Credential: the secret generation a
// password login used, or the enrolment a certificate login is bound to.
const (
	credSecret = "s:"
	credCert   = "c:"
)

// credential is the current credential of a device or token, as Allow
// checks it. Entries of Store.current are replaced, never modified.
type credential struct {
	role      Role
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

// setCurrent records name's current credential (nil: none).
func (s *Store) setCurrent(name string, c *credential) {
	if c == nil {
		s.current.Delete(name)
		return
	}
	s.current.Store(name, c)
}

func (s *Store) currentOf(name string) *credential {
	v, ok := s.current.Load(name)
	if !ok {
		return nil
	}
	return v.(*credential)
}

// Valid reports whether id, an identity Authenticate returned, still
// holds its rights: the device or token still exists with the same role,
// and the connection logged in with its current secret, or with a
// certificate while the device's enrolment is the one the connection was
// authenticated under. A device removed and enrolled again, a token
// revoked and created again, or a rotated secret therefore leaves earlier
// sessions invalid even though the name is valid again. In anonymous mode
// every identity is valid. Valid takes no lock.
func (s *Store) Valid(id broker.Identity) bool {
	if s.cfg.Anonymous {
		return true
	}
	p, ok := s.PrincipalOf(id)
	if !ok {
		return false
	}
	return s.validFor(p, id.Credential)
}

func (s *Store) validFor(p Principal, cred string) bool {
	c := s.currentOf(p.Name)
	if c == nil || c.role != p.Role {
		return false
	}
	switch {
	case strings.HasPrefix(cred, credSecret):
		return cred[len(credSecret):] == c.secret
	case strings.HasPrefix(cred, credCert):
		return p.Role == RoleDevice && cred[len(credCert):] == c.enrolment
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
		Match: func(id broker.Identity) bool {
			q, ok := s.PrincipalOf(id)
			if !ok || q.Name != p.Name || s.cfg.Anonymous {
				return false
			}
			c := s.currentOf(p.Name)
			return c == nil || c.role != q.Role || id.Credential != credSecret+c.secret
		},
	})
}

// loadCredentials fills current from the database, first giving every
// device and token stored by an earlier version (without generations)
// fresh ones.
func (s *Store) loadCredentials(tx *bolt.Tx) error {
	if err := loadRecords[deviceRecord](s, tx.Bucket(bucketDevices), "device"); err != nil {
		return err
	}
	return loadRecords[tokenRecord](s, tx.Bucket(bucketTokens), "token")
}

// generational is a pointer to a stored record with credential
// generations.
type generational[R any] interface {
	*R
	// addGenerations gives the record the generations it lacks and
	// reports whether it had to.
	addGenerations() bool
	credential() *credential
}

// loadRecords puts the credential of every record of b (of kind, for
// errors) into current, storing the records that needed generations.
func loadRecords[R any, P generational[R]](s *Store, b *bolt.Bucket, kind string) error {
	migrated := make(map[string]P)
	err := b.ForEach(func(k, v []byte) error {
		rec := P(new(R))
		if err := json.Unmarshal(v, rec); err != nil {
			return fmt.Errorf("identity: decode %s %q: %w", kind, k, err)
		}
		if rec.addGenerations() {
			migrated[string(k)] = rec // written after ForEach, which forbids changes
		}
		s.setCurrent(string(k), rec.credential())
		return nil
	})
	if err != nil {
		return err
	}
	for name, rec := range migrated {
		if err := putJSON(b, name, rec); err != nil {
			return fmt.Errorf("identity: add generations to %s %q: %w", kind, name, err)
		}
	}
	return nil
}

func (r *deviceRecord) addGenerations() bool {
	added := r.Enrolment == "" || r.SecretGen == ""
	if r.Enrolment == "" {
		r.Enrolment = newGeneration()
	}
	if r.SecretGen == "" {
		r.SecretGen = newGeneration()
	}
	return added
}

func (r *tokenRecord) addGenerations() bool {
	if r.SecretGen != "" {
		return false
	}
	r.SecretGen = newGeneration()
	return true
}

func (r deviceRecord) credential() *credential {
	return &credential{role: RoleDevice, secret: r.SecretGen, enrolment: r.Enrolment}
}

func (r tokenRecord) credential() *credential {
	return &credential{role: r.Role, secret: r.SecretGen}
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

// removedAt returns when device id was last removed (zero if never).
func removedAt(tx *bolt.Tx, id string) (time.Time, error) {
	var t time.Time
	v := tx.Bucket(bucketRemoved).Get([]byte(id))
	if v == nil {
		return t, nil
	}
	if err := t.UnmarshalText(v); err != nil {
		return t, fmt.Errorf("identity: decode removal time of %q: %w", id, err)
	}
	return t, nil
}
