package identity_test

import (
	"context"
	"net"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/identity"
	"github.com/umbra-iot/umbra/internal/brokertest"
	"github.com/umbra-iot/umbra/internal/server/brokerauth"
)

// TestMosquittoPub publishes with mosquitto_pub over the broker's TLS
// listener: with a client certificate from the fleet CA (as umbra device
// cert writes it), and with a password over server-authenticated TLS.
func TestMosquittoPub(t *testing.T) {
	s := mustOpen(t, "", identity.Config{})
	secA := mustAddDevice(t, s, "A")
	p := newPKI(t)
	caFile := filepath.Join(p.dir, identity.CACertFile)
	srv, err := identity.ServerTLSConfig(p.serverCert, p.srvKey, caFile)
	if err != nil {
		t.Fatal(err)
	}
	b := brokertest.New(t, broker.Config{Auth: brokerauth.New(s), TLSAddr: "127.0.0.1:0", TLSConfig: srv})
	got := make(chan string, 16)
	if err := b.Subscribe("state/+/update", func(clientID, topic string, payload []byte) {
		got <- clientID + " " + topic + " " + string(payload)
	}); err != nil {
		t.Fatal(err)
	}
	host, port, err := net.SplitHostPort(b.TLSAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	certA, keyA := p.deviceFiles(t, "A", time.Hour)
	stranger := newPKI(t)
	certX, keyX := stranger.deviceFiles(t, "A", time.Hour)

	tests := []struct {
		name   string
		args   []string
		wantOK bool
	}{
		{"fleet certificate", []string{"--cert", certA, "--key", keyA, "-m", "cert"}, true},
		{"password over TLS", []string{"-u", "A", "-P", secA, "-m", "password"}, true},
		{"untrusted certificate", []string{"--cert", certX, "--key", keyX, "-m", "untrusted"}, false},
		{"wrong password", []string{"-u", "A", "-P", "wrong", "-m", "wrong"}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), brokertest.Timeout)
			defer cancel()
			args := append([]string{"-h", host, "-p", port, "--cafile", caFile, "-i", "A", "-q", "1", "-t", "state/A/update"}, tc.args...)
			out, err := exec.CommandContext(ctx, "mosquitto_pub", args...).CombinedOutput()
			if ok := err == nil; ok != tc.wantOK {
				t.Fatalf("mosquitto_pub: got error %v (%s), want success %t", err, out, tc.wantOK)
			}
			if !tc.wantOK {
				return
			}
			want := "A state/A/update " + tc.args[len(tc.args)-1]
			select {
			case m := <-got:
				if m != want {
					t.Errorf("engine received %q, want %q", m, want)
				}
			case <-time.After(brokertest.Timeout):
				t.Fatalf("engine received nothing within %v", brokertest.Timeout)
			}
		})
	}
}
