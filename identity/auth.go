package identity

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/policy"
)

// Credentials are what a client presented when it connected over MQTT.
type Credentials struct {
	// ClientID is the MQTT client ID: any the transport accepted, or one
	// it assigned.
	ClientID string
	// Username is the CONNECT user name; "" if absent.
	Username string
	// Password is the CONNECT password; nil if absent.
	Password []byte
	// TLS is the connection's TLS state; nil unless it uses TLS.
	TLS *tls.ConnectionState
}

// Session is who an MQTT connection authenticated as: what Authenticate
// returns, the transport keeps for the connection's life (and its
// persistent session's), and Allow checks.
type Session struct {
	// Principal is the device or token that logged in. In anonymous mode
	// it is an operator with no name.
	Principal Principal
	// ClientID is the connection's MQTT client ID.
	ClientID string
	// Credential identifies the credential the connection logged in with:
	// one generation of a device's or token's secret, or a device's
	// enrolment for a certificate login. It is opaque; Allow refuses the
	// session once it is no longer the principal's current one (see
	// Valid). "" in anonymous mode.
	Credential string
}

// Authenticate checks the credentials a connecting MQTT client presented
// and returns who it is.
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
// The session records the credential it logged in with
// (Session.Credential): the generation of the secret, or for a
// certificate the device's enrolment. Allow refuses the session once that
// credential is no longer current.
//
// In anonymous mode every client is accepted as an operator, with any
// client ID. Errors wrap ErrUnauthenticated (or ErrClosed, or ctx's
// error) and say why, for the transport's log.
func (s *Store) Authenticate(ctx context.Context, c Credentials) (Session, error) {
	if s.closed.Load() {
		return Session{}, ErrClosed
	}
	if s.cfg.Anonymous {
		return Session{Principal: Principal{Role: RoleOperator}, ClientID: c.ClientID}, nil
	}
	// No credential changes between the reads and the session's use.
	s.credMu.RLock()
	defer s.credMu.RUnlock()
	if err := s.check(ctx); err != nil {
		return Session{}, err
	}
	if len(c.Password) == 0 {
		return s.authenticateCert(ctx, c)
	}
	user := c.Username
	if user == "" {
		user = c.ClientID
	}
	p, gen, err := s.verify(ctx, user, c.Password)
	if err != nil {
		return Session{}, err
	}
	if p.Role == RoleDevice {
		if c.ClientID != string(p.Device) {
			return Session{}, fmt.Errorf("%w: device %s connected with client id %q", ErrUnauthenticated, p.Device, clip(c.ClientID))
		}
	} else if rec, err := s.st.Get(ctx, c.ClientID); err == nil && rec.IsDevice() {
		return Session{}, fmt.Errorf("%w: token %s uses client id %q of an enrolled device", ErrUnauthenticated, p.Name, c.ClientID)
	} else if err != nil && !errors.Is(err, ErrNotFound) {
		return Session{}, closedErr(err)
	}
	return Session{Principal: p, ClientID: c.ClientID, Credential: credSecret + gen}, nil
}

