package awssdktest

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// AWSCommonName is the subject common name of every certificate AWS IoT
// creates (CreateKeysAndCertificate).
const AWSCommonName = "AWS IoT Certificate"

// AWSCA is a throwaway CA shaped like the one AWS IoT signs device
// certificates with: RSA 2048 and AWS's subject; the certificates it
// issues are RSA 2048 with no extended key usage. Migration tests bind
// them to devices (umbra device add --cert).
type AWSCA struct {
	Cert     *x509.Certificate
	CertFile string // PEM, for --bound-client-ca
	key      *rsa.PrivateKey
}

// NewAWSCA creates an AWSCA valid from an hour ago for a day, with its
// certificate in a file in tb's temporary directory.
func NewAWSCA(tb testing.TB) *AWSCA {
	tb.Helper()
	key := rsaKey(tb)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject: pkix.Name{OrganizationalUnit: []string{"Amazon Web Services O=Amazon.com Inc. L=Seattle ST=Washington C=US"},
			CommonName: "umbra test CA shaped like AWS IoT's"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatal(err)
	}
	f := filepath.Join(tb.TempDir(), "aws-ca.pem")
	writeFile(tb, f, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	return &AWSCA{Cert: cert, CertFile: f, key: key}
}

// DeviceCert is a certificate an AWSCA issued, as files named as AWS IoT
// names its downloads.
type DeviceCert struct {
	Cert     *x509.Certificate
	CertFile string // "<dir>/device.pem.crt"
	KeyFile  string // "<dir>/private.pem.key" (PKCS #1, mode 0600)
}

// Issue returns a new device certificate with common name cn (usually
// AWSCommonName) in a new temporary directory.
func (ca *AWSCA) Issue(tb testing.TB, cn string) DeviceCert {
	tb.Helper()
	key := rsaKey(tb)
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.key)
	if err != nil {
		tb.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatal(err)
	}
	dir := tb.TempDir()
	d := DeviceCert{Cert: cert, CertFile: filepath.Join(dir, "device.pem.crt"), KeyFile: filepath.Join(dir, "private.pem.key")}
	writeFile(tb, d.CertFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	writeFile(tb, d.KeyFile, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}), 0o600)
	return d
}

func rsaKey(tb testing.TB) *rsa.PrivateKey {
	tb.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		tb.Fatal(err)
	}
	return key
}

func writeFile(tb testing.TB, name string, data []byte, perm os.FileMode) {
	tb.Helper()
	if err := os.WriteFile(name, data, perm); err != nil {
		tb.Fatal(err)
	}
}
