package brokerauth_test

import (
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/identity"
	"github.com/umbra-iot/umbra/identity/identitytest"
	"github.com/umbra-iot/umbra/internal/server/brokerauth"
)

// TestEncoding: sessions become the broker identities umbra serve has
// always stored in broker.db (persistent sessions keep them across
// restarts and versions), and back.
func TestEncoding(t *testing.T) {
	tests := []struct {
		name    string
		session identity.Session
		want    broker.Identity
	}{
		{"device",
			identity.Session{Principal: identity.Principal{Role: identity.RoleDevice, Name: "lamp-1", Device: "lamp-1"}, ClientID: "lamp-1", Credential: "s:gen"},
			broker.Identity{ClientID: "lamp-1", Name: "lamp-1", Device: "lamp-1", Credential: "s:gen"}},
		{"operator token",
			identity.Session{Principal: identity.Principal{Role: identity.RoleOperator, Name: "admin"}, ClientID: "cli", Credential: "s:g"},
			broker.Identity{ClientID: "cli", Name: "operator:admin", Credential: "s:g"}},
		{"integrator token with a colon in its name",
			identity.Session{Principal: identity.Principal{Role: identity.RoleIntegrator, Name: "team:a"}, ClientID: "x/y ü", Credential: "s:g"},
			broker.Identity{ClientID: "x/y ü", Name: "integrator:team:a", Credential: "s:g"}},
		{"anonymous",
			identity.Session{Principal: identity.Principal{Role: identity.RoleOperator}, ClientID: "any"},
			broker.Identity{ClientID: "any", Name: brokerauth.AnonymousName}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := brokerauth.Identity(tc.session)
			if got != tc.want {
				t.Errorf("Identity(%+v) = %+v, want %+v", tc.session, got, tc.want)
			}
			if back := brokerauth.Session(got); back != tc.session {
				t.Errorf("Session(%+v) = %+v, want %+v", got, back, tc.session)
			}
		})
	}
	// Identities no session encodes to carry no principal.
	for _, id := range []broker.Identity{{Name: "ops"}, {Name: ""}, {Name: "*anonymous"}} {
		if got := brokerauth.Session(id); got.Principal != (identity.Principal{}) {
			t.Errorf("Session(%+v) = %+v, want no principal", id, got)
		}
	}
}

// TestAuth: the adapter authenticates, authorises, validates and matches
// as the store does, with broker identities.
func TestAuth(t *testing.T) {
	ctx := t.Context()
	var revoked []identity.Revocation
	ids := identitytest.Open(t, "", identity.Config{OnRevoke: func(_ context.Context, r identity.Revocation) { revoked = append(revoked, r) }})
	auth := brokerauth.New(ids)
	sec, err := ids.AddDevice(ctx, "lamp-1", nil)
	if err != nil {
		t.Fatal(err)
	}
	opSec, err := ids.CreateToken(ctx, identity.RoleOperator, "ops")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := auth.Authenticate(ctx, broker.Credentials{ClientID: "lamp-1", Password: []byte("wrong")}); err == nil {
		t.Error("Authenticate with a wrong secret: got nil error")
	}
	dev, err := auth.Authenticate(ctx, broker.Credentials{ClientID: "lamp-1", Password: []byte(sec), RemoteAddr: "127.0.0.1:1"})
	if err != nil || dev.Name != "lamp-1" || dev.Device != "lamp-1" || !strings.HasPrefix(dev.Credential, "s:") {
		t.Fatalf("Authenticate(device) = %+v, %v", dev, err)
	}
	op, err := auth.Authenticate(ctx, broker.Credentials{ClientID: "cli", Username: "ops", Password: []byte(opSec)})
	if err != nil || op.Name != "operator:ops" || op.Device != "" {
		t.Fatalf("Authenticate(token) = %+v, %v", op, err)
	}
	if !auth.Allow(dev, "state/lamp-1/update", true) || auth.Allow(dev, "state/lamp-2/update", true) || !auth.Allow(op, "#", false) {
		t.Error("Allow: want the device its own topics only, the operator everything")
	}
	if auth.Allow(broker.Identity{ClientID: "cli", Name: "ops", Credential: op.Credential}, "#", false) {
		t.Error("Allow(token without its role) = true, want false")
	}
	if !auth.Valid(dev) || !auth.Valid(op) {
		t.Error("Valid: want both sessions valid")
	}
	if _, err := ids.RotateDevice(ctx, "lamp-1"); err != nil {
		t.Fatal(err)
	}
	if auth.Valid(dev) || auth.Allow(dev, "state/lamp-1/update", true) {
		t.Error("after rotation: the old secret's session is valid")
	}
	if len(revoked) != 1 || !brokerauth.Match(revoked[0])(dev) || brokerauth.Match(revoked[0])(op) {
		t.Errorf("Match after rotation: want the device's old session only (revocations %+v)", revoked)
	}
}

// TestAnonymous: in anonymous mode every client is one identity, an
// operator.
func TestAnonymous(t *testing.T) {
	auth := brokerauth.New(identitytest.Open(t, "", identity.Config{Anonymous: true}))
	a, err := auth.Authenticate(t.Context(), broker.Credentials{ClientID: "a"})
	if err != nil || a.Name != brokerauth.AnonymousName {
		t.Fatalf("Authenticate(anonymous) = %+v, %v", a, err)
	}
	if !auth.Allow(a, "state/x/update", true) || !auth.Valid(a) {
		t.Error("anonymous session: want an operator's rights")
	}
}

var quiet = slog.New(slog.DiscardHandler)

// BenchmarkAllow measures the ACL check the broker runs for every PUBLISH
// and every delivered message, through the broker.Authenticator
// interface: the adapter's decoding plus identity.Store.Allow.
func BenchmarkAllow(b *testing.B) {
	ids := identitytest.Open(b, "", identity.Config{Logger: quiet})
	secret, err := ids.AddDevice(b.Context(), "dev-1", nil)
	if err != nil {
		b.Fatal(err)
	}
	var auth broker.Authenticator = brokerauth.New(ids)
	id, err := auth.Authenticate(b.Context(), broker.Credentials{ClientID: "dev-1", Password: []byte(secret)})
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if !auth.Allow(id, "state/dev-1/update", true) {
			b.Fatal("denied")
		}
	}
}

// BenchmarkAllowDelivery measures the ACL check of one delivered message
// through the interface: an integrator receiving a device's accepted
// reply.
func BenchmarkAllowDelivery(b *testing.B) {
	ids := identitytest.Open(b, "", identity.Config{Logger: quiet})
	secret, err := ids.CreateToken(b.Context(), identity.RoleIntegrator, "dash")
	if err != nil {
		b.Fatal(err)
	}
	var auth broker.Authenticator = brokerauth.New(ids)
	id, err := auth.Authenticate(b.Context(), broker.Credentials{ClientID: "dash-1", Username: "dash", Password: []byte(secret)})
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if !auth.Allow(id, "state/dev-1/update/accepted", false) {
			b.Fatal("denied")
		}
	}
}
