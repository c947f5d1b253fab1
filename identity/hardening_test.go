package identity_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/identity"
	"github.com/umbra-iot/umbra/internal/brokertest"
	"github.com/umbra-iot/umbra/internal/server/brokerauth"
)

// awaitRefused waits until the store has refused more than before
// (identity.Store.Denied) and fails the test if got delivers a message
// first: the broker decides a delivery or a publish either way, so one of
// the two events always comes.
func awaitRefused(t *testing.T, s *identity.Store, before uint64, got <-chan brokertest.Message, what string) {
	t.Helper()
	deadline := time.Now().Add(brokertest.Timeout)
	for s.Denied() == before {
		select {
		case m := <-got:
			t.Fatalf("%s: got %v, want it refused", what, m)
		case <-time.After(5 * time.Millisecond): // no event for a refusal: poll Denied
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: neither refused nor delivered within %v", what, brokertest.Timeout)
		}
	}
	select {
	case m := <-got:
		t.Fatalf("%s: got %v, want it refused", what, m)
	default:
	}
}

// TestHardening01RevokedCredentialStaysRevoked (issue 10, case 1): a
// session whose credential was revoked, removed or rotated gets nothing
// back when a credential with the same name is created again: it receives
// no message and its publishes are refused, while a session with the new
// credential works. The broker here has no eviction wired, so the old
// session stays connected and only the store's Allow protects the topics.
func TestHardening01RevokedCredentialStaysRevoked(t *testing.T) {
	tests := []struct {
		name     string
		clientID string
		user     string
		// setup creates the credential and returns its secret.
		setup func(t *testing.T, s *identity.Store) string
		// renew ends the credential and creates one with the same name,
		// returning the new secret.
		renew func(t *testing.T, s *identity.Store) string
		// read is a topic the old session subscribed to; write one it
		// publishes to.
		read, write string
	}{
		{
			name: "token revoked and created again", clientID: "ops2-c", user: "ops2",
			setup: func(t *testing.T, s *identity.Store) string {
				return mustCreateToken(t, s, identity.RoleOperator, "ops2")
			},
			renew: func(t *testing.T, s *identity.Store) string {
				if err := s.RevokeToken(t.Context(), "ops2"); err != nil {
					t.Fatal(err)
				}
				return mustCreateToken(t, s, identity.RoleOperator, "ops2")
			},
			read: "state/devA/update/delta", write: "state/devA/update",
		},
		{
			name: "token revoked and created again with another role", clientID: "ops2-c", user: "ops2",
			setup: func(t *testing.T, s *identity.Store) string {
				return mustCreateToken(t, s, identity.RoleOperator, "ops2")
			},
			renew: func(t *testing.T, s *identity.Store) string {
				if err := s.RevokeToken(t.Context(), "ops2"); err != nil {
					t.Fatal(err)
				}
				return mustCreateToken(t, s, identity.RoleIntegrator, "ops2")
			},
			read: "state/devA/update/delta", write: "state/devA/update",
		},
		{
			name: "device removed and enrolled again", clientID: "devX", user: "devX",
			setup: func(t *testing.T, s *identity.Store) string { return mustAddDevice(t, s, "devX") },
			renew: func(t *testing.T, s *identity.Store) string {
				if err := s.RemoveDevice(t.Context(), "devX"); err != nil {
					t.Fatal(err)
				}
				return mustAddDevice(t, s, "devX")
			},
			read: "state/devX/update/delta", write: "state/devX/update",
		},
		{
			name: "device rotated", clientID: "devX", user: "devX",
			setup: func(t *testing.T, s *identity.Store) string { return mustAddDevice(t, s, "devX") },
			renew: func(t *testing.T, s *identity.Store) string {
				secret, err := s.RotateDevice(t.Context(), "devX")
				if err != nil {
					t.Fatal(err)
				}
				return secret
			},
			read: "state/devX/update/delta", write: "state/devX/update",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := mustOpen(t, "", identity.Config{})
			ctlSecret := mustCreateToken(t, s, identity.RoleOperator, "ctl")
			b := brokertest.New(t, broker.Config{Auth: brokerauth.New(s)})
			url := brokertest.URL(b)
			handled := make(chan brokertest.Message, 16)
			if err := b.Subscribe(tc.write, func(_, topic string, payload []byte) {
				handled <- brokertest.Message{Topic: topic, Payload: payload}
			}); err != nil {
				t.Fatal(err)
			}

			old := brokertest.Connect(t, url, tc.clientID, login(tc.user, tc.setup(t, s)))
			oldMsgs := brokertest.Subscribe(t, old, tc.read, 1)
			ctl := brokertest.Connect(t, url, "ctl-1", login("ctl", ctlSecret))
			ctlMsgs := brokertest.Subscribe(t, ctl, tc.read, 1)
			if err := b.Publish(tc.read, []byte("before"), false, 1); err != nil {
				t.Fatal(err)
			}
			expect(t, "old session before renewal", oldMsgs, tc.read+" before")
			expect(t, "control", ctlMsgs, tc.read+" before")

			newSecret := tc.renew(t, s)

			denied := s.Denied()
			if err := b.Publish(tc.read, []byte("after"), false, 1); err != nil {
				t.Fatal(err)
			}
			expect(t, "control", ctlMsgs, tc.read+" after")
			awaitRefused(t, s, denied, oldMsgs, "delivery to the old session")

			denied = s.Denied()
			brokertest.Publish(t, old, tc.write, 0, []byte("from the old session"))
			awaitRefused(t, s, denied, handled, "publish of the old session")

			if err := connectErr(t, url, tc.clientID, tc.user, "wrong"+newSecret); err == nil {
				t.Error("a wrong secret connected, want refused")
			}
			// The new credential works (for a device it takes the
			// client ID over from the old session).
			freshID := tc.clientID
			if tc.user != tc.clientID {
				freshID = tc.user + "-new"
			}
			fresh := brokertest.Connect(t, url, freshID, login(tc.user, newSecret))
			freshMsgs := brokertest.Subscribe(t, fresh, tc.read, 1)
			if err := b.Publish(tc.read, []byte("fresh"), false, 1); err != nil {
				t.Fatal(err)
			}
			expect(t, "new session", freshMsgs, tc.read+" fresh")
		})
	}
}

