package main

import (
	"crypto/tls"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/spf13/cobra"

	"github.com/umbra-iot/umbra/identity"
	"github.com/umbra-iot/umbra/internal/awssdktest"
)

// startMigrationServer runs serve with the TLS flags an operator migrating
// from AWS IoT uses: the fleet CA of umbra ca init as --client-ca, the AWS
// CA as --bound-client-ca, and --client-cert required. It returns the
// server and the AWS CA.
func startMigrationServer(t *testing.T) (*server, *awssdktest.AWSCA) {
	t.Helper()
	dataDir := t.TempDir()
	if r := runCLI(t.Context(), "", "ca", "init", "--data-dir", dataDir); r.err != nil {
		t.Fatalf("ca init: %v", r.err)
	}
	aws := awssdktest.NewAWSCA(t)
	caDirPath := filepath.Join(dataDir, caDir)
	o := &serveOptions{}
	cmd := &cobra.Command{Use: "serve"}
	o.addFlags(cmd)
	if err := cmd.Flags().Parse([]string{"--data-dir", dataDir, "--tls-addr", "127.0.0.1:0",
		"--tls-cert", filepath.Join(caDirPath, "server.crt"), "--tls-key", filepath.Join(caDirPath, "server.key"),
		"--client-ca", filepath.Join(caDirPath, identity.CACertFile), "--bound-client-ca", aws.CertFile,
		"--client-cert", "required"}); err != nil {
		t.Fatal(err)
	}
	cfg, err := o.config(slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("serve flags: %v", err)
	}
	srv := startServerConfig(t, func(c *serveConfig) {
		c.DataDir = dataDir
		c.TLSAddr = cfg.TLSAddr
		c.TLSConfig = cfg.TLSConfig
		c.BoundOnlyCAs = cfg.BoundOnlyCAs
	})
	return srv, aws
}

