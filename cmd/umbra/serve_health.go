package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"
)

// healthTimeout bounds serve --healthcheck.
const healthTimeout = 5 * time.Second

// probeHealth is serve --healthcheck: it asks the server that this
// configuration describes for GET /healthz on its HTTP listener (over
// loopback when the listener binds every interface) and returns nil when it
// answers {"status":"ok"}. With an HTTPS listener it trusts exactly the
// certificate of --http-tls-cert (it sends no credential, so pinning the
// certificate is all the check needs, whatever names the certificate
// holds). Container health checks and systemd watchdogs use it.
func probeHealth(ctx context.Context, w io.Writer, httpAddr, tlsCertFile string) error {
	if httpAddr == "" {
		return errors.New("--healthcheck needs the HTTP listener (--http-addr)")
	}
	host, port, err := net.SplitHostPort(httpAddr)
	if err != nil {
		return fmt.Errorf("--http-addr %s: %w", httpAddr, err)
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
		if ip != nil && ip.To4() == nil {
			host = "::1"
		}
	}
	tr := &http.Transport{Proxy: nil, DisableKeepAlives: true}
	scheme := "http"
	if tlsCertFile != "" {
		scheme = "https"
		pinned, err := firstCert(tlsCertFile)
		if err != nil {
			return fmt.Errorf("--http-tls-cert: %w", err)
		}
		tr.TLSClientConfig = &tls.Config{
			MinVersion: tls.VersionTLS12,
			// Verified below against the pinned certificate instead.
			InsecureSkipVerify: true, //nolint:gosec
			VerifyConnection: func(cs tls.ConnectionState) error {
				if len(cs.PeerCertificates) == 0 || !cs.PeerCertificates[0].Equal(pinned) {
					return fmt.Errorf("the server presents another certificate than %s (reload it with SIGHUP)", tlsCertFile)
				}
				return nil
			},
		}
	}
	url := scheme + "://" + net.JoinHostPort(host, port) + "/healthz"
	ctx, cancel := context.WithTimeout(ctx, healthTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	res, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return fmt.Errorf("unhealthy: %w", err)
	}
	defer res.Body.Close()
	var body struct{ Status string }
	if err := json.NewDecoder(io.LimitReader(res.Body, 4096)).Decode(&body); err != nil || res.StatusCode != http.StatusOK || body.Status != "ok" {
		return fmt.Errorf("unhealthy: GET %s answered %s", url, res.Status)
	}
	_, err = fmt.Fprintf(w, "healthy: %s\n", url)
	return err
}

// firstCert reads the first certificate of a PEM file.
func firstCert(file string) (*x509.Certificate, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	for rest := b; ; {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			return nil, fmt.Errorf("no PEM certificate in %s", file)
		}
		if blk.Type == "CERTIFICATE" {
			return x509.ParseCertificate(blk.Bytes)
		}
	}
}
