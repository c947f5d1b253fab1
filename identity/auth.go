package identity

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/policy"
)

// anonymousName is the broker.Identity name of every client in anonymous
// mode. It holds a character token names cannot, so it names no token.
const anonymousName = "*anonymous*"

// Authenticate implements broker.Authenticator.
//
// With a password, the user name (or, if empty, the client ID) names a
// device or a token and the password must be its secret. A device must
// connect with its device ID as client ID; a token may use any client ID
// the broker accepted (one it assigned included) but an enrolled device's
// ID (it would take over the device's session).
//
// Without a password, the connection must carry a client certificate that
// the TLS listener verified (Credentials.TLS with VerifiedChains) whose
// subject common name is an enrolled device ID equal to the client ID; an
// unverified certificate is refused, and so is a certificate issued before
// the device was last removed (see IssuedURIPrefix).
//
// The identity records the credential it logged in with
// (broker.Identity.Credential): the generation of the secret, or for a
// certificate the device's enrolment. Allow refuses the session once that
// credential is no longer current.
//
// In anonymous mode every client is accepted as an operator, with any
// client ID. Errors wrap
// ErrUnauthenticated (or ErrClosed) and say why, for the broker's log.
func (s *Store) Authenticate(ctx context.Context, c broker.Credentials) (broker.Identity, error) {
	if s.closed.Load() {
		return broker.Identity{}, ErrClosed
	}
	if s.cfg.Anonymous {
		return broker.Identity{ClientID: c.ClientID, Name: anonymousName}, nil
	}
	// No credential changes between the read and the identity's use.
	s.credMu.RLock()
	defer s.credMu.RUnlock()
	if len(c.Password) == 0 {
		return s.authenticateCert(ctx, c)
	}
	user := c.Username
	if user == "" {
		user = c.ClientID
	}
	var p Principal
	var gen string
	err := s.view(ctx, func(tx *bolt.Tx) error {
		var err error
		p, gen, err = s.verifyTx(tx, user, c.Password)
		if err != nil {
			return err
		}
		if p.Role == RoleDevice {
			if c.ClientID != string(p.Device) {
				return fmt.Errorf("%w: device %s connected with client id %q", ErrUnauthenticated, p.Device, clip(c.ClientID))
			}
		} else if tx.Bucket(bucketDevices).Get([]byte(c.ClientID)) != nil {
			return fmt.Errorf("%w: token %s uses client id %q of an enrolled device", ErrUnauthenticated, p.Name, c.ClientID)
		}
		return nil
	})
	if err != nil {
		return broker.Identity{}, err
	}
	return identityOf(p, c.ClientID, credSecret+gen), nil
}