// authenticateCert authenticates a device by its verified client
// certificate: a certificate bound to a device (Enrollment.CertSHA256)
// logs in as that device; any other one as the enrolled device its
// subject common name names, unless it chains only to a CA of
// Config.BoundOnlyCAs. The client ID must be the device ID; the user name
// may be empty, the device ID, the common name, or start with "?" (see
// certUserName).
func (s *Store) authenticateCert(ctx context.Context, c Credentials) (Session, error) {
	if c.TLS == nil || len(c.TLS.PeerCertificates) == 0 {
		return Session{}, fmt.Errorf("%w: no password and no client certificate", ErrUnauthenticated)
	}
	if len(c.TLS.VerifiedChains) == 0 || len(c.TLS.VerifiedChains[0]) == 0 {
		return Session{}, fmt.Errorf("%w: client certificate not verified", ErrUnauthenticated)
	}
	leaf := c.TLS.VerifiedChains[0][0]
	cn := leaf.Subject.CommonName
	fp := CertFingerprint(leaf)
	id, rec, bound, err := s.boundDevice(ctx, fp)
	if err != nil {
		return Session{}, err
	}
	if !bound {
		if !s.nameTrusted(c.TLS.VerifiedChains) {
			return Session{}, fmt.Errorf("%w: client certificate %s (common name %q) is not bound to a device, and its CA vouches only for bound certificates",
				ErrUnauthenticated, fp, clip(cn))
		}
		if id, err = device.ParseID(cn); err != nil {
			return Session{}, fmt.Errorf("%w: client certificate %s is not bound to a device, and its common name is no device ID: %w", ErrUnauthenticated, fp, err)
		}
		if rec, err = s.st.Get(ctx, string(id)); errors.Is(err, ErrNotFound) || err == nil && !rec.IsDevice() {
			return Session{}, fmt.Errorf("%w: certificate for unknown device %s", ErrUnauthenticated, id)
		} else if err != nil {
			return Session{}, closedErr(err)
		}
		removed, err := s.st.RemovedAt(ctx, id)
		if err != nil {
			return Session{}, closedErr(err)
		}
		if issued := certIssued(leaf); !removed.IsZero() && !issued.After(removed) {
			return Session{}, fmt.Errorf("%w: certificate of device %s issued %s, before the device was removed at %s",
				ErrUnauthenticated, id, issued.UTC().Format(time.RFC3339Nano), removed.UTC().Format(time.RFC3339Nano))
		}
	}
	if c.ClientID != string(id) {
		return Session{}, fmt.Errorf("%w: certificate of device %s used with client id %q: the client id must be the device ID",
			ErrUnauthenticated, id, clip(c.ClientID))
	}
	if !certUserName(c.Username, id, cn) {
		return Session{}, fmt.Errorf("%w: certificate of device %s used with user name %q: want none, the device ID, the certificate's common name, or one starting with \"?\"",
			ErrUnauthenticated, id, clip(c.Username))
	}
	s.learn(rec)
	return Session{Principal: Principal{Role: RoleDevice, Name: string(id), Device: id}, ClientID: c.ClientID, Credential: credCert + rec.Enrolment}, nil
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

// Allow asks the topic policy (see SetPolicy) whether sess may publish
// on topic (write) or subscribe to the filter topic and receive messages
// on topic (!write), and refuses everything to a session whose
// credential is no longer current (see Valid): the device was removed or
// its secret rotated, or the token revoked, even if the name has been
// enrolled or created again since. The policy's subject is the
// principal's role, its name (a device ID or token name; "" in anonymous
// mode, where every session is an operator) and the client ID. Every
// refusal is counted in Denied. It takes no lock; the broker calls it
// for every PUBLISH and every delivered message.
func (s *Store) Allow(sess Session, topic string, write bool) bool {
	var sub policy.Subject
	ok := true
	if s.cfg.Anonymous {
		// The topic lines before the first user line.
		sub = policy.Subject{Role: policy.RoleOperator, ClientID: sess.ClientID}
	} else if ok = s.validFor(&sess.Principal, sess.Credential); ok {
		sub = policy.Subject{Role: string(sess.Principal.Role), User: sess.Principal.Name, ClientID: sess.ClientID}
	}
	if ok {
		access := policy.Read
		if write {
			access = policy.Write
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
	s.epoch.Add(1) // after the change: see AllowEpoch
}

// AllowEpoch returns a number that changes whenever an answer of Allow
// may change: after every change of a device's or token's credential
// (enrolment, removal, rotation, revocation, a change another node made)
// and of the policy. Allow's answer for a session, topic and direction
// read after AllowEpoch returned e holds for as long as AllowEpoch still
// returns e, so a caller may remember it (the broker remembers the last
// topic each connection was allowed to publish to). It takes no lock.
func (s *Store) AllowEpoch() uint64 { return s.epoch.Load() }

// Policy returns the topic policy Allow applies.
func (s *Store) Policy() *policy.Policy { return s.policy.Load() }

// Denied returns the number of publishes and subscriptions Allow refused
// since Open.
func (s *Store) Denied() uint64 { return s.denied.Load() }

// Verify checks that secret is the secret of the device or token name and
// returns who that is. It fails with an error wrapping ErrUnauthenticated
// for an unknown name or a wrong secret, and ErrClosed after Close.
func (s *Store) Verify(ctx context.Context, name string, secret []byte) (Principal, error) {
	if err := s.check(ctx); err != nil {
		return Principal{}, err
	}
	p, _, err := s.verify(ctx, name, secret)
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

// verify is Verify without the closed check; gen is the generation of
// the secret that verified.
func (s *Store) verify(ctx context.Context, name string, secret []byte) (p Principal, gen string, err error) {
	if len(name) == 0 || len(name) > device.MaxIDLen || len(secret) > maxSecretLen {
		return Principal{}, "", fmt.Errorf("%w: malformed user name or secret", ErrUnauthenticated)
	}
	rec, err := s.st.Get(ctx, name)
	switch {
	case errors.Is(err, ErrNotFound):
		// Spend the same work as for a known name.
		secretMAC(s.key, RoleDevice, name, secret)
		return Principal{}, "", fmt.Errorf("%w: unknown device or token %q", ErrUnauthenticated, clip(name))
	case err != nil:
		return Principal{}, "", closedErr(err)
	}
	kind := "token"
	if rec.IsDevice() {
		kind = "device"
	}
	if !checkSecret(s.key, rec.Role, name, secret, rec.MAC) {
		return Principal{}, "", fmt.Errorf("%w: wrong secret for %s %s", ErrUnauthenticated, kind, name)
	}
	s.learn(rec)
	if rec.IsDevice() {
		return Principal{Role: RoleDevice, Name: name, Device: device.ID(name)}, rec.SecretGen, nil
	}
	return Principal{Role: rec.Role, Name: name}, rec.SecretGen, nil
}

// closedErr maps an error of the storage after Close to ErrClosed.
func closedErr(err error) error {
	if errors.Is(err, ErrClosed) {
		return ErrClosed
	}
	return err
}
