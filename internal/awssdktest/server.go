package awssdktest

import (
	"context"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/identity"
	"github.com/umbra-iot/umbra/internal/server"
)

// Host is the name the SDKs dial: the server certificate's SAN, and what
// AWS endpoints are (a name; aws-crt verifies it).
const Host = "localhost"

// Server is a whole Umbra in-process (internal/server) with
// authentication on and an mTLS listener on 127.0.0.1:0 whose device
// certificates come from a fleet CA made as umbra ca init makes it.
type Server struct {
	*server.Server
	// CA is the fleet CA; CAFile its certificate, the CA bundle the
	// devices trust (the Amazon Root CA's replacement).
	CA     *identity.CA
	CAFile string
	// Port is the TLS listener's port.
	Port int
}

// Options configure NewServer; the zero value is a server as umbra serve
// --tls-addr … --client-ca <data-dir>/ca/ca.pem runs it.
type Options struct {
	// BoundClientCAFiles are CAs for bound certificates only (umbra serve
	// --bound-client-ca), e.g. an AWSCA's CertFile.
	BoundClientCAFiles []string
	// RequireClientCert is umbra serve --client-cert required.
	RequireClientCert bool
	// Edit, if not nil, may change the configuration last.
	Edit func(*server.Config)
}

// NewServer opens a Server in a temporary data dir and closes it when the
// test ends.
func NewServer(tb testing.TB, o Options) *Server {
	tb.Helper()
	dir := tb.TempDir()
	caDir := filepath.Join(dir, "ca")
	ca, err := identity.InitCA(caDir)
	if err != nil {
		tb.Fatal(err)
	}
	certPEM, keyPEM, err := ca.IssueServerCert([]string{Host, "127.0.0.1"}, time.Hour)
	if err != nil {
		tb.Fatal(err)
	}
	certFile, keyFile := filepath.Join(caDir, "server.crt"), filepath.Join(caDir, "server.key")
	writeFile(tb, certFile, certPEM, 0o644)
	writeFile(tb, keyFile, keyPEM, 0o600)
	caFile := filepath.Join(caDir, identity.CACertFile)
	tlsCfg, boundOnly, err := identity.ServerTLS(identity.ServerTLSOptions{CertFile: certFile, KeyFile: keyFile,
		ClientCAFiles: []string{caFile}, BoundClientCAFiles: o.BoundClientCAFiles, RequireClientCert: o.RequireClientCert})
	if err != nil {
		tb.Fatal(err)
	}
	cfg := server.Config{
		DataDir:      filepath.Join(dir, "data"),
		MQTTAddr:     "127.0.0.1:0",
		HTTPAddr:     "127.0.0.1:0",
		TLSAddr:      "127.0.0.1:0",
		TLSConfig:    tlsCfg,
		BoundOnlyCAs: boundOnly,
		Logger:       slog.New(slog.NewTextHandler(tb.Output(), &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
	if o.Edit != nil {
		o.Edit(&cfg)
	}
	s, err := server.Open(tb.Context(), cfg)
	if err != nil {
		tb.Fatalf("server.Open: %v", err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Close(ctx); err != nil {
			tb.Errorf("server Close: %v", err)
		}
	})
	_, port, err := net.SplitHostPort(s.Broker().TLSAddr().String())
	if err != nil {
		tb.Fatal(err)
	}
	p, _ := strconv.Atoi(port)
	return &Server{Server: s, CA: ca, CAFile: caFile, Port: p}
}

// Device is what a script needs to connect as a device: see Env.
type Device struct {
	// ID is the device (thing) ID, also the MQTT client ID.
	ID device.ID
	// Host and Port are the endpoint.
	Host string
	Port int
	// CAFile is the server's CA bundle; CertFile and KeyFile the
	// device's certificate and key.
	CAFile, CertFile, KeyFile string
}

// Device enrolls id and issues it a certificate from the fleet CA.
func (s *Server) Device(tb testing.TB, id device.ID) Device {
	tb.Helper()
	if _, err := s.Identity().AddDevice(tb.Context(), id, nil); err != nil {
		tb.Fatalf("enroll %s: %v", id, err)
	}
	certPEM, keyPEM, err := s.CA.IssueDeviceCert(id, time.Hour)
	if err != nil {
		tb.Fatal(err)
	}
	dir := tb.TempDir()
	d := s.DeviceWith(id, filepath.Join(dir, string(id)+".crt"), filepath.Join(dir, string(id)+".key"))
	writeFile(tb, d.CertFile, certPEM, 0o644)
	writeFile(tb, d.KeyFile, keyPEM, 0o600)
	return d
}

// DeviceWith returns the Device for id connecting with the given
// certificate files (for example a bound AWS certificate).
func (s *Server) DeviceWith(id device.ID, certFile, keyFile string) Device {
	return Device{ID: id, Host: Host, Port: s.Port, CAFile: s.CAFile, CertFile: certFile, KeyFile: keyFile}
}

// Env returns the variables the scripts read: UMBRA_HOST, UMBRA_PORT,
// UMBRA_CA, UMBRA_CERT, UMBRA_KEY, UMBRA_CLIENT_ID and UMBRA_THING.
func (d Device) Env() []string {
	return []string{
		"UMBRA_HOST=" + d.Host,
		"UMBRA_PORT=" + strconv.Itoa(d.Port),
		"UMBRA_CA=" + d.CAFile,
		"UMBRA_CERT=" + d.CertFile,
		"UMBRA_KEY=" + d.KeyFile,
		"UMBRA_CLIENT_ID=" + string(d.ID),
		"UMBRA_THING=" + string(d.ID),
	}
}