// authenticateCert authenticates a device by its verified client
// certificate: a certificate bound to a device (Enrollment.CertSHA256)
// logs in as that device; any other one as the enrolled device its
// subject common name names, unless it chains only to a CA of
// Config.BoundOnlyCAs. The client ID must be the device ID; the user name
// may be empty, the device ID, the common name, or start with "?" (see
// certUserName).
func (s *Store) authenticateCert(ctx context.Context, c broker.Credentials) (broker.Identity, error) {
	if c.TLS == nil || len(c.TLS.PeerCertificates) == 0 {
		return broker.Identity{}, fmt.Errorf("%w: no password and no client certificate", ErrUnauthenticated)
	}
	if len(c.TLS.VerifiedChains) == 0 || len(c.TLS.VerifiedChains[0]) == 0 {
		return broker.Identity{}, fmt.Errorf("%w: client certificate not verified", ErrUnauthenticated)
	}
	leaf := c.TLS.VerifiedChains[0][0]
	cn := leaf.Subject.CommonName
	fp := CertFingerprint(leaf)
	var id device.ID
	var rec deviceRecord
	err := s.view(ctx, func(tx *bolt.Tx) error {
		var bound bool
		var err error
		if id, rec, bound, err = boundDevice(tx, fp); err != nil || bound {
			return err
		}
		if !s.nameTrusted(c.TLS.VerifiedChains) {
			return fmt.Errorf("%w: client certificate %s (common name %q) is not bound to a device, and its CA vouches only for bound certificates",
				ErrUnauthenticated, fp, clip(cn))
		}
		if id, err = device.ParseID(cn); err != nil {
			return fmt.Errorf("%w: client certificate %s is not bound to a device, and its common name is no device ID: %w", ErrUnauthenticated, fp, err)
		}
		if err := getJSON(tx.Bucket(bucketDevices), string(id), &rec); err != nil {
			return fmt.Errorf("%w: certificate for unknown device %s", ErrUnauthenticated, id)
		}
		removed, err := removedAt(tx, string(id))
		if err != nil {
			return err
		}
		if issued := certIssued(leaf); !removed.IsZero() && !issued.After(removed) {
			return fmt.Errorf("%w: certificate of device %s issued %s, before the device was removed at %s",
				ErrUnauthenticated, id, issued.UTC().Format(time.RFC3339Nano), removed.Format(time.RFC3339Nano))
		}
		return nil
	})
	if err != nil {
		return broker.Identity{}, err
	}
	if c.ClientID != string(id) {
		return broker.Identity{}, fmt.Errorf("%w: certificate of device %s used with client id %q: the client id must be the device ID",
			ErrUnauthenticated, id, clip(c.ClientID))
	}
	if !certUserName(c.Username, id, cn) {
		return broker.Identity{}, fmt.Errorf("%w: certificate of device %s used with user name %q: want none, the device ID, the certificate's common name, or one starting with \"?\"",
			ErrUnauthenticated, id, clip(c.Username))
	}
	return identityOf(Principal{Role: RoleDevice, Name: string(id), Device: id}, c.ClientID, credCert+rec.Enrolment), nil
}

// certUserName reports whether user may come with a certificate login of
// device id whose certificate's common name is cn: none, the device ID,
// the common name, or AWS IoT's query form "?SDK=…&Version=…" (SDK
// metrics and authorizer parameters, which the AWS IoT Device SDKs send
// by default), whose content is ignored. The certificate alone decides
// who the client is.
func certUserName(user string, id device.ID, cn string) bool {
	return user == "" || user == string(id) || user == cn || strings.HasPrefix(user, "?")
}

// nameTrusted reports whether some verified chain ends at a CA that may
// vouch for device IDs in common names: one not in Config.BoundOnlyCAs.
func (s *Store) nameTrusted(chains [][]*x509.Certificate) bool {
	if len(s.boundOnly) == 0 {
		return true
	}
	for _, ch := range chains {
		if len(ch) > 0 && !s.boundOnly[sha256.Sum256(ch[len(ch)-1].Raw)] {
			return true
		}
	}
	return false
}

// identityOf encodes p as a broker.Identity: a device by its Device field,
// a token by the name "<role>:<name>"; cred is the credential it logged in
// with.
func identityOf(p Principal, clientID, cred string) broker.Identity {
	if p.Role == RoleDevice {
		return broker.Identity{ClientID: clientID, Name: p.Name, Device: p.Device, Credential: cred}
	}
	return broker.Identity{ClientID: clientID, Name: string(p.Role) + ":" + p.Name, Credential: cred}
}

// PrincipalOf decodes an identity returned by Authenticate. ok is false for
// an identity Authenticate cannot have returned. In anonymous mode every
// identity is an operator.
func (s *Store) PrincipalOf(id broker.Identity) (p Principal, ok bool) {
	if s.cfg.Anonymous {
		return Principal{Role: RoleOperator, Name: id.Name}, true
	}
	if id.Device != "" {
		return Principal{Role: RoleDevice, Name: string(id.Device), Device: id.Device}, true
	}
	role, name, found := strings.Cut(id.Name, ":")
	if !found {
		return Principal{}, false
	}
	if _, err := ParseRole(role); err != nil {
		return Principal{}, false
	}
	return Principal{Role: Role(role), Name: name}, true
}