// awsClientTLS is a device's TLS configuration with an AWS certificate,
// trusting the server's fleet CA (the CA bundle a migrated device gets).
func awsClientTLS(t *testing.T, srv *server, cert awssdktest.DeviceCert) *tls.Config {
	t.Helper()
	c, err := identity.ClientTLSConfig(filepath.Join(srv.dataDir, caDir, identity.CACertFile), cert.CertFile, cert.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// deviceIDs lists the enrolled devices through the CLI.
func deviceIDs(t *testing.T, srv *server) []string {
	t.Helper()
	out := adminCLI(t, srv, "device", "list")
	var ids []string
	for _, line := range strings.Split(out, "\n")[1:] {
		if f := strings.Fields(line); len(f) > 0 {
			ids = append(ids, f[0])
		}
	}
	return ids
}

// TestMigrateDeviceAddCert: umbra device add --cert binds an AWS-issued
// certificate; the device logs in with it as AWS SDKs do (metrics in the
// user name) on a listener that requires certificates; device remove
// disconnects it at once and refuses it from then on. Every bad --cert
// is a clear error that enrolls nothing.
func TestMigrateDeviceAddCert(t *testing.T) {
	srv, aws := startMigrationServer(t)
	cert := aws.Issue(t, awssdktest.AWSCommonName)
	fp := adminCLI(t, srv, "device", "add", "aws-1", "--cert", cert.CertFile, "--label", "site=lab")
	if want := identity.CertFingerprint(cert.Cert); fp != want {
		t.Fatalf("device add --cert printed %q, want the fingerprint %s", fp, want)
	}
	if !strings.Contains(adminCLI(t, srv, "device", "list", "--json"), `"cert_sha256":"`+fp+`"`) {
		t.Error("device list --json does not show the bound certificate's fingerprint")
	}
	url := "ssl://" + srv.brk.TLSAddr().String()
	lost := make(chan error, 1)
	opts := paho.NewClientOptions().AddBroker(url).SetClientID("aws-1").SetUsername("?SDK=JavaScript&Version=2.2.16").
		SetTLSConfig(awsClientTLS(t, srv, cert)).SetAutoReconnect(false).SetConnectTimeout(5 * time.Second).
		SetConnectionLostHandler(func(_ paho.Client, err error) { lost <- err })
	c := paho.NewClient(opts)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("bound AWS certificate: %v, want connected", tok.Error())
	}
	// A secret login is refused on a listener that requires certificates.
	sec := adminCLI(t, srv, "device", "add", "pw-1")
	if _, err := mqttClient(t, url, "pw-1", "pw-1", sec, awsClientTLS(t, srv, awssdktest.DeviceCert{}), nil); err == nil {
		t.Error("secret login without a certificate on --client-cert required: connected, want refused")
	}

	adminCLI(t, srv, "device", "remove", "aws-1")
	select {
	case <-lost:
	case <-time.After(10 * time.Second):
		t.Fatal("the removed device's session is still connected")
	}
	if _, err := mqttClient(t, url, "aws-1", "", "", awsClientTLS(t, srv, cert), nil); err == nil {
		t.Error("bound certificate of a removed device: connected, want refused")
	}

	before := deviceIDs(t, srv)
	dir := t.TempDir()
	write := func(name, data string) string {
		f := filepath.Join(dir, name)
		if err := os.WriteFile(f, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
		return f
	}
	certPEM, _ := os.ReadFile(cert.CertFile)
	keyPEM, _ := os.ReadFile(cert.KeyFile)
	caPEM, _ := os.ReadFile(aws.CertFile)
	other := aws.Issue(t, awssdktest.AWSCommonName)
	otherFP := adminCLI(t, srv, "device", "add", "aws-2", "--cert", other.CertFile)
	before = deviceIDs(t, srv)
	for _, tc := range []struct{ name, file, want string }{
		{"missing file", filepath.Join(dir, "nope.pem"), "no such file"},
		{"private key", cert.KeyFile, "private key"},
		{"certificate and key", write("both.pem", string(certPEM)+string(keyPEM)), "private key"},
		{"bundle", write("bundle.pem", string(certPEM)+string(certPEM)), "more than one certificate"},
		{"CA certificate", write("ca.pem", string(caPEM)), "CA certificate"},
		{"not PEM", write("x.pem", "hello"), "no PEM certificate"},
		{"too large", write("big.pem", strings.Repeat("x", 70<<10)), "larger than"},
		{"bound to another device", other.CertFile, "bound to device aws-2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := runCLI(t.Context(), "", "device", "add", "aws-3", "--cert", tc.file, "--api", srv.apiURL(), "--data-dir", srv.dataDir)
			if r.err == nil || !strings.Contains(r.err.Error(), tc.want) {
				t.Errorf("device add --cert %s: %v, want an error with %q", tc.name, r.err, tc.want)
			}
			if got := deviceIDs(t, srv); !slices.Equal(got, before) {
				t.Errorf("devices changed: %q, want %q", got, before)
			}
		})
	}
	if otherFP == fp {
		t.Error("two certificates, one fingerprint")
	}
}

// TestMigrateDeviceImport imports a CSV of devices with and without
// certificates; the secrets go to a new 0600 file. A file with bad rows
// lists every one with its line number and imports nothing; --dry-run
// imports nothing either.
func TestMigrateDeviceImport(t *testing.T) {
	srv, aws := startMigrationServer(t)
	adminCLI(t, srv, "device", "add", "taken")
	dir := t.TempDir()
	c1, c2 := aws.Issue(t, awssdktest.AWSCommonName), aws.Issue(t, awssdktest.AWSCommonName)
	for name, src := range map[string]string{"certs/c1.pem.crt": c1.CertFile, "c2.pem.crt": c2.CertFile} {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		os.MkdirAll(filepath.Join(dir, "certs"), 0o755)
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	csvFile := func(name, content string) string {
		f := filepath.Join(dir, name)
		if err := os.WriteFile(f, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return f
	}
	run := func(args ...string) cliResult {
		return runCLI(t.Context(), "", append(append([]string{"device", "import"}, args...), "--api", srv.apiURL(), "--data-dir", srv.dataDir)...)
	}
	before := deviceIDs(t, srv)

	bad := csvFile("bad.csv", `id,labels,cert
# a comment line
ok-1,hw=m2;site=lab,
bad id,,
ok-2,,certs/c1.pem.crt
lbl,hw,
taken,,
missing,,nope.pem
ok-1,,
key,,`+c1.KeyFile+`
twice,,certs/c1.pem.crt
extra,,,field
`)
	secrets := filepath.Join(dir, "secrets.csv")
	for _, dry := range []bool{false, true} {
		args := []string{bad, "--secrets", secrets}
		if dry {
			args = append(args, "--dry-run")
		}
		r := run(args...)
		if r.err == nil || !strings.Contains(r.err.Error(), "8 bad rows; nothing imported") {
			t.Fatalf("import of bad.csv (dry run %t): %v, want 8 bad rows", dry, r.err)
		}
		for _, want := range []string{":4: device ID \"bad id\"", ":6: labels:", ":7: ", "is a device", ":8: cert:", ":9: ", `"ok-1" comes twice`,
			":10: cert:", "private key", ":11: ", `also bound to "ok-2" in this import`, ":12: 4 fields"} {
			if !strings.Contains(r.stderr, want) {
				t.Errorf("import of bad.csv (dry run %t): stderr lacks %q:\n%s", dry, want, r.stderr)
			}
		}
		if _, err := os.Stat(secrets); !os.IsNotExist(err) {
			t.Errorf("secrets file left after a refused import: %v", err)
		}
		if got := deviceIDs(t, srv); !slices.Equal(got, before) {
			t.Fatalf("devices changed by a refused import: %q, want %q", got, before)
		}
	}
	for _, tc := range []struct{ name, content, want string }{
		{"empty", "", "empty"},
		{"header only", "id,labels,cert\n", "no devices"},
		{"unknown column", "id,label\nx,y\n", `unknown column "label"`},
		{"no id column", "labels,cert\nx,\n", "no id column"},
		{"column twice", "id,id\nx,x\n", `column "id" twice`},
	} {
		if r := run(csvFile(tc.name+".csv", tc.content), "--secrets", secrets); r.err == nil || !strings.Contains(r.err.Error(), tc.want) {
			t.Errorf("import of %s file: %v, want %q", tc.name, r.err, tc.want)
		}
	}

	good := csvFile("good.csv", "id,labels,cert\nok-1,hw=m2;site=lab,\nok-2,,certs/c1.pem.crt\nok-3,hw=m2,"+filepath.Join(dir, "c2.pem.crt")+"\nok-4,,\n")
	if r := run(good, "--dry-run"); r.err != nil || !strings.Contains(r.stdout, "4 devices OK; nothing imported") {
		t.Fatalf("dry run of good.csv: %v %s", r.err, r.stdout)
	}
	if r := run(good); r.err == nil || !strings.Contains(r.err.Error(), "--secrets FILE is needed") {
		t.Fatalf("import without --secrets: %v", r.err)
	}
	exists := csvFile("exists.txt", "keep me")
	if r := run(good, "--secrets", exists); r.err == nil || !strings.Contains(r.err.Error(), "exists") {
		t.Fatalf("import over an existing secrets file: %v", r.err)
	}
	if got := deviceIDs(t, srv); !slices.Equal(got, before) {
		t.Fatalf("devices changed before the import: %q, want %q", got, before)
	}
	r := run(good, "--secrets", secrets)
	if r.err != nil || !strings.Contains(r.stdout, "4 devices imported, 2 bound to their certificate, 2 secrets in "+secrets) {
		t.Fatalf("import of good.csv: %v %s %s", r.err, r.stdout, r.stderr)
	}
	fi, err := os.Stat(secrets)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("secrets file: %v, mode %v; want 0600", err, fi.Mode().Perm())
	}
	f, _ := os.Open(secrets)
	b, _ := io.ReadAll(f)
	f.Close()
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) != 3 || lines[0] != "id,secret" || !strings.HasPrefix(lines[1], "ok-1,") || !strings.HasPrefix(lines[2], "ok-4,") {
		t.Fatalf("secrets file:\n%s\nwant a header and ok-1, ok-4", b)
	}
	if _, err := srv.ids.Verify(t.Context(), "ok-4", []byte(strings.TrimPrefix(lines[2], "ok-4,"))); err != nil {
		t.Errorf("ok-4's secret from the file: %v", err)
	}
	dev, err := srv.ids.GetDevice(t.Context(), "ok-3")
	if err != nil || dev.CertSHA256 != identity.CertFingerprint(c2.Cert) || dev.Labels["hw"] != "m2" {
		t.Errorf("ok-3: %+v, %v; want c2 bound and hw=m2", dev, err)
	}
	url := "ssl://" + srv.brk.TLSAddr().String()
	c, err := mqttClient(t, url, "ok-2", "", "", awsClientTLS(t, srv, c1), nil)
	if err != nil {
		t.Fatalf("imported device ok-2 with its AWS certificate: %v", err)
	}
	c.Disconnect(0)
}

// FuzzImportFile: any CSV file is read without panicking; each bad row is
// reported by a line after the header, and a good row has a valid ID.
func FuzzImportFile(f *testing.F) {
	for _, seed := range []string{"id,labels,cert\nthing-1,hw=m2;site=lab,\n", "id\n\"a\nb\",\n", "id,labels\nx,=;=\n", "labels,id\n,,,\n", ""} {
		f.Add(seed)
	}
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, content string) {
		name := filepath.Join(dir, "f.csv")
		if err := os.WriteFile(name, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		rows, problems, err := readImportFile(name)
		if err != nil {
			return
		}
		for _, p := range problems {
			if p.line < 2 || p.msg == "" {
				t.Fatalf("problem %+v: want a line after the header and a reason", p)
			}
		}
		for _, r := range rows {
			if _, err := parseID(r.req.ID); err != nil || r.line < 2 {
				t.Fatalf("row %+v accepted: %v", r, err)
			}
		}
	})
}