// TestHardening01CertificateOfEarlierEnrolment (issue 10, case 1, mTLS): a
// certificate session is bound to the device's enrolment. After the
// device is removed and enrolled again, the old session gets nothing and
// the old certificate is refused, while a certificate issued after the
// removal logs in.
func TestHardening01CertificateOfEarlierEnrolment(t *testing.T) {
	p := newPKI(t)
	caFile := filepath.Join(p.dir, identity.CACertFile)
	srvTLS, err := identity.ServerTLSConfig(p.serverCert, p.srvKey, caFile)
	if err != nil {
		t.Fatal(err)
	}
	s := mustOpen(t, "", identity.Config{})
	mustAddDevice(t, s, "devX")
	oldCert, oldKey := p.deviceFiles(t, "devX", time.Hour)
	b := brokertest.New(t, broker.Config{Auth: brokerauth.New(s), TLSConfig: srvTLS})
	clientTLS := func(cert, key string) func(*mqtt.ClientOptions) {
		cfg, err := identity.ClientTLSConfig(caFile, cert, key)
		if err != nil {
			t.Fatal(err)
		}
		cfg.ServerName = "127.0.0.1"
		return brokertest.WithTLS(cfg)
	}
	old := brokertest.Connect(t, brokertest.TLSURL(b), "devX", clientTLS(oldCert, oldKey))
	oldMsgs := brokertest.Subscribe(t, old, "state/devX/update/delta", 1)

	if err := s.RemoveDevice(t.Context(), "devX"); err != nil {
		t.Fatal(err)
	}
	mustAddDevice(t, s, "devX")
	denied := s.Denied()
	if err := b.Publish("state/devX/update/delta", []byte("after"), false, 1); err != nil {
		t.Fatal(err)
	}
	awaitRefused(t, s, denied, oldMsgs, "delivery to the old certificate session")

	if _, err := brokertest.TryConnect(t, brokertest.TLSURL(b), "devX", clientTLS(oldCert, oldKey)); err == nil {
		t.Error("certificate issued before the device was removed: connected, want refused")
	}
	newCert, newKey := p.deviceFiles(t, "devX", time.Hour)
	fresh := brokertest.Connect(t, brokertest.TLSURL(b), "devX", clientTLS(newCert, newKey))
	freshMsgs := brokertest.Subscribe(t, fresh, "state/devX/update/delta", 1)
	if err := b.Publish("state/devX/update/delta", []byte("fresh"), false, 1); err != nil {
		t.Fatal(err)
	}
	expect(t, "new certificate session", freshMsgs, "state/devX/update/delta fresh")
}

