package identity_test

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/identity"
	"github.com/umbra-iot/umbra/internal/awssdktest"
	"github.com/umbra-iot/umbra/internal/brokertest"
	"github.com/umbra-iot/umbra/internal/server/brokerauth"
)

// The user names the AWS IoT Device SDKs send by default (contract §3.1).
const (
	sdkV1UserName = "?SDK=JavaScript&Version=2.2.16"
	sdkV2UserName = "?SDK=IoTDeviceSDK/JS&Platform=Unix&Metadata=(CRTVersion=1.33.1;IoTSDKVersion=1.28.0;IoTSDKFeature=F/3,G/A,I/A;IoTSDKMetricsVersion=1)"
)

// logBuffer collects a logger's output for assertions.
type logBuffer struct {
	mu  sync.Mutex // guards buf
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// tlsClient returns paho options for a TLS client trusting p's CA with
// the given client certificate (none if certFile is ""), user name and
// keepalive (0: paho's default).
func tlsClient(t *testing.T, p *pki, certFile, keyFile, user string, keepalive time.Duration) func(*mqtt.ClientOptions) {
	t.Helper()
	cfg, err := identity.ClientTLSConfig(filepath.Join(p.dir, identity.CACertFile), certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ServerName = "127.0.0.1"
	return func(o *mqtt.ClientOptions) {
		brokertest.WithTLS(cfg)(o)
		o.SetUsername(user)
		if keepalive > 0 {
			o.SetKeepAlive(keepalive)
		}
	}
}

// TestCertLoginUserNames: on a certificate login the AWS SDKs' default
// user names (AWS's "?…" query form), none, the device ID and the common
// name are accepted, also with the aws-crt default keepalive of 1200 s;
// any other user name or a client ID other than the device ID is refused,
// and the log line names the user name, the client ID and the reason.
func TestCertLoginUserNames(t *testing.T) {
	p := newPKI(t)
	srv, _, err := identity.ServerTLS(identity.ServerTLSOptions{CertFile: p.serverCert, KeyFile: p.srvKey,
		ClientCAFiles: []string{filepath.Join(p.dir, identity.CACertFile)}})
	if err != nil {
		t.Fatal(err)
	}
	s := mustOpen(t, "", identity.Config{})
	mustAddDevice(t, s, "thing-1")
	mustAddDevice(t, s, "thing-2")
	var logs logBuffer
	b := brokertest.New(t, broker.Config{Auth: brokerauth.New(s), TLSConfig: srv, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	cert, key := p.deviceFiles(t, "thing-1", time.Hour)

	tests := []struct {
		name, clientID, user string
		keepalive            time.Duration
		wantOK               bool
		wantLog              []string // in the refusal's log line
	}{
		{"no user name", "thing-1", "", 0, true, nil},
		{"device ID", "thing-1", "thing-1", 0, true, nil},
		{"v1 SDK metrics", "thing-1", sdkV1UserName, 300 * time.Second, true, nil},
		{"v2 SDK metrics, keepalive 1200", "thing-1", sdkV2UserName, 1200 * time.Second, true, nil},
		{"bare question mark", "thing-1", "?", 0, true, nil},
		{"another device's ID", "thing-1", "thing-2", 0, false,
			[]string{`client=thing-1`, `username=thing-2`, `used with user name \"thing-2\"`}},
		{"query form not first", "thing-1", "x?SDK=1", 0, false, []string{`username="x?SDK=1"`, "user name"}},
		{"client ID of another device", "thing-2", sdkV1UserName, 0, false,
			[]string{`client=thing-2`, `username="` + sdkV1UserName + `"`, `client id \"thing-2\": the client id must be the device ID`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := brokertest.TryConnect(t, brokertest.TLSURL(b), tc.clientID, tlsClient(t, p, cert, key, tc.user, tc.keepalive))
			if ok := err == nil; ok != tc.wantOK {
				t.Fatalf("connect: got error %v, want success %t", err, tc.wantOK)
			}
			if tc.wantOK {
				msgs := brokertest.Subscribe(t, c, "state/thing-1/update/delta", 1)
				if err := b.Publish("state/thing-1/update/delta", []byte(tc.name), false, 1); err != nil {
					t.Fatal(err)
				}
				expect(t, tc.name, msgs, "state/thing-1/update/delta "+tc.name)
				c.Disconnect(100)
				return
			}
			var line string
			for l := range strings.SplitSeq(logs.String(), "\n") {
				if strings.Contains(l, "authentication failed") && strings.Contains(l, "client="+tc.clientID) &&
					strings.Contains(l, tc.wantLog[len(tc.wantLog)-1]) {
					line = l
				}
			}
			for _, want := range tc.wantLog {
				if !strings.Contains(line, want) {
					t.Errorf("refusal log line %q lacks %q; log:\n%s", line, want, logs.String())
				}
			}
		})
	}
}

// TestClientCertRequired: with RequireClientCert the handshake fails for a
// client without a certificate; optional (the default) lets it through to
// log in with a secret. Neither sets ALPN protocols, so aws-crt's offer of
// x-amzn-mqtt-ca handshakes.
func TestClientCertRequired(t *testing.T) {
	p := newPKI(t)
	caFile := filepath.Join(p.dir, identity.CACertFile)
	cert, key := p.deviceFiles(t, "thing-1", time.Hour)
	for _, required := range []bool{false, true} {
		srv, _, err := identity.ServerTLS(identity.ServerTLSOptions{CertFile: p.serverCert, KeyFile: p.srvKey,
			ClientCAFiles: []string{caFile}, RequireClientCert: required})
		if err != nil {
			t.Fatal(err)
		}
		if len(srv.NextProtos) > 0 && !slices.Contains(srv.NextProtos, identity.ALPNAWSIoT) {
			t.Errorf("NextProtos %q lacks %s", srv.NextProtos, identity.ALPNAWSIoT)
		}
		for _, tc := range []struct {
			name      string
			cert, key string
			alpn      []string
			wantErr   bool
		}{
			{"certificate", cert, key, nil, false},
			{"certificate, aws-crt ALPN", cert, key, []string{identity.ALPNAWSIoT}, false},
			{"no certificate", "", "", nil, required},
			{"no certificate, aws-crt ALPN", "", "", []string{identity.ALPNAWSIoT}, required},
		} {
			cli, err := identity.ClientTLSConfig(caFile, tc.cert, tc.key)
			if err != nil {
				t.Fatal(err)
			}
			cli.NextProtos = tc.alpn
			st, err := handshake(t, srv, cli)
			if (err != nil) != tc.wantErr {
				t.Errorf("required=%t, %s: handshake error %v, want error %t", required, tc.name, err, tc.wantErr)
			}
			if err == nil && (len(st.VerifiedChains) > 0) != (tc.cert != "") {
				t.Errorf("required=%t, %s: verified chains %d", required, tc.name, len(st.VerifiedChains))
			}
		}
	}
}

// TestServerTLSBadFiles: every bad CA file or combination is a clear error
// naming the file.
func TestServerTLSBadFiles(t *testing.T) {
	p := newPKI(t)
	caFile := filepath.Join(p.dir, identity.CACertFile)
	dir := t.TempDir()
	write := func(name, data string) string {
		f := filepath.Join(dir, name)
		if err := os.WriteFile(f, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
		return f
	}
	caPEM, _ := os.ReadFile(caFile)
	keyPEM, _ := os.ReadFile(p.srvKey)
	withKey := write("with-key.pem", string(caPEM)+string(keyPEM))
	garbage := write("garbage.pem", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
	empty := write("empty.pem", "no pem here\n")
	bundle := write("bundle.pem", "# AWS bundle\n"+string(caPEM)+"# another\n"+string(newPKI(t).ca.CertPEM()))

	tests := []struct {
		name       string
		o          identity.ServerTLSOptions
		wantInText string // "" means no error
	}{
		{"bundle with comments", identity.ServerTLSOptions{ClientCAFiles: []string{bundle}}, ""},
		{"two files", identity.ServerTLSOptions{ClientCAFiles: []string{caFile, bundle}}, ""},
		{"missing file", identity.ServerTLSOptions{ClientCAFiles: []string{filepath.Join(dir, "nope.pem")}}, "nope.pem"},
		{"private key in CA file", identity.ServerTLSOptions{ClientCAFiles: []string{withKey}}, "with-key.pem: PEM block 2"},
		{"unparsable certificate", identity.ServerTLSOptions{ClientCAFiles: []string{garbage}}, "garbage.pem: certificate 1"},
		{"no certificate", identity.ServerTLSOptions{ClientCAFiles: []string{empty}}, "no PEM certificate in " + empty},
		{"CA in both lists", identity.ServerTLSOptions{ClientCAFiles: []string{caFile}, BoundClientCAFiles: []string{bundle}},
			"both a client CA"},
		{"required without CA", identity.ServerTLSOptions{RequireClientCert: true}, "needs a client CA"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.o.CertFile, tc.o.KeyFile = p.serverCert, p.srvKey
			_, _, err := identity.ServerTLS(tc.o)
			if tc.wantInText == "" {
				if err != nil {
					t.Fatalf("ServerTLS: %v", err)
				}
				return
			}
			if !errors.Is(err, identity.ErrInvalidCert) || !strings.Contains(err.Error(), tc.wantInText) {
				t.Errorf("ServerTLS: got %v, want ErrInvalidCert naming %q", err, tc.wantInText)
			}
		})
	}
}

// TestBoundCertificate binds an AWS-issued-style certificate (RSA 2048,
// common name "AWS IoT Certificate", another CA) to a device: it logs in
// as that device with the SDK user names, only with the device ID as
// client ID; a certificate of the same CA that is not bound, even one
// whose common name is an enrolled device ID, is refused; removing the
// device ends the binding at once, and binding again works.
func TestBoundCertificate(t *testing.T) {
	p := newPKI(t)
	aws := awssdktest.NewAWSCA(t)
	srv, boundOnly, err := identity.ServerTLS(identity.ServerTLSOptions{CertFile: p.serverCert, KeyFile: p.srvKey,
		ClientCAFiles: []string{filepath.Join(p.dir, identity.CACertFile)}, BoundClientCAFiles: []string{aws.CertFile}})
	if err != nil {
		t.Fatal(err)
	}
	if len(boundOnly) != 1 || !boundOnly[0].Equal(aws.Cert) {
		t.Fatalf("bound-only CAs: got %d, want the AWS CA", len(boundOnly))
	}
	s := mustOpen(t, "", identity.Config{BoundOnlyCAs: boundOnly})
	dc := aws.Issue(t, awssdktest.AWSCommonName)
	certFile, keyFile := dc.CertFile, dc.KeyFile
	fp := identity.CertFingerprint(dc.Cert)
	if secret, err := s.EnrollDevice(t.Context(), identity.Enrollment{ID: "thing-1", CertSHA256: fp}); err != nil || secret != "" {
		t.Fatalf("EnrollDevice: got secret %q, %v; want none", secret, err)
	}
	mustAddDevice(t, s, "thing-2")
	// A certificate of the same CA naming another device (AWS's
	// CreateCertificateFromCsr keeps the CSR's subject).
	forged := aws.Issue(t, "thing-2")
	forgedFile, forgedKey := forged.CertFile, forged.KeyFile
	b := brokertest.New(t, broker.Config{Auth: brokerauth.New(s), TLSConfig: srv})
	url := brokertest.TLSURL(b)

	for _, user := range []string{"", sdkV1UserName, sdkV2UserName, "AWS IoT Certificate", "thing-1"} {
		c, err := brokertest.TryConnect(t, url, "thing-1", tlsClient(t, p, certFile, keyFile, user, 0))
		if err != nil {
			t.Fatalf("bound certificate, user name %q: %v", user, err)
		}
		c.Disconnect(100)
	}
	for _, tc := range []struct{ name, clientID, cert, key string }{
		{"bound certificate, another client ID", "thing-2", certFile, keyFile},
		{"bound certificate, a free client ID", "sdk-nodejs-1", certFile, keyFile},
		{"unbound certificate naming an enrolled device", "thing-2", forgedFile, forgedKey},
	} {
		if _, err := brokertest.TryConnect(t, url, tc.clientID, tlsClient(t, p, tc.cert, tc.key, "", 0)); err == nil {
			t.Errorf("%s: connected, want refused", tc.name)
		}
	}

	live := brokertest.Connect(t, url, "thing-1", tlsClient(t, p, certFile, keyFile, "", 0))
	msgs := brokertest.Subscribe(t, live, "state/thing-1/update/delta", 1)
	if err := s.RemoveDevice(t.Context(), "thing-1"); err != nil {
		t.Fatal(err)
	}
	denied := s.Denied()
	if err := b.Publish("state/thing-1/update/delta", []byte("after removal"), false, 1); err != nil {
		t.Fatal(err)
	}
	awaitRefused(t, s, denied, msgs, "delivery to the removed device's certificate session")
	if _, err := brokertest.TryConnect(t, url, "thing-1", tlsClient(t, p, certFile, keyFile, "", 0)); err == nil {
		t.Error("bound certificate of a removed device: connected, want refused")
	}
	if list, _ := s.ListDevices(t.Context()); slices.ContainsFunc(list, func(d identity.Device) bool { return d.CertSHA256 == fp }) {
		t.Error("removed device's binding still listed")
	}
	// Binding it again is the operator's explicit decision.
	if _, err := s.EnrollDevice(t.Context(), identity.Enrollment{ID: "thing-1", CertSHA256: fp}); err != nil {
		t.Fatal(err)
	}
	c := brokertest.Connect(t, url, "thing-1", tlsClient(t, p, certFile, keyFile, sdkV1UserName, 0))
	c.Disconnect(100)
}

// TestEnrollDevicesBad: an import with bad devices enrolls none of them
// (nor the good ones) and lists every bad one with its reason; a dry run
// changes nothing either.
func TestEnrollDevicesBad(t *testing.T) {
	s := mustOpen(t, "", identity.Config{})
	mustAddDevice(t, s, "taken")
	mustCreateToken(t, s, identity.RoleOperator, "ops")
	fpA := strings.Repeat("a", 64)
	if _, err := s.EnrollDevice(t.Context(), identity.Enrollment{ID: "bound", CertSHA256: fpA}); err != nil {
		t.Fatal(err)
	}
	before, _ := s.ListDevices(t.Context())
	fpB := strings.Repeat("b", 64)

	list := []identity.Enrollment{
		{ID: "good-1"},
		{ID: "bad id"},
		{ID: "good-2", CertSHA256: fpB},
		{ID: "taken"},
		{ID: "ops"},
		{ID: "labels", Labels: map[string]string{"-k": "v"}},
		{ID: "short-fp", CertSHA256: "abc"},
		{ID: "upper-fp", CertSHA256: strings.Repeat("A", 64)},
		{ID: "good-1"},
		{ID: "steals", CertSHA256: fpA},
		{ID: "twice", CertSHA256: fpB},
	}
	want := []struct {
		index int
		err   error
	}{
		{1, identity.ErrInvalidName}, {3, identity.ErrExists}, {4, identity.ErrExists}, {5, identity.ErrInvalidLabel},
		{6, identity.ErrInvalidCert}, {7, identity.ErrInvalidCert}, {8, identity.ErrExists}, {9, identity.ErrExists},
		{10, identity.ErrExists},
	}
	for _, dryRun := range []bool{false, true} {
		secrets, err := s.EnrollDevices(t.Context(), list, dryRun)
		ee, ok := errors.AsType[*identity.EnrollError](err)
		if !ok {
			t.Fatalf("dryRun=%t: got %v, %v; want an *EnrollError", dryRun, secrets, err)
		}
		if len(ee.Problems) != len(want) {
			t.Errorf("dryRun=%t: %d problems, want %d: %v", dryRun, len(ee.Problems), len(want), err)
		}
		for i, w := range want[:min(len(want), len(ee.Problems))] {
			if p := ee.Problems[i]; p.Index != w.index || !errors.Is(p.Err, w.err) {
				t.Errorf("dryRun=%t: problem %d: got %d %v, want %d %v", dryRun, i, p.Index, p.Err, w.index, w.err)
			}
		}
	}
	if _, err := s.EnrollDevices(t.Context(), make([]identity.Enrollment, identity.MaxEnrollments+1), false); !errors.Is(err, identity.ErrInvalidName) {
		t.Errorf("too many devices: got %v, want ErrInvalidName", err)
	}
	// A good dry run stores nothing either.
	if secrets, err := s.EnrollDevices(t.Context(), []identity.Enrollment{{ID: "good-1"}}, true); err != nil || secrets[0] != "" {
		t.Errorf("good dry run: got %q, %v", secrets, err)
	}
	after, _ := s.ListDevices(t.Context())
	if !slices.EqualFunc(before, after, func(a, b identity.Device) bool { return a.ID == b.ID && a.CertSHA256 == b.CertSHA256 }) {
		t.Errorf("devices changed: before %v, after %v", before, after)
	}
	if _, err := s.EnrollDevice(t.Context(), identity.Enrollment{ID: "good-2", CertSHA256: fpB}); err != nil {
		t.Errorf("binding the certificate the bad imports named: %v", err)
	}
}

// TestEnrollDevices enrolls a mixed list in one call: secrets for the
// devices without a certificate, none for the bound ones.
func TestEnrollDevices(t *testing.T) {
	s := mustOpen(t, "", identity.Config{})
	fp := strings.Repeat("c", 64)
	list := []identity.Enrollment{{ID: "a", Labels: map[string]string{"hw": "m2"}}, {ID: "b", CertSHA256: fp}}
	secrets, err := s.EnrollDevices(t.Context(), list, false)
	if err != nil {
		t.Fatal(err)
	}
	if secrets[0] == "" || secrets[1] != "" {
		t.Fatalf("secrets: got %q, want one for a and none for b", secrets)
	}
	if p, err := s.Verify(t.Context(), "a", []byte(secrets[0])); err != nil || p.Device != "a" {
		t.Errorf("Verify(a): %v, %v", p, err)
	}
	got, err := s.GetDevice(t.Context(), "b")
	if err != nil || got.CertSHA256 != fp {
		t.Errorf("GetDevice(b): got %+v, %v; want certSha256 %s", got, err, fp)
	}
}

// TestParseCertPEM: only a single certificate is taken for binding.
func TestParseCertPEM(t *testing.T) {
	p := newPKI(t)
	certPEM, keyPEM, err := p.ca.IssueDeviceCert(device.ID("thing-1"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		data []byte
		want string // "" means accepted
	}{
		{"certificate", certPEM, ""},
		{"certificate with text around", append([]byte("subject=CN=x\n"), certPEM...), ""},
		{"two certificates", append(slices.Clone(certPEM), certPEM...), "more than one"},
		{"certificate and key", append(slices.Clone(certPEM), keyPEM...), "private key"},
		{"key only", keyPEM, "private key"},
		{"CA certificate", p.ca.CertPEM(), "CA certificate"},
		{"nothing", []byte("hello"), "no PEM certificate"},
		{"broken", []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), "malformed"},
	} {
		_, err := identity.ParseCertPEM(tc.data)
		if tc.want == "" && err != nil || tc.want != "" && (!errors.Is(err, identity.ErrInvalidCert) || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%s: got %v, want %q", tc.name, err, tc.want)
		}
	}
}

// FuzzParseCertPEM: any input is either refused with ErrInvalidCert or
// gives a device (non-CA) certificate with a 64-digit fingerprint.
func FuzzParseCertPEM(f *testing.F) {
	ca, err := identity.InitCA(f.TempDir())
	if err != nil {
		f.Fatal(err)
	}
	certPEM, keyPEM, err := ca.IssueDeviceCert("thing-1", time.Hour)
	if err != nil {
		f.Fatal(err)
	}
	for _, seed := range [][]byte{certPEM, keyPEM, append(slices.Clone(certPEM), certPEM...), ca.CertPEM(), []byte("hello"),
		[]byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cert, err := identity.ParseCertPEM(data)
		if err != nil {
			if !errors.Is(err, identity.ErrInvalidCert) {
				t.Fatalf("error %v does not wrap ErrInvalidCert", err)
			}
			return
		}
		if cert.IsCA || len(identity.CertFingerprint(cert)) != 64 {
			t.Fatalf("accepted a CA certificate or got a bad fingerprint: %+v", cert.Subject)
		}
	})
}