// Allow implements broker.Authenticator: it asks the topic policy (see
// SetPolicy) whether id's principal may publish on topic (write) or
// subscribe to the filter topic and receive messages on topic (!write),
// and refuses everything to a session whose credential is no longer
// current (see Valid): the device was removed or its secret rotated, or
// the token revoked, even if the name has been enrolled or created again
// since. The policy's subject is the principal's role, its name (a
// device ID or token name; "" in anonymous mode) and the client ID.
// Every refusal is counted in Denied. It takes no lock.
func (s *Store) Allow(id broker.Identity, topic string, write bool) bool {
	p, ok := s.PrincipalOf(id)
	ok = ok && (s.cfg.Anonymous || s.validFor(p, id.Credential))
	if ok {
		access := policy.Read
		if write {
			access = policy.Write
		}
		sub := policy.Subject{Role: string(p.Role), User: p.Name, ClientID: id.ClientID}
		if s.cfg.Anonymous {
			sub.User = "" // anonymous: the topic lines before the first user line
		}
		ok = s.policy.Load().Allow(sub, topic, access)
	}
	if !ok {
		s.denied.Add(1)
	}
	return ok
}

// SetPolicy replaces the topic policy Allow applies, for example after
// umbra serve reloaded its --acl-file. The next check of every session
// uses it, existing subscriptions included (their messages are checked
// at delivery). A nil p restores policy.Default().
func (s *Store) SetPolicy(p *policy.Policy) {
	if p == nil {
		p = policy.Default()
	}
	s.policy.Store(p)
}

// Policy returns the topic policy Allow applies.
func (s *Store) Policy() *policy.Policy { return s.policy.Load() }

// Denied returns the number of publishes and subscriptions Allow refused
// since Open.
func (s *Store) Denied() uint64 { return s.denied.Load() }

// Verify checks that secret is the secret of the device or token name and
// returns who that is. It fails with an error wrapping ErrUnauthenticated
// for an unknown name or a wrong secret, and ErrClosed after Close.
func (s *Store) Verify(ctx context.Context, name string, secret []byte) (Principal, error) {
	var p Principal
	err := s.view(ctx, func(tx *bolt.Tx) error {
		var err error
		p, _, err = s.verifyTx(tx, name, secret)
		return err
	})
	return p, err
}

// VerifyBearer is Verify for an HTTP bearer token "name:secret" (the
// content of admin.token). Secrets hold no ':', so the name may.
func (s *Store) VerifyBearer(ctx context.Context, token string) (Principal, error) {
	i := strings.LastIndexByte(token, ':')
	if i < 0 {
		return Principal{}, fmt.Errorf("%w: token is not name:secret", ErrUnauthenticated)
	}
	return s.Verify(ctx, token[:i], []byte(token[i+1:]))
}

// verifyTx is Verify inside a read transaction; gen is the generation of
// the secret that verified.
func (s *Store) verifyTx(tx *bolt.Tx, name string, secret []byte) (p Principal, gen string, err error) {
	if len(name) == 0 || len(name) > device.MaxIDLen || len(secret) > maxSecretLen {
		return Principal{}, "", fmt.Errorf("%w: malformed user name or secret", ErrUnauthenticated)
	}
	if v := tx.Bucket(bucketDevices).Get([]byte(name)); v != nil {
		var rec deviceRecord
		if err := json.Unmarshal(v, &rec); err != nil {
			return Principal{}, "", fmt.Errorf("identity: decode device %q: %w", name, err)
		}
		if !checkSecret(s.key, RoleDevice, name, secret, rec.MAC) {
			return Principal{}, "", fmt.Errorf("%w: wrong secret for device %s", ErrUnauthenticated, name)
		}
		return Principal{Role: RoleDevice, Name: name, Device: device.ID(name)}, rec.SecretGen, nil
	}
	if v := tx.Bucket(bucketTokens).Get([]byte(name)); v != nil {
		var rec tokenRecord
		if err := json.Unmarshal(v, &rec); err != nil {
			return Principal{}, "", fmt.Errorf("identity: decode token %q: %w", name, err)
		}
		if !checkSecret(s.key, rec.Role, name, secret, rec.MAC) {
			return Principal{}, "", fmt.Errorf("%w: wrong secret for token %s", ErrUnauthenticated, name)
		}
		return Principal{Role: rec.Role, Name: name}, rec.SecretGen, nil
	}
	// Spend the same work as for a known name.
	secretMAC(s.key, RoleDevice, name, secret)
	return Principal{}, "", fmt.Errorf("%w: unknown device or token %q", ErrUnauthenticated, clip(name))
}

var _ broker.Authenticator = (*Store)(nil)
