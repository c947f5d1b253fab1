package identity_test

import (
	"crypto/tls"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/identity"
	"github.com/umbra-iot/umbra/policy"
)

// tlsState returns the server's view of a handshake in which the client
// presented a certificate for id; verified selects a server that checks
// the chain against the fleet CA or one that accepts any certificate.
func tlsState(t *testing.T, p *pki, id device.ID, verified bool) *tls.ConnectionState {
	t.Helper()
	caFile := filepath.Join(p.dir, identity.CACertFile)
	srv, err := identity.ServerTLSConfig(p.serverCert, p.srvKey, caFile)
	if err != nil {
		t.Fatal(err)
	}
	if !verified {
		srv.ClientAuth = tls.RequireAnyClientCert
	}
	certFile, keyFile := p.deviceFiles(t, id, time.Hour)
	cli, err := identity.ClientTLSConfig(caFile, certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	st, err := handshake(t, srv, cli)
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	return st
}

func TestAuthenticate(t *testing.T) {
	ctx := t.Context()
	s := mustOpen(t, "", identity.Config{})
	sec1 := mustAddDevice(t, s, "dev-1")
	sec2 := mustAddDevice(t, s, "dev-2")
	gone := mustAddDevice(t, s, "gone")
	if err := s.RemoveDevice(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	opSec := mustCreateToken(t, s, identity.RoleOperator, "ops")
	intSec := mustCreateToken(t, s, identity.RoleIntegrator, "dash")
	oldSec := mustCreateToken(t, s, identity.RoleOperator, "old")
	if err := s.RevokeToken(ctx, "old"); err != nil {
		t.Fatal(err)
	}
	p := newPKI(t)
	verified := tlsState(t, p, "dev-1", true)
	unverified := tlsState(t, p, "dev-1", false)
	unknownCert := tlsState(t, p, "ghost", true)

	tests := []struct {
		name string
		c    identity.Credentials
		want identity.Session // zero: refused
	}{
		{"device secret", identity.Credentials{ClientID: "dev-1", Username: "dev-1", Password: []byte(sec1)},
			identity.Session{ClientID: "dev-1", Principal: identity.Principal{Role: identity.RoleDevice, Name: "dev-1", Device: "dev-1"}}},
		{"device secret without user name", identity.Credentials{ClientID: "dev-2", Password: []byte(sec2)},
			identity.Session{ClientID: "dev-2", Principal: identity.Principal{Role: identity.RoleDevice, Name: "dev-2", Device: "dev-2"}}},
		{"wrong secret", identity.Credentials{ClientID: "dev-1", Username: "dev-1", Password: []byte(sec2)}, identity.Session{}},
		{"unknown device", identity.Credentials{ClientID: "dev-9", Username: "dev-9", Password: []byte(sec1)}, identity.Session{}},
		{"removed device", identity.Credentials{ClientID: "gone", Username: "gone", Password: []byte(gone)}, identity.Session{}},
		{"client id mismatch", identity.Credentials{ClientID: "dev-2", Username: "dev-1", Password: []byte(sec1)}, identity.Session{}},
		{"over-long password", identity.Credentials{ClientID: "dev-1", Username: "dev-1", Password: make([]byte, 1000)}, identity.Session{}},
		{"operator token", identity.Credentials{ClientID: "cli-1", Username: "ops", Password: []byte(opSec)},
			identity.Session{ClientID: "cli-1", Principal: identity.Principal{Role: identity.RoleOperator, Name: "ops"}}},
		{"integrator token", identity.Credentials{ClientID: "dash-1", Username: "dash", Password: []byte(intSec)},
			identity.Session{ClientID: "dash-1", Principal: identity.Principal{Role: identity.RoleIntegrator, Name: "dash"}}},
		{"token taking a device's client id", identity.Credentials{ClientID: "dev-1", Username: "ops", Password: []byte(opSec)}, identity.Session{}},
		{"token with any client id", identity.Credentials{ClientID: "mosq/a+b ü", Username: "ops", Password: []byte(opSec)},
			identity.Session{ClientID: "mosq/a+b ü", Principal: identity.Principal{Role: identity.RoleOperator, Name: "ops"}}},
		{"token with an assigned client id", identity.Credentials{ClientID: "d4v1p0v8d2a6cgl2f0ng", Username: "dash", Password: []byte(intSec)},
			identity.Session{ClientID: "d4v1p0v8d2a6cgl2f0ng", Principal: identity.Principal{Role: identity.RoleIntegrator, Name: "dash"}}},
		{"token with a removed device's client id", identity.Credentials{ClientID: "gone", Username: "ops", Password: []byte(opSec)},
			identity.Session{ClientID: "gone", Principal: identity.Principal{Role: identity.RoleOperator, Name: "ops"}}},
		{"device with another client id", identity.Credentials{ClientID: "lamp-1", Username: "dev-1", Password: []byte(sec1)}, identity.Session{}},
		{"revoked token", identity.Credentials{ClientID: "cli-1", Username: "old", Password: []byte(oldSec)}, identity.Session{}},
		{"no credentials", identity.Credentials{ClientID: "dev-1"}, identity.Session{}},
		{"verified certificate", identity.Credentials{ClientID: "dev-1", TLS: verified},
			identity.Session{ClientID: "dev-1", Principal: identity.Principal{Role: identity.RoleDevice, Name: "dev-1", Device: "dev-1"}}},
		{"verified certificate, other client id", identity.Credentials{ClientID: "dev-2", TLS: verified}, identity.Session{}},
		{"verified certificate, other user name", identity.Credentials{ClientID: "dev-1", Username: "dev-2", TLS: verified}, identity.Session{}},
		{"unverified certificate", identity.Credentials{ClientID: "dev-1", TLS: unverified}, identity.Session{}},
		{"certificate of unknown device", identity.Credentials{ClientID: "ghost", TLS: unknownCert}, identity.Session{}},
		{"TLS without certificate", identity.Credentials{ClientID: "dev-1", TLS: &tls.ConnectionState{}}, identity.Session{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := s.Authenticate(ctx, tc.c)
			if tc.want == (identity.Session{}) {
				if !errors.Is(err, identity.ErrUnauthenticated) {
					t.Errorf("Authenticate: got %+v, %v; want ErrUnauthenticated", got, err)
				}
				return
			}
			cred := got.Credential
			got.Credential = ""
			if err != nil || got != tc.want || cred == "" {
				t.Errorf("Authenticate: got %+v (credential %q), %v; want %+v with a credential", got, cred, err, tc.want)
			}
		})
	}
}

func TestStoreAllow(t *testing.T) {
	ctx := t.Context()
	s := mustOpen(t, "", identity.Config{})
	sec := mustAddDevice(t, s, "dev-1")
	opSec := mustCreateToken(t, s, identity.RoleOperator, "ops")
	dev, err := s.Authenticate(ctx, identity.Credentials{ClientID: "dev-1", Password: []byte(sec)})
	if err != nil {
		t.Fatal(err)
	}
	op, err := s.Authenticate(ctx, identity.Credentials{ClientID: "cli", Username: "ops", Password: []byte(opSec)})
	if err != nil {
		t.Fatal(err)
	}
	forged := identity.Session{ClientID: "x", Principal: identity.Principal{Role: "root", Name: "x"}}

	steps := []struct {
		name   string
		id     identity.Session
		topic  string
		write  bool
		want   bool
		action func() error
	}{
		{name: "device own update", id: dev, topic: "state/dev-1/update", write: true, want: true},
		{name: "device foreign update", id: dev, topic: "state/dev-2/update", write: true},
		{name: "operator reads all", id: op, topic: "state/+/update/accepted", want: true},
		{name: "forged identity", id: forged, topic: "#"},
		{name: "no role", id: identity.Session{Principal: identity.Principal{Name: "ops"}}, topic: "#"},
		{name: "token role with a device", id: identity.Session{Principal: identity.Principal{Role: identity.RoleOperator, Name: "ops", Device: "ops"}, Credential: op.Credential}, topic: "#"},
		{name: "device role without a device", id: identity.Session{Principal: identity.Principal{Role: identity.RoleDevice, Name: "dev-1"}, Credential: dev.Credential}, topic: "state/dev-1/update", write: true},
		{name: "removed device loses rights", id: dev, topic: "state/dev-1/update", write: true,
			action: func() error { return s.RemoveDevice(ctx, "dev-1") }},
		{name: "revoked token loses rights", id: op, topic: "#",
			action: func() error { return s.RevokeToken(ctx, "ops") }},
		{name: "re-added device does not revive the old session", id: dev, topic: "state/dev-1/get", write: true,
			action: func() error { sec, err = s.AddDevice(ctx, "dev-1", nil); return err }},
		{name: "a session of the re-added device has rights", topic: "state/dev-1/get", write: true, want: true,
			action: func() error {
				dev, err = s.Authenticate(ctx, identity.Credentials{ClientID: "dev-1", Password: []byte(sec)})
				return err
			}},
		{name: "a forged credential has none", topic: "state/dev-1/get", write: true,
			action: func() error { dev.Credential += "x"; return nil }},
		{name: "rotation ends the old secret's session", topic: "state/dev-1/get", write: true,
			action: func() error {
				dev.Credential = strings.TrimSuffix(dev.Credential, "x")
				if !s.Allow(dev, "state/dev-1/get", true) {
					return errors.New("session refused before the rotation")
				}
				_, err := s.RotateDevice(ctx, "dev-1")
				return err
			}},
	}
	var wantDenied uint64
	for _, st := range steps {
		if st.action != nil {
			if err := st.action(); err != nil {
				t.Fatalf("%s: %v", st.name, err)
			}
		}
		id := st.id
		if id == (identity.Session{}) {
			id = dev
		}
		if got := s.Allow(id, st.topic, st.write); got != st.want {
			t.Errorf("%s: Allow(%+v, %q, %t) = %t, want %t", st.name, id, st.topic, st.write, got, st.want)
		}
		if !st.want {
			wantDenied++
		}
		if got := s.Denied(); got != wantDenied {
			t.Errorf("%s: Denied() = %d, want %d", st.name, got, wantDenied)
		}
	}
}

func TestAnonymous(t *testing.T) {
	ctx := t.Context()
	s := mustOpen(t, "", identity.Config{Anonymous: true})
	id, err := s.Authenticate(ctx, identity.Credentials{ClientID: "anyone"})
	if err != nil {
		t.Fatalf("Authenticate(anonymous): %v", err)
	}
	if want := (identity.Principal{Role: identity.RoleOperator}); id.Principal != want || id.ClientID != "anyone" {
		t.Errorf("anonymous session = %+v, want an operator without a name, client anyone", id)
	}
	tests := []struct {
		topic string
		write bool
		want  bool
	}{
		{"state/dev-1/update", true, true},
		{"#", false, true},
		{"state/dev-1/update/accepted", true, false},
	}
	for _, tc := range tests {
		if got := s.Allow(id, tc.topic, tc.write); got != tc.want {
			t.Errorf("Allow(anonymous, %q, %t) = %t, want %t", tc.topic, tc.write, got, tc.want)
		}
	}
}

// TestStorePolicy: Allow asks the policy with the principal's role, name
// and client ID; SetPolicy takes effect at the next check; a policy never
// gives rights back to a session whose credential ended.
func TestStorePolicy(t *testing.T) {
	ctx := t.Context()
	s := mustOpen(t, "", identity.Config{})
	devSec := mustAddDevice(t, s, "dev-1")
	intSec := mustCreateToken(t, s, identity.RoleIntegrator, "dash")
	dev, err := s.Authenticate(ctx, identity.Credentials{ClientID: "dev-1", Password: []byte(devSec)})
	if err != nil {
		t.Fatal(err)
	}
	integ, err := s.Authenticate(ctx, identity.Credentials{ClientID: "any client/ID ü", Username: "dash", Password: []byte(intSec)})
	if err != nil {
		t.Fatal(err)
	}
	f, err := policy.Parse("t.acl", []byte(`role integrator
pattern write acks/%c
user dash
topic write dash-only
user dev-1
topic write lamp-only
`))
	if err != nil {
		t.Fatal(err)
	}
	if s.Policy() != policy.Default() {
		t.Errorf("Policy() before SetPolicy = %v, want the default", s.Policy())
	}
	check := func(name string, id identity.Session, topic string, want bool) {
		t.Helper()
		if got := s.Allow(id, topic, true); got != want {
			t.Errorf("%s: Allow(%s, %q, write) = %t, want %t", name, id.Principal.Name, topic, got, want)
		}
	}
	check("default policy", integ, "dash-only", false)
	s.SetPolicy(policy.New(f))
	check("user line names the token", integ, "dash-only", true)
	check("user line names the device", dev, "lamp-only", true)
	check("user line is not the role", dev, "dash-only", false)
	check("a client ID holding / matches no %c", integ, "acks/any client", false)
	other, err := s.Authenticate(ctx, identity.Credentials{ClientID: "dash-2", Username: "dash", Password: []byte(intSec)})
	if err != nil {
		t.Fatal(err)
	}
	check("%c is the client ID", other, "acks/dash-2", true)
	check("%c is not another client", other, "acks/dash-3", false)
	check("the default still applies", dev, "devices/dev-1/telemetry", true)
	if err := s.RevokeToken(ctx, "dash"); err != nil {
		t.Fatal(err)
	}
	check("a revoked token has no rights whatever the policy", other, "dash-only", false)
	s.SetPolicy(nil)
	check("SetPolicy(nil) restores the default", dev, "lamp-only", false)
	if s.Policy() != policy.Default() {
		t.Errorf("Policy() after SetPolicy(nil) = %v, want the default", s.Policy())
	}

	// Anonymous clients are operators without a user name: the topic
	// lines before the first user line are theirs.
	anon := mustOpen(t, "", identity.Config{Anonymous: true,
		Policy: policy.New(mustParseFile(t, "default replace\ntopic write anon-only\nuser *anonymous*\ntopic write never\n"))})
	id, err := anon.Authenticate(ctx, identity.Credentials{ClientID: "x"})
	if err != nil {
		t.Fatal(err)
	}
	for topic, want := range map[string]bool{"anon-only": true, "never": false, "devices/x/commands/y": false} {
		if got := anon.Allow(id, topic, true); got != want {
			t.Errorf("anonymous: Allow(%q, write) = %t, want %t", topic, got, want)
		}
	}
}

func mustParseFile(t *testing.T, src string) *policy.File {
	t.Helper()
	f, err := policy.Parse("t.acl", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// TestAllowEpochMoves: AllowEpoch moves with every change that can change
// an answer of Allow (a credential enrolled, rotated, removed, a token
// created or revoked, a new policy), and stays while nothing changes, so
// that the broker may remember an answer (broker.Authenticator).
func TestAllowEpochMoves(t *testing.T) {
	ctx := t.Context()
	s := mustOpen(t, "", identity.Config{})
	steps := []struct {
		name   string
		change func() error
	}{
		{"device enrolled", func() error { _, err := s.AddDevice(ctx, "dev-1", nil); return err }},
		{"device rotated", func() error { _, err := s.RotateDevice(ctx, "dev-1"); return err }},
		{"device removed", func() error { return s.RemoveDevice(ctx, "dev-1") }},
		{"token created", func() error { _, err := s.CreateToken(ctx, identity.RoleIntegrator, "in"); return err }},
		{"token revoked", func() error { return s.RevokeToken(ctx, "in") }},
		{"policy replaced", func() error {
			s.SetPolicy(policy.New(mustParseFile(t, "topic read x/#\n")))
			return nil
		}},
		{"policy restored", func() error { s.SetPolicy(nil); return nil }},
	}
	for _, st := range steps {
		before := s.AllowEpoch()
		if err := st.change(); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if s.AllowEpoch() == before {
			t.Errorf("%s: AllowEpoch stayed %d", st.name, before)
		}
		after := s.AllowEpoch()
		s.Allow(identity.Session{ClientID: "x"}, "x/y", false) // a check changes nothing
		if got := s.AllowEpoch(); got != after {
			t.Errorf("%s: AllowEpoch moved from %d to %d without a change", st.name, after, got)
		}
	}
}
