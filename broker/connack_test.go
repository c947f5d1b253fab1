package broker_test

import (
	"context"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/internal/brokertest"
)

// secretAuth admits the password "secret" and reports every password it
// is asked about (nil when absent).
type secretAuth struct{ passwords chan []byte }

func (a secretAuth) Authenticate(_ context.Context, c broker.Credentials) (broker.Identity, error) {
	a.passwords <- c.Password
	if string(c.Password) != "secret" {
		return broker.Identity{}, errors.New("wrong password")
	}
	return broker.Identity{Name: c.ClientID}, nil
}

func (secretAuth) Allow(broker.Identity, string, bool) bool { return true }

// rawConnect encodes a CONNECT with the given flags byte (user name 0x80,
// password 0x40, clean session 0x02, reserved 0x01), user name "user" and
// an empty password when their flags are set.
func rawConnect(version, flags byte, clientID string) []byte {
	body := appendString(nil, "MQTT")
	body = append(body, version, flags)
	body = binary.BigEndian.AppendUint16(body, 30)
	if version == v5 {
		body = append(body, 0)
	}
	body = appendString(body, clientID)
	if flags&0x80 != 0 {
		body = appendString(body, "user")
	}
	if flags&0x40 != 0 {
		body = appendString(body, "") // a zero-length password
	}
	return frame(typeConnect<<4, body)
}

// TestHardening15ConnackReturnCodes is issue 10's case 15: an MQTT 3.1.1
// CONNECT with an empty password got CONNACK 130, which is not a 3.1.1
// return code (mochi refused it as a protocol error; an empty password is
// valid MQTT). The empty password now reaches authentication, and no
// CONNACK above 5 reaches a 3.1.1 client: a malformed CONNECT gets none
// and is closed, a refused empty client ID gets 2.
func TestHardening15ConnackReturnCodes(t *testing.T) {
	const closed = 0xff // no CONNACK: the connection is closed
	tests := []struct {
		name     string
		auth     bool
		version  byte
		flags    byte
		clientID string
		want     byte
	}{
		{"3.1.1 empty password refused", true, v311, 0xc2, "c1", 5},
		{"3.1.1 empty password without user name refused", true, v311, 0x42, "c1", 5},
		{"5 empty password refused", true, v5, 0xc2, "c1", 0x86},
		{"3.1.1 empty password without auth", false, v311, 0xc2, "c1", 0},
		{"3.1.1 reserved flag set", false, v311, 0x03, "c1", closed},
		{"3.1.1 empty client id, persistent session", false, v311, 0x00, "", 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := broker.Config{}
			auth := secretAuth{passwords: make(chan []byte, 1)}
			if tc.auth {
				cfg.Auth = auth
			}
			b := brokertest.New(t, cfg)
			rc := dialRaw(t, b.Addr())
			rc.write(rawConnect(tc.version, tc.flags, tc.clientID))
			if tc.want == closed {
				rc.expectClosed()
				return
			}
			ack := rc.expect(typeConnack)
			if got := ack.body[1]; got != tc.want {
				t.Fatalf("CONNACK code %d (%#x), want %d (%#x)", got, got, tc.want, tc.want)
			}
			if tc.auth {
				if pw := recv(t, auth.passwords, "authentication"); pw == nil || len(pw) != 0 {
					t.Errorf("Credentials.Password %#v, want empty, not nil", pw)
				}
			}
			if tc.want != 0 {
				rc.expectClosed()
			}
		})
	}
}
