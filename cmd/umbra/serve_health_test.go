package main

import (
	"net"
	"strings"
	"testing"

	"github.com/umbra-iot/umbra/identity"
)

// TestServeHealthcheck: serve --healthcheck probes the server its
// configuration describes, over HTTP and HTTPS (pinned to the configured
// certificate), through loopback for a wildcard address; it fails when
// nothing answers or another certificate is presented.
func TestServeHealthcheck(t *testing.T) {
	plain := startServerConfig(t, nil)
	ca, _ := testCA(t)
	dir := t.TempDir()
	cert, key := testServerCert(t, ca, dir, "server")
	otherCert, _ := testServerCert(t, ca, dir, "other")
	kp, err := identity.LoadKeyPair(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	secure := startServerConfig(t, func(c *serveConfig) { c.httpTLS = kp })
	_, plainPort, _ := net.SplitHostPort(plain.api.Addr().String())
	closed := func() string { // a port nothing listens on
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		return ln.Addr().String()
	}()

	tests := []struct {
		name string
		args []string
		want string // stdout on success, else in the error
		ok   bool
	}{
		{"http", []string{"--http-addr", plain.api.Addr().String()}, "healthy: http://" + plain.api.Addr().String() + "/healthz", true},
		{"wildcard address", []string{"--http-addr", "0.0.0.0:" + plainPort}, "healthy: http://127.0.0.1:" + plainPort + "/healthz", true},
		{"empty host", []string{"--http-addr", ":" + plainPort}, "healthy: http://127.0.0.1:" + plainPort + "/healthz", true},
		{"https", []string{"--http-addr", secure.api.Addr().String(), "--http-tls-cert", cert, "--http-tls-key", key},
			"healthy: https://" + secure.api.Addr().String() + "/healthz", true},
		{"https, another certificate", []string{"--http-addr", secure.api.Addr().String(), "--http-tls-cert", otherCert, "--http-tls-key", key},
			"presents another certificate than " + otherCert, false},
		{"plain to https", []string{"--http-addr", secure.api.Addr().String()}, "unhealthy: GET http://" + secure.api.Addr().String() + "/healthz answered 400", false},
		{"nothing listening", []string{"--http-addr", closed}, "unhealthy:", false},
		{"no http listener", []string{"--http-addr", ""}, "--healthcheck needs the HTTP listener", false},
		{"with print-config", []string{"--print-config"}, "exclude each other", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := runCLI(t.Context(), "", append([]string{"serve", "--healthcheck"}, tc.args...)...)
			if tc.ok {
				if r.err != nil || strings.TrimSpace(r.stdout) != tc.want {
					t.Fatalf("serve --healthcheck %v = %q, %v; want %q", tc.args, r.stdout, r.err, tc.want)
				}
				return
			}
			if r.err == nil || !strings.Contains(r.err.Error(), tc.want) {
				t.Fatalf("serve --healthcheck %v = %v, want an error containing %q", tc.args, r.err, tc.want)
			}
		})
	}
}
