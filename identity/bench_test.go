package identity_test

import (
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/identity"
)

// quiet discards the logs of benchmarks, which run many iterations.
var quiet = slog.New(slog.DiscardHandler)

// BenchmarkAuthenticate measures one CONNECT's password check: a bbolt
// read transaction and an HMAC-SHA256.
func BenchmarkAuthenticate(b *testing.B) {
	s := mustOpen(b, "", identity.Config{Logger: quiet})
	secret := mustAddDevice(b, s, "dev-1")
	c := identity.Credentials{ClientID: "dev-1", Username: "dev-1", Password: []byte(secret)}
	for b.Loop() {
		if _, err := s.Authenticate(b.Context(), c); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAllow measures the ACL check the broker runs for every PUBLISH
// and every delivered message.
func BenchmarkAllow(b *testing.B) {
	s := mustOpen(b, "", identity.Config{Logger: quiet})
	secret := mustAddDevice(b, s, "dev-1")
	id, err := s.Authenticate(b.Context(), identity.Credentials{ClientID: "dev-1", Password: []byte(secret)})
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if !s.Allow(id, "state/dev-1/update", true) {
			b.Fatal("denied")
		}
	}
}

// BenchmarkReconnectStorm records a connect and a disconnect for each of
// 10,000 devices and flushes them: the work a fleet-wide reconnect costs
// the presence store (one transaction, not one fsync per connect).
func BenchmarkReconnectStorm(b *testing.B) {
	const devices = 10_000
	s := mustOpen(b, "", identity.Config{Logger: quiet, Anonymous: true, PresenceFlushInterval: time.Hour})
	ids := make([]device.ID, devices)
	for i := range ids {
		ids[i] = device.ID(fmt.Sprintf("dev-%05d", i))
	}
	now := time.Now()
	var seq uint64
	for b.Loop() {
		for _, id := range ids {
			seq++
			s.Disconnected(id, seq-1, now, "connection lost")
			s.Connected(id, seq, now, "127.0.0.1:1")
		}
		identity.FlushPresence(b.Context(), s)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*devices), "ns/device")
}

// BenchmarkAllowDelivery measures the ACL check of one delivered message:
// an integrator receiving a device's accepted reply.
func BenchmarkAllowDelivery(b *testing.B) {
	s := mustOpen(b, "", identity.Config{Logger: quiet})
	secret, err := s.CreateToken(b.Context(), identity.RoleIntegrator, "dash")
	if err != nil {
		b.Fatal(err)
	}
	id, err := s.Authenticate(b.Context(), identity.Credentials{ClientID: "dash-1", Username: "dash", Password: []byte(secret)})
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if !s.Allow(id, "state/dev-1/update/accepted", false) {
			b.Fatal("denied")
		}
	}
}
