package identity_test

import (
	"crypto/tls"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/identity"
)

// pki is a fleet CA in a temporary directory with a server certificate for
// 127.0.0.1.
type pki struct {
	dir                string
	ca                 *identity.CA
	serverCert, srvKey string
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	dir := t.TempDir()
	ca, err := identity.InitCA(dir)
	if err != nil {
		t.Fatalf("InitCA: %v", err)
	}
	certPEM, keyPEM, err := ca.IssueServerCert([]string{"127.0.0.1", "localhost"}, time.Hour)
	if err != nil {
		t.Fatalf("IssueServerCert: %v", err)
	}
	p := &pki{dir: dir, ca: ca}
	p.serverCert, p.srvKey = writePair(t, dir, "server", certPEM, keyPEM)
	return p
}

// deviceFiles issues a certificate for id and returns its files.
func (p *pki) deviceFiles(t *testing.T, id device.ID, validity time.Duration) (certFile, keyFile string) {
	t.Helper()
	certPEM, keyPEM, err := p.ca.IssueDeviceCert(id, validity)
	if err != nil {
		t.Fatalf("IssueDeviceCert(%s): %v", id, err)
	}
	return writePair(t, t.TempDir(), string(id), certPEM, keyPEM)
}

func writePair(t *testing.T, dir, name string, certPEM, keyPEM []byte) (certFile, keyFile string) {
	t.Helper()
	certFile, keyFile = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+".key")
	if err := os.WriteFile(certFile, certPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// handshake runs a TLS handshake over loopback TCP between a server with
// srv and a client with cli, and returns the server's view of it.
func handshake(t *testing.T, srv, cli *tls.Config) (*tls.ConnectionState, error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type result struct {
		st  *tls.ConnectionState
		err error
	}
	done := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		tc := tls.Server(c, srv)
		if err := tc.Handshake(); err != nil {
			done <- result{err: err}
			return
		}
		st := tc.ConnectionState()
		done <- result{st: &st}
	}()
	cli = cli.Clone()
	cli.ServerName = "127.0.0.1"
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", ln.Addr().String(), cli)
	if err == nil {
		// TLS 1.3 clients finish before the server checked their
		// certificate; a read surfaces the server's verdict.
		c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		c.Read(make([]byte, 1))
		c.Close()
	}
	r := <-done
	return r.st, r.err
}

func TestCA(t *testing.T) {
	p := newPKI(t)
	if _, err := identity.InitCA(p.dir); !errors.Is(err, identity.ErrExists) {
		t.Errorf("InitCA twice: got %v, want ErrExists", err)
	}
	fi, err := os.Stat(filepath.Join(p.dir, identity.CAKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("CA key mode: got %v, want 0600", perm)
	}
	if _, err := identity.LoadCA(p.dir); err != nil {
		t.Errorf("LoadCA: %v", err)
	}
	if _, err := identity.LoadCA(t.TempDir()); err == nil {
		t.Errorf("LoadCA(empty dir): got nil error, want one")
	}
	if _, _, err := p.ca.IssueDeviceCert("a/b", time.Hour); !errors.Is(err, identity.ErrInvalidName) {
		t.Errorf("IssueDeviceCert(a/b): got %v, want ErrInvalidName", err)
	}
	for _, v := range []time.Duration{0, -time.Hour, identity.MaxCertValidity + time.Hour} {
		if _, _, err := p.ca.IssueDeviceCert("dev-1", v); !errors.Is(err, identity.ErrInvalidCert) {
			t.Errorf("IssueDeviceCert(validity %v): got %v, want ErrInvalidCert", v, err)
		}
	}
	if _, _, err := p.ca.IssueServerCert(nil, time.Hour); !errors.Is(err, identity.ErrInvalidCert) {
		t.Errorf("IssueServerCert(no hosts): got %v, want ErrInvalidCert", err)
	}
}

func TestMutualTLS(t *testing.T) {
	p := newPKI(t)
	caFile := filepath.Join(p.dir, identity.CACertFile)
	srv, err := identity.ServerTLSConfig(p.serverCert, p.srvKey, caFile)
	if err != nil {
		t.Fatalf("ServerTLSConfig: %v", err)
	}
	goodCert, goodKey := p.deviceFiles(t, "dev-1", time.Hour)

	identity.SetCANow(p.ca, func() time.Time { return time.Now().Add(-48 * time.Hour) })
	oldCert, oldKey := p.deviceFiles(t, "dev-1", time.Hour)
	identity.SetCANow(p.ca, time.Now)

	other := newPKI(t)
	strangerCert, strangerKey := other.deviceFiles(t, "dev-1", time.Hour)

	tests := []struct {
		name              string
		certFile, keyFile string
		wantErr           bool
		wantVerified      bool
	}{
		{"fleet certificate", goodCert, goodKey, false, true},
		{"no certificate", "", "", false, false},
		{"expired certificate", oldCert, oldKey, true, false},
		{"untrusted CA", strangerCert, strangerKey, true, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cli, err := identity.ClientTLSConfig(caFile, tc.certFile, tc.keyFile)
			if err != nil {
				t.Fatalf("ClientTLSConfig: %v", err)
			}
			st, err := handshake(t, srv, cli)
			if gotErr := err != nil; gotErr != tc.wantErr {
				t.Fatalf("handshake error: got %v, want error %t", err, tc.wantErr)
			}
			if err != nil {
				return
			}
			if got := len(st.VerifiedChains) > 0; got != tc.wantVerified {
				t.Errorf("verified chain: got %t, want %t", got, tc.wantVerified)
			}
		})
	}

	for _, tc := range []struct{ name, cert, key, ca string }{
		{"missing key pair", "nope.pem", "nope.key", ""},
		{"CA file without PEM", p.serverCert, p.srvKey, p.srvKey},
	} {
		if _, err := identity.ServerTLSConfig(tc.cert, tc.key, tc.ca); err == nil {
			t.Errorf("ServerTLSConfig(%s): got nil error, want one", tc.name)
		}
	}
}
