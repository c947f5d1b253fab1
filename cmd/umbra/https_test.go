package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/identity"
	"github.com/umbra-iot/umbra/internal/waitfor"
	"github.com/umbra-iot/umbra/wire"
)

// testServerCert issues a server certificate for 127.0.0.1 and localhost
// from ca into dir/<name>.crt and .key.
func testServerCert(t *testing.T, ca *identity.CA, dir, name string) (certFile, keyFile string) {
	t.Helper()
	certPEM, keyPEM, err := ca.IssueServerCert([]string{"127.0.0.1", "localhost"}, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	if err := os.WriteFile(certFile, certPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// testCA creates a fleet CA in a temp dir and returns it with a client
// that trusts it.
func testCA(t *testing.T) (*identity.CA, *http.Client) {
	t.Helper()
	ca, err := identity.InitCA(filepath.Join(t.TempDir(), "ca"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.CertPEM())
	return ca, &http.Client{Timeout: 10 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
}

// TestServeHTTPS: with --http-tls-cert and --http-tls-key, a TLS client
// calls the API, reads /healthz and /metrics, uploads an image and
// downloads it through the https download URL the server minted; plain
// HTTP and TLS 1.1 are refused.
func TestServeHTTPS(t *testing.T) {
	ca, client := testCA(t)
	certFile, keyFile := testServerCert(t, ca, t.TempDir(), "server")
	kp, err := identity.LoadKeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	srv := startServerConfig(t, func(c *serveConfig) { c.httpTLS = kp })
	addr := srv.api.Addr().String()
	base := "https://" + addr
	token := operatorToken(t, srv)

	do := func(method, path string, body []byte, header map[string]string) (*http.Response, []byte) {
		t.Helper()
		req, err := http.NewRequestWithContext(t.Context(), method, base+path, bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range header {
			req.Header.Set(k, v)
		}
		res, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer res.Body.Close()
		b, err := io.ReadAll(res.Body)
		if err != nil {
			t.Fatal(err)
		}
		if res.TLS == nil || res.TLS.Version < tls.VersionTLS12 {
			t.Fatalf("%s %s: not over TLS 1.2+: %+v", method, path, res.TLS)
		}
		return res, b
	}
	auth := map[string]string{"Authorization": "Bearer " + token}

	if res, b := do("GET", "/healthz", nil, nil); res.StatusCode != 200 || !strings.Contains(string(b), `"ok"`) {
		t.Errorf("GET /healthz = %d %s, want 200 ok", res.StatusCode, b)
	}
	if res, b := do("GET", "/metrics", nil, nil); res.StatusCode != 200 || !strings.Contains(string(b), "umbra_") {
		t.Errorf("GET /metrics = %d, want 200 with umbra_ metrics", res.StatusCode)
	}
	if res, _ := do("GET", "/v1/devices", nil, nil); res.StatusCode != 401 {
		t.Errorf("GET /v1/devices without a token = %d, want 401", res.StatusCode)
	}
	if res, b := do("GET", "/v1/devices", nil, auth); res.StatusCode != 200 {
		t.Errorf("GET /v1/devices = %d %s, want 200", res.StatusCode, b)
	}

	_, image := fwImageFile(t, 300<<10)
	up := map[string]string{"Authorization": "Bearer " + token, "Content-Type": "application/octet-stream", wire.HeaderVersion: "1.2.0"}
	if res, b := do("POST", "/v1/firmware", image, up); res.StatusCode != 201 {
		t.Fatalf("upload = %d %s, want 201", res.StatusCode, b)
	}
	if _, err := srv.ids.AddDevice(t.Context(), "lamp-1", nil); err != nil {
		t.Fatal(err)
	}
	res, b := do("POST", "/v1/firmware/1.2.0/url", []byte(`{"device":"lamp-1"}`),
		map[string]string{"Authorization": "Bearer " + token, "Content-Type": "application/json"})
	var u wire.URLResponse
	if res.StatusCode != 200 || json.Unmarshal(b, &u) != nil {
		t.Fatalf("POST url = %d %s", res.StatusCode, b)
	}
	if want := base + "/fw/" + sha256Hex(image) + "?"; !strings.HasPrefix(u.URL, want) {
		t.Fatalf("download URL %q, want it to start with %q", u.URL, want)
	}
	// The device downloads with nothing but the URL and the CA.
	dl, err := client.Get(u.URL)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(dl.Body)
	dl.Body.Close()
	if err != nil || dl.StatusCode != 200 || sha256Hex(got) != sha256Hex(image) || dl.TLS == nil {
		t.Fatalf("download = %d, %d bytes, %v; want the image over TLS", dl.StatusCode, len(got), err)
	}

	// Plain HTTP on the HTTPS port: a JSON 400 that says what to do.
	plain, err := http.Get("http://" + addr + "/healthz")
	if err != nil {
		t.Fatalf("plain HTTP request: %v", err)
	}
	pb, _ := io.ReadAll(plain.Body)
	plain.Body.Close()
	if plain.StatusCode != 400 || plain.Header.Get("Content-Type") != "application/json" || !strings.Contains(string(pb), "use https://") {
		t.Errorf("plain HTTP = %d %q %s, want a JSON 400 saying to use https://", plain.StatusCode, plain.Header.Get("Content-Type"), pb)
	}
	// TLS 1.1 is refused in the handshake.
	old := &tls.Config{RootCAs: client.Transport.(*http.Transport).TLSClientConfig.RootCAs, MaxVersion: tls.VersionTLS11}
	if c, err := tls.Dial("tcp", addr, old); err == nil {
		c.Close()
		t.Error("TLS 1.1 handshake succeeded, want it refused")
	}
	// A request net/http refuses itself is still answered in JSON over TLS.
	raw, err := tls.Dial("tcp", addr, client.Transport.(*http.Transport).TLSClientConfig)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	if _, err := raw.Write([]byte("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Bad: a\x00b\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	bad, err := http.ReadResponse(bufio.NewReader(raw), nil)
	if err != nil {
		t.Fatal(err)
	}
	bad.Body.Close()
	if bad.StatusCode != 400 || bad.Header.Get("Content-Type") != "application/json" {
		t.Errorf("malformed request over TLS = %d %q, want a JSON 400", bad.StatusCode, bad.Header.Get("Content-Type"))
	}
}

// TestServeHTTPSFlags: the HTTPS flags' mistakes, and bad certificate or
// key files, are clear errors before anything is opened.
func TestServeHTTPSFlags(t *testing.T) {
	ca, _ := testCA(t)
	dir := t.TempDir()
	cert, key := testServerCert(t, ca, dir, "good")
	otherCert, _ := testServerCert(t, ca, dir, "other")
	garbage := filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"cert alone", []string{"--http-tls-cert", cert}, "--http-tls-cert and --http-tls-key go together"},
		{"key alone", []string{"--http-tls-key", key}, "--http-tls-cert and --http-tls-key go together"},
		{"no http listener", []string{"--http-addr", "", "--http-tls-cert", cert, "--http-tls-key", key}, "need --http-addr"},
		{"missing cert", []string{"--http-tls-cert", filepath.Join(dir, "nope.crt"), "--http-tls-key", key}, "nope.crt: no such file"},
		{"garbage cert", []string{"--http-tls-cert", garbage, "--http-tls-key", key}, "garbage.pem"},
		{"key of another cert", []string{"--http-tls-cert", otherCert, "--http-tls-key", key}, "private key does not match public key"},
		{"key as cert", []string{"--http-tls-cert", key, "--http-tls-key", key}, "good.key"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dataDir := filepath.Join(t.TempDir(), "data")
			r := runCLI(t.Context(), "", append([]string{"serve", "--data-dir", dataDir, "--mqtt-addr", "127.0.0.1:0",
				"--ws-addr", "", "--http-addr", "127.0.0.1:0"}, tc.args...)...)
			if r.err == nil || !strings.Contains(r.err.Error(), tc.want) {
				t.Fatalf("serve %v = %v, want an error containing %q", tc.args, r.err, tc.want)
			}
			if _, err := os.Stat(dataDir); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("data dir after the refused flags: %v, want it not created", err)
			}
		})
	}
}

// TestServeHTTPSReload: SIGHUP makes a running umbra serve present the
// certificate now in the files; a bad pair in the files keeps the one in
// force.
func TestServeHTTPSReload(t *testing.T) {
	bin := buildUmbra(t)
	ca, client := testCA(t)
	dir := t.TempDir()
	cert, key := testServerCert(t, ca, dir, "server")
	cmd := exec.Command(bin, "serve", "--data-dir", filepath.Join(dir, "data"), "--mqtt-addr", "127.0.0.1:0", "--ws-addr", "",
		"--http-addr", "127.0.0.1:0", "--http-tls-cert", cert, "--http-tls-key", key)
	_, httpAddr, line := startServeCmd(t, cmd)
	if !strings.Contains(line, "http_scheme=https") {
		t.Errorf("serving log line %q, want http_scheme=https", line)
	}
	serial := func() string {
		t.Helper()
		c, err := tls.Dial("tcp", httpAddr, client.Transport.(*http.Transport).TLSClientConfig)
		if err != nil {
			t.Fatalf("handshake: %v", err)
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].SerialNumber.String()
	}
	first := serial()

	// Replace the files (rename, as a certificate manager does), then HUP.
	newCert, newKey := testServerCert(t, ca, dir, "renewed")
	want := func() string {
		kp, err := identity.LoadKeyPair(newCert, newKey)
		if err != nil {
			t.Fatal(err)
		}
		return kp.Certificate().Leaf.SerialNumber.String()
	}()
	for _, mv := range [][2]string{{newCert, cert}, {newKey, key}} {
		if err := os.Rename(mv[0], mv[1]); err != nil {
			t.Fatal(err)
		}
	}
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	// The reload is logged, not signalled to this process: poll.
	waitForSerial := func(want string) {
		t.Helper()
		waitfor.PollExplained(t, 10*time.Second, "serial "+want+" after SIGHUP", func() string {
			if got := serial(); got != want {
				return "serial " + got
			}
			return ""
		})
	}
	waitForSerial(want)
	if want == first {
		t.Fatal("the renewed certificate has the old serial")
	}

	if c, err := net.Dial("tcp", httpAddr); err == nil { // still accepting
		c.Close()
	} else {
		t.Fatal(err)
	}
}

// TestReloadKeyPairsKeepsBadOnes: a pair that no longer loads is logged
// and the one in force stays; a good one is taken and logged.
func TestReloadKeyPairsKeepsBadOnes(t *testing.T) {
	ca, _ := testCA(t)
	dir := t.TempDir()
	cert, key := testServerCert(t, ca, dir, "server")
	kp, err := identity.LoadKeyPair(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	before := kp.Certificate()
	other, _ := testServerCert(t, ca, t.TempDir(), "other")
	if err := os.Rename(other, cert); err != nil { // the key no longer matches
		t.Fatal(err)
	}
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	reloadKeyPairs(log, []listenerKeyPair{{"http", kp}})
	if kp.Certificate() != before {
		t.Error("a bad pair replaced the one in force")
	}
	if !strings.Contains(logs.String(), "tls certificate not reloaded") || !strings.Contains(logs.String(), "listener=http") {
		t.Errorf("log %q, want the refused reload", logs.String())
	}
	logs.Reset()
	testServerCert(t, ca, dir, "server") // a good pair again
	reloadKeyPairs(log, []listenerKeyPair{{"http", kp}})
	if kp.Certificate() == before || !strings.Contains(logs.String(), "tls certificate reloaded") {
		t.Errorf("good pair not taken; log %q", logs.String())
	}
}
