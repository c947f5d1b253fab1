package brokertest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// CA is a throwaway certificate authority for TLS tests. Its certificate
// and the key pairs it issues are also written to PEM files in the test's
// temporary directory, for clients outside the process (mosquitto_pub).
type CA struct {
	cert     *x509.Certificate
	key      *ecdsa.PrivateKey
	pool     *x509.CertPool
	certFile string
	dir      string
}

// KeyPair is a certificate issued by a CA, with its key, in memory and as
// PEM files.
type KeyPair struct {
	TLS      tls.Certificate // certificate chain (leaf only) and key
	CertFile string          // PEM certificate
	KeyFile  string          // PEM PKCS #8 private key
}

// CertOptions describes a certificate to issue. Zero times default to an
// hour ago (NotBefore) and a day from now (NotAfter).
type CertOptions struct {
	// CommonName is the subject's common name; for a client certificate
	// it typically names the device.
	CommonName string
	// Server issues a server certificate for 127.0.0.1 and localhost
	// instead of a client certificate.
	Server    bool
	NotBefore time.Time
	NotAfter  time.Time
}

// NewCA creates a CA named name, valid from an hour ago for a day. It
// fails the test on error.
func NewCA(tb testing.TB, name string) *CA {
	tb.Helper()
	key := newKey(tb)
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(tb),
		Subject:               pkix.Name{CommonName: name, Organization: []string{"umbra tests"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatalf("brokertest: create CA certificate: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatalf("brokertest: parse CA certificate: %v", err)
	}
	ca := &CA{cert: cert, key: key, pool: x509.NewCertPool(), dir: tb.TempDir()}
	ca.pool.AddCert(cert)
	ca.certFile = writePEM(tb, ca.dir, "ca.pem", "CERTIFICATE", der)
	return ca
}

// Pool returns a pool holding only the CA's certificate.
func (ca *CA) Pool() *x509.CertPool { return ca.pool }

// CertFile returns the path of the CA's PEM certificate.
func (ca *CA) CertFile() string { return ca.certFile }

// Issue issues a certificate signed by the CA. It fails the test on error.
func (ca *CA) Issue(tb testing.TB, o CertOptions) KeyPair {
	tb.Helper()
	now := time.Now()
	if o.NotBefore.IsZero() {
		o.NotBefore = now.Add(-time.Hour)
	}
	if o.NotAfter.IsZero() {
		o.NotAfter = now.Add(24 * time.Hour)
	}
	key := newKey(tb)
	tmpl := &x509.Certificate{
		SerialNumber: serial(tb),
		Subject:      pkix.Name{CommonName: o.CommonName},
		NotBefore:    o.NotBefore,
		NotAfter:     o.NotAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if o.Server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
		tmpl.DNSNames = []string{"localhost"}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		tb.Fatalf("brokertest: issue certificate %q: %v", o.CommonName, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatalf("brokertest: parse certificate %q: %v", o.CommonName, err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		tb.Fatalf("brokertest: marshal key: %v", err)
	}
	dir, err := os.MkdirTemp(ca.dir, "cert-")
	if err != nil {
		tb.Fatalf("brokertest: %v", err)
	}
	return KeyPair{
		TLS:      tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf},
		CertFile: writePEM(tb, dir, "cert.pem", "CERTIFICATE", der),
		KeyFile:  writePEM(tb, dir, "key.pem", "PRIVATE KEY", pkcs8),
	}
}

// ServerConfig returns a broker TLS configuration with a server
// certificate for 127.0.0.1 issued by the CA. With mutual true it requires
// client certificates issued by the CA
// (tls.RequireAndVerifyClientCert).
func (ca *CA) ServerConfig(tb testing.TB, mutual bool) *tls.Config {
	tb.Helper()
	kp := ca.Issue(tb, CertOptions{CommonName: "umbra broker", Server: true})
	cfg := &tls.Config{Certificates: []tls.Certificate{kp.TLS}, MinVersion: tls.VersionTLS12}
	if mutual {
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
		cfg.ClientCAs = ca.pool
	}
	return cfg
}

// ClientConfig returns a client TLS configuration that trusts the CA and
// presents the given certificates (none for a client without one).
func (ca *CA) ClientConfig(certs ...KeyPair) *tls.Config {
	cfg := &tls.Config{RootCAs: ca.pool, MinVersion: tls.VersionTLS12}
	for _, kp := range certs {
		cfg.Certificates = append(cfg.Certificates, kp.TLS)
	}
	return cfg
}

func newKey(tb testing.TB) *ecdsa.PrivateKey {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatalf("brokertest: generate key: %v", err)
	}
	return key
}

func serial(tb testing.TB) *big.Int {
	tb.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		tb.Fatalf("brokertest: serial number: %v", err)
	}
	return n
}

// writePEM writes one PEM block to dir/name, readable only by the owner,
// and returns the path.
func writePEM(tb testing.TB, dir, name, typ string, der []byte) string {
	tb.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		tb.Fatalf("brokertest: write %s: %v", path, err)
	}
	return path
}