// TestRevocationMatch: OnRevoke reports the sessions to disconnect: every
// session of the name after a removal or revocation, after a rotation
// every session except those using the new secret (certificate sessions
// included), and never another principal's.
func TestRevocationMatch(t *testing.T) {
	var got []identity.Revocation
	s := mustOpen(t, "", identity.Config{OnRevoke: func(_ context.Context, r identity.Revocation) { got = append(got, r) }})
	ctx := t.Context()
	auth := func(c identity.Credentials) identity.Session {
		t.Helper()
		id, err := s.Authenticate(ctx, c)
		if err != nil {
			t.Fatalf("Authenticate %+v: %v", c, err)
		}
		return id
	}
	sec := mustAddDevice(t, s, "dev-1")
	other := auth(identity.Credentials{ClientID: "dev-2", Password: []byte(mustAddDevice(t, s, "dev-2"))})
	old := auth(identity.Credentials{ClientID: "dev-1", Password: []byte(sec)})
	p := newPKI(t)
	cert := auth(identity.Credentials{ClientID: "dev-1", TLS: tlsState(t, p, "dev-1", true)})

	sec, err := s.RotateDevice(ctx, "dev-1")
	if err != nil {
		t.Fatal(err)
	}
	fresh := auth(identity.Credentials{ClientID: "dev-1", Password: []byte(sec)})
	if len(got) != 1 || got[0].Reason != identity.RevokeRotated || got[0].Principal.Name != "dev-1" {
		t.Fatalf("OnRevoke after rotate: %+v, want one RevokeRotated for dev-1", got)
	}
	for _, tc := range []struct {
		name string
		id   identity.Session
		want bool
	}{
		{"old secret", old, true}, {"certificate", cert, true}, {"new secret", fresh, false}, {"other device", other, false},
	} {
		if m := got[0].Match(tc.id); m != tc.want {
			t.Errorf("rotation: Match(%s) = %t, want %t", tc.name, m, tc.want)
		}
	}
	if !s.Valid(cert) || s.Valid(old) {
		t.Errorf("after rotation: Valid(certificate) %t, Valid(old secret) %t; want true, false", s.Valid(cert), s.Valid(old))
	}

	if err := s.RemoveDevice(ctx, "dev-1"); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[1].Reason != identity.RevokeRemoved || !got[1].Match(fresh) || !got[1].Match(cert) || got[1].Match(other) {
		t.Errorf("OnRevoke after remove: %+v, want RevokeRemoved matching every dev-1 session only", got[1:])
	}
	tok := auth(identity.Credentials{ClientID: "cli", Username: "ops", Password: []byte(mustCreateToken(t, s, identity.RoleOperator, "ops"))})
	if err := s.RevokeToken(ctx, "ops"); err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got[2].Reason != identity.RevokeRevoked || !got[2].Match(tok) || got[2].Match(other) {
		t.Errorf("OnRevoke after revoke: %+v, want RevokeRevoked matching the token's session only", got[2:])
	}
}
