package identity

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/umbra-iot/umbra/device"
)

// Fleet CA files in the data directory.
const (
	// CACertFile is the CA certificate (PEM), the --client-ca of the mTLS
	// listener and the CA file devices trust.
	CACertFile = "ca.pem"
	// CAKeyFile is the CA's private key (PKCS #8 PEM, mode 0600).
	CAKeyFile = "ca.key"

	// caValidity is how long the fleet CA certificate is valid.
	caValidity = 10 * 365 * 24 * time.Hour
	// MaxCertValidity is the longest validity IssueDeviceCert and
	// IssueServerCert accept.
	MaxCertValidity = 5 * 365 * 24 * time.Hour
	// clockSkew backdates NotBefore so a device with a slightly slow clock
	// accepts a fresh certificate.
	clockSkew = time.Hour
)

// ErrInvalidCert is wrapped for bad certificate requests and unusable
// certificate or key files.
var ErrInvalidCert = errors.New("identity: invalid certificate")

// CA is a fleet certificate authority: an ECDSA P-256 key and self-signed
// certificate kept in a data directory. Its methods are safe for
// concurrent use.
type CA struct {
	cert    *x509.Certificate
	certPEM []byte
	key     *ecdsa.PrivateKey
	now     func() time.Time
}

// InitCA creates a fleet CA in dir (CACertFile and CAKeyFile, the key with
// mode 0600) and returns it. It fails with ErrExists if either file is
// already there: replacing a CA would invalidate every issued certificate.
func InitCA(dir string) (*CA, error) {
	for _, f := range []string{CACertFile, CAKeyFile} {
		if _, err := os.Stat(filepath.Join(dir, f)); err == nil {
			return nil, fmt.Errorf("init ca: %w: %s", ErrExists, filepath.Join(dir, f))
		} else if !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("init ca: %w", err)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("init ca: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("init ca: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: "Umbra fleet CA", Organization: []string{"Umbra"}},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("init ca: %w", err)
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return nil, fmt.Errorf("init ca: %w", err)
	}
	if err := writeFileExclusive(filepath.Join(dir, CAKeyFile), keyPEM, 0o600); err != nil {
		return nil, fmt.Errorf("init ca: %w", err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	if err := writeFileExclusive(filepath.Join(dir, CACertFile), certPEM, 0o644); err != nil {
		os.Remove(filepath.Join(dir, CAKeyFile))
		return nil, fmt.Errorf("init ca: %w", err)
	}
	return LoadCA(dir)
}

// LoadCA loads the fleet CA from dir. It fails with an error wrapping
// fs.ErrNotExist if the CA was not initialised, and ErrInvalidCert if the
// files do not hold a CA certificate and its key.
func LoadCA(dir string) (*CA, error) {
	certPEM, err := os.ReadFile(filepath.Join(dir, CACertFile))
	if err != nil {
		return nil, fmt.Errorf("load ca: %w", err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, CAKeyFile))
	if err != nil {
		return nil, fmt.Errorf("load ca: %w", err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("load ca: %w: %w", ErrInvalidCert, err)
	}
	key, ok := pair.PrivateKey.(*ecdsa.PrivateKey)
	if !ok || !pair.Leaf.IsCA {
		return nil, fmt.Errorf("load ca: %w: %s is not an ECDSA CA", ErrInvalidCert, dir)
	}
	return &CA{cert: pair.Leaf, certPEM: certPEM, key: key, now: time.Now}, nil
}

// CertPEM returns the CA certificate in PEM form.
func (ca *CA) CertPEM() []byte { return append([]byte(nil), ca.certPEM...) }

// IssueDeviceCert issues a client certificate for device id, valid for
// validity (at most MaxCertValidity and not beyond the CA's own expiry),
// with a fresh ECDSA P-256 key. The subject common name is id, which
// Authenticate checks, and a URI subject alternative name
// IssuedURIPrefix + <unix nanoseconds> records when it was issued: a
// certificate issued before its device was last removed is refused. It
// returns the certificate and the PKCS #8 key in PEM form; the key is not
// kept.
func (ca *CA) IssueDeviceCert(id device.ID, validity time.Duration) (certPEM, keyPEM []byte, err error) {
	if _, err := device.ParseID(string(id)); err != nil {
		return nil, nil, fmt.Errorf("issue device cert: %w: %w", ErrInvalidName, err)
	}
	issued, err := url.Parse(IssuedURIPrefix + strconv.FormatInt(ca.now().UnixNano(), 10))
	if err != nil {
		return nil, nil, fmt.Errorf("issue device cert: %w", err)
	}
	return ca.issue(&x509.Certificate{
		Subject:     pkix.Name{CommonName: string(id)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		URIs:        []*url.URL{issued},
	}, validity)
}

// IssueServerCert issues a server certificate for hosts (DNS names or IP
// addresses, at least one), valid for validity, for a TLS listener whose
// clients trust the fleet CA.
func (ca *CA) IssueServerCert(hosts []string, validity time.Duration) (certPEM, keyPEM []byte, err error) {
	if len(hosts) == 0 {
		return nil, nil, fmt.Errorf("issue server cert: %w: no hosts", ErrInvalidCert)
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: hosts[0]},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range hosts {
		if h == "" || len(h) > 253 {
			return nil, nil, fmt.Errorf("issue server cert: %w: bad host %q", ErrInvalidCert, clip(h))
		}
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	return ca.issue(tmpl, validity)
}

// issue signs tmpl, completed with a serial, validity and key, with the CA.
func (ca *CA) issue(tmpl *x509.Certificate, validity time.Duration) (certPEM, keyPEM []byte, err error) {
	if validity <= 0 || validity > MaxCertValidity {
		return nil, nil, fmt.Errorf("issue cert: %w: validity %v outside (0, %v]", ErrInvalidCert, validity, MaxCertValidity)
	}
	now := ca.now()
	tmpl.SerialNumber = randomSerial()
	tmpl.NotBefore = now.Add(-clockSkew)
	tmpl.NotAfter = now.Add(validity)
	if tmpl.NotAfter.After(ca.cert.NotAfter) {
		tmpl.NotAfter = ca.cert.NotAfter
	}
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("issue cert: %w", err)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, nil, fmt.Errorf("issue cert: %w", err)
	}
	keyPEM, err = encodeKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("issue cert: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), keyPEM, nil
}

// ServerTLSConfig returns a TLS 1.2+ server configuration with the key pair
// in certFile and keyFile. With a clientCAFile (PEM), clients may present a
// certificate, which must then chain to one of its CAs (mTLS; clients
// without a certificate may still log in with a password). It fails with
// ErrInvalidCert when a file holds no usable certificate. ServerTLS offers
// more.
func ServerTLSConfig(certFile, keyFile, clientCAFile string) (*tls.Config, error) {
	o := ServerTLSOptions{CertFile: certFile, KeyFile: keyFile}
	if clientCAFile != "" {
		o.ClientCAFiles = []string{clientCAFile}
	}
	cfg, _, err := ServerTLS(o)
	return cfg, err
}

// ALPNAWSIoT is the ALPN protocol the AWS IoT Device SDKs (aws-crt) offer
// on every TLS connection, and AWS IoT requires on port 443. Umbra's TLS
// listener sets no ALPN protocols, so Go accepts any offer; a listener that
// sets some must include this one, or aws-crt's handshake fails.
const ALPNAWSIoT = "x-amzn-mqtt-ca"

// ServerTLSOptions configures ServerTLS.
type ServerTLSOptions struct {
	// CertFile and KeyFile are the server's certificate (chain) and key
	// (PEM). Required.
	CertFile, KeyFile string
	// ClientCAFiles are PEM files, each with one or more CA certificates
	// (a bundle), whose client certificates log in as the device their
	// common name names, or as the device they are bound to.
	ClientCAFiles []string
	// BoundClientCAFiles are PEM files of CAs whose client certificates
	// log in only when bound to a device by fingerprint (see
	// Config.BoundOnlyCAs): CAs that also sign others' certificates, such
	// as the AWS IoT CA of a migrated fleet.
	BoundClientCAFiles []string
	// RequireClientCert makes the handshake fail for a client without a
	// certificate that chains to one of the CAs, as on AWS IoT's port
	// 8883; otherwise such a client may log in with a secret. It needs a
	// CA.
	RequireClientCert bool
}

// ServerTLS returns a TLS 1.2+ server configuration for o, and the
// certificates of o.BoundClientCAFiles for Config.BoundOnlyCAs. With any
// CA, clients may (or, with RequireClientCert, must) present a
// certificate, which must then chain to one of the CAs. It sets no ALPN
// protocols (see ALPNAWSIoT). It fails with ErrInvalidCert when a file is
// missing or holds anything but certificates (naming the file), a CA is in
// both lists, or RequireClientCert comes without a CA.
func ServerTLS(o ServerTLSOptions) (*tls.Config, []*x509.Certificate, error) {
	pair, err := tls.LoadX509KeyPair(o.CertFile, o.KeyFile)
	if err != nil {
		return nil, nil, fmt.Errorf("server tls config: %w: %w", ErrInvalidCert, err)
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{pair}}
	if len(o.ClientCAFiles)+len(o.BoundClientCAFiles) == 0 {
		if o.RequireClientCert {
			return nil, nil, fmt.Errorf("server tls config: %w: requiring a client certificate needs a client CA", ErrInvalidCert)
		}
		return cfg, nil, nil
	}
	pool := x509.NewCertPool()
	type origin struct {
		file  string
		bound bool
	}
	seen := map[[32]byte]origin{}
	add := func(files []string, bound bool) ([]*x509.Certificate, error) {
		var all []*x509.Certificate
		for _, f := range files {
			certs, err := loadCerts(f)
			if err != nil {
				return nil, err
			}
			for _, c := range certs {
				sum := sha256.Sum256(c.Raw)
				if o, dup := seen[sum]; dup && o.bound != bound {
					return nil, fmt.Errorf("%w: CA %q is both a client CA (%s) and a bound-only one (%s)",
						ErrInvalidCert, clip(c.Subject.CommonName), o.file, f)
				}
				seen[sum] = origin{f, bound}
				pool.AddCert(c)
			}
			all = append(all, certs...)
		}
		return all, nil
	}
	if _, err := add(o.ClientCAFiles, false); err != nil {
		return nil, nil, fmt.Errorf("server tls config: %w", err)
	}
	boundOnly, err := add(o.BoundClientCAFiles, true)
	if err != nil {
		return nil, nil, fmt.Errorf("server tls config: %w", err)
	}
	cfg.ClientCAs = pool
	cfg.ClientAuth = tls.VerifyClientCertIfGiven
	if o.RequireClientCert {
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, boundOnly, nil
}

// ClientTLSConfig returns a TLS 1.2+ client configuration that trusts the
// CAs in caFile and, when certFile and keyFile are set, presents that
// client certificate; for devices, the simulator and tests.
func ClientTLSConfig(caFile, certFile, keyFile string) (*tls.Config, error) {
	pool, err := loadPool(caFile)
	if err != nil {
		return nil, fmt.Errorf("client tls config: %w", err)
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool}
	if certFile != "" || keyFile != "" {
		pair, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("client tls config: %w: %w", ErrInvalidCert, err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}

func loadPool(file string) (*x509.CertPool, error) {
	certs, err := loadCerts(file)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	return pool, nil
}

// loadCerts reads the PEM certificates of file, a single certificate or a
// bundle; text between the blocks (comments of a bundle) is ignored. Any
// other PEM block, an unparsable certificate, or no certificate at all is
// an error wrapping ErrInvalidCert that names the file.
func loadCerts(file string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidCert, err)
	}
	var certs []*x509.Certificate
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("%w: %s: PEM block %d is %q, want only certificates", ErrInvalidCert, file, len(certs)+1, clip(b.Type))
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: certificate %d: %w", ErrInvalidCert, file, len(certs)+1, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%w: no PEM certificate in %s", ErrInvalidCert, file)
	}
	return certs, nil
}

func encodeKey(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// randomSerial returns a random positive 128-bit serial number.
func randomSerial() *big.Int {
	b := make([]byte, 16)
	rand.Read(b)
	b[0] &= 0x7f
	return new(big.Int).SetBytes(b)
}
